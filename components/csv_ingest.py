"""CsvExampleGen's executor: CSV read as spreadsheets export it, every column typed by the
curated schema, and rows split by their values rather than by their serialized bytes.

Spreadsheet exports (Excel "CSV UTF-8", many ETL tools) start with a UTF-8 byte-order mark and
end lines with CRLF. Stock CsvExampleGen reads the header with the mark glued to the first column
name ("\\ufeffpickup_community_area"), so every downstream name check fails. Data lines are
unaffected (TFX's line buffer and tfx_bsl's CSV parser handle CRLF and quoted fields), so only
the header is mended: read without the mark, then TFX's own reader, parser and tf.Example
conversion run unchanged.

One type per column: stock infers each column's type from the rows it reads, so a column that
is empty in one span (pickup_census_tract, in 15 of 16) is written `Feature()` there and
`int64_list {}` elsewhere. Here the type comes from the contract (schema/schema.pbtxt), so an
empty or sparse column serializes the same in every span - and as stock writes it wherever stock
infers the contract's type. A span whose values do not fit the contract (text in an INT column)
keeps the type its values need, so the ExampleValidator reports the anomaly as before.

Splits: stock hashes each tf.Example's serialized bytes, which change with typing (the empty
column above moved every row of 15 spans). Here the hash is of raw_row_key(), the row's cells as
written, read before typing: a row keeps its split whatever types or encoding a version of
ExampleGen gives it. Stock offers no such key (`partition_feature_name` hashes one feature), so
the bench compares the two pipelines' rows by row_key(), their values normalized.

Speed (issue 20, item 5): stock reads, parses, infers and converts row by row through five Beam
steps, ~160 us a row on this machine's DirectRunner. Here each file is read twice by Arrow's C++
CSV reader, a 64 MiB block at a time (once to infer column types, once to convert), cells are
typed with Arrow casts, rows split with one hash each, and tf.Examples serialized by tfx_bsl's
C++ encoder: Beam sees one element per file until the split records go to WriteSplit. A column
whose cells Arrow cannot cast (" 5", "+5", "1_000", integers beyond int64) is inferred and
converted cell by cell exactly as stock does (tfx_bsl's _InferValueType and TFX's handlers), so
every value is what stock writes. The serialized bytes order a tf.Example's features differently
from protobuf's map order; the values, and therefore row_key() and each row's split, are the
same.

In process (issue 20, item 5): on the DirectRunner with hash_buckets splits, the same DoFns'
code runs without Beam and each split is written by TensorFlow's C++ TFRecord writer (GZIP) to
the file name WriteSplit gives a one-shard split (`data_tfrecord-00000-of-00001.gz`). Beam's
WriteSplit pays a Python call per record three times (MaybeSerialize, Reshuffle, WriteToTFRecord
with Python gzip): ~60% of a 100x span's ExampleGen time. The records and splits are the same;
their order within a split is the files' order instead of Reshuffle's random one (the Trainer
shuffles, the Evaluator and statistics do not depend on order). Other runners, other split
configs and other output formats take the Beam path.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from tfx.components.example_gen import write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils
from tfx_bsl.coders import csv_decoder

BOM = "\ufeff"


def header_columns(path: str) -> List[str]:
    """Column names of a CSV file's first line, without byte-order mark, quotes or CR."""
    import csv

    with fileio.open(path, "r") as handle:
        first_line = handle.readline()
    if isinstance(first_line, bytes):
        first_line = first_line.decode("utf-8")
    first_line = first_line.lstrip(BOM)
    return [name.strip() for name in next(csv.reader([first_line]), [])]


# The contract's feature types as tfx_bsl column types. ColumnType orders INT < FLOAT < STRING
# by how much a column's values need: the larger of contract and data is what a span is given.
_CONTRACT_TYPES = {"INT": csv_decoder.ColumnType.INT, "FLOAT": csv_decoder.ColumnType.FLOAT,
                   "BYTES": csv_decoder.ColumnType.STRING}


