"""Operator commands against Kubeflow's store (issue 18 item 4): `status`, `quarantine`,
`promote` and `rollback` with --mlmd-host, scoped to this pipeline.

The store is written in KFP's layout by the harness's recorder (tests/kfp_harness.py Metadata)
and served by a real gRPC server (tests/mlmd_grpc_server.py); every command runs as a
subprocess, so the ML Metadata client's gRPC path runs, never a SQLite seam. Results are read
back over gRPC too."""
import json

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.components import release
from ctpipe.components.ledger import LEDGER_FILE, Ledger, read_ledger
from ctpipe.pipeline.home import cycles, outcomes
from ctpipe.pipeline.home.store import open_grpc

from tests.kfp_harness import Metadata
from tests.mlmd_grpc_server import MlmdGrpcServer
from tests.support import ctpipe

PIPELINE = "ctpipe"  # PipelineConfig's default pipeline_name
DATASET = {"schemaTitle": "tfx.Dataset"}


def _kfp_run(metadata: Metadata, pipeline: str, run_name: str, span: int, gate: dict,
             state_uri: str) -> None:
    """One run as KFP 2.5.0 records it: root DAG, ExampleGen, DataGate (its `state` is the
    ledger folder), the Trainer CANCELED when the gate refused."""
    contexts = metadata.get_pipeline(pipeline, run_name)
    root = metadata.create_execution(contexts, None, pb.Execution.RUNNING, None, {},
                                     execution_type="system.DAGExecution")
    for task, key, artifact_type, uri, values in (
            ("CsvExampleGen", "examples", {"schemaTitle": "tfx.Examples"},
             f"{state_uri}-examples", {"span": span}),
            ("DataGate", "state", DATASET, state_uri, gate)):
        execution = metadata.create_execution(contexts, task, pb.Execution.RUNNING, root.id, {})
        metadata.publish_execution(execution, contexts, pb.Execution.COMPLETE, {key: [
            {"uri": uri, "type": artifact_type, "metadata": values}]}, {})
    if not gate["accepted"]:
        metadata.create_execution(contexts, "Trainer", pb.Execution.CANCELED, root.id, {})


def _ledger_folder(path, ledger: Ledger) -> str:
    path.mkdir(parents=True)
    (path / LEDGER_FILE).write_text(ledger.to_json())
    return str(path)


@pytest.fixture
def kfp(tmp_path):
    """A KFP store with two runs of this pipeline (span 5 refused, 6 accepted on [4, 6]) and
    one of another pipeline, served over gRPC on a free 127.0.0.1 port."""
    metadata = Metadata(str(tmp_path / "kfp.sqlite"))
    refused = Ledger().accept({"span": 4}).quarantine(5, ["fare: out of range"], by="gate")
    accepted = refused.accept({"span": 6})
    _kfp_run(metadata, PIPELINE, "run-uuid-1", 5,
             {"accepted": 0, "span": 5, "reasons": json.dumps(["fare: out of range"]),
              "training_spans": "[]"}, _ledger_folder(tmp_path / "gs" / "run1", refused))
    _kfp_run(metadata, PIPELINE, "run-uuid-2", 6,
             {"accepted": 1, "span": 6, "reasons": "[]", "training_spans": "[4, 6]"},
             _ledger_folder(tmp_path / "gs" / "run2", accepted))
    _kfp_run(metadata, "other-pipeline", "run-other", 7,
             {"accepted": 1, "span": 7, "reasons": "[]", "training_spans": "[7]"},
             _ledger_folder(tmp_path / "gs" / "other", Ledger().accept({"span": 7})))
    with MlmdGrpcServer(str(tmp_path / "kfp.sqlite")) as server:
        yield server, open_grpc("127.0.0.1", server.port)


def _on(server, *args: str):
    return ctpipe(*args, "--mlmd-host", "127.0.0.1", "--mlmd-port", str(server.port))


def _resolved_ledger(store, pipeline: str = PIPELINE) -> Ledger:
    """What the next run's ledger step resolves (the cluster step's own function)."""
    from ctpipe.kubeflow.steps import resolve_ledger

    [artifact] = resolve_ledger(store, pipeline, {})
    return read_ledger(artifact.uri)


