"""The acceptance ledger: the one record of which spans may be trained on, and why not the others.

Why its own module: the data gate (inside the pipeline) and the operator commands and runner
(outside it: `ctpipe quarantine ...`, giving up on a span after repeated failures) change the same
ledger with the same rules. Everything here is plain data - no TensorFlow, no TFX - so every rule
is unit-tested in milliseconds.

Rules:
  - entries are kept ordered by span number, never by processing order, so a late or retried
    span never jumps the queue: the window and the drift baseline of span N only look at
    accepted spans below N;
  - a span appears at most once (a retried cycle replaces its earlier entry);
  - the drift anchor (set when an operator accepts a lasting change) is where the reference
    window (long drift reference, label check) may start, so an accepted change is not flagged
    again against the old regime;
  - `models` remembers every blessed model the gate has seen with its training spans, so a
    warm start can skip models trained on a span quarantined later.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, List, Optional

Entry = Dict[str, Any]

LEDGER_FILE = "ledger.json"


@dataclasses.dataclass
class Ledger:
    accepted: List[Entry] = dataclasses.field(default_factory=list)
    quarantined: List[Entry] = dataclasses.field(default_factory=list)
    drift_anchor: Optional[int] = None
    models: List[Entry] = dataclasses.field(default_factory=list)

    # -- queries --------------------------------------------------------------------------------
    def accepted_spans(self) -> List[int]:
        return [entry["span"] for entry in self.accepted]

    def quarantined_spans(self) -> List[int]:
        return [entry["span"] for entry in self.quarantined]

    def entry(self, span: int) -> Optional[Entry]:
        for entry in self.accepted + self.quarantined:
            if entry["span"] == span:
                return entry
        return None

    def accepted_before(self, span: int) -> List[Entry]:
        return [entry for entry in self.accepted if entry["span"] < span]

    def baseline(self, span: int) -> Optional[Entry]:
        """The drift baseline of `span`: the accepted span just below it."""
        before = self.accepted_before(span)
        return before[-1] if before else None

    def reference_window(self, span: int, window_spans: int) -> List[Entry]:
        """The last K accepted spans before `span`, none older than the drift anchor: the data
        `span` is compared with. After an operator accepted a lasting change, the old regime
        is no reference any more (neither for drift nor for the label check)."""
        return [entry for entry in self.accepted_before(span)[-window_spans:]
                if self.drift_anchor is None or entry["span"] >= self.drift_anchor]

    def long_reference(self, span: int, window_spans: int) -> Optional[Entry]:
        """The oldest span of the reference window: comparing with it as well as with the
        baseline catches drift too slow to see between two neighbours. None when it would be
        the baseline itself."""
        before = self.reference_window(span, window_spans)
        if len(before) < 2:
            return None
        return before[0]

    def window(self, span: int, window_spans: int, min_rows: int = 0) -> List[Entry]:
        """The last K accepted spans up to and including `span`, oldest first - extended with
        older accepted spans while it holds fewer than `min_rows` training rows, so a run of
        tiny spans (a quiet quarter, a partial export) does not shrink the training data to a
        few hundred rows. The extension never reaches back past the drift anchor (an accepted
        lasting change) and stops at an entry whose row count is unknown (older ledgers)."""
        accepted = [entry for entry in self.accepted if entry["span"] <= span]
        window, older = accepted[-window_spans:], accepted[:-window_spans]
        if any("rows" not in entry for entry in window):
            return window
        rows = sum(entry["rows"] for entry in window)
        while older and rows < min_rows:
            candidate = older.pop()
            if "rows" not in candidate or (self.drift_anchor is not None
                                           and candidate["span"] < self.drift_anchor):
                break
            window.insert(0, candidate)
            rows += candidate["rows"]
        return window

    def is_clean(self, spans: Iterable[int]) -> bool:
        return not set(spans) & set(self.quarantined_spans())

    # -- changes (each returns a new ledger; the old one stays as it was) -------------------------
    def without(self, span: int) -> "Ledger":
        return dataclasses.replace(
            self, accepted=[e for e in self.accepted if e["span"] != span],
            quarantined=[e for e in self.quarantined if e["span"] != span],
            models=list(self.models))

    def accept(self, entry: Entry) -> "Ledger":
        ledger = self.without(entry["span"])
        ledger.accepted = sorted(ledger.accepted + [dict(entry)], key=lambda e: e["span"])
        return ledger

    def quarantine(self, span: int, reasons: List[str], by: str, **details: Any) -> "Ledger":
        """Quarantine `span`; keeps its artifacts' locations so a release can accept it."""
        previous = self.entry(span) or {}
        entry = {key: value for key, value in previous.items()
                 if key in ("examples_uri", "statistics_uri")}
        entry.update(details)
        entry.update({"span": span, "reasons": list(reasons), "by": by})
        ledger = self.without(span)
        ledger.quarantined = sorted(ledger.quarantined + [entry], key=lambda e: e["span"])
        return ledger

    def release(self, span: int, reason: str) -> "Ledger":
        """An operator accepts a quarantined span (a lasting change, a false alarm). When it is
        the newest accepted span it becomes the drift baseline and the drift anchor."""
        entry = next((e for e in self.quarantined if e["span"] == span), None)
        if entry is None:
            raise KeyError(span)
        if "examples_uri" not in entry:
            # Never got past ExampleGen (e.g. quarantined after repeated failures): the next
            # cycle processes it afresh.
            return self.without(span)
        ledger = self.accept({"span": span, "examples_uri": entry["examples_uri"],
                              "statistics_uri": entry["statistics_uri"],
                              "released": reason})
        if ledger.accepted_spans()[-1] == span:
            ledger.drift_anchor = span
        return ledger

    def remember_model(self, uri: str, training_spans: List[int]) -> "Ledger":
        if any(model["uri"] == uri for model in self.models):
            return self
        return dataclasses.replace(self, models=self.models + [
            {"uri": uri, "training_spans": list(training_spans)}])

    # -- serialisation ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Ledger":
        data = json.loads(text)
        return cls(accepted=sorted(data.get("accepted", []), key=lambda e: e["span"]),
                   quarantined=sorted(data.get("quarantined", []), key=lambda e: e["span"]),
                   drift_anchor=data.get("drift_anchor"), models=data.get("models", []))


