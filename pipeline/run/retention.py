"""Retention for pipeline_root: keep disk bounded over thousands of cycles.

The artifacts (examples, statistics, models, training logs, evaluations, anomalies, schemas) of runs
older than the last `keep_cycles` are removed from disk; their ML Metadata records stay, marked
DELETED so no resolver hands them out again. Never removed, whatever their age:
  - the examples and statistics of the accepted spans the next cycles read (training window,
    drift baseline and long reference, label-check reference: the last `window_spans + 1`
    accepted spans, extended like the window to `window_min_rows`) and of quarantined spans
    (a release turns them back into training data);
  - the examples and statistics of every span a retained training window names (a DataGate
    window of the last `keep_cycles` runs links to its spans' ExampleGen files: removing them
    would leave that LIVE artifact pointing at nothing);
  - every live model - the versions the release manifest labels (stable, canary, previous,
    control) - with its warm-start parent and the examples and statistics of its training
    window (skew and lineage of a labelled version need them), plus the newest blessed model
    (the next cycle's fallback when the manifest is absent).
Cycle logs beyond the newest 10 x keep_cycles are removed too, and served version directories
beyond the newest keep_cycles that the release manifest does not name. ML Metadata records are
kept (a few tens of kB per cycle).
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Iterable, List, Set

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.components.layout import LINEAGE_FILE, WINDOW_FILE
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.home.outcomes import pipeline_runs

# Artifact types removed from old runs. Kept: ledgers (Dataset), blessings, pushed-model records.
LARGE_TYPES = ("Examples", "ExampleStatistics", "Model", "ModelRun", "ModelEvaluation",
               "ExampleAnomalies", "Schema")


def newest_blessed_model(store) -> "mlmd_pb2.Artifact | None":
    """The newest Model with a positive blessing (the next canary or stable in waiting: kept
    with the labelled versions, whose models `live_models` lists)."""
    try:
        blessings = store.get_artifacts_by_type("ModelBlessing")
    except Exception:  # noqa: BLE001 - no blessing type before the first evaluation
        return None
    blessed = [b for b in blessings if b.custom_properties["blessed"].int_value == 1
               and "current_model_id" in b.custom_properties]
    for blessing in sorted(blessed, key=lambda b: b.id, reverse=True):
        [model] = store.get_artifacts_by_id(
            [blessing.custom_properties["current_model_id"].int_value])
        if model.state == mlmd_pb2.Artifact.LIVE:
            return model
    return None


def protected_uris(store, config: PipelineConfig,
                   retained_windows: Iterable[str] = ()) -> Set[str]:
    """What retention never removes (module docstring); `retained_windows`: the URIs of the
    training windows (DataGate outputs) that stay, whose spans' files they link to."""
    from ctpipe.components.data_gate import read_json
    from ctpipe.pipeline.home.ledger_store import latest_ledger

    ledger, _ = latest_ledger(store, config.pipeline_name)
    keep: Set[str] = set()
    newest = ledger.accepted[-1]["span"] if ledger.accepted else 0
    needed = ledger.window(newest, config.window_spans + 1, config.window_min_rows)
    for entry in needed + ledger.quarantined:
        keep.update(entry.get(key) for key in ("examples_uri", "statistics_uri"))
    linked: Set[int] = set()  # spans whose files a kept window or live model needs
    for uri in retained_windows:
        linked.update((read_json(os.path.join(uri, WINDOW_FILE)) or {}).get("spans", []))
    for model in live_models(store, config) + [newest_blessed_model(store)]:
        if model is None:
            continue
        lineage = read_json(os.path.join(model.uri, LINEAGE_FILE)) or {}
        keep.update((model.uri, lineage.get("warm_start_uri")))
        linked.update(lineage.get("training_spans", []))
    spans = {entry["span"]: entry for entry in ledger.accepted + ledger.quarantined}
    for span in linked:
        keep.update(spans.get(span, {}).get(key) for key in ("examples_uri", "statistics_uri"))
    return {uri for uri in keep if uri}


