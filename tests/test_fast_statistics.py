"""The in-process StatisticsGen (components/fast_statistics.py) against TFX's own executor (TFDV
on the DirectRunner) on the same examples: the same statistics for every split, feature and
field, floats up to summation order, and the same artifact properties. Examples come from the
long-run scenario's home (the newest span, which has an empty census-tract column in places)."""
from __future__ import annotations

import math
import os
import shutil

import pytest

from tests.support import home_artifact_uris, top_values_up_to_ties

pytestmark = pytest.mark.e2e


def _examples_uri(home) -> str:
    found = home_artifact_uris(home)["examples"]
    assert found
    return found[-1]


def _run(executor, examples_uri, out):
    """The executor as the pipeline calls it: with the curated schema (its categorical ints get
    string statistics), no other options."""
    from tfx.types import artifact_utils, standard_artifacts

    from tests.support import REPO

    schema = standard_artifacts.Schema()
    schema.uri = str(out.parent / "schema")  # a folder holding one file, as CuratedSchema's
    os.makedirs(schema.uri, exist_ok=True)
    shutil.copy(REPO / "schema" / "schema.pbtxt", schema.uri)
    examples = standard_artifacts.Examples()
    examples.uri = examples_uri
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    examples.span = 7
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(out)
    executor.Do({"examples": [examples], "schema": [schema]}, {"statistics": [statistics]}, {})
    return statistics


def _flatten(value, path=""):
    """A statistics dict as {path: leaf}; lists of named entries keyed by their name."""
    if isinstance(value, dict):
        items = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{path}.{key}"))
        return items
    if isinstance(value, list):
        items = {}
        for index, inner in enumerate(value):
            name = inner.get("path", {}).get("step", [index]) if isinstance(inner, dict) else [
                index]
            items.update(_flatten(inner, f"{path}[{name[0]}]"))
        return items
    return {path: value}


def _ties_in_order(statistics: dict) -> dict:
    """Values with the same count are ranked in whichever order each path met them (Beam's
    merge order vs one pass), and where top values are cut at k, which of the values tied at
    the cut made it is arbitrary: top values up to ties (tests/support.py), rank-histogram
    buckets ordered by (count, value) (it is not cut for our columns)."""
    for dataset in statistics.get("datasets", []):
        for feature in dataset.get("features", []):
            strings = feature.get("stringStats", {})
            if "topValues" in strings:
                above, tied, last = top_values_up_to_ties(
                    (v["value"], v["frequency"]) for v in strings["topValues"])
                strings["topValues"] = repr((sorted(above.items()), tied, last))
            buckets = strings.get("rankHistogram", {}).get("buckets", [])
            labels = sorted(((-b["sampleCount"], b["label"]) for b in buckets))
            for bucket, (count, label) in zip(buckets, labels):  # ranks stay where they are
                bucket["sampleCount"], bucket["label"] = -count, label
    return statistics


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def test_in_process_statistics_match_tfdv_on_beam(long_run, tmp_path):
    from google.protobuf import json_format
    from tfx.components.statistics_gen.executor import Executor as TfxExecutor

    from ctpipe.components.data_gate import load_split_statistics
    from ctpipe.components.fast_statistics import InProcessStatisticsGenExecutor

    examples = _examples_uri(long_run.home)
    theirs = _run(TfxExecutor(), examples, tmp_path / "tfx")
    class NoBeam(InProcessStatisticsGenExecutor):
        def _make_beam_pipeline(self):  # a silent fallback to Beam fails here
            raise AssertionError("the in-process path fell back to Beam")

    ours = _run(NoBeam(), examples, tmp_path / "ours")
    assert ours.split_names == theirs.split_names and ours.span == theirs.span == 7
    assert ours.get_json_value_custom_property("sample_rate_by_split") == \
        theirs.get_json_value_custom_property("sample_rate_by_split")
    for split in ("train", "eval"):
        mine = _flatten(_ties_in_order(json_format.MessageToDict(
            load_split_statistics(ours.uri, split))))
        stock = _flatten(_ties_in_order(json_format.MessageToDict(
            load_split_statistics(theirs.uri, split))))
        assert mine.keys() == stock.keys(), sorted(set(mine) ^ set(stock))[:10]
        different = [(key, mine[key], stock[key]) for key in stock
                     if not _close(mine[key], stock[key])]
        assert different == [], different[:10]
        assert any(key.endswith(".numExamples") for key in stock)
