"""`ctpipe history` and `ctpipe lineage`: the answers an operator needs at 3 a.m., from ML Metadata.

history   every cycle (span, outcome, reasons, metrics against the baseline, training spans,
          warm-start parent, seconds) and every operator or guard action (quarantine, release,
          promote, rollback, canary removal) in one timeline, oldest first.
lineage   for one served version: the spans and data artifacts that trained it, its warm-start
          chain back to a cold start, the baseline it was compared with, the decision that
          pushed it, and who promoted or rolled it back, and when.

Both read only ML Metadata and the files artifacts point at, through the generic MLMD API
(events, artifacts by type) - so they work on a local SQLite home and on Kubeflow's metadata
service alike (`--mlmd-host`); local homes add the runner's cycle records and operator actions.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.components.layout import LINEAGE_FILE, WINDOW_FILE
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home.outcomes import _prop

MAX_CHAIN = 1000  # a warm-start chain longer than this is a loop in corrupted metadata


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path) as handle:
            return json.load(handle)
    except Exception:  # noqa: BLE001 - removed by retention, or never written
        return None


class ModelIndex:
    """Which Model artifact became which served version, and what each execution read."""

    def __init__(self, store):
        self.store = store
        self.version_of_model: Dict[int, int] = {}
        self.model_of_version: Dict[int, mlmd_pb2.Artifact] = {}
        self.pusher_of_version: Dict[int, int] = {}
        try:
            pushed = store.get_artifacts_by_type("PushedModel")
        except Exception:  # noqa: BLE001 - nothing pushed yet
            pushed = []
        pushed = [p for p in pushed if _prop(p, "pushed") and _prop(p, "pushed_version")]
        if not pushed:
            return
        producers = {e.artifact_id: e.execution_id
                     for e in store.get_events_by_artifact_ids([p.id for p in pushed])
                     if e.type == mlmd_pb2.Event.OUTPUT}
        for artifact in pushed:
            execution_id = producers.get(artifact.id)
            model = self.input_of(execution_id, "model") if execution_id else None
            if model is None:
                continue
            version = int(_prop(artifact, "pushed_version"))
            self.version_of_model[model.id] = version
            self.model_of_version[version] = model
            self.pusher_of_version[version] = execution_id

    def input_of(self, execution_id: int, key: str) -> Optional[mlmd_pb2.Artifact]:
        for event in self.store.get_events_by_execution_ids([execution_id]):
            if event.type == mlmd_pb2.Event.INPUT and event.path.steps and \
                    event.path.steps[0].key == key:
                [artifact] = self.store.get_artifacts_by_id([event.artifact_id])
                return artifact
        return None

    def producer_of(self, artifact_id: int) -> Optional[int]:
        for event in self.store.get_events_by_artifact_ids([artifact_id]):
            if event.type == mlmd_pb2.Event.OUTPUT:
                return event.execution_id
        return None

    def model_by_uri(self, uri: str) -> Optional[mlmd_pb2.Artifact]:
        uri = uri.rstrip("/")
        for candidate in (uri, uri + "/"):
            found = [a for a in self.store.get_artifacts_by_uri(candidate)
                     if a.type_id == self._model_type_id()]
            if found:
                return found[0]
        return None

    def _model_type_id(self) -> int:
        return self.store.get_artifact_type("Model").id

    def version_of_uri(self, uri: Optional[str]) -> Optional[int]:
        if not uri:
            return None
        model = self.model_by_uri(uri)
        return self.version_of_model.get(model.id) if model is not None else None


def lineage(store, pipeline_name: str, version: int,
            actions: Optional[List[Any]] = None,
            decisions: Optional[List[Any]] = None) -> Dict[str, Any]:
    index = ModelIndex(store)
    model = index.model_of_version.get(version)
    if model is None:
        known = sorted(index.model_of_version)
        raise BadInput(f"no pushed model version {version} in ML Metadata "
                       f"(pushed versions: {', '.join(map(str, known)) or 'none'})")
    trained = lineage_file(model.uri)
    trainer = index.producer_of(model.id)
    examples = index.input_of(trainer, "examples") if trainer else None
    window = _read_json(os.path.join(examples.uri, WINDOW_FILE)) if examples is not None else None
    pusher = index.pusher_of_version[version]
    blessing = index.input_of(pusher, "model_blessing")
    evaluator = index.producer_of(blessing.id) if blessing is not None else None
    baseline = index.input_of(evaluator, "baseline_model") if evaluator else None
    decision = next((d for d in (decisions or []) if d.model_version == version), None)
    return {
        "version": version,
        "model_uri": model.uri,
        "training_spans": trained.get("training_spans", []),
        "training_examples_uri": examples.uri if examples is not None else None,
        "statistics_uris": (window or {}).get("statistics_uris", []),
        "training": trained.get("training", {}),
        "warm_start_chain": warm_start_chain(index, model.uri),
        "baseline": None if baseline is None else {
            "model_uri": baseline.uri, "version": index.version_of_model.get(baseline.id)},
        "pushed_by_cycle": None if decision is None else {
            "span": decision.span, "outcome": decision.outcome.value,
            "reasons": decision.reasons, "metrics": decision.metrics,
            "finished_at": decision.finished_at},
        "release_events": release_events(actions or [], version),
    }


def lineage_file(model_uri: str) -> Dict[str, Any]:
    return _read_json(os.path.join(model_uri, LINEAGE_FILE)) or {}


def _gate_record(index: ModelIndex, model: mlmd_pb2.Artifact) -> Dict[str, Any]:
    """What the gate decided for the cycle that trained `model`, from ML Metadata alone (the
    gate's state artifact: training spans and the warm-start choice), so the chain survives
    retention removing old model files."""
    trainer = index.producer_of(model.id)
    examples = index.input_of(trainer, "examples") if trainer else None
    gate = index.producer_of(examples.id) if examples is not None else None
    if gate is None:
        return {}
    for event in index.store.get_events_by_execution_ids([gate]):
        if event.type == mlmd_pb2.Event.OUTPUT and event.path.steps and \
                event.path.steps[0].key == "state":
            [state] = index.store.get_artifacts_by_id([event.artifact_id])
            checks = json.loads(_prop(state, "checks") or "{}")
            return {"training_spans": json.loads(_prop(state, "training_spans") or "[]"),
                    "warm_start": checks.get("warm_start") or {}}
    return {}


def warm_start_chain(index: ModelIndex, model_uri: str) -> List[Dict[str, Any]]:
    """The model, its warm-start parent, the parent's parent ... down to a cold start."""
    chain, seen, uri = [], set(), model_uri
    while uri and uri not in seen and len(chain) < MAX_CHAIN:
        seen.add(uri)
        model = index.model_by_uri(uri)
        recorded = _gate_record(index, model) if model is not None else {}
        trained = lineage_file(uri)
        warm = recorded.get("warm_start") or trained.get("warm_start") or {}
        parent = warm.get("uri") if warm else trained.get("warm_start_uri")
        known = bool(recorded or trained)
        chain.append({"model_uri": uri, "version": index.version_of_uri(uri),
                      "training_spans": recorded.get("training_spans")
                      or trained.get("training_spans", []),
                      "warm_start": warm.get("reason") if known else
                      "unknown: no record of how this model was trained",
                      "files_removed": not trained})
        uri = parent if known else None
    return chain


def release_events(actions: List[Any], version: int) -> List[Dict[str, Any]]:
    """Operator and guard actions that moved a label to or from `version`."""
    events = []
    for action in actions:
        before = (action.details or {}).get("before") or {}
        after = (action.details or {}).get("after") or {}
        moved = {label for label in set(before) | set(after)
                 if (before.get(label) == version) != (after.get(label) == version)}
        if moved:
            events.append({"action": action.action, "at": action.at, "user": action.user,
                           "by": (action.details or {}).get("by"), "reason": action.reason,
                           "labels": sorted(moved), "before": before, "after": after})
    return events


def timeline(decisions: List[Any], actions: List[Any], index: ModelIndex) -> List[Dict[str, Any]]:
    entries = []
    for decision in decisions:
        warm = (decision.checks or {}).get("warm_start") or {}
        entries.append({"kind": "cycle", "at": decision.finished_at, "span": decision.span,
                        "outcome": decision.outcome.value, "model_version": decision.model_version,
                        "reasons": decision.reasons, "metrics": decision.metrics,
                        "training_spans": decision.training_spans,
                        "warm_start_parent": index.version_of_uri(warm.get("uri")),
                        "warm_start": warm.get("reason"), "seconds": decision.seconds,
                        "attempt": decision.attempt})
    for action in actions:
        entries.append({"kind": "action", "at": action.at, "action": action.action,
                        "span": action.span, "user": action.user, "reason": action.reason,
                        "by": (action.details or {}).get("by"),
                        "before": (action.details or {}).get("before"),
                        "after": (action.details or {}).get("after")})
    return sorted(entries, key=lambda e: e["at"] or 0.0)