def contract_column_types(schema_file: str = "") -> Dict[str, csv_decoder.ColumnType]:
    """Column name -> type, from the curated schema (`schema_file`, else the packaged one)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    from ctpipe.components.curated_schema import load_contract

    return {feature.name: _CONTRACT_TYPES[schema_pb2.FeatureType.Name(feature.type)]
            for feature in load_contract(schema_file).feature
            if schema_pb2.FeatureType.Name(feature.type) in _CONTRACT_TYPES}


def contract_file(exec_properties: Mapping[str, Any]) -> str:
    """The schema file a pipeline names through ExampleGen's custom_config (a packed
    google.protobuf.StringValue holding the path; see schema_custom_config), else ""."""
    text = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if not text:
        return ""
    from google.protobuf import wrappers_pb2

    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(text, config)
    path = wrappers_pb2.StringValue()
    return path.value if config.custom_config.Unpack(path) else ""


def schema_custom_config(schema_file: str) -> example_gen_pb2.CustomConfig:
    """ExampleGen's custom_config that makes this executor type columns by `schema_file`."""
    from google.protobuf import wrappers_pb2

    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(wrappers_pb2.StringValue(value=schema_file))
    return config


def type_by_contract(inferred: List[csv_decoder.ColumnInfo],
                     contract: Mapping[str, csv_decoder.ColumnType]
                     ) -> List[csv_decoder.ColumnInfo]:
    """Each column gets the contract's type - empty or sparse columns included - unless this
    span's values need a wider one (text in an INT column): then the values' type, so that the
    ExampleValidator reports the mismatch as it would for stock CsvExampleGen."""
    return [csv_decoder.ColumnInfo(info.name, max(contract[info.name], info.type)
                                   if info.name in contract else info.type)
            for info in inferred]


def row_key_order(columns: List[str]) -> List[int]:
    """Cell positions in column-name order: the key of a row is the same in any column order."""
    return sorted(range(len(columns)), key=columns.__getitem__)


def raw_row_key(cells: List[bytes], order: List[int]) -> bytes:
    """The split key of a CSV row: its cells as written, stripped of surrounding whitespace (a
    spreadsheet's CR), in column-name order. Read before any typing, so it does not depend on
    the column types or on how a tf.Example is serialized; a couple of microseconds a row."""
    if len(cells) != len(order):  # malformed: any split; the conversion then raises as stock
        return b"\x1f".join(cells)
    return b"\x1f".join([cells[i].strip() for i in order])


def split_of_cells(cells: List[bytes], num_partitions: int, buckets: List[int],
                   order: List[int]) -> int:
    """Which output split a CSV row goes to: TFX's bucket rule (sha256 modulo the total of
    hash_buckets, then the first split whose cumulative buckets exceed it), on raw_row_key()."""
    bucket = int(hashlib.sha256(raw_row_key(cells, order)).hexdigest(), 16) % buckets[-1]
    return bisect.bisect(buckets, bucket)


