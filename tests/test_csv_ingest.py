"""Spreadsheet CSV exports (byte-order mark, CRLF, quoted fields) become the same tf.Examples as
the plain file - through our ExampleGen PTransform on a real Beam pipeline."""
import csv

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


def _examples(input_base):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    from ctpipe.components.csv_ingest import _SpreadsheetCsvToExample

    collected = []

    def keep(examples):
        collected.extend(sorted(e.SerializeToString(deterministic=True) for e in examples))

    with beam.Pipeline() as pipeline:
        examples = pipeline | _SpreadsheetCsvToExample({"input_base": str(input_base)},
                                                       "span-1/*")
        assert_that(examples, keep)
    return collected


def test_bom_crlf_and_quotes_give_the_same_examples(tmp_path):
    plain, exported = tmp_path / "plain" / "span-1", tmp_path / "exported" / "span-1"
    plain.mkdir(parents=True)
    exported.mkdir(parents=True)
    (plain / "data.csv").write_bytes((SAMPLE / "span-1" / "data.csv").read_bytes())
    _spreadsheet_copy(SAMPLE / "span-1" / "data.csv", exported / "data.csv")
    raw = (exported / "data.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf\"pickup_community_area\"") and b"\r\n" in raw
    assert check_span(1, str(exported)) == check_span(1, str(plain)) == 884
    assert _examples(tmp_path / "exported") == _examples(tmp_path / "plain")


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
