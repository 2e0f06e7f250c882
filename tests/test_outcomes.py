"""Decisions read from ML Metadata in the Kubeflow v2 layout, written by the same recorder the
KFP harness uses (tests/kfp_harness.py Metadata: KFP 2.5.0's metadata/client.go - a root DAG
execution, task_name and parent_dag_id on executions, artifact metadata converted as
toMLMDArtifact converts it, CANCELED executions for skipped tasks). The local TFX layout is
covered end to end in test_e2e."""
import json

from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.pipeline.home import outcomes

from tests.kfp_harness import Metadata

DATASET = {"schemaTitle": "tfx.Dataset"}


def _kfp_run(metadata: Metadata, run_name: str, span: int, gate: dict) -> None:
    contexts = metadata.get_pipeline("ctpipe", run_name)
    root = metadata.create_execution(contexts, None, pb.Execution.RUNNING, None, {},
                                     execution_type="system.DAGExecution")
    for task, key, artifact_type, values in (
            ("CsvExampleGen", "examples", {"schemaTitle": "tfx.Examples"}, {"span": span}),
            ("DataGate", "state", DATASET, gate)):
        execution = metadata.create_execution(contexts, task, pb.Execution.RUNNING, root.id, {})
        metadata.publish_execution(execution, contexts, pb.Execution.COMPLETE, {key: [
            {"uri": f"gs://b/{task}/{run_name}/{key}", "type": artifact_type,
             "metadata": values}]}, {})
    if not gate["accepted"]:  # the Trainer's condition was false: KFP records it CANCELED
        metadata.create_execution(contexts, "Trainer", pb.Execution.CANCELED, root.id, {})


def test_history_reads_kubeflow_runs(tmp_path):
    metadata = Metadata(str(tmp_path / "kfp.sqlite"))
    store = metadata.store
    _kfp_run(metadata, "run-uuid-1", 5, {"accepted": 0, "span": 5,
                                       "reasons": json.dumps(["fare: out of range"]),
                                       "training_spans": "[]"})
    _kfp_run(metadata, "run-uuid-2", 6, {"accepted": 1, "span": 6, "reasons": "[]",
                                       "training_spans": "[4, 6]"})
    history = outcomes.history(store, "ctpipe")
    assert [d.run_id for d in history] == ["run-uuid-1", "run-uuid-2"]
    blocked, accepted = history
    assert blocked.outcome == "data_blocked" and blocked.span == 5
    assert "fare: out of range" in blocked.reasons
    # accepted by the gate but nothing evaluated (e.g. the Trainer step failed on the cluster)
    assert accepted.outcome == "failed" and accepted.training_spans == [4, 6]


def test_history_is_empty_for_another_pipeline(tmp_path):
    metadata = Metadata(str(tmp_path / "kfp.sqlite"))
    store = metadata.store
    _kfp_run(metadata, "run-uuid-1", 5, {"accepted": 1, "span": 5, "reasons": "[]",
                                       "training_spans": "[5]"})
    assert outcomes.history(store, "other-pipeline") == []
