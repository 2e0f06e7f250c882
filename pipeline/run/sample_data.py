"""Cut the Chicago taxi big_tipper CSV from the tfx wheel into time-ordered quarterly spans.

Why raw lines: the spans must hold the original values untouched (missing values stay missing,
numbers keep their original spelling), so rows are copied byte-for-byte; only the header is
repeated at the top of every span. Span k is the k-th calendar quarter (UTC) of
`trip_start_timestamp` present in the data, oldest first.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Dict, List, Tuple

TIMESTAMP_COLUMN = "trip_start_timestamp"


def source_csv_path() -> Path:
    """Where the tfx wheel keeps the big_tipper sample (found through the installed package)."""
    import tfx  # imported lazily: only the cutter needs it

    return (Path(tfx.__file__).parent / "examples" / "chicago_taxi_pipeline" / "data"
            / "big_tipper_label" / "data.csv")


def quarter_of(timestamp_seconds: int) -> Tuple[int, int]:
    moment = dt.datetime.fromtimestamp(timestamp_seconds, tz=dt.timezone.utc)
    return moment.year, (moment.month - 1) // 3 + 1


def cut_into_quarters(csv_text: str) -> Tuple[str, Dict[Tuple[int, int], List[str]]]:
    """Return (header line, {(year, quarter): [raw row lines in file order]})."""
    lines = csv_text.splitlines(keepends=True)
    header = lines[0]
    column = next(csv.reader([header])).index(TIMESTAMP_COLUMN)
    quarters: Dict[Tuple[int, int], List[str]] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        row = next(csv.reader(io.StringIO(line)))
        quarters.setdefault(quarter_of(int(row[column])), []).append(line)
    return header, quarters


def write_spans(out_dir: Path, source: Path | None = None) -> List[Tuple[int, str, int]]:
    """Write out_dir/span-<k>/data.csv for every quarter; returns (span, 'YYYYQn', rows)."""
    header, quarters = cut_into_quarters((source or source_csv_path()).read_text())
    written = []
    for span, key in enumerate(sorted(quarters), start=1):
        rows = quarters[key]
        span_dir = out_dir / f"span-{span}"
        span_dir.mkdir(parents=True, exist_ok=True)
        (span_dir / "data.csv").write_text(header + "".join(rows))
        written.append((span, f"{key[0]}Q{key[1]}", len(rows)))
    return written