def live_models(store, config: PipelineConfig) -> List[mlmd_pb2.Artifact]:
    """The Model artifacts of every version the release manifest labels."""
    from ctpipe.components.stable_model import models_by_version
    from ctpipe.pipeline.home.release import release_state

    labels = release_state(config).labels
    return list(models_by_version(store, set(labels.values())).values())


def _output_artifacts(store, run_ids: Iterable[int]) -> List[mlmd_pb2.Artifact]:
    execution_ids = [e.id for run_id in run_ids for e in store.get_executions_by_context(run_id)]
    events = store.get_events_by_execution_ids(execution_ids)
    artifact_ids = sorted({e.artifact_id for e in events if e.type == mlmd_pb2.Event.OUTPUT})
    return store.get_artifacts_by_id(artifact_ids) if artifact_ids else []


LOGS_PER_KEPT_CYCLE = 10  # cycle logs are small: keep 10x more of them than of artifacts


def prune_logs(config: PipelineConfig) -> List[str]:
    """Keep the newest `LOGS_PER_KEPT_CYCLE * keep_cycles` cycle logs (<home>/logs/span-N.log)."""
    directory = Home.of(config).logs_dir
    if not os.path.isdir(directory):
        return []
    logs = sorted((os.path.join(directory, name) for name in os.listdir(directory)
                   if name.endswith(".log")), key=os.path.getmtime)
    removed = logs[:-(LOGS_PER_KEPT_CYCLE * config.keep_cycles)]
    for path in removed:
        os.remove(path)
    return removed


def prune_served_versions(config: PipelineConfig) -> List[int]:
    """Served version directories beyond the newest `keep_cycles`, unless the release manifest
    names them (stable, canary, previous, or a version being loaded). Without a manifest nothing
    is removed: what serves is then unknown. The manifest lock is held so no label can move to
    a version while it is being deleted."""
    from ctpipe.components import release
    from ctpipe.components.layout import version_dirs

    base = Home.of(config).model_dir
    path = release.manifest_path(os.path.dirname(base))
    if not os.path.exists(path):
        return []
    with release.exclusive(path):
        named = set(release.read_release(path, config.model_name, base).versions)
        directories = version_dirs(base)
        newest = set(sorted(directories)[-config.keep_cycles:])
        removed = [v for v in sorted(directories) if v not in named | newest]
        for version in removed:
            shutil.rmtree(os.path.join(base, directories[version]), ignore_errors=True)
    if removed:
        logging.info("retention: removed served versions %s", removed)
    return removed


def apply_retention(store, config: PipelineConfig) -> List[str]:
    """Remove what the policy allows; returns the removed URIs."""
    prune_logs(config)
    prune_served_versions(config)
    runs = pipeline_runs(store, config.pipeline_name)
    old = runs[:-config.keep_cycles] if len(runs) > config.keep_cycles else []
    if not old:
        return []
    type_names = {}
    for name in LARGE_TYPES:
        try:
            type_names[store.get_artifact_type(name).id] = name
        except Exception:  # noqa: BLE001 - type not registered yet
            continue
    retained = _output_artifacts(store, [run.id for run in runs[-config.keep_cycles:]])
    keep = protected_uris(store, config, [a.uri for a in retained
                                          if a.state != mlmd_pb2.Artifact.DELETED])
    removed, changed = [], []
    root = Home.of(config).pipeline_root
    for artifact in _output_artifacts(store, [run.id for run in old]):
        if artifact.type_id not in type_names or artifact.state == mlmd_pb2.Artifact.DELETED:
            continue
        if artifact.uri in keep or not os.path.abspath(artifact.uri).startswith(root):
            continue
        shutil.rmtree(artifact.uri, ignore_errors=True)
        artifact.state = mlmd_pb2.Artifact.DELETED
        changed.append(artifact)
        removed.append(artifact.uri)
    if changed:
        store.put_artifacts(changed)
        logging.info("retention: removed %d artifacts of %d old runs", len(changed), len(old))
    return removed
