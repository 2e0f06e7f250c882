"""Subcommands an operator uses to change what trains or serves: quarantine, promote,
rollback, control pin/unpin, guard. Each action is recorded in ML Metadata with its reason."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict

from ctpipe.pipeline.commands.common import (
    EXIT_OK,
    add_config_flags,
    add_home_flag,
    add_store_flags,
    load_config,
    progress_printer,
)
from ctpipe.pipeline.errors import BadInput


def register(commands) -> None:
    quarantine = commands.add_parser("quarantine", help="list, add or release quarantined spans")
    q_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_commands.add_parser("list", help="quarantined spans and why")
    add_store_flags(q_list)
    add_config_flags(q_list)
    for name, text in (("add", "bad data found after the fact: leave all future windows"),
                       ("release", "accept a quarantined span (e.g. a lasting change)")):
        q_action = q_commands.add_parser(name, help=text)
        q_action.add_argument("span", type=int)
        add_store_flags(q_action)
        q_action.add_argument("--pipeline-root", help="with --mlmd-host: the cluster's "
                              "pipeline root (gs:// or a mounted path); the changed ledger is "
                              "written under it for the next run to resolve")
        q_action.add_argument("--reason", required=True, help="recorded with the action")
        add_config_flags(q_action)
    quarantine.set_defaults(handler=cmd_quarantine)

    promote_parser = commands.add_parser("promote", help="stable := canary (or --version)")
    promote_parser.add_argument("--version", type=int, help="promote this version instead")
    rollback_parser = commands.add_parser(
        "rollback", help="stable := the previous stable (or --to); takes effect at once")
    rollback_parser.add_argument("--to", type=int, help="roll back to this version instead")
    for parser in (promote_parser, rollback_parser):
        add_store_flags(parser)
        parser.add_argument("--serving-dir", help="with --mlmd-host: the folder the cluster's "
                            "Pusher writes (gs:// or a mounted path): its manifest and models")
        parser.add_argument("--reason", default="", help="recorded with the action")
        parser.add_argument("--server", help="REST address of a running server: wait until a "
                            "version it must load is AVAILABLE before moving a label")
        add_config_flags(parser)
    promote_parser.set_defaults(handler=cmd_promote)
    rollback_parser.set_defaults(handler=cmd_rollback)

    control = commands.add_parser(
        "control", help="pin or unpin a control version (label `control`): kept serving and "
        "scored on every fresh span for good, so lift = stable - control shows")
    c_commands = control.add_subparsers(dest="control_command", required=True)
    pin = c_commands.add_parser("pin", help="control := VERSION")
    pin.add_argument("version", type=int)
    unpin = c_commands.add_parser("unpin", help="remove the control label")
    for parser in (pin, unpin):
        add_home_flag(parser)
        parser.add_argument("--reason", default="", help="recorded with the action")
        parser.add_argument("--server", help="REST address of a running server: wait until "
                            "the version is AVAILABLE before labelling it")
        add_config_flags(parser)
    control.set_defaults(handler=cmd_control)

    from ctpipe.pipeline.ops.guard import Bounds

    guard = commands.add_parser("guard", help="watch the live canary; remove it or roll back "
                                "stable when it breaches a bound (auto-promote if configured)")
    add_home_flag(guard)
    guard.add_argument("--server", required=True, help="REST address, e.g. http://host:8501")
    guard.add_argument("--window", type=float, default=60.0, help="seconds per decision")
    guard.add_argument("--max-error-rate", type=float, default=Bounds.max_error_rate)
    guard.add_argument("--max-p99-ms", type=float, default=Bounds.max_p99_seconds * 1000)
    guard.add_argument("--max-disagreement", type=float, default=Bounds.max_disagreement)
    guard.add_argument("--min-requests", type=int, default=Bounds.min_requests)
    guard.add_argument("--windows", type=int, help="stop after this many windows")
    add_config_flags(guard)
    guard.set_defaults(handler=cmd_guard)


def _cluster(args: argparse.Namespace):
    """The cluster the flags name (--mlmd-host), or None for a local home."""
    if not getattr(args, "mlmd_host", None):
        for flag in ("pipeline_root", "serving_dir"):
            if getattr(args, flag, None):
                raise BadInput(f"--{flag.replace('_', '-')} is for a cluster (--mlmd-host); "
                               "a local home has its own")
        return None
    from ctpipe.pipeline.home.kfp_runs import Cluster

    return Cluster(args.mlmd_host, args.mlmd_port, getattr(args, "pipeline_root", None),
                   getattr(args, "serving_dir", None))


def cmd_quarantine(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.ops import quarantine

    config = load_config(args, home=args.home)
    say = progress_printer(to_stderr=True)
    cluster = _cluster(args)
    if args.quarantine_command == "list":
        entries = quarantine.quarantine_list(config, cluster)
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
        result = quarantine.quarantine_add(config, args.span, args.reason, say, cluster)
        text = (f"span {args.span} quarantined: it leaves all future training windows"
                + (f"; {len(result['no_longer_warm_start_sources'])} model(s) trained on it "
                   "are no longer warm-start sources"
                   if result["no_longer_warm_start_sources"] else ""))
    else:
        result = quarantine.quarantine_release(config, args.span, args.reason, say, cluster)
        text = (f"span {args.span} released: "
                + ("it is pending again and the next cycle processes it" if result["reopened"]
                   else "eligible for training windows"
                   + (" and now the drift baseline" if result["drift_baseline"] else "")))
    print(json.dumps(result) if args.json else f"{text} (reason: {args.reason})")
    return EXIT_OK


def _finish(args: argparse.Namespace, result: Dict[str, Any]) -> int:
    from ctpipe.pipeline.ops.release import describe

    print(json.dumps(result) if args.json else describe(result))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.ops.release import promote

    config = load_config(args, home=args.home)
    reason = args.reason or "promoted by operator"
    return _finish(args, promote(config, args.version, reason, args.server,
                                 cluster=_cluster(args)))


def cmd_rollback(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.ops.release import rollback

    config = load_config(args, home=args.home)
    reason = args.reason or "rolled back by operator"
    return _finish(args, rollback(config, args.to, reason, args.server,
                                  cluster=_cluster(args)))


def cmd_control(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.ops.release import pin_control, unpin_control

    config = load_config(args, home=args.home)
    if args.control_command == "pin":
        reason = args.reason or f"control group: version {args.version} pinned by operator"
        return _finish(args, pin_control(config, args.version, reason, args.server))
    reason = args.reason or "control unpinned by operator"
    return _finish(args, unpin_control(config, reason, args.server))


def cmd_guard(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.ops.guard import Bounds, describe, evaluate, scrape

    config = load_config(args, home=args.home)
    if args.window <= 0:
        raise BadInput(f"--window must be positive, got {args.window}")
    bounds = Bounds(args.max_error_rate, args.max_p99_ms / 1000.0, args.max_disagreement,
                    args.min_requests)
    done = 0
    before = scrape(args.server)
    try:
        while args.windows is None or done < args.windows:
            time.sleep(args.window)
            after = scrape(args.server)
            report = evaluate(config, before, after, bounds, args.server, args.window)
            print(json.dumps(report) if args.json else describe(report), flush=True)
            before, done = after, done + 1
    except KeyboardInterrupt:
        print("guard: stopped", file=sys.stderr)
    return EXIT_OK
