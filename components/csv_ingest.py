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


class SpreadsheetCsvExecutor(BaseExampleGenExecutor):
    """ExampleGen executor for CSV with an optional byte-order mark and CRLF line endings."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 - TFX API
        return _SpreadsheetCsvToExample