def _canonical(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return b"%d" % value if value.is_integer() else repr(value).encode()
    return b"%d" % value


def row_key(example: tf.train.Example) -> bytes:
    """A row's identity recovered from any tf.Example encoding of it, for comparing the rows of
    two pipelines (the bench's leak check; stock leaves only tf.Examples): values by feature
    name, normalized so that an empty cell as `Feature()`, as an empty list or as no feature
    are alike, 3 as int64 equals 3.0 as float, and map order does not matter. Slower than
    raw_row_key() (the proto walk costs ~80 us a row), so not used to split."""
    parts = []
    for name, feature in sorted(example.features.feature.items()):
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else ()
        if values:
            parts.append(name.encode() + b"=" + b"\x1e".join(_canonical(v) for v in values))
    return b"\x1f".join(parts)


# -- vectorized reading and conversion (one Arrow table per block of a file) --------------------

_UNKNOWN = csv_decoder.ColumnType.UNKNOWN
_INTEGER_LIKE = r"^\s*[+-]?[0-9_]+\s*$"  # what Python's int() may accept
_ARROW_LIST_TYPES = {csv_decoder.ColumnType.INT: pa.large_list(pa.int64()),
                     csv_decoder.ColumnType.FLOAT: pa.large_list(pa.float32()),
                     csv_decoder.ColumnType.STRING: pa.large_list(pa.large_binary())}


# Rows are read, typed and encoded a block at a time, so a worker holds one block's table and
# records, not a whole file's: on a 2.4M-row file (1000x) the whole-file read held ~3 GB in the
# Beam harness. 64 MiB of CSV is ~500k rows of the sample's width.
CSV_BLOCK_BYTES = 1 << 26


class _StreamOf(io.RawIOBase):
    """A fileio (tf.io.gfile) handle as the raw stream Arrow's reader takes: GFile has read()
    but none of the io attributes (closed, readable) pa.PythonFile checks."""

    def __init__(self, handle) -> None:
        super().__init__()
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._handle.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def csv_tables(path: str, columns: List[str],
               block_bytes: Optional[int] = None) -> Iterator[pa.Table]:
    """Every cell of a CSV file as text ("" for an empty cell), header line skipped (its
    byte-order mark with it); CRLF, quotes and quoted newlines as the csv module reads them.
    One table per block of about `block_bytes` (Arrow's streaming reader; a quoted newline
    never splits a row)."""
    from pyarrow import csv as pa_csv

    with fileio.open(path, "rb") as handle:
        reader = pa_csv.open_csv(
            pa.PythonFile(_StreamOf(handle), mode="r"),
            read_options=pa_csv.ReadOptions(column_names=columns, skip_rows=1,
                                            block_size=block_bytes or CSV_BLOCK_BYTES),
            parse_options=pa_csv.ParseOptions(delimiter=",", newlines_in_values=True,
                                              ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in columns},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch])


def read_csv_table(path: str, columns: List[str]) -> pa.Table:
    """The whole file as one table (csv_tables() joined)."""
    tables = list(csv_tables(path, columns))
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in columns})
    return pa.concat_tables(tables)


def _try_cast(values: pa.Array, target: pa.DataType) -> Optional[pa.Array]:
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def infer_column_type(column: pa.ChunkedArray) -> csv_decoder.ColumnType:
    """What tfx_bsl's ColumnTypeInferrer makes of a column: Arrow casts where they parse every
    non-empty cell (they accept a subset of what Python's int()/float() accept), else the
    per-cell inference itself."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    filled = column.filter(pc.not_equal(column, ""))
    if len(filled) == 0:
        return _UNKNOWN
    if _try_cast(filled, pa.int64()) is not None:
        return csv_decoder.ColumnType.INT
    # FLOAT only if no cell is an integer that Arrow refused (beyond int64: stock says STRING)
    if (_try_cast(filled, pa.float64()) is not None
            and not pc.any(pc.match_substring_regex(filled, _INTEGER_LIKE)).as_py()):
        return csv_decoder.ColumnType.FLOAT
    found = _UNKNOWN
    for cell in filled.to_pylist():
        found = max(found, csv_decoder._InferValueType(cell.encode()))  # noqa: SLF001
        if found == csv_decoder.ColumnType.STRING:
            break
    return found


def merge_column_types(accumulators: List[Dict[str, int]]) -> Dict[str, int]:
    merged: Dict[str, int] = {}
    for accumulator in accumulators:
        for name, kind in accumulator.items():
            merged[name] = max(merged.get(name, kind), kind)
    return merged


def _python_values(cells: List[str], kind: csv_decoder.ColumnType) -> List[list]:
    """Stock's per-cell conversion (TFX's _int/_float/_bytes handlers)."""
    convert = {csv_decoder.ColumnType.INT: int, csv_decoder.ColumnType.FLOAT: float,
               csv_decoder.ColumnType.STRING: str.encode}[kind]
    return [[convert(cell)] if cell else [] for cell in cells]


def typed_column(column: pa.ChunkedArray, kind: csv_decoder.ColumnType) -> pa.Array:
    """A text column as the list array the tf.Example encoder writes: one value per filled
    cell, an empty typed list for an empty cell, no value kind at all for UNKNOWN."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if kind == _UNKNOWN:
        return pa.nulls(len(column), _ARROW_LIST_TYPES[csv_decoder.ColumnType.INT])
    filled = pc.not_equal(column, "")
    values = column.filter(filled)
    if kind == csv_decoder.ColumnType.STRING:
        typed = pc.cast(values, pa.large_binary())
    elif kind == csv_decoder.ColumnType.INT:
        typed = _try_cast(values, pa.int64())
    else:
        wide = _try_cast(values, pa.float64())
        typed = None if wide is None else pc.cast(wide, pa.float32(), safe=False)
    if typed is None:  # a cell Arrow does not parse: stock's conversion, cell by cell
        return pa.array(_python_values(column.to_pylist(), kind), _ARROW_LIST_TYPES[kind])
    filled_np = filled.to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(column) + 1, dtype=np.int64)
    np.cumsum(filled_np, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), typed)


