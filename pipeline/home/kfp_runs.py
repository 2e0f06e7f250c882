"""This pipeline's records in Kubeflow's ML Metadata (the v2 layout: a `system.Pipeline`
context, one `system.PipelineRun` child per run, executions named by `task_name`).

Shared by the cluster steps (kubeflow/steps.py resolves the ledger with `task_outputs`) and the
operator commands run against a cluster's store (pipeline/ops): the ledger an operator publishes
is a new `state` output of a COMPLETE `DataGate` execution in a run context of its own, so the
next run's ledger step (newest LIVE DataGate `state`, by artifact id) resolves exactly it.
Operator run contexts carry `outcomes.OPERATOR_RUN`, so the history never counts them as cycles.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Optional, Tuple

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.components.ledger import LEDGER_FILE, Ledger, read_ledger
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import outcomes
from ctpipe.pipeline.home.store import open_grpc

KFP_PIPELINE, KFP_RUN = "system.Pipeline", "system.PipelineRun"
KFP_CONTAINER_EXECUTION = "system.ContainerExecution"
LEDGER_TASK, LEDGER_KEY, LEDGER_TYPE = "DataGate", "state", "tfx.Dataset"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where an operator command acts on a cluster: KFP's metadata-grpc-service, and the
    folders the cluster writes (gs:// or mounted): the pipeline root (a changed ledger goes
    under it) and the Pusher's serving folder (the release manifest and model base paths)."""
    host: str
    port: int = 8080
    pipeline_root: Optional[str] = None
    serving_dir: Optional[str] = None

    def open(self):
        return open_grpc(self.host, self.port)

    def need(self, field: str, flag: str) -> str:
        value = getattr(self, field)
        if not value:
            raise BadInput(f"{flag} is required with --mlmd-host (the cluster's folder, "
                           "gs:// or a mounted path)")
        return value


def task_outputs(store, pipeline: str, task: str, key: str
                 ) -> List[Tuple[mlmd_pb2.Execution, mlmd_pb2.Artifact]]:
    """(execution, artifact) for every LIVE output `key` of `task` in this pipeline's runs,
    oldest first. Only completed executions count."""
    found = []
    for run in outcomes.pipeline_runs(store, pipeline):
        executions = [e for e in store.get_executions_by_context(run.id)
                      if e.custom_properties[outcomes.KFP_TASK_NAME].string_value == task
                      and e.last_known_state == mlmd_pb2.Execution.COMPLETE]
        if not executions:
            continue
        by_id = {e.id: e for e in executions}
        events = [e for e in store.get_events_by_execution_ids(list(by_id))
                  if e.type == mlmd_pb2.Event.OUTPUT and e.path.steps
                  and e.path.steps[0].key == key]
        artifacts = {a.id: a for a in store.get_artifacts_by_id(
            [e.artifact_id for e in events])} if events else {}
        for event in events:
            artifact = artifacts[event.artifact_id]
            if artifact.state == mlmd_pb2.Artifact.LIVE:
                found.append((by_id[event.execution_id], artifact))
    return sorted(found, key=lambda pair: pair[1].id)


def latest_ledger_artifact(store, pipeline: str) -> Optional[mlmd_pb2.Artifact]:
    """What the next run's ledger step resolves (kubeflow/steps.py resolve_ledger)."""
    states = task_outputs(store, pipeline, LEDGER_TASK, LEDGER_KEY)
    return states[-1][1] if states else None


def latest_ledger(store, pipeline: str) -> Tuple[Ledger, Optional[int]]:
    artifact = latest_ledger_artifact(store, pipeline)
    if artifact is None:
        return Ledger(), None
    return read_ledger(artifact.uri), artifact.id


def _type_id(store, kind: str, name: str) -> int:
    getter, putter, proto = {
        "context": (store.get_context_type, store.put_context_type, mlmd_pb2.ContextType),
        "execution": (store.get_execution_type, store.put_execution_type,
                      mlmd_pb2.ExecutionType),
        "artifact": (store.get_artifact_type, store.put_artifact_type,
                     mlmd_pb2.ArtifactType)}[kind]
    try:
        return getter(name).id
    except mlmd.errors.NotFoundError:
        return putter(proto(name=name))


def publish_ledger(store, pipeline: str, pipeline_root: str, ledger: Ledger,
                   action_id: int) -> int:
    """Write `ledger` under `pipeline_root` and record it as the `state` output of a COMPLETE
    DataGate execution in an operator run context of this pipeline; returns the artifact id.
    The file is complete before ML Metadata names it (safe on object storage too)."""
    import tensorflow as tf

    uri = os.path.join(pipeline_root, "OperatorActions", str(action_id), LEDGER_KEY)
    tf.io.gfile.makedirs(uri)
    with tf.io.gfile.GFile(os.path.join(uri, LEDGER_FILE), "w") as handle:
        handle.write(ledger.to_json())
    parent = store.get_context_by_type_and_name(KFP_PIPELINE, pipeline)
    if parent is None:
        [parent_id] = store.put_contexts([mlmd_pb2.Context(
            type_id=_type_id(store, "context", KFP_PIPELINE), name=pipeline)])
    else:
        parent_id = parent.id
    run = mlmd_pb2.Context(type_id=_type_id(store, "context", KFP_RUN),
                           name=f"{pipeline}-operator-action-{action_id}-{time.time():.3f}")
    run.custom_properties[outcomes.OPERATOR_RUN].int_value = action_id
    [run_id] = store.put_contexts([run])
    store.put_parent_contexts([mlmd_pb2.ParentContext(child_id=run_id, parent_id=parent_id)])
    execution = mlmd_pb2.Execution(type_id=_type_id(store, "execution", KFP_CONTAINER_EXECUTION),
                                   last_known_state=mlmd_pb2.Execution.COMPLETE)
    for name in (outcomes.KFP_TASK_NAME, "display_name"):
        execution.custom_properties[name].string_value = LEDGER_TASK
    execution.custom_properties[outcomes.OPERATOR_RUN].int_value = action_id
    artifact = mlmd_pb2.Artifact(type_id=_type_id(store, "artifact", LEDGER_TYPE), uri=uri,
                                 state=mlmd_pb2.Artifact.LIVE)
    artifact.custom_properties["display_name"].string_value = LEDGER_KEY
    artifact.custom_properties[outcomes.OPERATOR_RUN].int_value = action_id
    event = mlmd_pb2.Event(type=mlmd_pb2.Event.OUTPUT)
    event.path.steps.add().key = LEDGER_KEY
    [context] = store.get_contexts_by_id([run_id])
    _, [artifact_id], _ = store.put_execution(execution, [(artifact, event)], [context])
    return artifact_id
