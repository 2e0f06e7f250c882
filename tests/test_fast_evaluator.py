"""The in-process Evaluator (components/fast_evaluator.py) against TFX's own executor (TFMA on
the DirectRunner) on the same models and eval split: the same metrics per slice and model, the
same failed thresholds, the same blessing. Models and examples come from the long-run scenario's
home (two different Trainer models, the newest span's examples)."""
from __future__ import annotations

import json
import os

import pytest

from ctpipe.components.evaluation import build_eval_config, failed_thresholds, metrics_by_slice

from tests.support import home_artifact_uris

pytestmark = pytest.mark.e2e
# Exact AUC (Mann-Whitney) vs TFMA's 10,000-bucket approximation; the other metrics are sums.
AUC_TOLERANCE = 2e-3
OTHER_TOLERANCE = 1e-4


def _artifacts(home):
    found = home_artifact_uris(home)
    assert len(found["models"]) >= 2 and found["examples"], found
    return found["models"][-1], found["models"][0], found["examples"][-1]


def _run(executor, tmp_path, tag, model, baseline, examples, eval_config):
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.utils import proto_utils

    def artifact(cls, uri, splits=None):
        made = cls()
        made.uri = uri
        if splits:
            made.split_names = artifact_utils.encode_split_names(splits)
        return made

    out = tmp_path / tag
    inputs = {"examples": [artifact(standard_artifacts.Examples, examples, ["train", "eval"])],
              "model": [artifact(standard_artifacts.Model, model)]}
    if baseline:
        inputs["baseline_model"] = [artifact(standard_artifacts.Model, baseline)]
    outputs = {"evaluation": [artifact(standard_artifacts.ModelEvaluation, str(out / "eval"))],
               "blessing": [artifact(standard_artifacts.ModelBlessing, str(out / "blessing"))]}
    executor.Do(inputs, outputs, {"eval_config": proto_utils.proto_to_json(eval_config),
                                  "example_splits": json.dumps(["eval"])})
    blessing = outputs["blessing"][0]
    with open(out / "eval" / "eval_config.json") as handle:
        data_location = json.load(handle).get("dataLocation", "")
    return {"data_location": data_location, "metrics": metrics_by_slice(str(out / "eval")),
            "failed": failed_thresholds(str(out / "eval")),
            "blessed": blessing.get_int_custom_property("blessed"),
            "files": sorted(os.listdir(out / "blessing"))}


@pytest.mark.parametrize("case", ["baseline_passes", "change_threshold_fails", "no_baseline"])
def test_in_process_evaluator_matches_tfma(long_run, tmp_path, case):
    from tfx.components.evaluator.executor import Executor as TfmaExecutor

    from ctpipe.components.fast_evaluator import InProcessEvaluatorExecutor

    model, baseline, examples = _artifacts(long_run.home)
    if case == "no_baseline":
        baseline = None
    # change_threshold_fails: the candidate must beat the baseline by 0.5 AUC, and at least 10**6
    # eval rows are asked for: two failures, one of each kind.
    eval_config = (build_eval_config(0.5, -0.5, 10 ** 6) if case == "change_threshold_fails"
                   else build_eval_config(0.5, 0.5, 10))
    tfma = _run(TfmaExecutor(), tmp_path, "tfma", model, baseline, examples, eval_config)
    ours = _run(InProcessEvaluatorExecutor(), tmp_path, "ours", model, baseline, examples,
                eval_config)
    # TFMA on Beam records "<user provided PCollection>"; the in-process path its files: it
    # really ran (no silent fallback to TFMA).
    assert tfma["data_location"].startswith("<") and ours["data_location"].startswith(examples)
    assert ours["blessed"] == tfma["blessed"] and ours["files"] == tfma["files"]
    assert ours["blessed"] == (0 if case == "change_threshold_fails" else 1)
    assert [_reason(r) for r in ours["failed"]] == [_reason(r) for r in tfma["failed"]], \
        (ours["failed"], tfma["failed"])
    for mine, theirs in zip(ours["failed"], tfma["failed"]):  # the value, e.g. the AUC change
        assert abs(_reason_value(mine) - _reason_value(theirs)) <= AUC_TOLERANCE, (mine, theirs)
    assert ours["metrics"].keys() == tfma["metrics"].keys()
    for slice_key, by_model in tfma["metrics"].items():
        assert by_model.keys() == ours["metrics"][slice_key].keys(), slice_key
        for model_name, values in by_model.items():
            got = ours["metrics"][slice_key][model_name]
            assert got.keys() == values.keys(), (slice_key, model_name)
            for metric, value in values.items():
                tolerance = AUC_TOLERANCE if metric == "auc" else OTHER_TOLERANCE
                assert abs(got[metric] - value) <= tolerance, (slice_key, model_name, metric,
                                                               got[metric], value)
    if case == "change_threshold_fails":
        assert any("change vs baseline" in reason for reason in ours["failed"])


