"""Operator overrides of the ledger: quarantine a span found bad after the fact, release one
(a lasting change accepted, or a false alarm), list what is quarantined and why.

Each action is an ML Metadata execution (who, when, why: pipeline/home/cycles.py) whose output is
the changed ledger, published so the next cycle's gate starts from it
(pipeline/home/ledger_store.py).
Actions wait for a running cycle to finish (the home's write lock), so they never interleave
with a gate.

With a `Cluster` (--mlmd-host) the same actions act on Kubeflow's store, scoped to this
pipeline: the ledger is the newest DataGate `state` of its runs, a changed one is published
under the cluster's pipeline root as the next run's ledger step resolves it
(pipeline/home/kfp_runs.py), and the action is recorded in that store. There is no home lock
on a cluster: act between runs (a run already past its ledger step publishes its own ledger).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ctpipe.components.ledger import Ledger
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home, cycles, kfp_runs, ledger_store
from ctpipe.pipeline.home.outcomes import DATA_BLOCKED, Decision

LOCK_WAIT_SECONDS = 1800.0


def _store(config: PipelineConfig, cluster: Optional[kfp_runs.Cluster] = None):
    return cluster.open() if cluster else Home.of(config).open_store()


def _latest_ledger(store, config: PipelineConfig, cluster: Optional[kfp_runs.Cluster]):
    if cluster:
        return kfp_runs.latest_ledger(store, config.pipeline_name)
    return ledger_store.latest_ledger(store, config.pipeline_name)


def _publish(store, config: PipelineConfig, cluster: Optional[kfp_runs.Cluster],
             ledger: Ledger, action_id: int) -> int:
    if cluster:
        return kfp_runs.publish_ledger(store, config.pipeline_name,
                                       cluster.need("pipeline_root", "--pipeline-root"),
                                       ledger, action_id)
    return ledger_store.publish_ledger(store, config.pipeline_name,
                                       Home.of(config).pipeline_root, ledger, action_id)


def quarantine_list(config: PipelineConfig,
                    cluster: Optional[kfp_runs.Cluster] = None) -> List[Dict[str, Any]]:
    config = config.with_absolute_paths()
    store = _store(config, cluster)
    ledger, _ = _latest_ledger(store, config, cluster)
    actions = cycles.operator_actions(store, config.pipeline_name)
    listed = []
    for entry in ledger.quarantined:
        last = [a for a in actions if a.span == entry["span"] and a.action == "quarantine"]
        listed.append({"span": entry["span"], "by": entry.get("by", "gate"),
                       "reasons": entry.get("reasons", []),
                       "at": last[-1].at if last else None,
                       "user": last[-1].user if last else None,
                       "releasable": "examples_uri" in entry or entry.get("by") == "attempts"})
    return listed


def _models_trained_on(store, span: int) -> List[str]:
    """Every live Model artifact whose lineage (written by the trainer) names `span`."""
    from ctpipe.components.data_gate import model_training_spans

    try:
        models = store.get_artifacts_by_type("Model")
    except Exception:  # noqa: BLE001 - no model yet
        return []
    return [model.uri for model in models if span in model_training_spans(model.uri)]


@contextlib.contextmanager
def _ledger_change(config: PipelineConfig, reason: str,
                   progress: Optional[Callable[[str], None]],
                   cluster: Optional[kfp_runs.Cluster] = None
                   ) -> Iterator[Tuple[Any, Ledger]]:
    """(store, latest ledger) while holding the home's write lock, for one recorded change."""
    if not reason.strip():
        raise BadInput("--reason must say why (it is recorded with the action)")
    if cluster:
        cluster.need("pipeline_root", "--pipeline-root")  # before anything is recorded
        store = _store(config, cluster)
        yield store, _latest_ledger(store, config, cluster)[0]
        return
    with Home.of(config).write_lock(LOCK_WAIT_SECONDS, progress):
        store = _store(config)
        ledger, _ = ledger_store.latest_ledger(store, config.pipeline_name)
        yield store, ledger


def quarantine_add(config: PipelineConfig, span: int, reason: str,
                   progress: Optional[Callable[[str], None]] = None,
                   cluster: Optional[kfp_runs.Cluster] = None) -> Dict[str, Any]:
    config = config.with_absolute_paths()
    with _ledger_change(config, reason, progress, cluster) as (store, ledger):
        if span in ledger.quarantined_spans():
            raise BadInput(f"span {span} is already quarantined")
        was_accepted = span in ledger.accepted_spans()
        plan = cycles.plan_spans([], cycles.cycle_records(store, config.pipeline_name),
                                 cycles.operator_actions(store, config.pipeline_name))
        action = cycles.record_action(store, config.pipeline_name, "quarantine", span, reason)
        _publish(store, config, cluster,
                 ledger.quarantine(span, [f"quarantined by operator: {reason}"], by="operator"),
                 action.id)
        # On a cluster the next run's span selection reads the ledger; no local cycle record.
        decided = bool(cluster) or span in plan.decided
        if not decided:
            cycles.record_decision(store, config.pipeline_name, Decision(
                DATA_BLOCKED, span=span, model_version=None,
                reasons=[f"span {span} quarantined by operator before it was processed: "
                         f"{reason}"], metrics={}, training_spans=[], finished_at=time.time()))
    return {"action": "quarantine", "span": span, "reason": reason, "user": action.user,
            "at": action.at, "was_accepted": was_accepted,
            "no_longer_warm_start_sources": [] if cluster else _models_trained_on(store, span),
            "decision_recorded": not decided}


def quarantine_release(config: PipelineConfig, span: int, reason: str,
                       progress: Optional[Callable[[str], None]] = None,
                       cluster: Optional[kfp_runs.Cluster] = None) -> Dict[str, Any]:
    config = config.with_absolute_paths()
    with _ledger_change(config, reason, progress, cluster) as (store, ledger):
        entry = ledger.entry(span)
        if span not in ledger.quarantined_spans():
            raise BadInput(f"span {span} is not quarantined "
                           f"(quarantined: {ledger.quarantined_spans() or 'none'})")
        released = ledger.release(span, reason)
        reopened = "examples_uri" not in entry
        action = cycles.record_action(store, config.pipeline_name, "release", span, reason,
                                      reopened=reopened)
        _publish(store, config, cluster, released, action.id)
    return {"action": "release", "span": span, "reason": reason, "user": action.user,
            "at": action.at, "reopened": reopened,
            "drift_baseline": released.drift_anchor == span,
            "accepted_spans": released.accepted_spans()}
