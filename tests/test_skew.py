"""Training/serving skew (pipeline/observe/skew.py): logged requests (real PredictionLog files
written by
the request logger) against training statistics (real TFDV), with the schema's skew comparators.

Rows of sample span 8 are served; the training data is the window of spans 5-7 (explicit
statistics), or the model one real pipeline cycle trained on span 7 (the e2e tests)."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
from typing import Any, Dict, List

import numpy as np
import pytest
import tensorflow as tf

from ctpipe.components import features as F
from ctpipe.components.curated_schema import load_contract
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.observe import skew, skew_decode
from ctpipe.pipeline.observe.schema_review import csv_statistics
from ctpipe.serving.request_log import RequestLogger, classify_protos, predict_protos

from tests.support import SAMPLE, ctpipe

WINDOW, SERVED = (5, 6, 7), 8


def _rows(span: int) -> List[Dict[str, str]]:
    with open(SAMPLE / f"span-{span}" / "data.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _raw_inputs(rows: List[Dict[str, str]]) -> Dict[str, np.ndarray]:
    """The serving_raw form: one tensor per feature, missing as NaN / -1 / ""."""
    inputs = {name: np.array([float(r[name]) if r[name] else F.MISSING_FLOAT for r in rows],
                             np.float32) for name in F.NUMERIC_FEATURES}
    inputs.update({name: np.array([int(float(r[name])) if r[name] else F.MISSING_INT
                                   for r in rows], np.int64)
                   for name in F.CATEGORICAL_INT_FEATURES})
    inputs.update({name: np.array([r[name].encode() for r in rows], dtype=object)
                   for name in F.CATEGORICAL_STRING_FEATURES})
    return inputs


def _example(row: Dict[str, str]) -> bytes:
    """A tf.Example as a client of serving_default sends it (missing features absent)."""
    values: Dict[str, Any] = {}
    for name in F.NUMERIC_FEATURES:
        values[name] = float(row[name]) if row[name] else math.nan
    for name in F.CATEGORICAL_INT_FEATURES:
        values[name] = int(float(row[name])) if row[name] else F.MISSING_INT
    for name in F.CATEGORICAL_STRING_FEATURES:
        values[name] = row[name].encode()
    return skew_decode.example_from_values(values).SerializeToString()


def write_logs(directory: str, rows: List[Dict[str, str]], batch: int = 8) -> None:
    """Log `rows` as the server would: mostly serving_raw, some serving_default (serialized
    tf.Examples through Predict) and some Classify requests."""
    with RequestLogger(directory, max_file_bytes=64 * 1024) as logger:
        for number, start in enumerate(range(0, len(rows), batch)):
            part = rows[start:start + batch]
            probabilities = np.full((len(part), 1), 0.5, np.float32)
            if number % 6 == 4:
                request, response = predict_protos(
                    "big_tipper", 1, "serving_default",
                    {"examples": np.array([_example(r) for r in part], dtype=object)},
                    {"probabilities": probabilities})
                logged = logger.log_predict(request.model_spec, request, response)
            elif number % 6 == 5:
                request, response = classify_protos(
                    "big_tipper", 1, "classification", [_example(r) for r in part],
                    [[("0", 0.5), ("1", 0.5)] for _ in part])
                logged = logger.log_classify(request.model_spec, request, response)
            else:
                request, response = predict_protos("big_tipper", 1, "serving_raw",
                                                   _raw_inputs(part),
                                                   {"probabilities": probabilities})
                logged = logger.log_predict(request.model_spec, request, response)
            assert logged
    assert logger.stats()["dropped"] == 0


def _drifted(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """Fares five times higher (a unit bug in a client) and every trip paid in cash."""
    return [{**row, "fare": str(float(row["fare"]) * 5) if row["fare"] else "",
             "payment_type": "Cash"} for row in rows]


@pytest.fixture(scope="module")
def schema():
    return load_contract()


@pytest.fixture(scope="module")
def window_statistics(tmp_path_factory):
    target = tmp_path_factory.mktemp("window") / "data.csv"
    rows = [row for span in WINDOW for row in _rows(span)]
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(F.CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return csv_statistics(str(target))


@pytest.fixture(scope="module")
def clean_logs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("clean-logs"))
    write_logs(directory, _rows(SERVED))
    return directory


@pytest.fixture(scope="module")
def drifted_logs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("drifted-logs"))
    write_logs(directory, _drifted(_rows(SERVED)))
    return directory


# -- the comparison on explicit inputs ---------------------------------------------------------

def test_clean_requests_show_no_skew(window_statistics, clean_logs, schema):
    serving = skew_decode.serving_data(clean_logs)
    report = skew.compare(window_statistics, serving, schema)
    assert report["drifted"] is False and report["anomalies"] == []
    assert {m["feature"] for m in report["measurements"]} == set(skew.skew_features(schema))
    assert all(m["value"] <= m["threshold"] for m in report["measurements"])
    assert report["examples"] == len(_rows(SERVED))
    assert set(report["signatures"]) == {"serving_raw", "serving_default", "classification"}
    assert report["skipped_records"] == 0 and report["files"] > 1


def test_drifted_requests_are_skew(window_statistics, drifted_logs, schema):
    report = skew.compare(window_statistics, skew_decode.serving_data(drifted_logs), schema)
    assert report["drifted"] is True
    found = {(a["feature"], a["comparator"]) for a in report["anomalies"]}
    assert found == {("fare", "jensen_shannon_divergence"), ("payment_type", "infinity_norm")}
    assert all(a["value"] > a["threshold"] for a in report["anomalies"])
    assert all("serving" in a["description"] for a in report["anomalies"])


def test_missing_values_are_missing_not_values(clean_logs):
    example = skew_decode.example_from_values({
        "fare": math.nan, "trip_seconds": 300.0, "pickup_community_area": -1,
        "trip_start_hour": 5, "company": b"", "payment_type": b"Cash", "not_a_feature": 1})
    features = example.features.feature
    assert set(features) == {"trip_seconds", "trip_start_hour", "payment_type"}
    assert list(features["trip_seconds"].int64_list.value) == [300]  # an integer column
    served = tf.train.Example()
    served.features.feature["company"].bytes_list.value.append(b"")
    served.features.feature["fare"].float_list.value.append(float("nan"))
    served.features.feature["dropoff_census_tract"].int64_list.value.append(-1)
    served.features.feature["trip_miles"].float_list.value.append(1.5)
    assert set(skew_decode.clean_example(served).features.feature) == {"trip_miles"}
    # In the statistics: rows without a company are missing, not a company called "".
    statistics = skew_decode.statistics_of_examples(skew_decode.serving_data(clean_logs).examples)
    [company] = [f for f in statistics.datasets[0].features if f.path.step == ["company"]]
    with_company = sum(1 for row in _rows(SERVED) if row["company"])
    assert company.string_stats.common_stats.num_non_missing == with_company
    assert "" not in [v.value for v in company.string_stats.top_values]


def test_bad_request_logs_are_bad_input(tmp_path, schema):
    with pytest.raises(BadInput, match="no request log directory"):
        skew_decode.serving_data(str(tmp_path / "absent"))
    with pytest.raises(BadInput, match="no complete request log file"):
        skew_decode.serving_data(str(tmp_path))
    (tmp_path / ".requests-0000000000001-000000.tfrecord.tmp").write_bytes(b"partial")
    with pytest.raises(BadInput, match="no complete request log file"):
        skew_decode.serving_data(str(tmp_path))
    unknown = tmp_path / "unknown"
    with RequestLogger(str(unknown)) as logger:
        request, response = predict_protos("toy", 1, "other", {"pixels": np.zeros(3, np.float32)})
        logger.log_predict(request.model_spec, request, response)
    with pytest.raises(BadInput, match="no request of a known signature") as error:
        skew_decode.serving_data(str(unknown))
    assert error.value.exit_code == 2
    few = tmp_path / "few"
    write_logs(str(few), _rows(SERVED)[:20])
    with pytest.raises(BadInput, match="at least 100"):
        skew.compare(None, skew_decode.serving_data(str(few)), schema)


def test_production_version_is_the_stable_label_else_the_newest(tmp_path):
    base = tmp_path / "serving" / "big_tipper"
    for version in ("1", "2", "3", ".incoming-4-abc"):
        (base / version).mkdir(parents=True)
    assert skew.production_version(str(tmp_path), "big_tipper", str(base))[0] == 3
    manifest = tmp_path / "serving" / "models.config"
    manifest.write_text('model_config_list { config { name: "big_tipper" base_path: "%s" '
                        'model_version_policy { specific { versions: 2 versions: 3 } } '
                        'version_labels { key: "stable" value: 2 } '
                        'version_labels { key: "canary" value: 3 } } }' % base)
    assert skew.production_version(str(tmp_path), "big_tipper", str(base)) == \
        (2, f"stable in {manifest}")
    manifest.write_text("not a config {")
    with pytest.raises(BadInput, match="not a ModelServerConfig"):
        skew.production_version(str(tmp_path), "big_tipper", str(base))
    with pytest.raises(BadInput, match="no production model"):
        skew.production_version(str(tmp_path / "empty"), "big_tipper", str(tmp_path / "none"))


# -- against a real pipeline home ----------------------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One real cycle: span 7 trained on, pushed as version 1 (~25 s)."""
    root = tmp_path_factory.mktemp("skew-home")
    (root / "data" / "span-7").mkdir(parents=True)
    shutil.copyfile(SAMPLE / "span-7" / "data.csv", root / "data" / "span-7" / "data.csv")
    (root / "small.toml").write_text("min_steps = 40\nmax_steps = 80\n")
    done = ctpipe("run", "--data-root", str(root / "data"), "--home", str(root / "home"),
                  "--config", str(root / "small.toml"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "home"


def _skew_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ctpipe")
    from ctpipe.pipeline.commands import observe

    observe.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["skew", *argv])
    return args.handler(args)


@pytest.mark.e2e
def test_skew_command_against_the_production_model(home, clean_logs, drifted_logs, capsys):
    assert _skew_command("--home", str(home), "--requests", clean_logs, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["drifted"] is False and report["production_version"] == 1
    assert report["training_spans"] == [7]
    assert report["training_statistics"]["source"].startswith("recomputed")
    assert report["requests"] > 0 and report["examples"] == len(_rows(SERVED))

    assert _skew_command("--home", str(home), "--requests", drifted_logs) == 3
    text = capsys.readouterr().out
    assert "serving data has drifted" in text
    assert any(line.strip().startswith("fare: jensen_shannon_divergence")
               for line in text.splitlines())
    assert any(line.strip().startswith("payment_type: infinity_norm")
               for line in text.splitlines())


@pytest.mark.e2e
def test_without_the_window_files_the_span_statistics_are_used(home, clean_logs):
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.home.store import open_store, sqlite_connection

    config = PipelineConfig(home=str(home))
    store = open_store(sqlite_connection(Home.of(config).metadata_path))
    data = skew.training_data(store, 1)
    split = os.path.join(data.examples_uri, "Split-train")
    os.rename(split, split + ".away")  # as retention leaves it
    try:
        report = skew.skew_report(config, clean_logs)
    finally:
        os.rename(split + ".away", split)
    assert report["training_statistics"]["source"].startswith("span 7's train-split")
    assert report["drifted"] is False


@pytest.mark.e2e
def test_bad_home_is_bad_input(tmp_path, clean_logs):
    with pytest.raises(BadInput, match="no pipeline home"):
        _skew_command("--home", str(tmp_path), "--requests", clean_logs)


@pytest.mark.e2e
def test_through_the_real_command_line(home, drifted_logs, tmp_path):
    drifted = ctpipe("skew", "--home", str(home), "--requests", drifted_logs, "--json")
    assert drifted.returncode == 3, drifted.stderr[-2000:]
    assert json.loads(drifted.stdout)["drifted"] is True
    missing = ctpipe("skew", "--home", str(home), "--requests", str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no request log directory" in \
        missing.stderr
