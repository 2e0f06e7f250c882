"""Subcommands that run cycles: run, watch, demo, schema-diff."""
from __future__ import annotations

import argparse
import json

from ctpipe.pipeline.commands.common import (
    EXIT_INTERNAL,
    EXIT_OK,
    add_config_flags,
    add_home_flag,
    decision_printer,
    load_config,
    progress_printer,
)

DATA_ROOT_HELP = "folder holding span-<N>/ folders"


def register(commands) -> None:
    run = commands.add_parser("run", help="run one cycle on the oldest pending span")
    run.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    add_home_flag(run)
    run.add_argument("--span", type=int, help="process this span now (if it is undecided)")
    run.add_argument("--all", action="store_true",
                     help="process every pending span, oldest first (one JSON line each)")
    run.add_argument("--from-span", type=int,
                     help="on a fresh home, start at this span instead of the newest")
    add_config_flags(run)
    run.set_defaults(handler=cmd_run)

    watch = commands.add_parser("watch", help="poll the data root and run pending spans")
    watch.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    add_home_flag(watch)
    watch.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    watch.add_argument("--max-cycles", type=int, help="stop after this many decisions")
    watch.add_argument("--from-span", type=int)
    watch.add_argument("--metrics-port", type=int,
                       help="serve the pipeline's Prometheus metrics at http://HOST:PORT/metrics")
    watch.add_argument("--metrics-host", default="127.0.0.1",
                       help="address for --metrics-port (0.0.0.0 to be scraped from outside)")
    watch.add_argument("--skew-requests",
                       help="request-log folder (serve --request-log-dir): check serving skew "
                       "between polls when new logs arrive")
    watch.add_argument("--guard-server",
                       help="REST address of the server: run `ctpipe guard` between polls")
    add_config_flags(watch)
    watch.set_defaults(handler=cmd_watch)

    demo = commands.add_parser("demo", help="bootstrap, then feed spans as arrivals (a table)")
    demo.add_argument("--home", help="home directory (default: a new temporary one)")
    demo.add_argument("--data", default=None, help="sample spans (default: data/sample)")
    add_config_flags(demo)
    demo.set_defaults(handler=cmd_demo)

    diff = commands.add_parser("schema-diff",
                               help="how the inferred schema differs from the curated one")
    diff.add_argument("--data-root", required=True, help="infer from the newest span here")
    diff.add_argument("--span", type=int, help="span to infer from (default: newest)")
    add_config_flags(diff)
    diff.set_defaults(handler=cmd_schema_diff)

    sample = commands.add_parser(
        "sample-data", help="cut the taxi sample in the tfx wheel into quarterly spans")
    sample.add_argument("--out", default="data/sample", help="folder for the span-<N>/ folders")
    sample.set_defaults(handler=cmd_sample_data)


def cmd_run(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.home.outcomes import FAILED, NO_NEW_DATA
    from ctpipe.pipeline.run.local_runner import run_all, run_cycle

    config = load_config(args, data_root=args.data_root, home=args.home, span=args.span,
                         from_span=args.from_span)
    emit = decision_printer(args.json)
    progress = progress_printer(to_stderr=True)
    if not args.all:
        decision = run_cycle(config, progress=progress)
        emit(decision)
        return decision.exit_code
    decisions = run_all(config, progress=progress, on_decision=emit)
    if any(d.outcome == FAILED for d in decisions):
        return EXIT_INTERNAL
    if all(d.outcome == NO_NEW_DATA for d in decisions):
        return NO_NEW_DATA.exit_code
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    import sys

    from ctpipe.pipeline.run.watch import GuardCheck, SkewCheck, cycles_done_from_env, watch

    config = load_config(args, data_root=args.data_root, home=args.home,
                         from_span=args.from_span)
    say = progress_printer(to_stderr=True)
    checks = []
    if args.skew_requests:
        checks.append(SkewCheck(config, args.skew_requests, say))
    if args.guard_server:
        checks.append(GuardCheck(config, args.guard_server, say))
    # Restart (re-exec) only a process that was started as `ctpipe watch ...`, never one that
    # called main([...]) in-process (its sys.argv is someone else's command line).
    restart_argv = sys.argv[1:] if "watch" in sys.argv[1:] else None
    return watch(config, args.interval, args.max_cycles, decision_printer(args.json), say,
                 progress=say, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                 between_polls=checks, restart_argv=restart_argv,
                 cycles_done=cycles_done_from_env())


def cmd_demo(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.run.demo import run_demo

    config = load_config(args)
    return run_demo(config, home=args.home, sample_root=args.data, as_json=args.json,
                    progress=progress_printer(to_stderr=args.json))


def cmd_schema_diff(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.observe.schema_review import schema_diff

    config = load_config(args, data_root=args.data_root)
    differences = schema_diff(config, args.span)
    if args.json:
        print(json.dumps(differences))
    else:
        print("\n".join(differences) if differences else "inferred schema matches the contract")
    return EXIT_OK


def cmd_sample_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctpipe.pipeline.run.sample_data import write_spans

    for span, quarter, rows in write_spans(Path(args.out)):
        print(f"span-{span}\t{quarter}\t{rows} rows")
    return EXIT_OK
