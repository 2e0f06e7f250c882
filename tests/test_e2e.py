"""End-to-end: the real pipeline on sample spans (one shared run, see conftest.SCENARIO)."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ctpipe

pytestmark = pytest.mark.e2e


def _versions(listing):
    return [name for name in listing if name.isdigit()]


def test_first_cycle_pushes_version_1(scenario):
    decision = scenario.decisions["first"]
    assert decision.outcome == "pushed", decision.reasons
    assert decision.model_version == 1
    assert decision.training_spans == [1]
    assert decision.metrics["candidate"]["auc"] >= 0.70
    version_dir = scenario.home / "serving" / "big_tipper" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_contract_violation_is_blocked_and_changes_nothing(scenario):
    decision = scenario.decisions["broken_contract"]
    assert decision.outcome == "data_blocked"
    assert decision.exit_code == 3
    text = " ".join(decision.reasons)
    assert "payment_type" in text and "fare" in text
    assert _versions(scenario.served_after["broken_contract"]) == ["1"]


def test_quarantined_span_never_enters_the_window(scenario):
    decision = scenario.decisions["clean_after_block"]
    assert decision.training_spans == [1, 3]
    assert decision.outcome == "pushed", decision.reasons
    assert decision.metrics["baseline"]["auc"] > 0  # compared with the served model


def test_shuffled_labels_are_not_pushed(scenario):
    decision = scenario.decisions["shuffled_labels"]
    assert decision.outcome == "not_blessed"
    assert decision.exit_code == 4
    assert any("auc" in reason for reason in decision.reasons), decision.reasons
    assert decision.metrics["candidate"]["auc"] < 0.70
    assert _versions(scenario.served_after["shuffled_labels"]) == \
        _versions(scenario.served_after["clean_after_block"])


def test_nothing_new_exits_5_with_json(scenario):
    result = ctpipe("run", "--data-root", str(scenario.data_root), "--home", str(scenario.home),
                    "--json")
    assert result.returncode == 5, result.stderr
    decision = json.loads(result.stdout)
    assert decision["outcome"] == "no_new_data"
    assert decision["span"] == 4
    assert set(decision) >= {"outcome", "span", "model_version", "reasons", "metrics",
                             "training_spans"}


def test_status_history_comes_from_mlmd(scenario):
    result = ctpipe("status", "--home", str(scenario.home), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    outcomes = [entry["outcome"] for entry in status["history"]]
    assert outcomes[:4] == ["pushed", "data_blocked", "pushed", "not_blessed"]
    assert status["serving_version"] == 2
    assert status["model_base_path"].endswith(os.path.join("serving", "big_tipper"))
    human = ctpipe("status", "--home", str(scenario.home))
    assert "data_blocked" in human.stdout and "serving version: 2" in human.stdout


def test_served_model_signatures_agree(scenario):
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from components import trainer

    version_dir = scenario.home / "serving" / "big_tipper" / "2"
    loaded = tf.saved_model.load(str(version_dir))
    assert set(loaded.signatures) == {"serving_default", "serving_raw", "classification"}
    records = tf.data.TFRecordDataset(
        tf.io.gfile.glob(str(scenario.home / "pipeline_root" /
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


def test_warmup_file_holds_predict_requests(scenario):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = scenario.home / "serving" / "big_tipper" / "1" / "assets.extra" / \
        "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(path))]
    assert 1 <= len(logs) <= 1000
    assert all(log.predict_log.request.model_spec.signature_name == "serving_default"
               for log in logs)
    assert logs[0].predict_log.request.inputs["examples"].string_val
