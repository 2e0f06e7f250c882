"""Poisoned-label check: does the production model still agree with the new span's labels?

Why: shuffled or flipped labels pass every feature check (same label rate, same feature
distributions), and a model trained on them is rejected by the Evaluator only after the fact,
while the span would stay in later training windows. The production model scoring the new span is
the cheapest detector: on its own recent data it scores AUC ~0.8-0.9; on shuffled labels ~0.5,
on flipped labels far below 0.5. The comparison is paired: the same model on the eval splits of
the spans it was trained on ("expected") vs on the new span's eval split.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ctpipe.components import features as F

EVAL_SPLIT = "Split-eval"
SERVING_DIR = "Format-Serving"
# A small span's AUC is noisy (±0.07 at ~70 eval rows): the allowed drop is at least this many
# standard errors of the span's AUC (Hanley & McNeil), so noise alone does not block a span.
Z_NOISE = 3.0


@dataclasses.dataclass
class LabelCheck:
    span_auc: Optional[float]
    expected_auc: Optional[float]
    span_rows: int
    reference_spans: List[int]
    max_drop: float
    span_auc_stderr: float = 0.0

    @property
    def allowed_drop(self) -> float:
        return round(max(self.max_drop, Z_NOISE * self.span_auc_stderr), 4)

    @property
    def failed(self) -> bool:
        return (self.span_auc is not None and self.expected_auc is not None
                and self.span_auc < self.expected_auc - self.allowed_drop)

    def reason(self, span: int) -> str:
        return (f"labels disagree with the production model: AUC {self.span_auc:.2f} on span "
                f"{span} vs {self.expected_auc:.2f} expected (spans "
                f"{', '.join(map(str, self.reference_spans))}; allowed drop "
                f"{self.allowed_drop:g})")

    def to_dict(self) -> dict:
        return {"production_auc_on_span": self.span_auc,
                "production_auc_expected": self.expected_auc,
                "rows": self.span_rows, "reference_spans": self.reference_spans,
                "max_drop": self.max_drop, "span_auc_stderr": self.span_auc_stderr,
                "allowed_drop": self.allowed_drop}


def auc_stderr(value: Optional[float], positives: int, negatives: int) -> float:
    """Standard error of an AUC estimate (Hanley & McNeil 1982)."""
    if value is None or positives == 0 or negatives == 0:
        return 0.0
    q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
    variance = (value * (1 - value) + (positives - 1) * (q1 - value * value)
                + (negatives - 1) * (q2 - value * value)) / (positives * negatives)
    return round(float(np.sqrt(max(variance, 0.0))), 4)


def auc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None with one class only."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0)
                 / (positives * negatives))


def eval_files(examples_uri: str) -> List[str]:
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(os.path.join(examples_uri, EVAL_SPLIT, "*")))


def score(model_uri: str, files: Iterable[str], batch: int = 1024) -> Tuple[np.ndarray,
                                                                           np.ndarray]:
    """(labels, probabilities) of a Trainer Model artifact (its Format-Serving SavedModel)."""
    return score_saved_model(os.path.join(model_uri, SERVING_DIR), files, batch)


# Loaded serving signatures, newest last: within a cycle the gate scores stable twice (the new
# span and the reference spans) and the Evaluator loads it again as its baseline; loading a
# SavedModel costs ~1 s. Bounded, and emptied between cycles (forget_loaded_models, called by
# pipeline/run/memory.release_after_cycle) so a long watch holds none of them.
_LOADED: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
LOADED_MAX = 4


def serving_signature(saved_model_dir: str):
    """The SavedModel's serving_default signature, loaded once per cycle per folder."""
    import tensorflow as tf

    marker = os.path.join(saved_model_dir, "saved_model.pb")
    key = (os.path.realpath(saved_model_dir),
           os.stat(marker).st_mtime_ns if os.path.exists(marker) else None)
    if key in _LOADED:
        _LOADED.move_to_end(key)
    else:
        # The loaded object itself is kept: a signature holds its variables and tables only
        # weakly, and calling it after the object was collected fails.
        _LOADED[key] = tf.saved_model.load(saved_model_dir)
        while len(_LOADED) > LOADED_MAX:
            _LOADED.popitem(last=False)
    return _LOADED[key].signatures["serving_default"]


def forget_loaded_models() -> None:
    _LOADED.clear()


