"""The pipeline area's subcommands: run, watch, quarantine, status, demo, schema-diff."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional

from ctpipe.pipeline import formatting
from ctpipe.pipeline.command_line import (
    EXIT_INTERNAL,
    EXIT_OK,
    add_config_flags,
    decision_printer,
    load_config,
    progress_printer,
)


def register(commands) -> None:
    run = commands.add_parser("run", help="run one cycle on the oldest pending span")
    run.add_argument("--data-root", required=True, help="folder holding span-<N>/ folders")
    run.add_argument("--home", required=True, help="pipeline home (outputs, MLMD, serving)")
    run.add_argument("--span", type=int, help="process this span now (if it is undecided)")
    run.add_argument("--all", action="store_true",
                     help="process every pending span, oldest first (one JSON line each)")
    run.add_argument("--from-span", type=int,
                     help="on a fresh home, start at this span instead of the newest")
    add_config_flags(run)

    watch = commands.add_parser("watch", help="poll the data root and run pending spans")
    watch.add_argument("--data-root", required=True)
    watch.add_argument("--home", required=True)
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

    quarantine = commands.add_parser("quarantine", help="list, add or release quarantined spans")
    q_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_commands.add_parser("list", help="quarantined spans and why")
    q_list.add_argument("--home", required=True)
    add_config_flags(q_list)
    for name, text in (("add", "bad data found after the fact: leave all future windows"),
                       ("release", "accept a quarantined span (e.g. a lasting change)")):
        q_action = q_commands.add_parser(name, help=text)
        q_action.add_argument("span", type=int)
        q_action.add_argument("--home", required=True)
        q_action.add_argument("--reason", required=True, help="recorded with the action")
        add_config_flags(q_action)

    status = commands.add_parser("status", help="served model and decision history (from MLMD)")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--home", help="local pipeline home (SQLite ML Metadata)")
    where.add_argument("--mlmd-host",
                       help="ML Metadata gRPC host (Kubeflow's metadata-grpc-service)")
    status.add_argument("--mlmd-port", type=int, default=8080)
    status.add_argument("--data-root", help="also list the pending spans under this folder")
    add_config_flags(status)

    demo = commands.add_parser("demo", help="bootstrap, then feed spans as arrivals (a table)")
    demo.add_argument("--home", help="home directory (default: a new temporary one)")
    demo.add_argument("--data", default=None, help="sample spans (default: data/sample)")
    add_config_flags(demo)

    diff = commands.add_parser("schema-diff",
                               help="how the inferred schema differs from the curated one")
    diff.add_argument("--data-root", required=True, help="infer from the newest span here")
    diff.add_argument("--span", type=int, help="span to infer from (default: newest)")
    add_config_flags(diff)
    for name, handler in (("run", cmd_run), ("watch", cmd_watch), ("quarantine", cmd_quarantine),
                          ("status", cmd_status), ("demo", cmd_demo),
                          ("schema-diff", cmd_schema_diff)):
        commands.choices[name].set_defaults(handler=handler)


def cmd_run(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.local_runner import run_all, run_cycle
    from ctpipe.pipeline.outcomes import FAILED, NO_NEW_DATA

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
    from ctpipe.pipeline.watch import watch

    config = load_config(args, data_root=args.data_root, home=args.home,
                         from_span=args.from_span)
    say = progress_printer(to_stderr=True)
    from ctpipe.pipeline.watch import GuardCheck, SkewCheck

    checks = []
    if args.skew_requests:
        checks.append(SkewCheck(config, args.skew_requests, say))
    if args.guard_server:
        checks.append(GuardCheck(config, args.guard_server, say))
    return watch(config, args.interval, args.max_cycles, decision_printer(args.json), say,
                 progress=say, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                 between_polls=checks)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from ctpipe.pipeline import operator

    config = load_config(args, home=args.home)
    say = progress_printer(to_stderr=True)
    if args.quarantine_command == "list":
        entries = operator.quarantine_list(config)
        if args.json:
            print(json.dumps(entries))
            return EXIT_OK
        if not entries:
            print("no quarantined spans")
        for entry in entries:
            print(f"span {entry['span']} (by {entry['by']}): "
                  f"{entry['reasons'][0] if entry['reasons'] else ''}")
            for reason in entry["reasons"][1:]:
                print(f"  {reason}")
        return EXIT_OK
    if args.quarantine_command == "add":
        result = operator.quarantine_add(config, args.span, args.reason, say)
        text = (f"span {args.span} quarantined: it leaves all future training windows"
                + (f"; {len(result['no_longer_warm_start_sources'])} model(s) trained on it "
                   "are no longer warm-start sources"
                   if result["no_longer_warm_start_sources"] else ""))
    else:
        result = operator.quarantine_release(config, args.span, args.reason, say)
        text = (f"span {args.span} released: "
                + ("it is pending again and the next cycle processes it" if result["reopened"]
                   else "eligible for training windows"
                   + (" and now the drift baseline" if result["drift_baseline"] else "")))
    print(json.dumps(result) if args.json else f"{text} (reason: {args.reason})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from ctpipe.pipeline import cycles, outcomes
    from ctpipe.pipeline.spans import BadInput

    config = load_config(args, home=args.home)
    extra: Dict[str, Any] = {}
    if args.mlmd_host:
        decisions = _history_over_grpc(config, args.mlmd_host, args.mlmd_port)
    else:
        if not os.path.exists(config.metadata_path):
            raise BadInput(f"no pipeline home at {args.home} "
                           f"(no {os.path.basename(config.metadata_path)})")
        store = outcomes.open_store(outcomes.sqlite_connection(config.metadata_path))
        decisions = cycles.history(store, config.pipeline_name)
        extra = _local_status(store, config, args.data_root)
    release = {}
    if not args.mlmd_host:
        from ctpipe.pipeline.release_ops import release_state

        state = release_state(config)
        release = {"stable_version": state.stable, "canary_version": state.canary,
                   "previous_version": state.previous}
    report = {
        "model_name": config.model_name,
        "model_base_path": os.path.abspath(config.serving_model_dir),
        "serving_version": outcomes.serving_version(decisions),
        **release,
        **extra,
        "history": [d.to_dict() for d in decisions],
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(f"model {report['model_name']} at {report['model_base_path']}")
    print(f"serving version: {report['serving_version']}")
    if release:
        print(f"release: stable {release['stable_version']}   canary "
              f"{release['canary_version']}   previous {release['previous_version']}")
    if extra:
        print(f"pending spans: {formatting.list_text(extra['pending_spans'])}   quarantined spans: "
              f"{formatting.list_text(extra['quarantined_spans'])}   running: "
              f"{formatting.list_text(extra['running_spans'])}")
    print(formatting.history_table(decisions))
    for action in extra.get("operator_actions", []):
        subject = (f"span {action['span']}" if action["span"] is not None else
                   formatting.labels_change(action.get("details", {})))
        print(f"operator: {action['action']} {subject} by {action['user']} at "
              f"{formatting.time_text(action['at'])}: {action['reason']}")
    return EXIT_OK


def _local_status(store, config, data_root: Optional[str]) -> Dict[str, Any]:
    from ctpipe.pipeline import cycles, ledger_store
    from ctpipe.pipeline.spans import discover_spans

    ledger, _ = ledger_store.latest_ledger(store, config.pipeline_name)
    records = cycles.cycle_records(store, config.pipeline_name)
    actions = cycles.operator_actions(store, config.pipeline_name)
    available: List[int] = []
    if data_root:
        available = sorted(discover_spans(data_root))
    plan = cycles.plan_spans(available, records, actions)
    return {"pending_spans": plan.pending if available else None,
            "quarantined_spans": ledger.quarantined_spans(),
            "accepted_spans": ledger.accepted_spans(),
            "running_spans": [r.span for r in records if r.running],
            "attempts": {str(k): v for k, v in plan.attempts.items() if k not in plan.decided},
            "operator_actions": [a.to_dict() for a in actions]}


def _history_over_grpc(config, host: str, port: int):
    import ml_metadata as mlmd

    from ctpipe.pipeline import outcomes
    from ctpipe.pipeline.spans import BadInput

    try:
        store = outcomes.open_store(outcomes.grpc_connection(host, port))
        return outcomes.history(store, config.pipeline_name)
    except (mlmd.errors.UnavailableError, mlmd.errors.DeadlineExceededError) as error:
        raise BadInput(f"ML Metadata at {host}:{port} is unreachable: "
                       f"{str(error).splitlines()[0][:200]}")


def cmd_demo(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.demo import run_demo

    config = load_config(args)
    return run_demo(config, home=args.home, sample_root=args.data, as_json=args.json,
                    progress=progress_printer(to_stderr=args.json))


def cmd_schema_diff(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.schema_review import schema_diff

    config = load_config(args, data_root=args.data_root)
    differences = schema_diff(config, args.span)
    if args.json:
        print(json.dumps(differences))
    else:
        print("\n".join(differences) if differences else "inferred schema matches the contract")
    return EXIT_OK
