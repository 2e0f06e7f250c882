"""The bench's leak check (pipeline/bench/measure.py, compare.py): rows are compared by their
normalized values, so an overlap between two pipelines that encode a row differently is caught,
and a clean split reports 0."""
import csv

import pytest

from tests.support import SAMPLE


def _rows(count):
    with open(SAMPLE / "span-1" / "data.csv", newline="") as handle:
        return list(csv.DictReader(handle))[:count]


def _example(row, typed):
    """One CSV row as a tf.Example. typed=True: as ctpipe writes it (contract types, an empty
    cell is an empty list); False: as per-span inference left an all-empty column (Feature())."""
    import tensorflow as tf

    from ctpipe.components.csv_ingest import contract_column_types

    kinds = {0: "int64_list", 1: "float_list", 2: "bytes_list"}
    convert = {0: int, 1: float, 2: str.encode}
    example = tf.train.Example()
    for name, kind in contract_column_types().items():
        feature = example.features.feature[name]
        cell = row[name]
        if not cell and not typed and name == "pickup_census_tract":
            feature.CopyFrom(tf.train.Feature())
            continue
        values = getattr(feature, kinds[int(kind)])
        values.SetInParent()
        if cell:
            values.value.append(convert[int(kind)](cell))
    return example


def _write(path, rows, typed):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for row in rows:
            writer.write(_example(row, typed).SerializeToString(deterministic=True))
    return [str(path)]


@pytest.fixture
def splits(tmp_path):
    rows = _rows(15)
    assert not any(row["pickup_census_tract"] for row in rows)
    train = _write(tmp_path / "train.gz", rows[:10], typed=False)   # the other pipeline
    leaky = _write(tmp_path / "leaky.gz", rows[5:15], typed=True)   # 5 rows also in train
    clean = _write(tmp_path / "clean.gz", rows[10:15], typed=True)
    return train, leaky, clean


def test_overlap_catches_rows_encoded_differently(splits):
    from ctpipe.pipeline.bench.measure import overlap, records

    train, leaky, clean = splits
    assert not set(records(leaky)) & set(records(train))  # a byte comparison sees nothing
    assert overlap(leaky, train) == 5
    assert overlap(clean, train) == 0


def test_rows_outside_training_drops_exactly_the_leaked_ones(splits, tmp_path):
    from ctpipe.pipeline.bench.measure import overlap, records, write_rows_outside

    train, leaky, _ = splits
    out = str(tmp_path / "neither.gz")
    assert write_rows_outside(leaky, train, out) == {"rows": 5,
                                                     "dropped_rows_seen_in_training": 5}
    assert len(records([out])) == 5 and overlap([out], train) == 0


