"""Decisions read from ML Metadata in the Kubeflow v2 layout (system.PipelineRun contexts,
task_name on executions, artifact metadata as doubles) - a real MLMD store, filled as KFP's
driver/launcher fill it. The local TFX layout is covered end to end in test_e2e."""
import json

from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.pipeline import outcomes


def _kfp_run(store, run_name: str, span: int, gate: dict) -> None:
    pipeline_type = store.put_context_type(pb.ContextType(name="system.Pipeline"))
    run_type = store.put_context_type(pb.ContextType(name="system.PipelineRun"))
    execution_type = store.put_execution_type(pb.ExecutionType(name="system.ContainerExecution"))
    examples_type = store.put_artifact_type(pb.ArtifactType(name="tfx.Examples"))
    dataset_type = store.put_artifact_type(pb.ArtifactType(name="tfx.Dataset"))
    existing = store.get_context_by_type_and_name("system.Pipeline", "ctpipe")
    pipeline_id = existing.id if existing else store.put_contexts(
        [pb.Context(type_id=pipeline_type, name="ctpipe")])[0]
    [run_id] = store.put_contexts([pb.Context(type_id=run_type, name=run_name)])
    store.put_parent_contexts([pb.ParentContext(child_id=run_id, parent_id=pipeline_id)])

    examples = pb.Artifact(type_id=examples_type, uri="gs://b/examples/1")
    examples.custom_properties["span"].double_value = float(span)
    state = pb.Artifact(type_id=dataset_type, uri="gs://b/state/1")
    for key, value in gate.items():
        if isinstance(value, str):
            state.custom_properties[key].string_value = value
        else:
            state.custom_properties[key].double_value = float(value)
    for task, key, artifact in (("CsvExampleGen", "examples", examples),
                                ("DataGate", "state", state)):
        execution = pb.Execution(type_id=execution_type,
                                 last_known_state=pb.Execution.COMPLETE)
        execution.custom_properties["task_name"].string_value = task
        event = pb.Event(type=pb.Event.OUTPUT)
        event.path.steps.add().key = key
        store.put_execution(execution, [(artifact, event)], store.get_contexts_by_id([run_id]))


def test_history_reads_kubeflow_runs(tmp_path):
    store = outcomes.open_store(outcomes.sqlite_connection(str(tmp_path / "kfp.sqlite")))
    _kfp_run(store, "run-uuid-1", 5, {"accepted": 0, "span": 5,
                                       "reasons": json.dumps(["fare: out of range"]),
                                       "training_spans": "[]"})
    _kfp_run(store, "run-uuid-2", 6, {"accepted": 1, "span": 6, "reasons": "[]",
                                       "training_spans": "[4, 6]"})
    history = outcomes.history(store, "ctpipe")
    assert [d.run_id for d in history] == ["run-uuid-1", "run-uuid-2"]
    blocked, accepted = history
    assert blocked.outcome == "data_blocked" and blocked.span == 5
    assert "fare: out of range" in blocked.reasons
    # accepted by the gate but nothing evaluated (e.g. the Trainer step failed on the cluster)
    assert accepted.outcome == "failed" and accepted.training_spans == [4, 6]


def test_history_is_empty_for_another_pipeline(tmp_path):
    store = outcomes.open_store(outcomes.sqlite_connection(str(tmp_path / "kfp.sqlite")))
    _kfp_run(store, "run-uuid-1", 5, {"accepted": 1, "span": 5, "reasons": "[]",
                                       "training_spans": "[5]"})
    assert outcomes.history(store, "other-pipeline") == []
