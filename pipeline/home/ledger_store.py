"""Read the latest acceptance ledger from ML Metadata, and publish a changed one from outside
the pipeline (operator actions, giving up on a span).

Why publish an artifact rather than keep a side file: the pipeline's PreviousGateState resolver
takes the newest LIVE `Dataset` artifact of this pipeline (LatestArtifactStrategy, by id). An
operator's change published the same way is exactly what the next cycle's gate starts from, on
any runner, and ML Metadata keeps every version of the ledger with the action that made it.
Callers hold the home's write lock, so no cycle publishes a ledger in between.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.components.ledger import LEDGER_FILE, Ledger, read_ledger

LEDGER_TYPE = "Dataset"  # components.data_gate.GateState
PIPELINE_CONTEXT_TYPE = "pipeline"


def _pipeline_context(store: mlmd.MetadataStore, pipeline: str,
                      create: bool = False) -> Optional[mlmd_pb2.Context]:
    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline)
    if context is None and create:
        try:
            type_id = store.get_context_type(PIPELINE_CONTEXT_TYPE).id
        except mlmd.errors.NotFoundError:
            type_id = store.put_context_type(mlmd_pb2.ContextType(name=PIPELINE_CONTEXT_TYPE))
        [context_id] = store.put_contexts([mlmd_pb2.Context(type_id=type_id, name=pipeline)])
        [context] = store.get_contexts_by_id([context_id])
    return context


def latest_ledger_artifact(store: mlmd.MetadataStore,
                           pipeline: str) -> Optional[mlmd_pb2.Artifact]:
    context = _pipeline_context(store, pipeline)
    if context is None:
        return None
    try:
        type_id = store.get_artifact_type(LEDGER_TYPE).id
    except mlmd.errors.NotFoundError:
        return None
    ledgers = [a for a in store.get_artifacts_by_context(context.id)
               if a.type_id == type_id and a.state == mlmd_pb2.Artifact.LIVE]
    return max(ledgers, key=lambda a: a.id) if ledgers else None


def latest_ledger(store: mlmd.MetadataStore, pipeline: str) -> Tuple[Ledger, Optional[int]]:
    """(ledger, its artifact id); an empty ledger before the first gate ran."""
    artifact = latest_ledger_artifact(store, pipeline)
    if artifact is None:
        return Ledger(), None
    return read_ledger(artifact.uri), artifact.id


def publish_ledger(store: mlmd.MetadataStore, pipeline: str, pipeline_root: str,
                   ledger: Ledger, action_id: int) -> int:
    """Write `ledger` as a new LIVE ledger artifact, output of the operator action `action_id`.
    The file is complete before ML Metadata names it (safe on object storage too)."""
    import tensorflow as tf

    uri = os.path.join(pipeline_root, "OperatorActions", "state", str(action_id))
    tf.io.gfile.makedirs(uri)
    with tf.io.gfile.GFile(os.path.join(uri, LEDGER_FILE), "w") as handle:
        handle.write(ledger.to_json())
    try:
        type_id = store.get_artifact_type(LEDGER_TYPE).id
    except mlmd.errors.NotFoundError:
        type_id = store.put_artifact_type(mlmd_pb2.ArtifactType(name=LEDGER_TYPE))
    artifact = mlmd_pb2.Artifact(type_id=type_id, uri=uri, state=mlmd_pb2.Artifact.LIVE)
    artifact.custom_properties["operator_action"].int_value = action_id
    [execution] = store.get_executions_by_id([action_id])
    event = mlmd_pb2.Event(type=mlmd_pb2.Event.OUTPUT)
    event.path.steps.add().key = "state"
    context = _pipeline_context(store, pipeline, create=True)
    _, [artifact_id], _ = store.put_execution(execution, [(artifact, event)], [context])
    return artifact_id
