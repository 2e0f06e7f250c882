"""Evaluator configuration, and reading its results back as plain numbers and reasons.

Why these thresholds: value thresholds (AUC floor, minimum eval examples) hold on the first run,
when there is no baseline and TFMA ignores change thresholds. The change threshold compares the
candidate with the served (last blessed) model on the *same* eval split - a paired comparison,
far less noisy on small spans than comparing to a number from another span - and allows a
configurable drop (max_auc_drop) so that noise on a few hundred rows does not block every push.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import tensorflow_model_analysis as tfma

from ctpipe.components import features as F

CANDIDATE = "candidate"
BASELINE = "baseline"
REPORTED_METRICS = ("auc", "binary_accuracy", "calibration", "example_count", "mean_label",
                    "mean_prediction")


def build_eval_config(min_auc: float, max_auc_drop: float, min_eval_examples: int
                      ) -> tfma.EvalConfig:
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=F.LABEL_KEY,
                                    prediction_key="probabilities")],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[name])
                                             for name in F.SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            _gated("ExampleCount", tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": min_eval_examples}))),
            _gated("AUC", tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}),
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -max_auc_drop}))),
            tfma.MetricConfig(class_name="BinaryAccuracy"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
        ])])


def _gated(class_name: str, threshold: tfma.MetricThreshold) -> tfma.MetricConfig:
    """Thresholds hold on the overall slice only: per-slice metrics (e.g. 2 'Unknown' payments)
    are reported, but a tiny slice must not veto a model."""
    return tfma.MetricConfig(class_name=class_name, per_slice_thresholds=[
        tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)])


def metric_number(value: Any) -> Optional[float]:
    """A TFMA metric value (a number or {"doubleValue": ...}) as a rounded float; None for NaN
    or a non-number."""
    if isinstance(value, dict):
        value = value.get("doubleValue", value.get("value"))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else round(number, 4)


def metrics_by_slice(evaluation_uri: str) -> Dict[tuple, Dict[str, Dict[str, float]]]:
    """{TFMA slice key: {'candidate'|'baseline': {metric: value}}}; () is the overall slice.
    With a baseline TFX names the models candidate/baseline; on the first run the only model
    has no name (and is the candidate)."""
    result: Dict[tuple, Dict[str, Dict[str, float]]] = {}
    loaded = set()
    for model_name, stored_as in ((CANDIDATE, CANDIDATE), (BASELINE, BASELINE),
                                  (CANDIDATE, None)):
        if model_name in loaded:
            continue
        try:
            evaluation = tfma.load_eval_result(evaluation_uri, model_name=stored_as)
        except Exception:  # noqa: BLE001 - an absent model raises various errors across TFMA
            continue
        for slice_key, metrics in evaluation.slicing_metrics:
            values = metrics.get("", {}).get("", {})
            numbers = {name: metric_number(values[name]) for name in REPORTED_METRICS
                       if name in values}
            numbers = {k: v for k, v in numbers.items() if v is not None}
            if numbers:
                loaded.add(model_name)
                result.setdefault(slice_key, {})[model_name] = numbers
    return result


def overall_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """{'candidate': {...}, 'baseline': {...}} for the overall slice (baseline absent on run 1)."""
    return metrics_by_slice(evaluation_uri).get((), {})


def failed_thresholds(evaluation_uri: str) -> List[str]:
    """Readable reasons from TFMA's validation result (empty when everything passed)."""
    validation = tfma.load_validation_result(evaluation_uri)
    reasons = []
    for per_slice in validation.metric_validations_per_slice:
        slice_name = _slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            key = failure.metric_key
            metric = key.name + (" change vs baseline" if key.is_diff else "")
            reasons.append(f"{metric} on {slice_name} = {_format(failure.metric_value)} "
                           f"fails threshold {_threshold_text(failure.metric_threshold)}")
    for missing in validation.missing_slices:
        reasons.append(f"slice {missing} required by a threshold had no examples")
    if not validation.validation_ok and not reasons:
        reasons.append("TFMA validation failed without a metric failure")
    return reasons


def _slice_name(slice_key) -> str:
    parts = [f"{s.column}={s.bytes_value.decode() if s.HasField('bytes_value') else s.int64_value}"
             for s in slice_key.single_slice_keys]
    return ",".join(parts) or "all data"


def _format(metric_value) -> str:
    if metric_value.HasField("double_value"):
        return f"{metric_value.double_value.value:.4f}"
    return str(metric_value).strip()


def _threshold_text(threshold) -> str:
    if threshold.HasField("value_threshold"):
        bounds: List[Tuple[str, float]] = []
        if threshold.value_threshold.HasField("lower_bound"):
            bounds.append((">=", threshold.value_threshold.lower_bound.value))
        if threshold.value_threshold.HasField("upper_bound"):
            bounds.append(("<=", threshold.value_threshold.upper_bound.value))
        return " and ".join(f"{op} {value:g}" for op, value in bounds)
    change = threshold.change_threshold
    return f"change >= {change.absolute.value:g}" if change.HasField("absolute") else str(change)
