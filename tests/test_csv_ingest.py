"""Spreadsheet CSV exports (byte-order mark, CRLF, quoted fields) become the same tf.Examples as
the plain file; every column gets the curated schema's type in every span; rows split by their
values - through our ExampleGen PTransform and executor on real Beam pipelines."""
import csv
import glob
import os

import pytest

from ctpipe.components import features as F
from ctpipe.pipeline.spans import BadInput, check_span

from tests.support import SAMPLE


def _spreadsheet_copy(source, destination):
    with open(source, newline="") as handle:
        rows = list(csv.reader(handle))
    with open(destination, "w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL,
                   lineterminator="\r\n").writerows(rows)


def _examples(input_base, pattern="span-1/*", transform=None):
    """Serialized tf.Examples (sorted) that `transform` (default: ours) makes of the files.
    They come back through a file: Beam runs a matcher on a pickled copy of it, so a list
    filled by assert_that never reaches the caller."""
    import tempfile

    import apache_beam as beam
    import tensorflow as tf

    from ctpipe.components.csv_ingest import _SpreadsheetCsvToExample

    prefix = os.path.join(tempfile.mkdtemp(dir=str(input_base)), "examples")
    with beam.Pipeline() as pipeline:
        _ = (pipeline
             | (transform or _SpreadsheetCsvToExample)({"input_base": str(input_base)}, pattern)
             | beam.Map(lambda example: example.SerializeToString(deterministic=True))
             | beam.io.WriteToTFRecord(prefix))
    return sorted(record.numpy() for record in
                  tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "*")))


def _parsed(serialized):
    import tensorflow as tf

    return [tf.train.Example.FromString(record) for record in serialized]


def _kinds(serialized, name):
    return {e.features.feature[name].WhichOneof("kind") for e in _parsed(serialized)}


def _write_span(root, span, lines):
    folder = root / f"span-{span}"
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text(",".join(F.CSV_COLUMNS) + "\n" + "".join(lines))


def _sample_lines(span, count, where=lambda row: True):
    with open(SAMPLE / f"span-{span}" / "data.csv", newline="") as handle:
        lines = handle.readlines()[1:]
    index = F.CSV_COLUMNS.index("pickup_census_tract")
    return [line for line in lines if where(next(csv.reader([line]))[index])][:count]


def test_bom_crlf_and_quotes_give_the_same_examples(tmp_path):
    plain, exported = tmp_path / "plain" / "span-1", tmp_path / "exported" / "span-1"
    plain.mkdir(parents=True)
    exported.mkdir(parents=True)
    (plain / "data.csv").write_bytes((SAMPLE / "span-1" / "data.csv").read_bytes())
    _spreadsheet_copy(SAMPLE / "span-1" / "data.csv", exported / "data.csv")
    raw = (exported / "data.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf\"pickup_community_area\"") and b"\r\n" in raw
    assert check_span(1, str(exported)) == check_span(1, str(plain)) == 884
    examples = _examples(tmp_path / "plain")
    assert len(examples) == 884 and _examples(tmp_path / "exported") == examples


def test_header_columns_strip_the_mark(tmp_path):
    from ctpipe.components.csv_ingest import header_columns

    path = tmp_path / "a.csv"
    path.write_bytes("\ufeff\"a\", b ,c\r\n1,2,3\r\n".encode("utf-8"))
    assert header_columns(str(path)) == ["a", "b", "c"]


def test_unbalanced_quote_is_named(tmp_path):
    span = tmp_path / "span-2"
    span.mkdir()
    row = ["1"] * len(F.CSV_COLUMNS)
    row[13] = '"Credit Card'
    (span / "data.csv").write_text(",".join(F.CSV_COLUMNS) + "\n" + ",".join(["1"] *
                                   len(F.CSV_COLUMNS)) + "\n" + ",".join(row) + "\n")
    with pytest.raises(BadInput, match="line 3 opens a quoted field that is never closed"):
        check_span(2, str(span))


