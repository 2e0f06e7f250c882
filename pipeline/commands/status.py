"""Subcommands that answer "what happened": status, history, lineage. Each reads a local
home's store or, with --mlmd-host, Kubeflow's."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional

from ctpipe.pipeline.commands.common import (
    EXIT_OK,
    add_config_flags,
    add_store_flags,
    load_config,
    open_store,
)


def register(commands) -> None:
    status = commands.add_parser("status", help="release state and decision history (from MLMD)")
    add_store_flags(status)
    status.add_argument("--data-root", help="also list the pending spans under this folder")
    add_config_flags(status)
    status.set_defaults(handler=cmd_status)

    history = commands.add_parser("history", help="every cycle and operator action, in order")
    lineage_parser = commands.add_parser(
        "lineage", help="what trained a served version, its warm-start chain, its releases")
    lineage_parser.add_argument("version", type=int)
    decay = commands.add_parser(
        "decay", help="how fast models decay: each version's fresh-span AUC on spans 1, 2, 3... "
                      "after its training window")
    for parser in (history, lineage_parser, decay):
        add_store_flags(parser)
        add_config_flags(parser)
    history.set_defaults(handler=cmd_history)
    lineage_parser.set_defaults(handler=cmd_lineage)
    decay.set_defaults(handler=cmd_decay)


def cmd_status(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.home import Home, cycles, outcomes
    from ctpipe.pipeline.home.release import release_state
    from ctpipe.pipeline.observe import formatting

    config = load_config(args, home=args.home)
    store = open_store(args, config)
    extra: Dict[str, Any] = {}
    release = {}
    if args.mlmd_host:
        decisions = outcomes.history(store, config.pipeline_name)
    else:
        decisions = cycles.history(store, config.pipeline_name)
        extra = _local_status(store, config, args.data_root)
        state = release_state(config)
        release = {"stable_version": state.stable, "canary_version": state.canary,
                   "previous_version": state.previous, "control_version": state.control}
    report = {
        "model_name": config.model_name,
        "model_base_path": Home.of(config).model_dir,
        # The newest push: with fresh-label (or manual) promotion it is usually the canary or
        # an unlabelled candidate, not what serves - stable does (README "Release").
        "last_pushed_version": outcomes.last_pushed_version(decisions),
        **release,
        **extra,
        "history": [d.to_dict() for d in decisions],
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(f"model {report['model_name']} at {report['model_base_path']}")
    if release:
        print(f"stable version: {release['stable_version']}   canary: "
              f"{release['canary_version']}   control: {release['control_version']}   "
              f"previous: {release['previous_version']}")
    print(f"last pushed version: {report['last_pushed_version']}")
    if extra:
        print(f"pending spans: {formatting.list_text(extra['pending_spans'])}   quarantined spans: "
              f"{formatting.list_text(extra['quarantined_spans'])}   running: "
              f"{formatting.list_text(extra['running_spans'])}")
    print(formatting.history_table(decisions))
    for action in extra.get("operator_actions", []):
        subject = (f"span {action['span']}" if action["span"] is not None else
                   formatting.labels_change(action.get("details", {})))
        who = (action.get("details") or {}).get("by") or action["user"]
        print(f"operator: {action['action']} {subject} by {who} at "
              f"{formatting.time_text(action['at'])}: {action['reason']}")
    return EXIT_OK


def _local_status(store, config, data_root: Optional[str]) -> Dict[str, Any]:
    from ctpipe.pipeline.home import cycles, ledger_store
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


def _history(args: argparse.Namespace):
    """(config, store, decisions, actions) for a local home or Kubeflow's metadata service."""
    from ctpipe.pipeline.home import cycles, outcomes

    config = load_config(args, home=args.home)
    store = open_store(args, config)
    if args.mlmd_host:
        return config, store, outcomes.history(store, config.pipeline_name), []
    return (config, store, cycles.history(store, config.pipeline_name),
            cycles.operator_actions(store, config.pipeline_name))


def cmd_history(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.home.lineage import ModelIndex, timeline
    from ctpipe.pipeline.observe.formatting import timeline_text

    _, store, decisions, actions = _history(args)
    entries = timeline(decisions, actions, ModelIndex(store))
    print(json.dumps(entries) if args.json else timeline_text(entries))
    return EXIT_OK


def cmd_decay(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.observe.decay import decay_table, decay_text

    _, _, decisions, _ = _history(args)
    table = decay_table(decisions)
    print(json.dumps(table) if args.json else decay_text(table))
    return EXIT_OK


def cmd_lineage(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.home.lineage import lineage
    from ctpipe.pipeline.observe.formatting import lineage_text

    config, store, decisions, actions = _history(args)
    found = lineage(store, config.pipeline_name, args.version, actions, decisions)
    print(json.dumps(found) if args.json else lineage_text(found))
    return EXIT_OK


