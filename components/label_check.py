"""Poisoned-label check: does the production model still agree with the new span's labels?

Why: shuffled or flipped labels pass every feature check (same label rate, same feature
distributions), and a model trained on them is rejected by the Evaluator only after the fact,
while the span would stay in later training windows. The production model scoring the new span is
the cheapest detector: on its own recent data it scores AUC ~0.8-0.9; on shuffled labels ~0.5,
on flipped labels far below 0.5. The comparison is paired: the same model on the eval splits of
the spans it was trained on ("expected") vs on the new span's eval split.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, List, Optional, Tuple

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
    """(labels, probabilities) of the model's serving_default signature on tf.Example files:
    its `probabilities` output (ours), else its only output (any model taking serialized
    tf.Examples, e.g. the bench's stock model)."""
    import tensorflow as tf

    files = list(files)
    if not files:
        return np.zeros(0), np.zeros(0)
    signature = tf.saved_model.load(os.path.join(model_uri, SERVING_DIR)).signatures[
        "serving_default"]
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