def test_split_files_lists_every_examples_artifact(tmp_path):
    """A home's train rows: every Examples artifact in its ML Metadata, not only the latest."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from ctpipe.pipeline.bench.measure import split_files

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    store = metadata_store.MetadataStore(config)
    type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Examples"))
    expected = []
    for number in (1, 2):
        uri = tmp_path / f"examples-{number}"
        for split in ("train", "eval"):
            (uri / f"Split-{split}").mkdir(parents=True)
            (uri / f"Split-{split}" / "data.gz").write_bytes(b"")
        expected.append(str(uri / "Split-train" / "data.gz"))
        store.put_artifacts([metadata_store_pb2.Artifact(type_id=type_id, uri=str(uri))])
    assert split_files(str(tmp_path / "metadata.sqlite"), "train") == expected


def test_held_out_span_is_encoded_whole(tmp_path):
    import tensorflow as tf

    from ctpipe.pipeline.bench.compare import encode_span
    from ctpipe.pipeline.bench.measure import overlap, records

    (tmp_path / "span-9").mkdir()
    lines = (SAMPLE / "span-16" / "data.csv").read_text().splitlines(keepends=True)[:41]
    (tmp_path / "span-9" / "data.csv").write_text("".join(lines))
    path = encode_span(str(tmp_path), 9, str(tmp_path / "held-out.gz"))
    examples = [tf.train.Example.FromString(r) for r in records([path])]
    assert len(examples) == 40 and overlap([path], [path]) == 40
    # empty cells carry no type, so a model that types a never-seen column BYTES parses them
    assert {e.features.feature["pickup_census_tract"].WhichOneof("kind") for e in examples} \
        == {None}
    assert {e.features.feature["fare"].WhichOneof("kind") for e in examples} == {"float_list"}


def test_markdown_shows_every_anchor_with_held_out_auc_and_leaks():
    from ctpipe.pipeline.bench.compare import markdown

    def run(seconds):
        return {"seconds": seconds, "peak_rss_mib": 900.0, "components": {"Trainer": 5.0},
                "auc_held_out_span": 0.8, "auc_held_out_span_stderr": 0.03,
                "auc_all_spans": 0.79, "auc_all_spans_stderr": 0.01}

    leaks = {"held_out_span": {"rows": 200, "in_stock_training": 0, "in_expert_training": 0,
                               "in_ctpipe_training": 0},
             "all_spans": {"rows": 1700, "in_stock_training": 1, "in_expert_training": 0,
                           "in_ctpipe_training": 0,
                           "stock_eval_rows_dropped_as_in_others_training": 3100}}
    result = {"data": {"held_out_span": 16, "window_spans": 3},
              "cycles": {"incremental": {"stock": run(40.0), "expert": run(20.0),
                                         "ctpipe": run(10.0), "ratio": 0.25,
                                         "ratio_vs_expert": 0.5, "leak_check": leaks}}}
    table = markdown(result)
    assert "AUC held-out span 16" in table and "0.8 ± 0.03" in table
    assert "| incremental | naive stock | 40.0 | 0.25 |" in table
    assert "| incremental | expert stock | 20.0 | 0.50 |" in table
    assert "| incremental | ctpipe | 10.0 | 1.00 |" in table
    assert "| 0 / 1 |" in table and "200 / 1700 (3100 dropped)" in table
    assert "| incremental naive stock | incremental expert stock | incremental ctpipe |" in table


def test_expert_anchor_compiles_with_span_window_and_warm_start(tmp_path):
    """The expert stock anchor (no run): ExampleGen reads the newest span only, the Trainer's
    examples come from a SpanRangeStrategy rolling window of the same size as ctpipe's, after
    ExampleGen, and its base_model (and the Evaluator's baseline) is the latest blessed model."""
    from tfx.dsl.compiler.compiler import Compiler
    from tfx.proto import range_config_pb2
    from tfx.utils import proto_utils

    from ctpipe.pipeline.bench.compare import WINDOW_SPANS
    from ctpipe.pipeline.bench.stock import (
        LATEST_BLESSED_ID,
        SPAN_RESOLVER_ID,
        create_expert_pipeline,
    )
    from ctpipe.pipeline.config import PipelineConfig

    assert WINDOW_SPANS == PipelineConfig().window_spans
    pipeline = create_expert_pipeline(str(tmp_path / "data"), str(tmp_path / "home"),
                                      window_spans=WINDOW_SPANS)
    nodes = {c.id: c for c in pipeline.components}
    resolver = nodes[SPAN_RESOLVER_ID]
    assert resolver.exec_properties["resolver_class"].__name__ == "SpanRangeStrategy"
    window = resolver.exec_properties["source_uri"]["range_config"]  # TFX keeps config there
    assert window.rolling_range.num_spans == WINDOW_SPANS
    assert nodes[LATEST_BLESSED_ID].exec_properties["resolver_class"].__name__ == \
        "LatestBlessedModelStrategy"
    example_gen = nodes["CsvExampleGen"]
    range_config = range_config_pb2.RangeConfig()
    proto_utils.json_to_proto(example_gen.exec_properties["range_config"], range_config)
    assert range_config.rolling_range.num_spans == 1
    assert "{SPAN}" in example_gen.exec_properties["input_config"]

    compiled = {n.pipeline_node.node_info.id: n.pipeline_node
                for n in Compiler().compile(pipeline).nodes}
    trainer = compiled["Trainer"]
    assert {"base_model", "examples"} <= set(trainer.inputs.inputs)
    assert SPAN_RESOLVER_ID in trainer.upstream_nodes
    assert LATEST_BLESSED_ID in trainer.upstream_nodes
    assert "CsvExampleGen" in compiled[SPAN_RESOLVER_ID].upstream_nodes
    assert LATEST_BLESSED_ID in compiled["Evaluator"].upstream_nodes
    # backfill: one given span (a static range)
    backfill = {c.id: c for c in create_expert_pipeline(
        str(tmp_path / "data"), str(tmp_path / "home"), span=4).components}["CsvExampleGen"]
    proto_utils.json_to_proto(backfill.exec_properties["range_config"], range_config)
    assert range_config.static_range.start_span_number == 4
