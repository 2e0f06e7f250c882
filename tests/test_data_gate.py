from components.data_gate import Ledger, decide


def _accept(ledger, span, window=3):
    return decide(span, f"/ex/{span}", f"/st/{span}", [], [], ledger, window)


def test_accepted_spans_form_a_rolling_window():
    ledger = Ledger()
    for span in range(1, 6):
        decision = _accept(ledger, span)
        ledger = decision.ledger
    assert decision.accepted
    assert decision.training_spans == [3, 4, 5]
    assert decision.baseline_span == 4


def test_quarantined_span_keeps_window_and_baseline():
    ledger = _accept(_accept(Ledger(), 1).ledger, 2).ledger
    blocked = decide(3, "/ex/3", "/st/3", ["fare: out of domain"], [], ledger, 3)
    assert not blocked.accepted
    assert blocked.training_spans == []
    assert blocked.ledger.baseline["span"] == 2
    assert blocked.ledger.quarantined == [{"span": 3, "reasons": ["fare: out of domain"]}]
    after = _accept(blocked.ledger, 4)
    assert after.training_spans == [1, 2, 4]
    assert after.baseline_span == 2


def test_drift_alone_blocks():
    decision = decide(2, "/ex/2", "/st/2", [], ["fare: drift vs span 1"],
                      _accept(Ledger(), 1).ledger, 3)
    assert not decision.accepted and decision.reasons == ["fare: drift vs span 1"]


def test_ledger_round_trips_through_json():
    ledger = decide(2, "/ex/2", "/st/2", ["x"], [], _accept(Ledger(), 1).ledger, 3).ledger
    assert Ledger.from_json(ledger.to_json()) == ledger
