"""The gate's pure decision and the ledger rules (components/data_gate.py, components/ledger.py)."""
import pytest

from ctpipe.components.data_gate import decide
from ctpipe.components.ledger import Ledger, choose_warm_start


def _accept(ledger, span, window=3):
    return decide(span, f"/ex/{span}", f"/st/{span}", [], [], ledger, window)


def _accepted(*spans):
    ledger = Ledger()
    for span in spans:
        ledger = _accept(ledger, span).ledger
    return ledger


def test_accepted_spans_form_a_rolling_window():
    decision = _accept(_accepted(1, 2, 3, 4), 5)
    assert decision.accepted
    assert decision.training_spans == [3, 4, 5]
    assert decision.baseline_span == 4


def test_quarantined_span_keeps_window_and_baseline():
    ledger = _accepted(1, 2)
    blocked = decide(3, "/ex/3", "/st/3", ["fare: out of domain"], [], ledger, 3)
    assert not blocked.accepted
    assert blocked.training_spans == []
    assert blocked.ledger.baseline(4)["span"] == 2
    assert blocked.ledger.quarantined == [{"span": 3, "reasons": ["fare: out of domain"],
                                           "by": "gate", "examples_uri": "/ex/3",
                                           "statistics_uri": "/st/3"}]
    after = _accept(blocked.ledger, 4)
    assert after.training_spans == [1, 2, 4]
    assert after.baseline_span == 2


def test_drift_alone_blocks():
    decision = decide(2, "/ex/2", "/st/2", [], ["fare: drift vs span 1"], _accepted(1), 3)
    assert not decision.accepted and decision.reasons == ["fare: drift vs span 1"]


def test_poisoned_labels_block_and_stay_out_of_later_windows():
    poisoned = decide(3, "/ex/3", "/st/3", [], [], _accepted(1, 2), 3,
                      label_reasons=["labels disagree with the production model"])
    assert not poisoned.accepted and poisoned.ledger.quarantined_spans() == [3]
    later = _accept(_accept(poisoned.ledger, 4).ledger, 5)
    assert later.training_spans == [2, 4, 5]
    assert 3 not in later.ledger.accepted_spans()


def test_window_and_baseline_follow_span_numbers_not_processing_order():
    late = _accept(_accepted(1, 2, 4), 3)  # span 3 processed after 4 (e.g. --span 3)
    assert late.baseline_span == 2
    assert late.training_spans == [1, 2, 3]
    assert late.ledger.accepted_spans() == [1, 2, 3, 4]
    assert late.ledger.window(5, 3) == late.ledger.accepted[-3:]


def test_a_retried_span_replaces_its_earlier_entry():
    first_try = _accepted(1, 2, 3)  # the cycle of span 3 failed after the gate
    retry = decide(3, "/ex/3b", "/st/3b", [], [], first_try, 3)
    assert retry.ledger.accepted_spans() == [1, 2, 3]
    assert retry.ledger.entry(3)["examples_uri"] == "/ex/3b"
    assert retry.baseline_span == 2


def test_long_reference_is_the_oldest_window_span_after_the_anchor():
    ledger = _accepted(1, 2, 3, 4)
    assert ledger.long_reference(5, 3)["span"] == 2
    assert ledger.long_reference(2, 3) is None  # only one span before: that is the baseline
    ledger.drift_anchor = 4
    assert ledger.long_reference(5, 3) is None


def test_release_makes_the_newest_span_the_baseline_and_the_anchor():
    blocked = decide(3, "/ex/3", "/st/3", [], ["fare: drift vs span 2"], _accepted(1, 2), 3)
    released = blocked.ledger.release(3, "fare rise accepted")
    assert released.accepted_spans() == [1, 2, 3]
    assert released.quarantined_spans() == []
    assert released.baseline(4)["span"] == 3
    assert released.drift_anchor == 3
    assert released.long_reference(4, 3) is None
    assert [e["span"] for e in released.reference_window(4, 3)] == [3]
    assert [e["span"] for e in _accept(released, 4).ledger.reference_window(5, 3)] == [3, 4]
    with pytest.raises(KeyError):
        released.release(3, "twice")


def test_release_of_an_old_span_does_not_move_the_anchor():
    blocked = decide(2, "/ex/2", "/st/2", ["x"], [], _accepted(1), 3).ledger
    released = _accept(blocked, 3).ledger.release(2, "false alarm")
    assert released.accepted_spans() == [1, 2, 3] and released.drift_anchor is None