def test_a_column_has_the_schema_type_in_every_span_as_stock_writes_it(tmp_path):
    """pickup_census_tract is empty in every row of one span and filled in one row of the other:
    both spans type it INT (the contract), as stock CsvExampleGen does reading both together;
    the values in the spans serialize byte for byte as stock's do."""
    from tfx.components.example_gen.csv_example_gen.executor import _CsvToExample

    tract = "pickup_census_tract"
    _write_span(tmp_path, 1, _sample_lines(1, 12))
    _write_span(tmp_path, 3, _sample_lines(3, 1, where=bool) + _sample_lines(3, 11))
    empty, filled = _examples(tmp_path, "span-1/*"), _examples(tmp_path, "span-3/*")
    assert _kinds(empty, tract) == _kinds(filled, tract) == {"int64_list"}
    assert [len(e.features.feature[tract].int64_list.value) for e in _parsed(empty)] == [0] * 12
    assert sorted(empty + filled) == _examples(tmp_path, "span-*/*", _CsvToExample)


def test_values_that_break_the_schema_type_keep_their_own_type(tmp_path):
    """Text in an INT column is written as text (stock's inference), so the ExampleValidator
    still reports the type anomaly and the gate blocks the span with it; integral fares stay
    floats and an all-empty string column stays bytes."""
    lines = _sample_lines(1, 3)
    seconds, fare = F.CSV_COLUMNS.index("trip_seconds"), F.CSV_COLUMNS.index("fare")
    company = F.CSV_COLUMNS.index("company")
    rows = [next(csv.reader([line])) for line in lines]
    rows[0][seconds] = "about ten minutes"
    for row in rows:
        row[fare], row[company] = "12", ""
    _write_span(tmp_path, 1, [",".join(row) + "\n" for row in rows])
    examples = _examples(tmp_path)
    assert _kinds(examples, "trip_seconds") == {"bytes_list"}
    assert _kinds(examples, "fare") == {"float_list"}
    assert _kinds(examples, "company") == {"bytes_list"}


def test_row_key_ignores_how_a_row_was_encoded():
    """Same row as ctpipe types it and as per-span inference does: other bytes, same key."""
    import tensorflow as tf

    from ctpipe.components.csv_ingest import row_key

    typed, inferred = tf.train.Example(), tf.train.Example()
    typed.features.feature["tract"].int64_list.SetInParent()       # empty INT cell
    inferred.features.feature["tract"].CopyFrom(tf.train.Feature())  # empty, type unknown
    typed.features.feature["fare"].float_list.value.append(12.0)
    inferred.features.feature["fare"].int64_list.value.append(12)
    for example in (typed, inferred):
        example.features.feature["company"].bytes_list.value.append(b"Flash Cab")
    assert typed.SerializeToString() != inferred.SerializeToString()
    assert row_key(typed) == row_key(inferred)
    typed.features.feature["fare"].float_list.value[0] = 12.5
    assert row_key(typed) != row_key(inferred)


def _span_one_properties(input_base):
    """ExampleGen's execution properties for span-1 split train:eval 2:1 by hash buckets."""
    from tfx.proto import example_gen_pb2
    from tfx.utils import proto_utils

    output = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=2),
        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)]))
    return {"input_base": str(input_base),
            "input_config": proto_utils.proto_to_json(example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="single_split", pattern="span-1/*")])),
            "output_config": proto_utils.proto_to_json(output)}


def _split_timestamps(input_base):
    """{split: trip_start_timestamps} as the executor's hash_buckets splits (2:1) write them."""
    import apache_beam as beam
    import tensorflow as tf

    from ctpipe.components.csv_ingest import SpreadsheetCsvExecutor

    properties = _span_one_properties(input_base)
    out = input_base / "splits"
    with beam.Pipeline() as pipeline:
        splits = SpreadsheetCsvExecutor().GenerateExamplesByBeam(pipeline, properties)
        for name, examples in splits.items():
            _ = (examples
                 # serialized already (as WriteSplit's MaybeSerialize accepts them)
                 | f"Key-{name}" >> beam.Map(lambda e: e if isinstance(e, bytes)
                                             else e.SerializeToString())
                 | f"Write-{name}" >> beam.io.WriteToTFRecord(str(out / name)))
    timestamp = {"trip_start_timestamp": tf.io.FixedLenFeature([], tf.int64)}
    return {name: sorted(int(tf.io.parse_single_example(r, timestamp)["trip_start_timestamp"])
                         for r in tf.data.TFRecordDataset(glob.glob(str(out / name) + "*")))
            for name in ("train", "eval")}


