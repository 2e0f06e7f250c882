"""End-to-end basics of a cycle, read from the shared long run (tests/scenario.py): what a
push leaves on disk and in ML Metadata, and the CLI's view of it."""
from __future__ import annotations

import json
import os

import pytest

from tests.support import ctpipe

pytestmark = pytest.mark.e2e


def _versions(listing):
    return sorted(int(name) for name in listing if name.isdigit())


def test_first_cycle_pushes_version_1(long_run):
    decision = long_run.steps["span1"]["decision"]
    assert decision.outcome == "pushed", decision.reasons
    assert decision.model_version == 1
    assert decision.training_spans == [1]
    assert decision.metrics["candidate"]["auc"] >= 0.70
    assert decision.checks["warm_start"]["uri"] is None
    files = long_run.version_files["1"]  # as pushed (retention may remove it once unlabelled)
    assert "saved_model.pb" in files
    assert "variables/variables.index" in files
    assert "assets.extra/tf_serving_warmup_requests" in files


def test_contract_violation_is_blocked_and_changes_nothing(long_run):
    blocked = {d["span"]: d for d in long_run.steps["backlog"]["decisions"]}[5]
    assert blocked["outcome"] == "data_blocked"
    text = " ".join(blocked["reasons"])
    assert "payment_type" in text and "fare" in text
    assert "fails the data contract" in blocked["reasons"][0]


def test_nothing_new_exits_5_with_json(long_run):
    result = ctpipe("run", *long_run.args("--json"))
    assert result.returncode == 5, result.stderr
    decision = json.loads(result.stdout)
    assert decision["outcome"] == "no_new_data"
    assert "waiting for span 19" in decision["reasons"][0]
    assert set(decision) >= {"outcome", "span", "model_version", "reasons", "metrics",
                             "training_spans"}


def test_status_history_comes_from_mlmd(long_run):
    result = ctpipe("status", "--home", str(long_run.home), "--json", "--data-root",
                    str(long_run.data_root))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    spans = [entry["span"] for entry in status["history"] if entry["outcome"] != "no_new_data"]
    assert spans[:2] == [1, 2]
    pushed = [e["model_version"] for e in status["history"] if e["outcome"] == "pushed"]
    assert status["last_pushed_version"] == pushed[-1]
    assert "serving_version" not in status  # the newest push is not what serves: stable is
    assert status["model_base_path"].endswith(os.path.join("serving", "big_tipper"))
    assert status["pending_spans"] == []
    assert set(status["quarantined_spans"]) >= {5, 6, 9, 12}
    by_people = [a["action"] for a in status["operator_actions"]
                 if a["details"].get("by") != "fresh_labels"]
    assert by_people[:1] == ["release"]
    assert any(a["details"].get("by") == "fresh_labels" and a["action"] == "promote"
               for a in status["operator_actions"])  # stable moved without an operator
    human = ctpipe("status", "--home", str(long_run.home))
    assert "data_blocked" in human.stdout
    assert f"stable version: {status['stable_version']}   canary: " \
        f"{status['canary_version']}   control: {status['control_version']}" in human.stdout
    assert f"last pushed version: {pushed[-1]}" in human.stdout
    assert "serving version" not in human.stdout
    assert "operator: release span 8" in human.stdout


def test_served_model_signatures_agree(long_run):
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from ctpipe.components import trainer

    base = long_run.home / "serving" / "big_tipper"
    version_dir = base / str(_versions(os.listdir(base))[-1])
    loaded = tf.saved_model.load(str(version_dir))
    assert set(loaded.signatures) == {"serving_default", "serving_raw", "classification"}
    records = tf.data.TFRecordDataset(
        tf.io.gfile.glob(str(long_run.home / "pipeline_root" /
                             "CsvExampleGen" / "examples" / "*" / "Split-eval" / "*")),
        compression_type="GZIP").take(16)
    serialized = tf.constant([r.numpy() for r in records])
    from_examples = loaded.signatures["serving_default"](examples=serialized)["probabilities"]
    raw = trainer.dense_features_from_examples(serialized)
    from_raw = loaded.signatures["serving_raw"](**raw)["probabilities"]
    np.testing.assert_allclose(from_examples.numpy(), from_raw.numpy(), rtol=1e-5)
    classified = loaded.signatures["classification"](inputs=serialized)
    np.testing.assert_allclose(classified["scores"].numpy()[:, 1], from_examples.numpy()[:, 0],
                               rtol=1e-5)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    assert proto.meta_graphs[0].signature_def["classification"].method_name == \
        "tensorflow/serving/classify"


def test_warmup_file_covers_every_signature(long_run):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    base = long_run.home / "serving" / "big_tipper"
    newest = max((name for name in os.listdir(base) if name.isdigit()), key=int)  # on disk
    path = base / newest / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(path))]
    assert 1 <= len(logs) <= 1000
    kinds = {(log.WhichOneof("log_type"),
              getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name)
             for log in logs}
    assert kinds == {("predict_log", "serving_default"), ("predict_log", "serving_raw"),
                     ("classify_log", "classification")}
    assert logs[0].predict_log.request.inputs["examples"].string_val