def choose_warm_start(ledger: Ledger, production: Optional[Entry],
                      usable=lambda uri: True) -> Dict[str, Any]:
    """Which model the Trainer may warm-start from: the production model when its whole
    training window is still clean, else the newest clean blessed model, else a cold start.
    Returns {"uri": str | None, "reason": str}."""
    if production is None:
        return {"uri": None, "reason": "cold start: no blessed model yet"}
    spans = production["training_spans"]
    if ledger.is_clean(spans) and usable(production["uri"]):
        return {"uri": production["uri"], "reason": "warm start from the production model "
                f"(trained on spans {_spans_text(spans)})"}
    tainted = sorted(set(spans) & set(ledger.quarantined_spans()))
    why = (f"the production model was trained on quarantined span(s) {_spans_text(tainted)}"
           if tainted else "the production model's files are gone")
    for model in reversed(ledger.models):
        if model["uri"] != production["uri"] and ledger.is_clean(model["training_spans"]) \
                and usable(model["uri"]):
            return {"uri": model["uri"], "reason": f"warm start from an older clean blessed "
                    f"model (trained on spans {_spans_text(model['training_spans'])}): {why}"}
    return {"uri": None, "reason": f"cold start: {why} and no clean blessed model is left"}


def _spans_text(spans: Iterable[int]) -> str:
    return ", ".join(str(span) for span in spans) or "none"


def read_ledger(uri: Optional[str]) -> "Ledger":
    """The ledger stored in the artifact folder `uri` (the gate's state, or an operator
    action's); an empty ledger when there is none. The one reader, for the gate, the runner,
    operator commands and the metrics: local files are read without importing TensorFlow (a
    metrics cron job stays light), object storage through TensorFlow's file system."""
    if not uri:
        return Ledger()
    path = os.path.join(uri, LEDGER_FILE)
    if "://" not in uri:
        if not os.path.exists(path):
            return Ledger()
        with open(path) as handle:
            return Ledger.from_json(handle.read())
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return Ledger()
    with tf.io.gfile.GFile(path) as handle:
        return Ledger.from_json(handle.read())
