"""Operator release actions: `ctpipe promote` and `ctpipe rollback`, and the release state that
`status` shows.

Each action rewrites the release manifest (components/release.py: two-phase, atomic, under the
manifest's own lock - never the pipeline's, so a rollback at 3 a.m. does not wait for a training
cycle) and is recorded in ML Metadata as a `ctpipe.OperatorAction` with who, when, why and the
labels before and after, so `status` and the history show it.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, Optional

from ctpipe.components import release
from ctpipe.pipeline.command_line import EXIT_OK, add_config_flags, load_config
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput

PROMOTE, ROLLBACK, CANARY_REMOVED = "promote", "rollback", "remove_canary"


def manifest_of(config: PipelineConfig) -> str:
    base = os.path.abspath(config.serving_model_dir)
    return release.manifest_path(os.path.dirname(base))


def release_state(config: PipelineConfig) -> release.Release:
    base = os.path.abspath(config.serving_model_dir)
    return release.read_release(manifest_of(config), config.model_name, base)


def change_release(config: PipelineConfig, action: str, reason: str,
                   change, server: Optional[str] = None, user: Optional[str] = None,
                   **details: Any) -> Dict[str, Any]:
    """Apply `change` to the manifest, record it, and return what a person and JSON need."""
    from ctpipe.pipeline import cycles
    from ctpipe.pipeline.outcomes import open_store, sqlite_connection

    if not reason.strip():
        raise BadInput("--reason must say why (it is recorded with the action)")
    if not os.path.exists(config.metadata_path):
        raise BadInput(f"no pipeline home at {config.home} (no metadata.sqlite)")
    base = os.path.abspath(config.serving_model_dir)
    rest = server or config.serving_rest
    waiter = release.rest_waiter(rest) if rest else None
    try:
        result = release.apply(manifest_of(config), config.model_name, base, change, waiter)
    except release.ReleaseError as error:
        raise BadInput(str(error))
    before, after = result["before"], result["after"]
    store = open_store(sqlite_connection(config.metadata_path))
    recorded = cycles.record_action(store, config.pipeline_name, action, None, reason,
                                    before=before.labels, after=after.labels,
                                    by=user or "operator", **details)
    return {"action": action, "reason": reason, "user": recorded.user, "at": recorded.at,
            "before": before.labels, "after": after.labels,
            "stable_version": after.stable, "canary_version": after.canary,
            "waited_for_server": rest or None, **details}


def promote(config: PipelineConfig, version: Optional[int], reason: str,
            server: Optional[str] = None, user: Optional[str] = None) -> Dict[str, Any]:
    return change_release(config, PROMOTE, reason, lambda r: release.promoted(r, version),
                          server, user)


def rollback(config: PipelineConfig, to: Optional[int], reason: str,
             server: Optional[str] = None, user: Optional[str] = None) -> Dict[str, Any]:
    return change_release(config, ROLLBACK, reason, lambda r: release.rolled_back(r, to),
                          server, user)


def remove_canary(config: PipelineConfig, reason: str, server: Optional[str] = None,
                  user: Optional[str] = None, **details: Any) -> Dict[str, Any]:
    return change_release(config, CANARY_REMOVED, reason, release.without_canary, server,
                          user, **details)


def describe(result: Dict[str, Any]) -> str:
    from ctpipe.pipeline.formatting import labels_change

    return (f"{result['action']}: {labels_change(result)} "
            f"(by {result['user']}: {result['reason']})")


# -- CLI ---------------------------------------------------------------------------------------


def register(commands) -> None:
    promote_parser = commands.add_parser("promote", help="stable := canary (or --version)")
    promote_parser.add_argument("--version", type=int, help="promote this version instead")
    rollback_parser = commands.add_parser(
        "rollback", help="stable := the previous stable (or --to); takes effect at once")
    rollback_parser.add_argument("--to", type=int, help="roll back to this version instead")
    for parser in (promote_parser, rollback_parser):
        parser.add_argument("--home", required=True)
        parser.add_argument("--reason", default="", help="recorded with the action")
        parser.add_argument("--server", help="REST address of a running server: wait until a "
                            "version it must load is AVAILABLE before moving a label")
        add_config_flags(parser)
    promote_parser.set_defaults(handler=cmd_promote)
    rollback_parser.set_defaults(handler=cmd_rollback)


def _finish(args: argparse.Namespace, result: Dict[str, Any]) -> int:
    print(json.dumps(result) if args.json else describe(result))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    config = load_config(args, home=args.home)
    reason = args.reason or "promoted by operator"
    return _finish(args, promote(config, args.version, reason, args.server))


def cmd_rollback(args: argparse.Namespace) -> int:
    config = load_config(args, home=args.home)
    reason = args.reason or "rolled back by operator"
    return _finish(args, rollback(config, args.to, reason, args.server))
