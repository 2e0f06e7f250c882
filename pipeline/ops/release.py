"""Operator release actions: `ctpipe promote`, `ctpipe rollback`, `ctpipe control pin|unpin`
(the release state they change is read by pipeline/home/release.py). The fresh-label step
(pipeline/ops/fresh_labels.py) and the guard use the same actions, by "fresh_labels" / "guard".

Each action rewrites the release manifest (components/release.py: two-phase, atomic, under the
manifest's own lock - never the pipeline's, so a rollback at 3 a.m. does not wait for a training
cycle) and is recorded in ML Metadata as a `ctpipe.OperatorAction` with who, when, why and the
labels before and after, so `status` and the history show it.

With a `Cluster` (--mlmd-host) promote and rollback change the manifest where the cluster's
Pusher writes it (--serving-dir, gs:// or mounted) and record the action in Kubeflow's store.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ctpipe.components import release
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.home.kfp_runs import Cluster
from ctpipe.pipeline.home.release import manifest_of

PROMOTE, ROLLBACK, CANARY_REMOVED = "promote", "rollback", "remove_canary"
CONTROL_PIN, CONTROL_UNPIN = "control_pin", "control_unpin"


def change_release(config: PipelineConfig, action: str, reason: str,
                   change, server: Optional[str] = None, user: Optional[str] = None,
                   cluster: Optional[Cluster] = None, **details: Any) -> Dict[str, Any]:
    """Apply `change` to the manifest, record it, and return what a person and JSON need."""
    from ctpipe.pipeline.home import cycles

    if not reason.strip():
        raise BadInput("--reason must say why (it is recorded with the action)")
    if cluster:
        serving_dir = cluster.need("serving_dir", "--serving-dir")
        store = cluster.open()
        manifest = release.manifest_path(serving_dir)
        base = os.path.join(serving_dir, config.model_name)
    else:
        store = Home.of(config).open_store()
        manifest, base = manifest_of(config), Home.of(config).model_dir
    rest = server or config.serving_rest
    waiter = release.rest_waiter(rest) if rest else None
    try:
        result = release.apply(manifest, config.model_name, base, change, waiter)
    except release.ReleaseError as error:
        raise BadInput(str(error))
    before, after = result["before"], result["after"]
    if result.get("note"):
        details = {**details, "manifest_note": result["note"]}
    recorded = cycles.record_action(store, config.pipeline_name, action, None, reason,
                                    before=before.labels, after=after.labels,
                                    by=user or "operator", **details)
    return {"action": action, "reason": reason, "user": recorded.user, "at": recorded.at,
            "before": before.labels, "after": after.labels,
            "stable_version": after.stable, "canary_version": after.canary,
            "control_version": after.control,
            "waited_for_server": rest or None, "note": result.get("note"), **details}


def promote(config: PipelineConfig, version: Optional[int], reason: str,
            server: Optional[str] = None, user: Optional[str] = None,
            cluster: Optional[Cluster] = None, **details: Any) -> Dict[str, Any]:
    return change_release(config, PROMOTE, reason, lambda r: release.promoted(r, version),
                          server, user, cluster, **details)


def rollback(config: PipelineConfig, to: Optional[int], reason: str,
             server: Optional[str] = None, user: Optional[str] = None,
             cluster: Optional[Cluster] = None, **details: Any) -> Dict[str, Any]:
    return change_release(config, ROLLBACK, reason, lambda r: release.rolled_back(r, to),
                          server, user, cluster, **details)


def pin_control(config: PipelineConfig, version: int, reason: str,
                server: Optional[str] = None, user: Optional[str] = None) -> Dict[str, Any]:
    """`control` := version for good: it keeps serving (loaded, labelled), retention keeps it
    and what it needs, and every fresh-span evaluation scores it (lift = stable - control)."""
    return change_release(config, CONTROL_PIN, reason,
                          lambda r: release.control_pinned(r, version), server, user,
                          control=version)


def unpin_control(config: PipelineConfig, reason: str, server: Optional[str] = None,
                  user: Optional[str] = None) -> Dict[str, Any]:
    return change_release(config, CONTROL_UNPIN, reason, release.control_unpinned, server, user)


def remove_canary(config: PipelineConfig, reason: str, server: Optional[str] = None,
                  user: Optional[str] = None, **details: Any) -> Dict[str, Any]:
    return change_release(config, CANARY_REMOVED, reason, release.without_canary, server,
                          user, **details)


def describe(result: Dict[str, Any]) -> str:
    from ctpipe.pipeline.observe.formatting import labels_change

    text = (f"{result['action']}: {labels_change(result)} "
            f"(by {result['user']}: {result['reason']})")
    return f"{result['note']}\n{text}" if result.get("note") else text
