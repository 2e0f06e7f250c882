"""Span bookkeeping rules (pipeline/home/cycles.py) on records, and their round trip through a real
ML Metadata store."""
from ctpipe.pipeline.home import cycles
from ctpipe.pipeline.home.cycles import COMPLETE, FAILED_STATE, RUNNING, CycleRecord, OperatorAction
from ctpipe.pipeline.home.outcomes import Decision
from ctpipe.pipeline.home.store import open_store, sqlite_connection


def _record(span, outcome=None, state=COMPLETE, at=1.0, reasons=(), checks=None):
    decision = None
    if outcome:
        decision = Decision(outcome, span=span, model_version=None, reasons=list(reasons),
                            metrics={}, training_spans=[], checks=checks or {})
    return CycleRecord(id=0, pipeline="ctpipe", span=span, attempt=1, state=state,
                       started_at=at, runs_before=0, decision=decision)


def test_fresh_home_starts_at_the_newest_span_or_from_span():
    assert cycles.plan_spans([1, 2, 3], []).pending == [3]
    assert cycles.plan_spans([1, 2, 3], [], from_span=2).pending == [2, 3]


def test_backlog_is_pending_oldest_first():
    records = [_record(3, "pushed")]
    assert cycles.plan_spans([1, 2, 3, 4, 5, 6], records).pending == [4, 5, 6]


def test_only_a_final_decision_completes_a_span():
    records = [_record(1, "pushed"), _record(2, "failed", FAILED_STATE, reasons=["boom"]),
               _record(3, None, RUNNING), _record(4, "data_blocked"), _record(5, "not_blessed")]
    plan = cycles.plan_spans([1, 2, 3, 4, 5, 6], records)
    assert plan.pending == [2, 3, 6]
    assert plan.attempts == {2: 1, 3: 1}
    assert plan.last_error == {2: "boom"}
    assert set(plan.decided) == {1, 4, 5}


def test_an_abandoned_cycle_is_not_an_attempt():
    records = [_record(1, "pushed"), _record(2, "failed", checks={"abandoned": True})]
    plan = cycles.plan_spans([1, 2], records)
    assert plan.pending == [2] and plan.attempts == {}


def test_gave_up_is_final_and_a_reopen_makes_the_span_pending_again():
    records = [_record(1, "pushed"), _record(2, "failed", at=1.0), _record(2, "gave_up", at=2.0)]
    assert cycles.plan_spans([1, 2], records).pending == []
    reopen = OperatorAction(id=1, action="release", span=2, reason="disk fixed", at=3.0,
                            user="op", details={"reopened": True})
    plan = cycles.plan_spans([1, 2], records, [reopen])
    assert plan.pending == [2] and plan.attempts == {}


def test_spans_below_the_first_processed_one_are_history():
    plan = cycles.plan_spans([1, 2, 3], [_record(3, "pushed")])
    assert plan.pending == [] and plan.first_span == 3
    assert "waiting for span 4" in plan.describe_nothing(3)


def test_records_and_actions_round_trip_through_ml_metadata(tmp_path):
    store = open_store(sqlite_connection(str(tmp_path / "m.sqlite")))
    cycle_id = cycles.start_cycle(store, "ctpipe", span=4, attempt=1, runs_before=7)
    [record] = cycles.cycle_records(store, "ctpipe")
    assert record.running and record.span == 4 and record.runs_before == 7
    decision = Decision("not_blessed", span=4, model_version=None, reasons=["auc"],
                        metrics={"candidate": {"auc": 0.6}}, training_spans=[3, 4],
                        checks={"labels": {"production_auc_on_span": 0.9}}, attempt=1)
    cycles.finish_cycle(store, cycle_id, decision)
    [record] = cycles.cycle_records(store, "ctpipe")
    assert not record.running and record.final and record.decision == decision
    action = cycles.record_action(store, "ctpipe", "release", 4, "lasting change",
                                  reopened=False)
    [read] = cycles.operator_actions(store, "ctpipe")
    assert read == action and read.user
    assert cycles.cycle_records(store, "other") == []
    assert cycles.history(store, "ctpipe") == [decision]