def row_splits(table: pa.Table, columns: List[str], buckets: List[int]) -> np.ndarray:
    """split_of_cells() of every row at once (raw_row_key: cells stripped, in name order)."""
    ordered = [pc.ascii_trim_whitespace(table.column(columns[i])) for i in row_key_order(columns)]
    keys = pc.binary_join_element_wise(*ordered, "\x1f").to_pylist()
    total, sha256, from_bytes = buckets[-1], hashlib.sha256, int.from_bytes
    hashed = [from_bytes(sha256(key.encode()).digest(), "big") % total for key in keys]
    return np.searchsorted(np.asarray(buckets), np.asarray(hashed, dtype=np.int64), side="right")


class _InferFileColumnTypes(beam.DoFn):
    def __init__(self, columns: List[str]):
        self._columns = columns

    def process(self, path: str):
        """The column types of the whole file: the widest a block needs (ColumnType is
        ordered UNKNOWN < INT < FLOAT < STRING, and a column's type is its widest cell's)."""
        yield merge_column_types(
            [{name: int(infer_column_type(table.column(name))) for name in self._columns}
             for table in csv_tables(path, self._columns)])


class _FileToSerializedExamples(beam.DoFn):
    """One CSV file -> serialized tf.Examples, as tagged outputs per split (or untagged)."""

    def __init__(self, columns: List[str], contract: Mapping[str, csv_decoder.ColumnType],
                 buckets: Optional[List[int]]):
        self._columns, self._contract, self._buckets = columns, dict(contract), buckets
        self._encoder = None

    def setup(self):
        from tfx_bsl.coders import example_coder

        self._encoder = example_coder.RecordBatchToExamplesEncoder()

    def process(self, path: str, inferred: Dict[str, int]):
        for split, records in self.split_records(path, inferred):
            if split is None:
                yield from records
            else:
                for record in records:
                    yield beam.pvalue.TaggedOutput(str(split), record)

    def split_records(self, path: str, inferred: Dict[str, int]
                      ) -> Iterator[Tuple[Optional[int], List[bytes]]]:
        """(split index, serialized records) per block of the file; index None without
        buckets."""
        infos = type_by_contract(
            [csv_decoder.ColumnInfo(name, csv_decoder.ColumnType(inferred.get(name, _UNKNOWN)))
             for name in self._columns], self._contract)
        for table in csv_tables(path, self._columns):
            yield from self._block(table, infos)

    def _block(self, table: pa.Table, infos: List[csv_decoder.ColumnInfo]):
        batch = pa.RecordBatch.from_arrays(
            [typed_column(table.column(info.name), info.type) for info in infos],
            [info.name for info in infos])
        if not self._buckets:
            yield None, self._encoder.encode(batch)
            return
        splits = row_splits(table, self._columns, self._buckets)
        for index in range(len(self._buckets)):
            rows = np.flatnonzero(splits == index)
            if len(rows):
                yield index, self._encoder.encode(batch.take(pa.array(rows)))


def input_files(pattern: str) -> Tuple[List[str], List[str]]:
    """(the files a split pattern matches, their one header); RuntimeError when none match or
    two headers differ."""
    files = fileio.glob(pattern)
    if not files:
        raise RuntimeError(f"split pattern {pattern} matches no files")
    columns = header_columns(files[0])
    for path in files[1:]:
        if header_columns(path) != columns:
            raise RuntimeError(f"{path} has another header than {files[0]}")
    return files, columns


