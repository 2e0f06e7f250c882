"""The data gate: decides whether a new span may be trained on, and keeps the acceptance ledger.

Why a component of our own: ExampleValidator only records a `blessed` property (TFX never stops
the Trainer by itself) and it cannot compare against a previous span, so drift comparators in the
schema would do nothing. The gate, in order:

  1. schema contract: ExampleValidator's anomalies;
  2. drift: TFDV's comparators from the schema against the accepted span just below this one
     (the baseline) and against the oldest span of the training window (the long reference), so
     slow drift is caught as well as sudden drift;
  3. labels: the production model scores this span's eval split and the window's eval splits;
     a far lower AUC on this span means its labels are poisoned (components/label_check.py);
  4. warm start: the production model only if its whole training window is still clean,
     else the newest clean blessed model, else a cold start (components/ledger.py).

Fresh-span evaluation (not a check: it blocks nothing): once the schema and drift checks pass,
every version the release manifest labels (stable, canary, control, previous) scores this
span's eval split before anything trains on it - honest out-of-time AUCs, recorded as
`fresh_span_auc` (a custom property and checks["fresh_span_auc"]). The local runner promotes
or retires the canary from them when the span was accepted (pipeline/ops/fresh_labels.py).

It writes:
  state              (tfx Dataset artifact) the ledger (components/ledger.py). Custom property
                     `accepted` (1/0) drives the pipeline's Cond. The next cycle resolves the
                     latest ledger with LatestArtifactStrategy; operator actions (`ctpipe
                     quarantine ...`) publish a new ledger the same way.
  training_examples  (Examples) the rolling window: the last K accepted spans by span number, as
                     links to the spans' own ExampleGen files (no copy on a local filesystem),
                     plus window.json telling the Trainer which spans and which warm start.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.experimental.simple_artifacts import Dataset

from ctpipe.components.layout import LINEAGE_FILE, WARM_START_DIR, WINDOW_FILE
from ctpipe.components.ledger import LEDGER_FILE, Ledger, choose_warm_start, read_ledger

# The ledger's artifact type. Kubeflow V2 resolves artifacts by type title and titles every custom
# type 'tfx.Artifact', so the ledger uses a standard type that nothing else in this pipeline makes.
GateState = Dataset

SPLITS = ("train", "eval")
DRIFT_REASON_PREFIX = "COMPARATOR_"


@dataclasses.dataclass
class GateDecision:
    span: int
    accepted: bool
    reasons: List[str]
    ledger: Ledger
    training_spans: List[int]
    baseline_span: Optional[int]


def decide(span: int, examples_uri: str, statistics_uri: str, schema_reasons: List[str],
           drift_reasons: List[str], previous: Ledger, window_spans: int,
           label_reasons: Optional[List[str]] = None, rows: Optional[int] = None,
           window_min_rows: int = 0) -> GateDecision:
    """Pure decision: accept the span (it joins the window, ordered by span number) or
    quarantine it (the ledger keeps the reasons and its artifacts for a later release)."""
    baseline = previous.baseline(span)
    reasons = list(schema_reasons) + list(drift_reasons) + list(label_reasons or [])
    uris = {"examples_uri": examples_uri, "statistics_uri": statistics_uri}
    if reasons:
        ledger = previous.quarantine(span, reasons, by="gate", **uris)
        window: List[Dict[str, Any]] = []
    else:
        entry = {"span": span, **uris}
        if rows is not None:
            entry["rows"] = rows
        ledger = previous.accept(entry)
        window = ledger.window(span, window_spans, window_min_rows)
    return GateDecision(span=span, accepted=not reasons, reasons=reasons, ledger=ledger,
                        training_spans=[entry["span"] for entry in window],
                        baseline_span=baseline["span"] if baseline else None)


def _describe(anomalies) -> List[str]:
    reasons = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason:
            reasons.append(f"{feature}: {reason.short_description} - {reason.description}")
    for reason in anomalies.dataset_anomaly_info.reason:
        reasons.append(f"dataset: {reason.short_description} - {reason.description}")
    return reasons


def schema_reasons_from_validator(anomalies_uri: str, splits=SPLITS) -> List[str]:
    """ExampleValidator's verdict, one readable line per anomaly and split."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    reasons = []
    for split in splits:
        anomalies = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb"),
                               "rb") as handle:
            anomalies.ParseFromString(handle.read())
        reasons.extend(f"[{split}] {line}" for line in _describe(anomalies))
    return reasons


