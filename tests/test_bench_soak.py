"""The soak's arithmetic (pipeline/bench/soak.py) and the memory release watch calls after each
cycle (pipeline/run/memory.py); the soak itself is a benchmark (`bench --soak N`), not a test."""


def test_slope_and_quarters():
    from ctpipe.pipeline.bench.soak import slope, summarize

    assert slope([100.0, 110.0, 120.0, 130.0]) == 10.0
    assert slope([5.0]) == 0.0
    rss = [1000.0, 1100.0, 1100.0, 1100.0, 1100.0, 1100.0, 1100.0, 1155.0]
    summary = summarize(rss)
    assert summary["quarter_mean_mib"] == [1050.0, 1100.0, 1100.0, 1127.5]
    assert summary["last_vs_second_quarter"] == 0.025
    assert summary["max_mib"] == 1155.0


def test_release_after_cycle_runs_and_rss_is_read():
    from ctpipe.pipeline.run.memory import release_after_cycle, rss_mib

    before = rss_mib()
    release_after_cycle()
    assert before > 0 and rss_mib() > 0


def test_soak_spans_have_the_asked_rows(tmp_path):
    import csv

    from ctpipe.pipeline.bench.soak import make_spans

    from tests.support import SAMPLE

    assert make_spans(str(SAMPLE), str(tmp_path), 3, 40) == [1, 2, 3]
    with open(tmp_path / "span-3" / "data.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == 41
