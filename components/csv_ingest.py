"""CsvExampleGen's executor, made to read CSV files as spreadsheets export them.

Why: spreadsheet exports (Excel "CSV UTF-8", many ETL tools) start with a UTF-8 byte-order mark
and end lines with CRLF. Stock CsvExampleGen reads the header with the mark glued to the first
column name ("\\ufeffpickup_community_area"), so every downstream name check fails. Data lines
are unaffected (the header line is skipped; CRLF and quoted fields, even multi-line ones, are
handled by TFX's line buffer and tfx_bsl's CSV parser), so only the header needs mending: this
executor reads it with the mark and surrounding whitespace removed, then reuses TFX's own
record reader, parser, type inference and tf.Example conversion unchanged.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.csv_example_gen import executor as csv_executor
from tfx.dsl.io import fileio
from tfx.types import standard_component_specs
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


@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
class _SpreadsheetCsvToExample(beam.PTransform):
    """Stock _CsvToExample, but the header comes from header_columns()."""

    def __init__(self, exec_properties: Dict[str, Any], split_pattern: str):
        super().__init__()
        self._pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                                     split_pattern)

    def expand(self, pipeline: beam.Pipeline):
        files = fileio.glob(self._pattern)
        if not files:
            raise RuntimeError(f"split pattern {self._pattern} matches no files")
        columns = header_columns(files[0])
        for path in files[1:]:
            if header_columns(path) != columns:
                raise RuntimeError(f"{path} has another header than {files[0]}")
        lines = (pipeline
                 | "CreateFilenames" >> beam.Create(files)
                 | "ReadFromText" >> beam.ParDo(csv_executor._ReadCsvRecordsFromTextFile())
                 | "ParseCSVLine" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
                 | "ExtractParsedCSVLines" >> beam.Keys())
        column_infos = beam.pvalue.AsSingleton(
            lines | "InferColumnTypes" >> beam.CombineGlobally(
                csv_decoder.ColumnTypeInferrer(columns, skip_blank_lines=True)))
        return lines | "ToTFExample" >> beam.ParDo(csv_executor._ParsedCsvToTfExample(),
                                                   column_infos)


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


class SpreadsheetCsvExecutor(BaseExampleGenExecutor):
    """ExampleGen executor for CSV with an optional byte-order mark and CRLF line endings."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 - TFX API
        return _SpreadsheetCsvToExample

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX API
        from tfx.types import artifact_utils

        resolve_span(exec_properties, artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY]))
        super().Do(input_dict, output_dict, exec_properties)