def load_split_statistics(statistics_uri: str, split: str):
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb"))


def drift_reasons(statistics, baseline_statistics, schema, baseline_span: int,
                  label: str = "") -> List[str]:
    """TFDV drift comparators from the schema, current span vs `baseline_span`."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    anomalies = tfdv.validate_statistics(statistics, schema,
                                         previous_statistics=baseline_statistics)
    reasons = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason:
            if anomalies_pb2.AnomalyInfo.Type.Name(reason.type).startswith(DRIFT_REASON_PREFIX):
                reasons.append(f"{feature}: drift vs span {baseline_span}{label} - "
                               f"{reason.description}")
    return reasons


def _drift_against_references(ledger: Ledger, span: int, statistics_uri: str, schema,
                              window_spans: int, split: str) -> List[str]:
    current = load_split_statistics(statistics_uri, split)
    reasons: List[str] = []
    baseline = ledger.baseline(span)
    if baseline:
        reasons += drift_reasons(current, load_split_statistics(baseline["statistics_uri"], split),
                                 schema, baseline["span"])
    reference = ledger.long_reference(span, window_spans)
    if reference and not reasons:
        reasons += drift_reasons(current,
                                 load_split_statistics(reference["statistics_uri"], split),
                                 schema, reference["span"], " (oldest span of the window)")
    return reasons


def _link_window(window: List[Dict[str, Any]], output_uri: str) -> None:
    """Make the window's split files appear in one Examples artifact (names keep their span).
    Local files are symlinked - a window is read, never written - remote ones copied."""
    for split in SPLITS:
        target = os.path.join(output_uri, f"Split-{split}")
        tf.io.gfile.makedirs(target)
        for entry in window:
            source = os.path.join(entry["examples_uri"], f"Split-{split}")
            for name in tf.io.gfile.listdir(source):
                destination = os.path.join(target, f"span-{entry['span']}-{name}")
                if "://" in source:
                    tf.io.gfile.copy(os.path.join(source, name), destination, overwrite=True)
                else:
                    os.symlink(os.path.join(source, name), destination)


def span_of(examples) -> int:
    """ExampleGen's span; function components may receive it as a custom property."""
    if examples.has_custom_property("span"):
        return int(examples.get_int_custom_property("span"))
    return int(examples.span)


def read_json(path: str) -> Optional[Any]:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def model_training_spans(model_uri: str) -> List[int]:
    lineage = read_json(os.path.join(model_uri, LINEAGE_FILE)) or {}
    return list(lineage.get("training_spans", []))


def _given_up_spans(span_selection) -> List[int]:
    """Spans the Kubeflow SpanSelect step gave up on (their failed runs may have left them in
    the ledger as accepted); none on the local runner, which publishes that itself."""
    if span_selection is None or not span_selection.has_custom_property("gave_up"):
        return []
    return [int(s) for s in json.loads(span_selection.get_string_custom_property("gave_up"))]


def _model_usable(model_uri: str) -> bool:
    return tf.io.gfile.exists(os.path.join(model_uri, WARM_START_DIR))