# The file WriteSplit's WriteToTFRecord names a split's one shard
IN_PROCESS_SPLIT_FILE = "data_tfrecord-00000-of-00001.gz"


def write_splits_in_process(pattern: str, schema_file: str, buckets: List[int],
                            split_dirs: List[str]) -> None:
    """The Beam path's records, split i written to split_dirs[i]/IN_PROCESS_SPLIT_FILE by
    TensorFlow's GZIP TFRecord writer (every split gets its file, empty or not, as Beam's
    WriteToTFRecord writes one empty shard)."""
    files, columns = input_files(pattern)
    infer = _InferFileColumnTypes(columns)
    inferred = merge_column_types([types for path in files for types in infer.process(path)])
    convert = _FileToSerializedExamples(columns, contract_column_types(schema_file), buckets)
    convert.setup()
    writers = []
    try:
        for directory in split_dirs:
            fileio.makedirs(directory)
            writers.append(tf.io.TFRecordWriter(os.path.join(directory, IN_PROCESS_SPLIT_FILE),
                                                options="GZIP"))
        for path in files:
            for split, records in convert.split_records(path, inferred):
                write = writers[split].write
                for record in records:
                    write(record)
    finally:
        for writer in writers:
            writer.close()


@beam.typehints.with_input_types(beam.Pipeline)
class _SpreadsheetCsvToExample(beam.PTransform):
    """Stock _CsvToExample, but the header comes from header_columns(), the column types from
    the curated schema (type_by_contract), and the work is done a file at a time (module
    docstring). Without `buckets`: one PCollection of tf.Examples. With `buckets` (cumulative
    hash_buckets): one PCollection of serialized tf.Examples per output split, rows assigned
    by split_of_cells() (row_splits())."""

    def __init__(self, exec_properties: Dict[str, Any], split_pattern: str,
                 buckets: Optional[List[int]] = None):
        super().__init__()
        self._pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                                     split_pattern)
        self._schema_file = contract_file(exec_properties)
        self._buckets = buckets

    def expand(self, pipeline: beam.Pipeline):
        files, columns = input_files(self._pattern)
        contract = contract_column_types(self._schema_file)
        names = pipeline | "CreateFilenames" >> beam.Create(files)
        inferred = beam.pvalue.AsSingleton(
            names
            | "InferColumnTypes" >> beam.ParDo(_InferFileColumnTypes(columns))
            | "MergeColumnTypes" >> beam.CombineGlobally(merge_column_types))
        convert = _FileToSerializedExamples(columns, contract, self._buckets)
        if not self._buckets:
            return (names | "ToTFExample" >> beam.ParDo(convert, inferred)
                    | "Parse" >> beam.Map(tf.train.Example.FromString))
        tags = [str(index) for index in range(len(self._buckets))]
        parts = names | "ToSplitRecords" >> beam.ParDo(convert, inferred).with_output_types(
            bytes).with_outputs(*tags)
        return tuple(parts[tag] for tag in tags)


def resolve_span(exec_properties: Dict[str, Any], examples) -> None:
    """What ExampleGen's driver does, for runners that never call it.

    Open-source Kubeflow Pipelines never runs the `pre_cache_check` hook in which TFX resolves
    `span-{SPAN}/*`, so the pattern reaches the executor unresolved. Here the span comes from
    the range config (our SpanSelect step sets it to the oldest pending span) or, without one,
    is the newest; the pattern, span, version and fingerprint are then set as the driver would.
    """
    from tfx.components.example_gen import driver, input_processor
    from tfx.proto import example_gen_pb2, range_config_pb2
    from tfx.utils import proto_utils

    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                              input_config)
    if not any("{SPAN}" in split.pattern for split in input_config.splits):
        return  # a driver already resolved it (local runner, Vertex)
    range_config = None
    if exec_properties.get(standard_component_specs.RANGE_CONFIG_KEY):
        range_config = range_config_pb2.RangeConfig()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.RANGE_CONFIG_KEY],
                                  range_config)
    processor = input_processor.FileBasedInputProcessor(
        exec_properties[standard_component_specs.INPUT_BASE_KEY], input_config.splits,
        range_config)
    span, version = processor.resolve_span_and_version()
    exec_properties["span"] = span
    exec_properties["version"] = version
    exec_properties["input_fingerprint"] = processor.get_input_fingerprint(span, version)
    for split in input_config.splits:
        split.pattern = processor.get_pattern_for_span_version(split.pattern, span, version)
    exec_properties[standard_component_specs.INPUT_CONFIG_KEY] = \
        proto_utils.proto_to_json(input_config)
    driver.update_output_artifact(exec_properties=exec_properties,
                                  output_artifact=examples.mlmd_artifact)