def test_release_of_a_span_that_never_reached_the_gate_forgets_it():
    ledger = _accepted(1).quarantine(2, ["gave up after 3 failed attempts"], by="attempts")
    assert "examples_uri" not in ledger.entry(2)
    released = ledger.release(2, "disk fixed")
    assert released.entry(2) is None


def test_operator_quarantine_removes_an_accepted_span_and_keeps_its_uris():
    ledger = _accepted(1, 2, 3).quarantine(2, ["found bad later"], by="operator")
    assert ledger.accepted_spans() == [1, 3]
    assert ledger.entry(2)["examples_uri"] == "/ex/2" and ledger.entry(2)["by"] == "operator"


def test_ledger_round_trips_through_json():
    ledger = decide(2, "/ex/2", "/st/2", ["x"], [], _accepted(1), 3).ledger
    ledger = ledger.remember_model("/m/1", [1])
    assert Ledger.from_json(ledger.to_json()) == ledger


PRODUCTION = {"uri": "/m/3", "training_spans": [2, 3]}


def test_warm_start_from_a_clean_production_model():
    ledger = _accepted(1, 2, 3).remember_model("/m/3", [2, 3])
    choice = choose_warm_start(ledger, PRODUCTION)
    assert choice["uri"] == "/m/3" and "production model" in choice["reason"]


def test_warm_start_skips_a_model_trained_on_a_quarantined_span():
    ledger = (_accepted(1, 2, 3).remember_model("/m/1", [1]).remember_model("/m/3", [2, 3])
              .quarantine(3, ["found bad later"], by="operator"))
    choice = choose_warm_start(ledger, PRODUCTION)
    assert choice["uri"] == "/m/1"
    assert "quarantined span(s) 3" in choice["reason"]


def test_cold_start_when_no_clean_model_is_left():
    ledger = _accepted(1, 2, 3).remember_model("/m/3", [2, 3]).quarantine(2, ["bad"], by="x")
    choice = choose_warm_start(ledger, PRODUCTION)
    assert choice["uri"] is None and choice["reason"].startswith("cold start")
    assert choose_warm_start(Ledger(), None)["uri"] is None


def test_warm_start_skips_models_whose_files_are_gone():
    ledger = _accepted(1, 2, 3).remember_model("/m/2", [1, 2])
    choice = choose_warm_start(ledger, PRODUCTION, usable=lambda uri: uri == "/m/2")
    assert choice["uri"] == "/m/2" and "files are gone" in choice["reason"]


def _with_rows(rows_by_span, anchor=None):
    ledger = Ledger(drift_anchor=anchor)
    for span, rows in rows_by_span.items():
        ledger = decide(span, f"/ex/{span}", f"/st/{span}", [], [], ledger, 3,
                        rows=rows).ledger
    return ledger


def test_a_run_of_tiny_spans_extends_the_window_to_enough_rows():
    ledger = _with_rows({1: 700, 2: 700, 3: 700, 4: 130, 5: 140})
    new = decide(6, "/ex/6", "/st/6", [], [], ledger, 3, rows=135, window_min_rows=1500)
    assert new.training_spans == [2, 3, 4, 5, 6]  # 4..6 hold 405 rows, 2..6 hold 1805
    assert [e["span"] for e in new.ledger.window(6, 3, 1000)] == [3, 4, 5, 6]
    assert [e["span"] for e in new.ledger.window(6, 3, 0)] == [4, 5, 6]
    big = decide(6, "/ex/6", "/st/6", [], [], ledger, 3, rows=5000, window_min_rows=1500)
    assert big.training_spans == [4, 5, 6]


def test_the_extension_stops_at_the_drift_anchor_and_at_unknown_row_counts():
    anchored = _with_rows({1: 700, 2: 700, 3: 700, 4: 130, 5: 140}, anchor=3)
    assert [e["span"] for e in anchored.window(5, 2, 5000)] == [3, 4, 5]
    legacy = _accepted(1, 2, 3)  # entries written before rows were recorded
    ledger = decide(4, "/ex/4", "/st/4", [], [], legacy, 2, rows=10).ledger
    assert [e["span"] for e in ledger.window(4, 2, 5000)] == [3, 4]
