"""Bad input is refused before ExampleGen with one line (exit 2 at the CLI)."""
import os

import pytest

from ctpipe.components import features as F
from ctpipe.pipeline.spans import BadInput, check_span, discover_spans

from tests.support import SAMPLE

HEADER = ",".join(F.CSV_COLUMNS)


def _span(tmp_path, text, name="span-1"):
    span_dir = tmp_path / name
    span_dir.mkdir()
    (span_dir / "data.csv").write_text(text)
    return span_dir


def test_discovers_numbered_span_folders(tmp_path):
    _span(tmp_path, HEADER + "\n", "span-2")
    _span(tmp_path, HEADER + "\n", "span-10")
    (tmp_path / "notes").mkdir()
    assert sorted(discover_spans(str(tmp_path))) == [2, 10]


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no spans under"),
])
def test_missing_root_or_no_spans(tmp_path, setup, message):
    with pytest.raises(BadInput, match=message):
        discover_spans(str(setup(tmp_path)))


def test_clean_sample_span_passes(tmp_path):
    assert check_span(1, str(SAMPLE / "span-1")) == 884


@pytest.mark.parametrize("text, message", [
    ("", "no header"),
    (HEADER + "\n", "is empty"),
    (HEADER.replace(",tips", "") + "\n1\n", "missing column(s) tips"),
    (HEADER + ",surge\n" + "," * 19 + "\n", "unexpected column(s) surge"),
    (HEADER + "\n1,2,3\n", "line 2 has 3 fields, expected 19"),
])
def test_malformed_spans_give_one_line(tmp_path, text, message):
    span_dir = _span(tmp_path, text)
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        check_span(1, str(span_dir))
    assert "\n" not in str(error.value)


def test_non_utf8_file(tmp_path):
    span_dir = tmp_path / "span-1"
    span_dir.mkdir()
    (span_dir / "data.csv").write_bytes(HEADER.encode() + b"\n\xff\xfe,1\n")
    with pytest.raises(BadInput, match="not UTF-8"):
        check_span(1, str(span_dir))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path):
    span_dir = _span(tmp_path, HEADER + "\n")
    os.chmod(span_dir / "data.csv", 0)
    with pytest.raises(BadInput, match="not readable"):
        check_span(1, str(span_dir))
