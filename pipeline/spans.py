"""Spans under the data root: discovery, and the checks a span must pass before ExampleGen.

Why check before ExampleGen: a file CsvExampleGen cannot parse (wrong columns, ragged rows, not
UTF-8, no rows) fails deep inside Beam with a long traceback. These checks turn that into one line
and exit code 2 before anything is written. Wrong *values* (negative fares, unknown payment types,
text in a numeric column) are left to the data gate, which quarantines the span (exit 3).
"""
from __future__ import annotations

import csv
import os
import re
from typing import Dict, List

from ctpipe.components import features as F
from ctpipe.pipeline.errors import BadInput

__all__ = ["BadInput", "check_span", "discover_spans", "span_files"]
# A span folder: span-<N>, as a directory name or a listing entry (object stores list "span-3/").
SPAN_DIR = re.compile(r"^span-(\d+)/?$")


def discover_spans(data_root: str) -> Dict[int, str]:
    """{span number: directory} for every span-<N>/ holding at least one file."""
    if not os.path.exists(data_root):
        raise BadInput(f"data root {data_root} does not exist")
    if not os.path.isdir(data_root):
        raise BadInput(f"data root {data_root} is not a directory")
    try:
        names = os.listdir(data_root)
    except PermissionError:
        raise BadInput(f"data root {data_root} is not readable")
    spans = {}
    for name in names:
        match = SPAN_DIR.match(name)
        path = os.path.join(data_root, name)
        if match and os.path.isdir(path):
            spans[int(match.group(1))] = path
    if not spans:
        raise BadInput(f"no spans under {data_root} (expected span-<N>/ folders with CSV files)")
    return spans


def span_files(span_dir: str) -> List[str]:
    files = sorted(os.path.join(span_dir, name) for name in os.listdir(span_dir)
                   if not name.startswith("."))
    return [path for path in files if os.path.isfile(path)]


def check_span(span: int, span_dir: str) -> int:
    """Raise BadInput with one line if the span cannot be read as our CSV; returns its rows."""
    files = span_files(span_dir)
    if not files:
        raise BadInput(f"span {span}: {span_dir} holds no files")
    rows = 0
    for path in files:
        rows += _check_csv(span, path)
    if rows == 0:
        raise BadInput(f"span {span} is empty: {', '.join(files)} hold a header but no rows")
    return rows


def _check_csv(span: int, path: str) -> int:
    try:
        open_quote = _unclosed_quote_line(path)
        if open_quote:
            raise BadInput(f"span {span}: {path} line {open_quote} opens a quoted field that "
                           "is never closed (unbalanced quotes)")
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column name;
        # newline="" lets the csv module take CRLF line ends and quoted multi-line fields.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise BadInput(f"span {span}: {path} is empty (no header)")
            _check_header(span, path, [name.strip() for name in header])
            rows = 0
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise BadInput(f"span {span}: {path} line {reader.line_num} has {len(row)} "
                                   f"fields, expected {len(header)} (malformed CSV)")
                rows += 1
        return rows
    except PermissionError:
        raise BadInput(f"span {span}: {path} is not readable (permission denied)")
    except UnicodeDecodeError as error:
        raise BadInput(f"span {span}: {path} is not UTF-8 text ({error.reason} at byte "
                       f"{error.start})")
    except csv.Error as error:
        raise BadInput(f"span {span}: {path} is not valid CSV: {error} "
                       f"(near line {reader.line_num})")


def _unclosed_quote_line(path: str) -> int:
    """The line where a quoted field opens and never closes (ExampleGen would read the rest of
    the file as one field), or 0. Same rule as TFX's reader: an odd running count of quotes."""
    opened_at, quotes = 0, 0
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            before = quotes % 2
            quotes += line.count('"')
            if before == 0 and quotes % 2 == 1:
                opened_at = number
    return opened_at if quotes % 2 else 0


def _check_header(span: int, path: str, header: List[str]) -> None:
    missing = [c for c in F.CSV_COLUMNS if c not in header]
    extra = [c for c in header if c not in F.CSV_COLUMNS]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    if duplicated:
        problems.append(f"duplicated column(s) {', '.join(duplicated)}")
    if problems:
        raise BadInput(f"span {span}: {path} has the wrong column set: {'; '.join(problems)}")
