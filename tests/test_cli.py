"""The command line as a user meets it: one-line errors, distinct exit codes, no traceback."""
import pytest

from ctpipe.components import features as F

from tests.support import ctpipe


def _assert_one_line_error(result, code, fragment):
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0]


def test_missing_data_root(tmp_path):
    result = ctpipe("run", "--data-root", str(tmp_path / "nope"), "--home", str(tmp_path / "h"))
    _assert_one_line_error(result, 2, "does not exist")


def test_wrong_column_set(tmp_path):
    span = tmp_path / "data" / "span-1"
    span.mkdir(parents=True)
    (span / "data.csv").write_text(",".join(c for c in F.CSV_COLUMNS if c != "fare") + "\n" +
                                   "," * 17 + "\n")
    result = ctpipe("run", "--data-root", str(tmp_path / "data"), "--home", str(tmp_path / "h"))
    _assert_one_line_error(result, 2, "missing column(s) fare")


def test_empty_span(tmp_path):
    span = tmp_path / "data" / "span-3"
    span.mkdir(parents=True)
    (span / "data.csv").write_text(",".join(F.CSV_COLUMNS) + "\n")
    result = ctpipe("run", "--data-root", str(tmp_path / "data"), "--home", str(tmp_path / "h"))
    _assert_one_line_error(result, 2, "span 3 is empty")


def test_bad_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("min_auc = 7")
    result = ctpipe("run", "--data-root", str(tmp_path), "--home", str(tmp_path / "h"),
                    "--config", str(tmp_path / "c.toml"))
    _assert_one_line_error(result, 2, "min_auc")


def test_status_without_home(tmp_path):
    result = ctpipe("status", "--home", str(tmp_path / "none"))
    _assert_one_line_error(result, 2, "no pipeline home")


@pytest.mark.parametrize("args", [[], ["run"], ["frobnicate"]])
def test_usage_errors_exit_2(args):
    assert ctpipe(*args).returncode == 2
