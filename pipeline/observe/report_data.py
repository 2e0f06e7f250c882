"""What the cycle reports show, gathered from ML Metadata and the cycles' artifacts (no HTML).

Sources, per cycle (a span's page shows its latest cycle):
  decision          the runner's `ctpipe.Cycle` record (pipeline/home/cycles.py): outcome, reasons,
                    metrics, checks, training spans, version, seconds;
  its pipeline run  found by the decision's run_id (outcomes.read_run): StatisticsGen's
                    statistics, ExampleValidator's anomalies, the DataGate's state (baseline span,
                    checks), the Evaluator's evaluation (per-slice metrics);
  the drift baseline's statistics: the ledger entry of the baseline span (latest ledger, it keeps
                    statistics_uri for accepted and quarantined spans), else that span's own run;
  release labels per cycle (stable/canary): reconstructed, see `label_history`.

Artifacts of cycles older than `keep_cycles` are removed by retention (pipeline/run/retention.py);
what is gone is reported as gone, never guessed. Artifact URIs are absolute: a home that was
copied or moved is read at its new place (the part after `pipeline_root/`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.home.cycles import CycleRecord, OperatorAction
from ctpipe.pipeline.home.outcomes import Decision, Outcome, RunRecord

DRIFT_SPLIT = "train"  # components/data_gate.py: the gate's drift_split default
RELEASE_ACTIONS = ("promote", "rollback", "remove_canary", "control_pin", "control_unpin")
NUMERIC_BINS = 20
TOP_CATEGORIES = 12
OTHER_VALUES = "(other or empty)"
DRIFT_LINE = re.compile(r"^(?P<feature>[^:\[\]]+): drift vs span (?P<span>\d+)"
                        r"(?P<long> \(oldest span of the window\))? - (?P<text>.*)$", re.S)
REMOVED = "removed by retention (keep_cycles) or never written"


# -- plain results ------------------------------------------------------------------------------


@dataclasses.dataclass
class CyclePoint:
    """One cycle on the history plots."""

    record_id: int
    span: Optional[int]
    attempt: int
    outcome: str
    candidate_auc: Optional[float]
    baseline_auc: Optional[float]
    gate_auc: Optional[float]  # the production model on this span (the label check)
    model_version: Optional[int]
    labels: Dict[str, int]  # release labels after this cycle (reconstructed)
    events: List[str]  # release changes and operator actions since the previous cycle
    finished_at: Optional[float]
    # Every labelled version's AUC on this span before training ({version: {auc, stderr, rows,
    # labels}}), only when the gate accepted the span (a blocked span's labels are not trusted).
    fresh: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        text = str(self.span) if self.span is not None else "-"
        return f"{text}·{self.attempt}" if self.attempt > 1 else text


@dataclasses.dataclass
class Distribution:
    """One feature, this span against its references (fractions of each span's rows)."""

    feature: str
    kind: str  # "numeric", "categorical" or "empty"
    sources: List[str]  # series names, this span first
    edges: List[float] = dataclasses.field(default_factory=list)
    categories: List[str] = dataclasses.field(default_factory=list)
    values: List[List[float]] = dataclasses.field(default_factory=list)  # per source
    missing: List[Optional[float]] = dataclasses.field(default_factory=list)
    summary: List[str] = dataclasses.field(default_factory=list)  # per source
    drift: List[str] = dataclasses.field(default_factory=list)
    anomalies: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Anomaly:
    split: str
    feature: str
    short: str
    description: str


@dataclasses.dataclass
class CycleView:
    """Everything one cycle page shows."""

    record: CycleRecord
    decision: Decision
    attempts: List[CycleRecord]
    points: List[CyclePoint]  # the history up to and including this cycle
    labels: Dict[str, int]  # release labels after this cycle
    baseline_span: Optional[int]
    baseline_note: str
    references: List[Tuple[int, str]]  # (span, role) whose statistics are drawn
    distributions: List[Distribution]
    statistics_note: str
    anomalies: List[Anomaly]
    anomalies_note: str
    slices: Dict[str, Dict[str, Dict[str, float]]]  # slice -> model -> metric -> value
    slices_note: str
    actions: List[OperatorAction]  # operator actions naming this span
    ledger_now: str  # what the latest ledger says of this span
    artifacts: Dict[str, str]  # what was read, by name -> uri ("" = not there)


# -- the home -------------------------------------------------------------------------------------


class HomeView:
    """One pipeline home's ML Metadata, read once per report run."""

    def __init__(self, config: PipelineConfig):
        from ctpipe.pipeline.errors import BadInput
        from ctpipe.pipeline.home import Home, cycles, ledger_store, outcomes

        paths = Home.of(config)
        if not paths.exists():
            raise BadInput(f"no pipeline home at {config.home} "
                           f"(no {os.path.basename(paths.metadata_path)})")
        self.config = config
        self.paths = paths
        self.store = paths.open_store()
        self.records = [r for r in cycles.cycle_records(self.store, config.pipeline_name)]
        self.actions = cycles.operator_actions(self.store, config.pipeline_name)
        self.ledger, _ = ledger_store.latest_ledger(self.store, config.pipeline_name)
        self._contexts = {c.name: c for c in outcomes.pipeline_runs(self.store,
                                                                     config.pipeline_name)}
        self._runs: Dict[str, Optional[RunRecord]] = {}
        self._points: Optional[List[CyclePoint]] = None

    # -- lookups ------------------------------------------------------------------------------
    def decided(self) -> List[CycleRecord]:
        """Cycles with a decision about a span, in the order they ran."""
        return [r for r in self.records if r.decision is not None and r.span is not None
                and r.decision.outcome != Outcome.NO_NEW_DATA]

    def spans(self) -> List[int]:
        return sorted({r.span for r in self.decided()})

    def latest_record(self, span: int) -> Optional[CycleRecord]:
        records = [r for r in self.decided() if r.span == span]
        return records[-1] if records else None

    def run(self, run_id: Optional[str]) -> Optional[RunRecord]:
        from ctpipe.pipeline.home.outcomes import read_run

        if not run_id or run_id not in self._contexts:
            return None
        if run_id not in self._runs:
            self._runs[run_id] = read_run(self.store, self._contexts[run_id],
                                          self.config.pipeline_name)
        return self._runs[run_id]

    def output_uri(self, run: Optional[RunRecord], node: str, key: str) -> str:
        """The local path of a run's output, "" when absent (never written, or removed)."""
        artifact = (run.outputs.get(node, {}).get(key) if run is not None else None)
        return self.local(artifact.uri) if artifact is not None else ""

    def local(self, uri: Optional[str]) -> str:
        """`uri` where it is now: under this home's pipeline_root (the same path unless the
        home was copied or moved), else as recorded; "" when it is not there."""
        if not uri:
            return ""
        marker = f"{os.sep}{os.path.basename(self.paths.pipeline_root)}{os.sep}"
        if marker in uri:
            here = os.path.join(self.paths.pipeline_root, uri.split(marker, 1)[1])
            if os.path.exists(here):
                return here
        return uri if os.path.exists(uri) else ""

    # -- the history ---------------------------------------------------------------------------
    def points(self) -> List[CyclePoint]:
        if self._points is None:
            self._points = label_history(self.decided(), self.actions, self._pushed_labels)
        return self._points

    def _pushed_labels(self, record: CycleRecord) -> Dict[str, int]:
        """The release labels the Pusher wrote for this cycle's version (its PushedModel's
        release_<label> properties); homes from before the manifest served the newest push."""
        run = self.run(record.decision.run_id)
        pushed = run.outputs.get("Pusher", {}).get("pushed_model") if run else None
        labels = {}
        if pushed is not None:
            for name, value in pushed.custom_properties.items():
                if name.startswith("release_") and value.WhichOneof("value") == "int_value":
                    labels[name[len("release_"):]] = int(value.int_value)
        if not labels and record.decision.model_version is not None:
            labels = {"stable": int(record.decision.model_version)}
        return labels

    def ledger_status(self, span: int) -> str:
        """What the latest ledger says of `span` now (an operator may have changed it since
        its cycle): accepted, released by an operator, quarantined (by whom), or pending."""
        entry = self.ledger.entry(span)
        if entry is None:
            return "pending (not in the ledger)"
        if span in self.ledger.quarantined_spans():
            return f"quarantined by {entry.get('by', 'the gate')}"
        if entry.get("released"):
            return f"accepted: released by an operator ({entry['released']})"
        return "accepted"

    def release_now(self) -> Optional[Dict[str, int]]:
        """The release manifest's labels now; None when the home has no manifest (made before
        it existed: the model base path serves its newest version)."""
        from ctpipe.pipeline.home.release import manifest_of, release_state

        if not os.path.exists(manifest_of(self.config)):
            return None
        return dict(release_state(self.config).labels)

    # -- one cycle -----------------------------------------------------------------------------
    def cycle_view(self, span: int) -> CycleView:
        from ctpipe.pipeline.errors import BadInput

        record = self.latest_record(span)
        if record is None:
            known = ", ".join(map(str, self.spans())) or "none"
            raise BadInput(f"no decided cycle for span {span} in {self.config.home} "
                           f"(spans with a decision: {known})")
        decision = record.decision
        points = [p for p in self.points() if p.record_id <= record.id]
        run = self.run(decision.run_id)
        uris = {"statistics": self.output_uri(run, "StatisticsGen", "statistics"),
                "anomalies": self.output_uri(run, "ExampleValidator", "anomalies"),
                "gate state": self.output_uri(run, "DataGate", "state"),
                "evaluation": self.output_uri(run, "Evaluator", "evaluation")}
        baseline_span, baseline_note = self._baseline_span(run, span)
        drift = drift_by_feature(decision.reasons)
        references = [(baseline_span, "drift baseline")] if baseline_span is not None else []
        for cited in sorted({s for items in drift.values() for s, _, long in items if long}):
            if cited != baseline_span:
                references.append((cited, "oldest span of the window"))
        anomalies, anomalies_note = self._anomalies(uris["anomalies"], decision)
        distributions, statistics_note = self._distributions(span, uris["statistics"],
                                                             references, drift, anomalies)
        slices, slices_note = self._slices(uris["evaluation"], decision)
        return CycleView(
            record=record, decision=decision,
            attempts=[r for r in self.records if r.span == span],
            points=points, labels=points[-1].labels if points else {},
            baseline_span=baseline_span, baseline_note=baseline_note, references=references,
            distributions=distributions, statistics_note=statistics_note,
            anomalies=anomalies, anomalies_note=anomalies_note,
            slices=slices, slices_note=slices_note,
            actions=[a for a in self.actions if a.span == span],
            ledger_now=self.ledger_status(span), artifacts=uris)

    def _baseline_span(self, run: Optional[RunRecord], span: int) -> Tuple[Optional[int], str]:
        state = run.outputs.get("DataGate", {}).get("state") if run else None
        if state is not None and "baseline_span" in state.custom_properties:
            value = state.custom_properties["baseline_span"].int_value
            if value < 0:
                return None, "no drift baseline: no accepted span below this one"
            return int(value), "the accepted span just below this one, as the gate used it"
        entry = self.ledger.baseline(span)
        if entry is None:
            return None, "no drift baseline: the gate did not run and no accepted span is below"
        return int(entry["span"]), ("the gate did not run; the accepted span below this one in "
                                    "the current ledger")

    def statistics_uri(self, span: int) -> str:
        entry = self.ledger.entry(span)
        uri = self.local(entry.get("statistics_uri")) if entry else ""
        if uri:
            return uri
        record = self.latest_record(span)
        run = self.run(record.decision.run_id) if record is not None else None
        return self.output_uri(run, "StatisticsGen", "statistics")

    def _distributions(self, span: int, statistics_uri: str, references: List[Tuple[int, str]],
                       drift: Dict[str, List[Tuple[int, str, bool]]],
                       anomalies: List[Anomaly]) -> Tuple[List[Distribution], str]:
        current = load_statistics(statistics_uri)
        if current is None:
            return [], (f"this span's statistics are not on disk ({REMOVED}); the decision and "
                        "its reasons above come from ML Metadata")
        sources = [(f"span {span}", current)]
        notes = []
        for reference, role in references:
            loaded = load_statistics(self.statistics_uri(reference))
            if loaded is None:
                notes.append(f"statistics of span {reference} ({role}) not on disk ({REMOVED})")
            else:
                sources.append((f"span {reference} ({role})", loaded))
        distributions = compare_statistics(sources)
        anomalous: Dict[str, List[str]] = {}
        for anomaly in anomalies:
            anomalous.setdefault(anomaly.feature, []).append(
                f"[{anomaly.split}] {anomaly.short}: {anomaly.description}")
        for item in distributions:
            item.drift = [f"drift vs span {reference}: {text}"
                          for reference, text, _ in drift.get(item.feature, [])]
            item.anomalies = anomalous.get(item.feature, [])
        distributions.sort(key=lambda d: (not d.drift, not d.anomalies, d.feature))
        if not references:
            notes.append("no drift baseline to compare with")
        return distributions, "; ".join(notes)

    def _anomalies(self, uri: str, decision: Decision) -> Tuple[List[Anomaly], str]:
        if uri:
            return load_anomalies(uri), ""
        contract = [r for r in decision.reasons if r.startswith("[")]
        anomalies = []
        for line in contract:
            split, _, rest = line[1:].partition("] ")
            feature, _, text = rest.partition(": ")
            short, _, description = text.partition(" - ")
            anomalies.append(Anomaly(split, feature, short, description))
        return anomalies, (f"ExampleValidator's anomalies are not on disk ({REMOVED}); "
                           "listed from the decision's reasons")

    def _slices(self, uri: str, decision: Decision
                ) -> Tuple[Dict[str, Dict[str, Dict[str, float]]], str]:
        if uri:
            slices = load_slice_metrics(uri)
            if slices:
                return slices, ""
        if decision.metrics:
            return ({"all data": decision.metrics},
                    f"per-slice metrics: the evaluation is not on disk ({REMOVED}); overall "
                    "metrics from the decision")
        return {}, "nothing was evaluated in this cycle (no candidate was trained)"


# -- pure helpers ----------------------------------------------------------------------------------


def label_history(records: List[CycleRecord], actions: List[OperatorAction],
                  pushed_labels) -> List[CyclePoint]:
    """Release labels after each cycle, replayed in time order from what ML Metadata keeps:
    each push's labels (the Pusher records them on its PushedModel as release_<label>) at the
    cycle's end, and each promote / rollback / remove_canary action's `after` labels at its
    time. A point shows the labels once its cycle ended, so an action between two cycles shows
    on the later one (and in its `events`). Other operator actions (quarantine, release) are
    listed in `events` too. `pushed_labels(record)` gives a pushed cycle's labels."""
    timed: List[Tuple[float, int, Optional[Dict[str, int]], str]] = []
    for order, action in enumerate(actions):
        after = action.details.get("after") if action.action in RELEASE_ACTIONS else None
        subject = f" span {action.span}" if action.span is not None else ""
        change = ""
        if isinstance(after, dict):
            change = f": {_labels_text(action.details.get('before'))} -> {_labels_text(after)}"
        text = f"{action.action}{subject} by {action.user}{change} ({action.reason})"
        labels = ({str(k): int(v) for k, v in after.items()} if isinstance(after, dict)
                  else None)
        timed.append((action.at or 0.0, order, labels, text))
    timed.sort(key=lambda item: (item[0], item[1]))
    points: List[CyclePoint] = []
    labels: Dict[str, int] = {}
    position = 0
    for record in records:
        decision = record.decision
        end = decision.finished_at or (record.started_at + (decision.seconds or 0.0))
        events = []
        while position < len(timed) and timed[position][0] <= end:
            _, _, changed, text = timed[position]
            if changed is not None:
                labels = changed
            events.append(text)
            position += 1
        settled = (decision.checks.get("release") or {}).get("after")
        if isinstance(settled, dict):  # the runner's release step (pipeline/ops/fresh_labels.py)
            labels = {str(k): int(v) for k, v in settled.items()}
            if decision.outcome == Outcome.PUSHED:
                events.append(f"pushed version {decision.model_version}: {_labels_text(labels)}")
        elif decision.outcome == Outcome.PUSHED:
            pushed = pushed_labels(record)
            if pushed:
                labels = pushed
                events.append(f"pushed version {decision.model_version}: {_labels_text(labels)}")
        labels_check = decision.checks.get("labels") or {}
        points.append(CyclePoint(
            record_id=record.id, span=record.span, attempt=record.attempt or 1,
            outcome=decision.outcome.value,
            candidate_auc=decision.metrics.get("candidate", {}).get("auc"),
            baseline_auc=decision.metrics.get("baseline", {}).get("auc"),
            gate_auc=labels_check.get("production_auc_on_span"),
            model_version=decision.model_version, labels=dict(labels), events=events,
            finished_at=decision.finished_at,
            fresh=dict(decision.fresh_span_auc or {}) if decision.outcome in (
                Outcome.PUSHED, Outcome.NOT_BLESSED) else {}))
    return points


def _labels_text(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def drift_by_feature(reasons: List[str]) -> Dict[str, List[Tuple[int, str, bool]]]:
    """{feature: [(reference span, what TFDV said, against the long reference?)]} from the
    gate's reasons ("fare: drift vs span 7 - The Linfty distance ...")."""
    found: Dict[str, List[Tuple[int, str, bool]]] = {}
    for reason in reasons:
        match = DRIFT_LINE.match(reason)
        if match:
            found.setdefault(match["feature"].strip(), []).append(
                (int(match["span"]), match["text"].strip(), bool(match["long"])))
    return found


def load_statistics(uri: str, split: str = DRIFT_SPLIT):
    """The DatasetFeatureStatistics of one split, None when the file is not there."""
    if not uri:
        return None
    path = os.path.join(uri, f"Split-{split}", "FeatureStats.pb")
    if not os.path.exists(path):
        return None
    import tensorflow_data_validation as tfdv

    statistics = tfdv.load_stats_binary(path)
    return statistics.datasets[0] if statistics.datasets else None


def _feature_name(feature) -> str:
    return ".".join(feature.path.step) if feature.path.step else feature.name


def _common(feature):
    kind = feature.WhichOneof("stats")
    if kind == "num_stats":
        return feature.num_stats.common_stats
    if kind == "string_stats":
        return feature.string_stats.common_stats
    if kind == "bytes_stats":
        return feature.bytes_stats.common_stats
    return None


def _missing_fraction(feature, rows: int) -> Optional[float]:
    common = _common(feature)
    if common is None:
        return None
    total = common.num_missing + common.num_non_missing
    if not total:
        return None if not rows else 1.0
    return common.num_missing / total


def compare_statistics(sources: List[Tuple[str, Any]]) -> List[Distribution]:
    """Per feature of the first source: its distribution in every source, on common bins
    (numeric) or common top values (categorical), as fractions of each source's values."""
    from ctpipe.pipeline.observe.report_svg import nice_edges, number_text, rebin

    by_source = [{_feature_name(f): f for f in dataset.features} for _, dataset in sources]
    names = [name for name, _ in sources]
    result = []
    for feature_name, feature in by_source[0].items():
        features = [features.get(feature_name) for features in by_source]
        kind = feature.WhichOneof("stats")
        item = Distribution(feature=feature_name, kind="empty", sources=names)
        item.missing = [_missing_fraction(f, d.num_examples) if f is not None else None
                        for f, (_, d) in zip(features, sources)]
        if kind == "num_stats":
            histograms = [_standard_buckets(f) for f in features]
            lows = [b[0][0] for b in histograms if b]
            highs = [b[-1][1] for b in histograms if b]
            if lows:
                item.edges = nice_edges(min(lows), max(highs), NUMERIC_BINS)
                item.kind = "numeric"
                for buckets in histograms:
                    counts = rebin(buckets or [], item.edges)
                    total = sum(counts)
                    item.values.append([c / total if total else 0.0 for c in counts])
            item.summary = [
                (f"mean {number_text(f.num_stats.mean)}, std {number_text(f.num_stats.std_dev)}, "
                 f"min {number_text(f.num_stats.min)}, median "
                 f"{number_text(f.num_stats.median)}, max {number_text(f.num_stats.max)}, "
                 f"zeros {f.num_stats.num_zeros}")
                if f is not None and f.WhichOneof("stats") == "num_stats" else "absent"
                for f in features]
        elif kind == "string_stats":
            tops = [_top_values(f) for f in features]
            order: List[str] = []
            for top in tops:
                for value, _ in sorted(top.items(), key=lambda kv: -kv[1]):
                    if value not in order:
                        order.append(value)
            if order:
                item.kind = "categorical"
                item.categories = order[:TOP_CATEGORIES]
                for f, top in zip(features, tops):
                    total = _non_missing(f) or sum(top.values()) or 1.0
                    item.values.append([top.get(c, 0.0) / total for c in item.categories])
                rest = [max(0.0, 1.0 - sum(values)) for values in item.values]
                if max(rest) > 0.005:  # rarer values, and those TFDV's top values leave out
                    item.categories.append(OTHER_VALUES)
                    for values, share in zip(item.values, rest):
                        values.append(share)
            item.summary = [
                f"{f.string_stats.unique} unique values" if f is not None
                and f.WhichOneof("stats") == "string_stats" else "absent" for f in features]
        result.append(item)
    return result


def _standard_buckets(feature) -> List[Tuple[float, float, float]]:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    if feature is None or feature.WhichOneof("stats") != "num_stats":
        return []
    for histogram in feature.num_stats.histograms:
        if histogram.type == statistics_pb2.Histogram.STANDARD:
            return [(b.low_value, b.high_value, b.sample_count) for b in histogram.buckets]
    return []


def _top_values(feature) -> Dict[str, float]:
    if feature is None or feature.WhichOneof("stats") != "string_stats":
        return {}
    return {v.value: float(v.frequency) for v in feature.string_stats.top_values}


def _non_missing(feature) -> float:
    common = _common(feature) if feature is not None else None
    return float(common.num_non_missing) if common is not None else 0.0


def load_anomalies(uri: str) -> List[Anomaly]:
    """ExampleValidator's anomalies, every split (Split-*/SchemaDiff.pb)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = []
    for split_dir in sorted(os.listdir(uri)):
        path = os.path.join(uri, split_dir, "SchemaDiff.pb")
        if not split_dir.startswith("Split-") or not os.path.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as handle:
            anomalies.ParseFromString(handle.read())
        split = split_dir[len("Split-"):]
        for feature, info in sorted(anomalies.anomaly_info.items()):
            for reason in info.reason:
                found.append(Anomaly(split, feature, reason.short_description,
                                     reason.description))
        for reason in anomalies.dataset_anomaly_info.reason:
            found.append(Anomaly(split, "(dataset)", reason.short_description,
                                 reason.description))
    return found


def slice_name(slice_key) -> str:
    """'all data' for the overall slice, 'payment_type=Cash' for a feature slice."""
    if not slice_key:
        return "all data"
    return ", ".join(f"{column}={value.decode() if isinstance(value, bytes) else value}"
                     for column, value in slice_key)


def load_slice_metrics(uri: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{slice: {"candidate"|"baseline": {metric: value}}} from the Evaluator's evaluation (on
    the first run there is no baseline and TFMA's one model has no name)."""
    from ctpipe.components.evaluation import metrics_by_slice

    result = {slice_name(key): models for key, models in metrics_by_slice(uri).items()}
    ordered = {"all data": result.pop("all data")} if "all data" in result else {}
    ordered.update(sorted(result.items()))
    return ordered