def score_saved_model(saved_model_dir: str, files: Iterable[str], batch: int = 1024
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of a SavedModel's serving_default signature on tf.Example files:
    its `probabilities` output (ours), else its only output (any model taking serialized
    tf.Examples, e.g. the bench's stock model). A pushed version directory is a SavedModel."""
    import tensorflow as tf

    files = list(files)
    if not files:
        return np.zeros(0), np.zeros(0)
    signature = serving_signature(saved_model_dir)
    [input_name] = list(signature.structured_input_signature[1])
    labels, scores = [], []
    label_spec = {F.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch):
        labels.append(tf.io.parse_example(records, label_spec)[F.LABEL_KEY].numpy())
        outputs = signature(**{input_name: records})
        output = outputs["probabilities"] if "probabilities" in outputs else \
            next(iter(outputs.values()))
        scores.append(output.numpy().reshape(-1))
    return np.concatenate(labels), np.concatenate(scores)


def check_labels(model_uri: str, span_examples_uri: str, reference: List[Tuple[int, str]],
                 max_drop: float) -> LabelCheck:
    """Production model on the new span vs on the eval splits of `reference` [(span, uri)]."""
    span_labels, span_scores = score(model_uri, eval_files(span_examples_uri))
    ref_labels, ref_scores = score(model_uri, [path for _, uri in reference
                                               for path in eval_files(uri)])
    rounded = lambda value: None if value is None else round(value, 4)  # noqa: E731
    span_auc = rounded(auc(span_labels, span_scores))
    positives = int(np.asarray(span_labels).astype(bool).sum())
    return LabelCheck(span_auc=span_auc, expected_auc=rounded(auc(ref_labels, ref_scores)),
                      span_rows=len(span_labels), reference_spans=[s for s, _ in reference],
                      max_drop=max_drop,
                      span_auc_stderr=auc_stderr(span_auc, positives,
                                                 len(span_labels) - positives))


# -- fresh-span evaluation: every live version on the new span (champion / challenger) --------
#
# Labels arrive with the next span, and no live version has seen it: each version's AUC on the
# new span's eval split is an honest out-of-time number. The promotion rule (pipeline/ops/
# fresh_labels.py) compares canary with stable on the same rows:
#   promote  canary AUC >= stable AUC - tolerance
#   retire   canary AUC <  stable AUC - tolerance
#   tolerance = max(TOLERANCE_FLOOR, Z_DECIDE * sqrt(se_stable^2 + se_canary^2))
# (Hanley-McNeil standard errors; treating the two AUCs as independent is conservative, they
# are scored on the same rows). Below `min_rows` eval rows nothing is decided (see
# `min_rows_for`).

Z_DECIDE = 1.96
TOLERANCE_FLOOR = 0.005
# The widest noise band a promotion decision may have: a canary 0.10 AUC worse than stable is
# broken, so a band wider than that decides by coin flip.
MAX_DECISION_TOLERANCE = 0.10
# The sample data's typical values (data/sample: AUC ~0.85 on a fresh span, ~20% big tippers).
TYPICAL_AUC, TYPICAL_POSITIVE_RATE = 0.85, 0.20


def fresh_tolerance(stderr_stable: float, stderr_canary: float) -> float:
    return round(max(TOLERANCE_FLOOR, Z_DECIDE * float(np.hypot(stderr_stable, stderr_canary))),
                 4)


def min_rows_for(max_tolerance: float = MAX_DECISION_TOLERANCE, value: float = TYPICAL_AUC,
                 positive_rate: float = TYPICAL_POSITIVE_RATE) -> int:
    """The fewest eval rows at which the promotion tolerance (two equal Hanley-McNeil standard
    errors) is at most `max_tolerance`: below it a fresh span cannot tell a good canary from a
    broken one. With the defaults: 243 rows (config `fresh_min_rows`). A full sample span has
    ~300-460 eval rows (tolerance ~0.07-0.09); the small late spans (~70 rows, tolerance
    ~0.19) decide nothing."""
    rows = 2
    while True:
        positives = max(1, round(rows * positive_rate))
        stderr = auc_stderr(value, positives, rows - positives)
        if fresh_tolerance(stderr, stderr) <= max_tolerance:
            return rows
        rows += 1


@dataclasses.dataclass
class FreshScore:
    version: int
    labels: List[str]
    auc: Optional[float]
    rows: int
    stderr: float
    error: str = ""

    def to_dict(self) -> dict:
        found = {"auc": self.auc, "rows": self.rows, "stderr": self.stderr,
                 "label": self.labels[0] if self.labels else "", "labels": self.labels}
        if self.error:
            found["error"] = self.error
        return found


LABEL_ORDER = ("stable", "canary", "control", "previous")


def fresh_span_scores(manifest: str, model_name: str, examples_uri: str) -> Dict[str, dict]:
    """{version: {auc, rows, stderr, label, labels}} of every version the release manifest
    labels (stable, canary, control, previous), each scored once on the span's eval split
    from its pushed directory under the manifest's base_path. A version that cannot be
    scored says why ("error") instead of failing the gate."""
    from ctpipe.components import release as release_file

    entry = next((r for r in release_file.read(manifest) if r.model_name == model_name), None)
    if entry is None:
        return {}
    by_version: Dict[int, List[str]] = {}
    labels = dict(entry.labels)
    if entry.canary is None:
        labels.pop(release_file.CANARY, None)
    for label in LABEL_ORDER:
        if label in labels:
            by_version.setdefault(labels[label], []).append(label)
    files = eval_files(examples_uri)
    found: Dict[str, dict] = {}
    for version, names in sorted(by_version.items()):
        try:
            labels_, scores = score_saved_model(os.path.join(entry.base_path, str(version)),
                                                files)
            value = auc(labels_, scores)
            value = None if value is None else round(value, 4)
            positives = int(np.asarray(labels_).astype(bool).sum())
            result = FreshScore(version, names, value, len(labels_),
                                auc_stderr(value, positives, len(labels_) - positives))
        except Exception as error:  # noqa: BLE001 - one broken version must not block a span
            result = FreshScore(version, names, None, 0, 0.0,
                                f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                                if str(error) else type(error).__name__)
        found[str(version)] = result.to_dict()
    return found