@component
def DataGate(  # noqa: N802 - TFX component names are classes by convention
    examples: InputArtifact[standard_artifacts.Examples],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    state: OutputArtifact[GateState],
    training_examples: OutputArtifact[standard_artifacts.Examples],
    previous_state: InputArtifact[GateState] = None,
    production_model: InputArtifact[standard_artifacts.Model] = None,
    span_selection: InputArtifact[GateState] = None,
    window_spans: Parameter[int] = 3,
    window_min_rows: Parameter[int] = 0,
    label_check_max_drop: Parameter[float] = 0.15,
    label_check_min_rows: Parameter[int] = 50,
    drift_split: Parameter[str] = "train",
    manifest: Parameter[str] = "",
    model_name: Parameter[str] = "",
) -> None:
    import tensorflow_data_validation as tfdv

    from ctpipe.components.label_check import check_labels

    span = span_of(examples)
    previous = read_ledger(previous_state.uri if previous_state else None).without(span)
    for given_up in _given_up_spans(span_selection):
        if given_up not in previous.quarantined_spans():
            previous = previous.quarantine(given_up, ["gave up after repeated failed runs"],
                                           by="attempts")
    production = None
    if production_model is not None:
        production = {"uri": production_model.uri,
                      "training_spans": model_training_spans(production_model.uri)}
        previous = previous.remember_model(production["uri"], production["training_spans"])
    curated = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    schema_found = schema_reasons_from_validator(anomalies.uri)
    drift_found: List[str] = []
    if not schema_found:
        drift_found = _drift_against_references(previous, span, statistics.uri, curated,
                                                window_spans, drift_split)
    label_found: List[str] = []
    checks: Dict[str, Any] = {}
    reference = previous.reference_window(span, window_spans)
    if production and reference and not schema_found and not drift_found:
        result = check_labels(production["uri"], examples.uri,
                              [(e["span"], e["examples_uri"]) for e in reference],
                              label_check_max_drop)
        checks["labels"] = result.to_dict()
        if result.span_rows >= label_check_min_rows and result.failed:
            label_found.append(result.reason(span))
    fresh: Dict[str, Any] = {}
    if manifest and not schema_found and not drift_found:
        from ctpipe.components.label_check import fresh_span_scores

        fresh = fresh_span_scores(manifest, model_name, examples.uri)
        checks["fresh_span_auc"] = fresh
    train_rows = int(load_split_statistics(statistics.uri, "train").datasets[0].num_examples)
    decision = decide(span, examples.uri, statistics.uri, schema_found, drift_found, previous,
                      window_spans, label_found, rows=train_rows,
                      window_min_rows=window_min_rows)
    warm_start = choose_warm_start(decision.ledger, production, _model_usable)
    checks["warm_start"] = warm_start

    tf.io.gfile.makedirs(state.uri)  # a local or mounted pipeline root has no folder yet
    with tf.io.gfile.GFile(os.path.join(state.uri, LEDGER_FILE), "w") as handle:
        handle.write(decision.ledger.to_json())
    state.set_int_custom_property("accepted", int(decision.accepted))
    state.set_int_custom_property("span", span)
    state.set_string_custom_property("reasons", json.dumps(decision.reasons))
    state.set_string_custom_property("training_spans", json.dumps(decision.training_spans))
    state.set_string_custom_property("quarantined_spans",
                                     json.dumps(decision.ledger.quarantined_spans()))
    state.set_string_custom_property("checks", json.dumps(checks))
    state.set_string_custom_property("fresh_span_auc", json.dumps(fresh))
    state.set_int_custom_property(
        "baseline_span", decision.baseline_span if decision.baseline_span is not None else -1)

    training_examples.span = span
    training_examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    training_examples.set_string_custom_property("training_spans",
                                                 json.dumps(decision.training_spans))
    if decision.accepted:
        window = decision.ledger.window(span, window_spans, window_min_rows)
        _link_window(window, training_examples.uri)
        with tf.io.gfile.GFile(os.path.join(training_examples.uri, WINDOW_FILE), "w") as handle:
            # The spans' own TFDV statistics: the Trainer learns vocabularies and
            # normalisation from them instead of loading the window.
            # "fresh_labels": the span's scores, for the Pusher's verdict on Kubeflow
            # (components/fresh_labels.py), carried by the Trainer's lineage.
            json.dump({"spans": decision.training_spans, "warm_start": warm_start,
                       "fresh_labels": {"span": span, "fresh_span_auc": fresh},
                       "statistics_uris": [entry["statistics_uri"] for entry in window]},
                      handle)
