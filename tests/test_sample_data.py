from ctpipe.pipeline.run import sample_data

from tests.support import SAMPLE


def test_committed_spans_are_the_wheel_csv_cut_by_quarter(tmp_path):
    written = sample_data.write_spans(tmp_path)
    assert [span for span, _, _ in written] == list(range(1, 17))
    assert sum(rows for _, _, rows in written) == 15002
    for span, _, _ in written:
        assert (tmp_path / f"span-{span}" / "data.csv").read_bytes() == \
            (SAMPLE / f"span-{span}" / "data.csv").read_bytes(), f"span {span} differs"


def test_rows_are_byte_identical_to_the_source():
    source_lines = set(sample_data.source_csv_path().read_text().splitlines()[1:])
    span_lines = (SAMPLE / "span-3" / "data.csv").read_text().splitlines()[1:]
    assert span_lines and all(line in source_lines for line in span_lines)


def test_quarter_of_is_utc():
    assert sample_data.quarter_of(1356998400) == (2013, 1)  # 2013-01-01T00:00:00Z
    assert sample_data.quarter_of(1356998399) == (2012, 4)
