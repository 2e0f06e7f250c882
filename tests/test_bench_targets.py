"""The bench's target table (pipeline/bench/targets.py) reads the run's figures right: ratios
against each anchor, AUC margins, 100x rows/s, and the start-up / per-row split."""
from ctpipe.pipeline.bench.targets import fixed_and_per_row, markdown, targets


def _scaling(factor, seconds, components, speed):
    return {"factor": factor, "cycles": {"incremental": {"seconds": seconds,
                                                         "components": components}},
            "incremental_rows_per_second": speed}


RESULT = {
    "comparison": {"cycles": {"incremental": {
        "ctpipe": {"seconds": 20.0, "auc_held_out_span": 0.950},
        "stock": {"seconds": 80.0, "auc_held_out_span": 0.953},
        "expert": {"seconds": 25.0, "auc_held_out_span": 0.960}}}},
    # StatisticsGen: 2 s for 1,000 rows, 12 s for 101,000 rows -> 0.1 ms a row (10,000 rows/s
    # at the margin) and 1.9 s fixed.
    "scaling": [_scaling(1, 20.0, {"StatisticsGen": 2.0}, {"StatisticsGen": 500}),
                _scaling(100, 60.0, {"StatisticsGen": 12.0},
                         {"StatisticsGen": round(101_000 / 12.0)})],
    "serving": {"ratios": [  # measured in alternating rounds: the median, and each round
        {"name": "gRPC / in-process rate, serving_raw batch 32, c8", "value": 0.7,
         "rounds": [0.7, 0.65, 0.9], "single_cell": 0.98}]},
    "serving_batching": {"ratios": [
        {"name": "gRPC / in-process rate, serving_raw batch 32, c8", "value": 0.9},
        {"name": "gRPC p99 ms, serving_raw batch 1, c8", "value": 12.0}]},
}


def test_each_target_is_judged_on_this_runs_figures():
    rows = {row["target"]: row for row in targets(RESULT)}
    assert rows["incremental cycle ÷ naive stock <= 0.4×"] == \
        {"target": "incremental cycle ÷ naive stock <= 0.4×", "value": 0.25, "met": True}
    assert rows["incremental cycle ÷ expert stock <= 0.7×"]["met"] is False  # 0.8
    assert rows["held-out-span AUC − naive stock's >= -0.005"]["met"] is True  # -0.003
    assert rows["held-out-span AUC − expert stock's >= -0.005"]["met"] is False  # -0.010
    assert rows["100x StatisticsGen rows/s >= 20000"]["met"] is False
    assert rows["100x Evaluator rows/s >= 20000"]["met"] is None  # not in this run
    assert rows["100x incremental cycle ÷ 1x <= 2.5×"]["value"] == 3.0
    batching = "gRPC / in-process rate, serving_raw batch 32, c8 (batching on) >= 0.8×"
    assert rows[batching]["met"] is True
    assert rows["gRPC p99 ms, serving_raw batch 1, c8 (batching on) <= 10 ms"]["met"] is False
    assert rows["gRPC p99 ms, serving_raw batch 1, c8 (no batching) <= 10 ms"]["met"] is None


def test_a_target_measured_in_rounds_shows_the_median_and_every_round():
    name = "gRPC / in-process rate, serving_raw batch 32, c8 (no batching) >= 0.8×"
    row = {row["target"]: row for row in targets(RESULT)}[name]
    assert row == {"target": name, "value": 0.7, "met": False, "rounds": [0.7, 0.65, 0.9]}
    assert f"| {name} | 0.7 (median of 0.7, 0.65, 0.9) | **no** |" in markdown(RESULT)


def test_fixed_start_up_and_per_row_work_from_two_sizes():
    [split] = fixed_and_per_row(RESULT)
    assert split["component"] == "StatisticsGen"
    assert abs(split["marginal_rows_per_s"] - 10_000) <= 5
    assert abs(split["fixed_s"] - 1.9) <= 0.01
    assert split["fixed_share_1x"] == 0.95 and split["fixed_share_100x"] == 0.16


def test_a_cycle_that_decided_its_span_is_measured_and_a_failed_one_stops_the_bench():
    from ctpipe.pipeline.bench.measure import CycleRun, decided

    def run(code):
        return CycleRun("x", 1.0, 1.0, code)

    assert decided(run(0)) and decided(run(3)) and decided(run(4))  # pushed, blocked, not blessed
    assert not decided(run(1)) and not decided(run(2)) and not decided(run(7))
