"""Subcommands that only read a home: report, metrics, skew."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ctpipe.components.basics import ExitCode
from ctpipe.pipeline.commands.common import (
    EXIT_OK,
    add_config_flags,
    add_home_flag,
    load_config,
)
from ctpipe.pipeline.errors import BadInput


def register(commands) -> None:
    report = commands.add_parser(
        "report", help="HTML pages: every cycle's decision, data, metrics and versions")
    add_home_flag(report)
    report.add_argument("--span", type=int,
                        help="only this span's page (default: every span's page and the index)")
    report.add_argument("--out", help="the page file (with --span) or the index file, pages "
                        "beside it (default: <home>/reports/)")
    report.add_argument("--rewrite", action="store_true",
                        help="rewrite pages already written for the same cycle (they lose the "
                        "statistics and evaluations that retention removed since)")
    add_config_flags(report)
    report.set_defaults(handler=cmd_report)

    metrics = commands.add_parser(
        "metrics", help="the pipeline's health in Prometheus text format (from ML Metadata)")
    add_home_flag(metrics)
    metrics.add_argument("--data-root", help="also count the pending spans under this folder")
    metrics.add_argument("--textfile", help="write a node-exporter textfile (*.prom) atomically "
                         "instead of printing")
    add_config_flags(metrics)
    metrics.set_defaults(handler=cmd_metrics)

    from ctpipe.pipeline.observe.skew import MIN_EXAMPLES

    skew = commands.add_parser(
        "skew", help="logged requests vs the production model's training data (exit 3: skew)")
    add_home_flag(skew)
    skew.add_argument("--requests", required=True,
                      help="request log directory (ctpipe serve --request-log-dir)")
    skew.add_argument("--min-examples", type=int, default=MIN_EXAMPLES,
                      help=f"fewest logged rows to compare (default {MIN_EXAMPLES})")
    add_config_flags(skew)
    skew.set_defaults(handler=cmd_skew)


def cmd_report(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.observe.report import (
        INDEX_FILE,
        page_name,
        reports_dir,
        stderr_line,
        write_all,
        write_cycle_report,
    )

    config = load_config(args, home=args.home)
    if args.span is not None:
        out = args.out or os.path.join(reports_dir(config), page_name(args.span))
        path = write_cycle_report(config, args.span, out)
        result = {"page": os.path.abspath(path)}
    else:
        out = os.path.abspath(args.out or os.path.join(reports_dir(config), INDEX_FILE))
        index = write_all(config, os.path.dirname(out), rewrite=args.rewrite, say=stderr_line,
                          index_name=os.path.basename(out))
        result = {"index": os.path.abspath(index)}
    print(json.dumps(result) if args.json else next(iter(result.values())))
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.observe.metrics import exposition, registry, write_textfile

    config = load_config(args, home=args.home)
    if not os.path.isdir(config.home):
        raise BadInput(f"no pipeline home at {config.home}")
    if args.textfile:
        write_textfile(config, args.textfile, args.data_root)
        return EXIT_OK
    if args.json:
        samples = [{"name": s.name, "labels": s.labels, "value": s.value}
                   for family in registry(config, args.data_root).collect()
                   for s in family.samples]
        print(json.dumps(samples))
        return EXIT_OK
    sys.stdout.write(exposition(config, args.data_root))
    return EXIT_OK


def cmd_skew(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.observe.skew import format_report, record_result, skew_report

    if args.min_examples < 1:
        raise BadInput(f"--min-examples must be >= 1, got {args.min_examples}")
    config = load_config(args, home=args.home)
    report = skew_report(config, args.requests, args.min_examples)
    record_result(config.home, report)
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    return ExitCode.DATA_BLOCKED if report["drifted"] else EXIT_OK