def _reason(reason: str) -> tuple:
    """'auc change vs baseline on all data = 0.0123 fails threshold change >= 0.5' without
    its value: (what, threshold)."""
    what, rest = reason.split(" = ", 1)
    return what, rest.split(" ", 1)[1]


def _reason_value(reason: str) -> float:
    return float(reason.split(" = ", 1)[1].split(" ", 1)[0])


def test_only_the_direct_runner_and_supported_configs_run_in_process():
    import tensorflow_model_analysis as tfma

    from ctpipe.components.fast_evaluator import runs_in_process, unsupported

    assert runs_in_process([]) and runs_in_process(["--direct_running_mode=multi_processing"])
    assert runs_in_process(["--runner=DirectRunner"])
    assert not runs_in_process(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])
    assert not runs_in_process(["--runner=DataflowRunner"])
    config = build_eval_config(0.6, 0.02, 100)
    assert unsupported(config) is None
    config.metrics_specs[0].metrics.append(tfma.MetricConfig(class_name="Precision"))
    assert "Precision" in unsupported(config)


def _toy_model(path):
    """A SavedModel taking serialized tf.Examples whose `probabilities` is the example's `x`."""
    import tensorflow as tf

    class Toy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]
            return {"probabilities": tf.reshape(x, [-1, 1])}

    toy = Toy()
    tf.saved_model.save(toy, str(path), signatures={"serving_default": toy.serve})
    return str(path)


def _examples(path, rows):
    """GZIP TFRecord of rows {feature: list of values}."""
    import tensorflow as tf

    def feature(values):
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for row in rows:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                name: feature(values) for name, values in row.items() if values})
            ).SerializeToString())
    return str(path)


def _config(slice_feature="payment_type"):
    import tensorflow_model_analysis as tfma

    return tfma.utils.update_eval_config_with_defaults(
        build_eval_config(0.5, 0.1, 1).__class__(
            model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key="big_tipper",
                                        prediction_key="probabilities")],
            slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[slice_feature])],
            metrics_specs=build_eval_config(0.5, 0.1, 1).metrics_specs),
        has_baseline=False, rubber_stamp=True)


def test_non_finite_predictions_and_missing_labels_fail_the_evaluation(tmp_path):
    """TFMA cannot bucket a NaN prediction and refuses a row without its label: the in-process
    path must not bless such a model either."""
    from ctpipe.components.fast_evaluator import sliced_metrics

    model = _toy_model(tmp_path / "model")
    good = {"big_tipper": [1], "payment_type": [b"Cash"], "x": [0.7]}
    nan = _examples(tmp_path / "nan.gz", [good, dict(good, x=[float("nan")])])
    with pytest.raises(ValueError, match="non-finite"):
        sliced_metrics(_config(), {"": model}, [nan])
    unlabelled = _examples(tmp_path / "unlabelled.gz", [good, dict(good, big_tipper=[])])
    with pytest.raises(ValueError, match="label 'big_tipper' missing"):
        sliced_metrics(_config(), {"": model}, [unlabelled])


def test_slices_are_keyed_as_tfma_keys_them(tmp_path):
    """Text for strings, Python ints for integers, a value repeated in one row counted once."""
    from ctpipe.components.fast_evaluator import sliced_metrics

    model = _toy_model(tmp_path / "model")
    rows = [{"big_tipper": [1], "payment_type": [b"Cash", b"Cash"], "area": [7], "x": [0.9]},
            {"big_tipper": [0], "payment_type": [b"Card"], "area": [7, 8], "x": [0.2]}]
    files = [_examples(tmp_path / "rows.gz", rows)]
    by_text = sliced_metrics(_config(), {"": model}, files)
    assert set(by_text) == {(), (("payment_type", "Cash"),), (("payment_type", "Card"),)}
    cash = by_text[(("payment_type", "Cash"),)]
    assert [v for k, v in cash.items() if k.name == "example_count"] == [1.0]
    by_int = sliced_metrics(_config("area"), {"": model}, files)
    assert set(by_int) == {(), (("area", 7),), (("area", 8),)}
    assert all(type(value) is int for key in by_int for _, value in key)