def _split_configs(exec_properties: Dict[str, Any]
                   ) -> Tuple[example_gen_pb2.Input, example_gen_pb2.Output]:
    """ExampleGen's input and output configs, from their JSON execution properties."""
    input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                              input_config)
    proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                              output_config)
    return input_config, output_config


class SpreadsheetCsvExecutor(BaseExampleGenExecutor):
    """ExampleGen executor for CSV with an optional byte-order mark and CRLF line endings,
    columns typed by the curated schema, rows split by raw_row_key()."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 - TFX API
        return _SpreadsheetCsvToExample

    def GenerateExamplesByBeam(self, pipeline, exec_properties):  # noqa: N802 - TFX API
        """The base method, but hash_buckets splits hash raw_row_key(), not the serialized
        tf.Example (a partition_feature_name, or input splits, go to the base unchanged)."""
        from tfx.components.example_gen import utils

        input_config, output_config = _split_configs(exec_properties)
        split_config = output_config.split_config
        if not split_config.splits or split_config.HasField("partition_feature_name"):
            return super().GenerateExamplesByBeam(pipeline, exec_properties)
        if len(input_config.splits) != 1:
            raise RuntimeError("ExampleGen: output splits need exactly one input split")
        exec_properties["_beam_pipeline_args"] = self._beam_pipeline_args or []
        buckets = list(itertools.accumulate(s.hash_buckets for s in split_config.splits))
        splits = pipeline | "InputToRecord" >> _SpreadsheetCsvToExample(
            exec_properties, input_config.splits[0].pattern, buckets)
        return dict(zip(utils.generate_output_split_names(input_config, output_config), splits))

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX API
        from tfx.types import artifact_utils

        resolve_span(exec_properties, artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY]))
        if not self._convert_in_process(output_dict, exec_properties):
            super().Do(input_dict, output_dict, exec_properties)

    def _convert_in_process(self, output_dict, exec_properties) -> bool:
        """The module docstring's in-process path; False (nothing written) where it does not
        apply, and the base Do runs Beam."""
        from tfx.components.example_gen import utils
        from tfx.components.util import examples_utils
        from tfx.types import artifact_utils

        from ctpipe.components.fast_evaluator import runs_in_process

        input_config, output_config = _split_configs(exec_properties)
        split_config = output_config.split_config
        payload = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
        file_format = exec_properties.get(standard_component_specs.OUTPUT_FILE_FORMAT_KEY)
        if (not runs_in_process(self._beam_pipeline_args) or not split_config.splits
                or split_config.HasField("partition_feature_name")
                or len(input_config.splits) != 1
                or payload not in (None, example_gen_pb2.FORMAT_TF_EXAMPLE)
                or file_format not in (None, example_gen_pb2.FILE_FORMAT_UNSPECIFIED,
                                       example_gen_pb2.FORMAT_TFRECORDS_GZIP)):
            return False
        examples = output_dict[standard_component_specs.EXAMPLES_KEY]
        names = utils.generate_output_split_names(input_config, output_config)
        artifact_utils.get_single_instance(examples).split_names = \
            artifact_utils.encode_split_names(names)
        write_splits_in_process(
            os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                         input_config.splits[0].pattern),
            contract_file(exec_properties),
            list(itertools.accumulate(s.hash_buckets for s in split_config.splits)),
            [artifact_utils.get_split_uri(examples, name) for name in names])
        for artifact in examples:  # as the base Do records the formats
            if payload:
                examples_utils.set_payload_format(artifact, payload)
            if file_format:
                examples_utils.set_file_format(artifact,
                                               write_split.to_file_format_str(file_format))
        return True
