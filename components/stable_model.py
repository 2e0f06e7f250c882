"""The production model: the Model artifact serving as `stable` in the release manifest.

Why not TFX's LatestBlessedModelStrategy: the latest blessed model is the canary on trial, not
what answers requests. Production = stable (DESIGN.md): the Evaluator compares a candidate with
stable, the label check and the fresh-span scores use stable, and the Trainer warm-starts from
it. A chain of canaries, each within `max_auc_drop` of the one before, can no longer drift below
stable unnoticed.

How: the manifest (components/release.py) names stable's version; the Pusher's `PushedModel`
with that `pushed_version` was produced by a Pusher run whose `model` input is the Model we
want (found through ML Metadata events). Among several PushedModels of one version (a home
whose versions were renumbered) the newest wins. No manifest or no stable: nothing resolves
(first cycle: cold start, value thresholds only).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver
from tfx.types import standard_artifacts

MODEL_KEY, PUSHED_KEY = "model", "pushed_model"


def stable_version(manifest: str, model_name: str) -> Optional[int]:
    from ctpipe.components import release

    for entry in release.read(manifest):
        if entry.model_name == model_name:
            return entry.stable
    return None


def pushed_as(pushed: List[types.Artifact], version: int) -> List[types.Artifact]:
    """PushedModels that published `version`, newest first."""
    matches = [a for a in pushed if a.get_int_custom_property("pushed") == 1
               and str(a.get_string_custom_property("pushed_version")) == str(version)]
    return sorted(matches, key=lambda a: a.id, reverse=True)


class StableModelStrategy(resolver.ResolverStrategy):
    """Resolves {"model": [stable's Model]} (empty when nothing is stable yet)."""

    def __init__(self, manifest: str, model_name: str):
        self._manifest = manifest
        self._model_name = model_name

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

        version = stable_version(self._manifest, self._model_name)
        models = {m.id: m for m in input_dict.get(MODEL_KEY, [])}
        result: Dict[str, List[types.Artifact]] = {MODEL_KEY: [], PUSHED_KEY: []}
        if version is None:
            return result
        for pushed in pushed_as(input_dict.get(PUSHED_KEY, []), version):
            producers = [e.execution_id for e in store.get_events_by_artifact_ids([pushed.id])
                         if e.type == mlmd_pb2.Event.OUTPUT]
            for event in store.get_events_by_execution_ids(producers):
                if event.type == mlmd_pb2.Event.INPUT and event.artifact_id in models and any(
                        step.key == MODEL_KEY for step in event.path.steps):
                    model = models[event.artifact_id]
                    model.set_int_custom_property("release_version", version)
                    return {MODEL_KEY: [model], PUSHED_KEY: [pushed]}
        return result


def channels():
    """The resolver's input channels (every Model and PushedModel of this pipeline)."""
    from tfx import v1 as tfx

    return {MODEL_KEY: tfx.dsl.Channel(type=standard_artifacts.Model),
            PUSHED_KEY: tfx.dsl.Channel(type=standard_artifacts.PushedModel)}


def models_by_version(store, versions) -> Dict[int, object]:
    """{version: the LIVE mlmd Model artifact a Pusher published as that version} for the
    given versions, straight from ML Metadata (retention, skew, lineage: outside a pipeline)."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

    wanted = {str(v) for v in versions if v is not None}
    try:
        pushed = store.get_artifacts_by_type("PushedModel")
    except Exception:  # noqa: BLE001 - nothing pushed yet
        return {}
    found: Dict[int, object] = {}
    for artifact in sorted(pushed, key=lambda a: a.id, reverse=True):
        props = artifact.custom_properties
        version = props["pushed_version"].string_value if "pushed_version" in props else ""
        if version not in wanted or int(version) in found or (
                "pushed" in props and props["pushed"].int_value != 1):
            continue
        producers = [e.execution_id for e in store.get_events_by_artifact_ids([artifact.id])
                     if e.type == mlmd_pb2.Event.OUTPUT]
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids(producers)
                  if e.type == mlmd_pb2.Event.INPUT
                  and any(step.key == MODEL_KEY for step in e.path.steps)]
        for model in store.get_artifacts_by_id(inputs):
            if model.state == mlmd_pb2.Artifact.LIVE:
                found[int(version)] = model
    return found
