"""The in-process Evaluator (components/fast_evaluator.py) against TFX's own executor (TFMA on
the DirectRunner) on the same models and eval split: the same metrics per slice and model, the
same failed thresholds, the same blessing. Models and examples come from the long-run scenario's
home (two different Trainer models, the newest span's examples)."""
from __future__ import annotations

import json
import os

import pytest

from ctpipe.components.evaluation import build_eval_config, failed_thresholds, metrics_by_slice

pytestmark = pytest.mark.e2e
# Exact AUC (Mann-Whitney) vs TFMA's 10,000-bucket approximation; the other metrics are sums.
AUC_TOLERANCE = 2e-3
OTHER_TOLERANCE = 1e-4


def _artifacts(home):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(home / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    models = [a for a in sorted(store.get_artifacts_by_type("Model"), key=lambda a: a.id)
              if os.path.isdir(os.path.join(a.uri, "Format-Serving"))]
    examples = [a for a in sorted(store.get_artifacts_by_type("Examples"), key=lambda a: a.id)
                if "/CsvExampleGen/" in a.uri and os.path.isdir(os.path.join(a.uri, "Split-eval"))]
    assert len(models) >= 2 and examples, (len(models), len(examples))
    return models[-1].uri, models[0].uri, examples[-1].uri


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
    return {"metrics": metrics_by_slice(str(out / "eval")),
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