def test_executor_splits_rows_by_their_raw_cells(tmp_path):
    """hash_buckets splits follow split_of_cells() on each row's cells (rows told apart by a
    unique timestamp), about 2:1, and a spreadsheet export of the file splits the same."""
    from ctpipe.components.csv_ingest import row_key_order, split_of_cells

    column = F.CSV_COLUMNS.index("trip_start_timestamp")
    rows = [next(csv.reader([line])) for line in _sample_lines(1, 300)]
    for number, row in enumerate(rows):
        row[column] = str(1_400_000_000 + number)
    _write_span(tmp_path / "plain", 1, [",".join(row) + "\n" for row in rows])
    (tmp_path / "exported" / "span-1").mkdir(parents=True)
    _spreadsheet_copy(tmp_path / "plain" / "span-1" / "data.csv",
                      tmp_path / "exported" / "span-1" / "data.csv")
    order = row_key_order(list(F.CSV_COLUMNS))
    expected = {"train": [], "eval": []}
    for row in rows:
        split = split_of_cells([c.encode() for c in row], 2, [2, 3], order)
        expected[("train", "eval")[split]].append(int(row[column]))
    assert 0.25 < len(expected["eval"]) / len(rows) < 0.42
    assert _split_timestamps(tmp_path / "plain") == expected
    assert _split_timestamps(tmp_path / "exported") == expected


def test_schema_file_travels_in_custom_config():
    from tfx.utils import proto_utils

    from ctpipe.components.csv_ingest import contract_file, schema_custom_config

    config = proto_utils.proto_to_json(schema_custom_config("/contracts/schema.pbtxt"))
    assert contract_file({"custom_config": config}) == "/contracts/schema.pbtxt"
    assert contract_file({}) == ""


def _executor_records(input_base, out, in_process, monkeypatch):
    """{split: sorted records} the executor's Do writes for span-1 (train:eval 2:1), on its
    in-process path or on Beam's (the base Do: our transform plus TFX's WriteSplit). Records
    are compared re-serialized deterministically: tfx_bsl's encoder orders a record's features
    differently from one encoder instance to the next (two Beam runs differ byte-wise)."""
    import tensorflow as tf
    from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
    from tfx.proto import example_gen_pb2
    from tfx.types import artifact_utils, standard_artifacts

    from ctpipe.components.csv_ingest import SpreadsheetCsvExecutor

    properties = dict(_span_one_properties(input_base),
                      output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE)
    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    executor = SpreadsheetCsvExecutor()
    with monkeypatch.context() as patch:
        if in_process:
            patch.setattr(SpreadsheetCsvExecutor, "_make_beam_pipeline",
                          lambda self: pytest.fail("the in-process path started Beam"))
            executor.Do({}, {"examples": [examples]}, properties)
        else:
            BaseExampleGenExecutor.Do(executor, {}, {"examples": [examples]}, properties)
    names = artifact_utils.decode_split_names(examples.split_names)
    canonical = lambda record: tf.train.Example.FromString(record).SerializeToString(  # noqa: E731
        deterministic=True)
    return {name: sorted(canonical(r.numpy()) for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], name), "*")),
        compression_type="GZIP")) for name in names}, examples


def test_in_process_executor_writes_the_records_beam_writes(tmp_path, monkeypatch):
    """On the DirectRunner the executor converts and writes without Beam: the same split
    names, the same records in each split (as multisets) and the same artifact properties as
    the Beam path's WriteSplit, including an empty column and an empty split file."""
    lines = _sample_lines(3, 150, where=lambda tract: tract == "") + \
        _sample_lines(1, 150, where=lambda tract: tract != "")
    _write_span(tmp_path / "data", 1, lines)
    beam_splits, beam_artifact = _executor_records(tmp_path / "data", tmp_path / "beam", False,
                                                   monkeypatch)
    ours, our_artifact = _executor_records(tmp_path / "data", tmp_path / "ours", True,
                                           monkeypatch)
    assert list(ours) == list(beam_splits) == ["train", "eval"]
    assert sum(len(r) for r in ours.values()) == len(lines)
    for name in ours:
        assert ours[name] == beam_splits[name], name
    assert our_artifact.get_string_custom_property("payload_format") == \
        beam_artifact.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"

    (tmp_path / "one" / "span-1").mkdir(parents=True)  # one row: a split gets no record
    (tmp_path / "one" / "span-1" / "data.csv").write_text(
        ",".join(F.CSV_COLUMNS) + "\n" + lines[0])
    ours, _ = _executor_records(tmp_path / "one", tmp_path / "one-ours", True, monkeypatch)
    assert sorted(len(r) for r in ours.values()) == [0, 1]