def test_status_reads_kfp_store_over_grpc(kfp):
    server, _ = kfp
    calls = server.calls
    result = _on(server, "status", "--json")
    assert result.returncode == 0, result.stderr
    history = json.loads(result.stdout)["history"]
    assert [(d["run_id"], d["outcome"], d["span"]) for d in history] == [
        ("run-uuid-1", "data_blocked", 5), ("run-uuid-2", "failed", 6)]  # not other-pipeline
    assert server.calls > calls  # it came over the wire


def test_status_says_when_the_service_is_unreachable(kfp):
    server, _ = kfp
    result = ctpipe("status", "--mlmd-host", "127.0.0.1", "--mlmd-port", "1")
    assert result.returncode == 2 and "unreachable" in result.stderr


def test_quarantine_publishes_a_ledger_the_next_run_resolves(kfp, tmp_path):
    server, store = kfp
    root = tmp_path / "pipeline-root"
    result = _on(server, "quarantine", "add", "6", "--reason", "bad labels found later",
                 "--pipeline-root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["was_accepted"] is True
    ledger = _resolved_ledger(store)
    assert ledger.quarantined_spans() == [5, 6] and ledger.accepted_spans() == [4]
    assert str(root) in resolve_uri(store)  # written under the folder given
    [action] = cycles.operator_actions(store, PIPELINE)
    assert (action.action, action.span, action.reason) == (
        "quarantine", 6, "bad labels found later")
    # the operator's record is not a cycle, and other pipelines are untouched
    assert [d.run_id for d in outcomes.history(store, PIPELINE)] == ["run-uuid-1", "run-uuid-2"]
    assert _resolved_ledger(store, "other-pipeline").accepted_spans() == [7]

    listed = _on(server, "quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(e["span"], e["by"]) for e in json.loads(listed.stdout)] == [
        (5, "gate"), (6, "operator")]

    released = _on(server, "quarantine", "release", "5", "--reason", "a lasting change",
                   "--pipeline-root", str(root))
    assert released.returncode == 0, released.stderr
    assert _resolved_ledger(store).quarantined_spans() == [6]
    assert [a.action for a in cycles.operator_actions(store, PIPELINE)] == [
        "quarantine", "release"]


def resolve_uri(store) -> str:
    from ctpipe.kubeflow.steps import resolve_ledger

    return resolve_ledger(store, PIPELINE, {})[0].uri


def test_quarantine_on_a_cluster_needs_the_pipeline_root(kfp):
    server, store = kfp
    result = _on(server, "quarantine", "add", "6", "--reason", "x")
    assert result.returncode == 2 and "--pipeline-root" in result.stderr
    assert cycles.operator_actions(store, PIPELINE) == []  # nothing recorded


def test_promote_and_rollback_change_the_cluster_manifest(kfp, tmp_path):
    server, store = kfp
    serving = tmp_path / "serving"
    for version in (1, 2):
        (serving / "big_tipper" / str(version)).mkdir(parents=True)
        (serving / "big_tipper" / str(version) / "saved_model.pb").write_bytes(b"pb")
    manifest = release.manifest_path(str(serving))
    release.write(manifest, [release.Release("big_tipper", str(serving / "big_tipper"),
                                             {"stable": 1, "canary": 2})])

    missing = _on(server, "promote", "--reason", "x")
    assert missing.returncode == 2 and "--serving-dir" in missing.stderr

    promoted = _on(server, "promote", "--serving-dir", str(serving), "--reason", "canary good")
    assert promoted.returncode == 0, promoted.stderr
    assert release.read(manifest)[0].stable == 2
    rolled = _on(server, "rollback", "--serving-dir", str(serving), "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert release.read(manifest)[0].stable == 1
    actions = cycles.operator_actions(store, PIPELINE)
    assert [(a.action, a.reason) for a in actions] == [
        ("promote", "canary good"), ("rollback", "rolled back by operator")]
    assert actions[0].details["after"]["stable"] == 2
