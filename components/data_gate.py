"""The data gate: decides whether a new span may be trained on, and keeps the acceptance ledger.

Why a component of our own: ExampleValidator only records a `blessed` property (TFX never stops
the Trainer by itself) and it cannot compare against a previous span, so drift comparators in the
schema would do nothing. The gate reads ExampleValidator's anomalies (schema contract), runs TFDV's
drift comparators against the last *accepted* span, and writes:

  state              (tfx Dataset artifact) the ledger: accepted spans, quarantined spans and why,
                     the drift baseline. Custom property `accepted` (1/0) drives the pipeline's Cond.
                     The next cycle resolves the latest ledger with LatestArtifactStrategy - the
                     only resolver besides LatestBlessedModel that Kubeflow V2 compiles - so the
                     ledger is carried forward: a rejected span copies the previous one.
  training_examples  (Examples) the rolling window: the last K accepted spans, ready for Trainer.
                     A quarantined span never enters it.
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

# The ledger's artifact type. Kubeflow V2 resolves artifacts by type title and titles every custom
# type 'tfx.Artifact', so the ledger uses a standard type that nothing else in this pipeline makes.
GateState = Dataset

LEDGER_FILE = "ledger.json"
SPLITS = ("train", "eval")
DRIFT_REASON_PREFIX = "COMPARATOR_"


@dataclasses.dataclass
class Ledger:
    """Which spans were accepted (with their artifacts) and which were quarantined, and why."""

    accepted: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    quarantined: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def baseline(self) -> Optional[Dict[str, Any]]:
        return self.accepted[-1] if self.accepted else None

    def window(self, spans: int) -> List[Dict[str, Any]]:
        return self.accepted[-spans:]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Ledger":
        data = json.loads(text)
        return cls(accepted=data.get("accepted", []), quarantined=data.get("quarantined", []))


@dataclasses.dataclass
class GateDecision:
    span: int
    accepted: bool
    reasons: List[str]
    ledger: Ledger
    training_spans: List[int]
    baseline_span: Optional[int]


def decide(span: int, examples_uri: str, statistics_uri: str, schema_reasons: List[str],
           drift_reasons: List[str], previous: Ledger, window_spans: int) -> GateDecision:
    """Pure decision: accept the span (it joins the window and becomes the drift baseline) or
    quarantine it (the ledger keeps the reasons; the window and baseline stay as they were)."""
    baseline = previous.baseline
    reasons = list(schema_reasons) + list(drift_reasons)
    ledger = Ledger(accepted=list(previous.accepted), quarantined=list(previous.quarantined))
    if reasons:
        ledger.quarantined.append({"span": span, "reasons": reasons})
        window: List[Dict[str, Any]] = []
    else:
        ledger.accepted.append({"span": span, "examples_uri": examples_uri,
                                "statistics_uri": statistics_uri})
        window = ledger.window(window_spans)
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


def drift_reasons(statistics, baseline_statistics, schema, baseline_span: int) -> List[str]:
    """TFDV drift comparators from the schema, current span vs the last accepted span."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    anomalies = tfdv.validate_statistics(statistics, schema,
                                         previous_statistics=baseline_statistics)
    reasons = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason:
            if anomalies_pb2.AnomalyInfo.Type.Name(reason.type).startswith(DRIFT_REASON_PREFIX):
                reasons.append(f"{feature}: drift vs span {baseline_span} - {reason.description}")
    return reasons


def _copy_window(window: List[Dict[str, Any]], output_uri: str) -> None:
    """Copy the window's split files into one Examples artifact (names keep their span)."""
    for split in SPLITS:
        target = os.path.join(output_uri, f"Split-{split}")
        tf.io.gfile.makedirs(target)
        for entry in window:
            source = os.path.join(entry["examples_uri"], f"Split-{split}")
            for name in tf.io.gfile.listdir(source):
                tf.io.gfile.copy(os.path.join(source, name),
                                 os.path.join(target, f"span-{entry['span']}-{name}"),
                                 overwrite=True)


def span_of(examples) -> int:
    """ExampleGen's span; function components may receive it as a custom property."""
    if examples.has_custom_property("span"):
        return int(examples.get_int_custom_property("span"))
    return int(examples.span)


def read_ledger(state_uri: Optional[str]) -> Ledger:
    if not state_uri:
        return Ledger()
    path = os.path.join(state_uri, LEDGER_FILE)
    if not tf.io.gfile.exists(path):
        return Ledger()
    with tf.io.gfile.GFile(path) as handle:
        return Ledger.from_json(handle.read())


@component
def DataGate(  # noqa: N802 - TFX component names are classes by convention
    examples: InputArtifact[standard_artifacts.Examples],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    state: OutputArtifact[GateState],
    training_examples: OutputArtifact[standard_artifacts.Examples],
    previous_state: InputArtifact[GateState] = None,
    window_spans: Parameter[int] = 3,
    drift_split: Parameter[str] = "train",
) -> None:
    import tensorflow_data_validation as tfdv

    span = span_of(examples)
    previous = read_ledger(previous_state.uri if previous_state else None)
    curated = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    schema_found = schema_reasons_from_validator(anomalies.uri)
    drift_found: List[str] = []
    if previous.baseline and not schema_found:
        drift_found = drift_reasons(
            load_split_statistics(statistics.uri, drift_split),
            load_split_statistics(previous.baseline["statistics_uri"], drift_split),
            curated, previous.baseline["span"])
    decision = decide(span, examples.uri, statistics.uri, schema_found, drift_found, previous,
                      window_spans)

    with tf.io.gfile.GFile(os.path.join(state.uri, LEDGER_FILE), "w") as handle:
        handle.write(decision.ledger.to_json())
    state.set_int_custom_property("accepted", int(decision.accepted))
    state.set_int_custom_property("span", span)
    state.set_string_custom_property("reasons", json.dumps(decision.reasons))
    state.set_string_custom_property("training_spans", json.dumps(decision.training_spans))
    state.set_string_custom_property(
        "quarantined_spans", json.dumps([q["span"] for q in decision.ledger.quarantined]))
    state.set_int_custom_property(
        "baseline_span", decision.baseline_span if decision.baseline_span is not None else -1)

    training_examples.span = span
    training_examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    training_examples.set_string_custom_property("training_spans",
                                                 json.dumps(decision.training_spans))
    if decision.accepted:
        _copy_window(decision.ledger.window(window_spans), training_examples.uri)
