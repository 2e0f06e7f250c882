"""The pipeline's health, read from a home: ML Metadata (cycle records, operator actions, the
newest ledger and pipeline run), the release manifest and the latest skew result.

Every value is recomputed from what the home keeps, never from counters in a process, so a
restarted `watch` or a cron job reports the same numbers (pipeline/observe/metrics.py exposes
them in Prometheus format; the skew contract is described there). ML Metadata is opened once
per read, read-only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Optional

from ctpipe.components.basics import first_line
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.home.outcomes import Decision, Outcome

LOG = logging.getLogger(__name__)
# Outcomes that are the gate's verdict on a span's data.
GATE_VERDICTS = (Outcome.PUSHED, Outcome.DATA_BLOCKED, Outcome.NOT_BLESSED)
SPAN_OUTCOMES = tuple(o for o in Outcome if o != Outcome.NO_NEW_DATA)
RELEASE_ACTION = "release"  # pipeline/ops/quarantine.py quarantine_release
# Actions that move release labels (pipeline/ops/release.py, pipeline/ops/fresh_labels.py).
RELEASE_ACTIONS = ("promote", "rollback", "remove_canary", "control_pin", "control_unpin",
                   "fresh_labels_pass")
READ_ATTEMPTS = 3  # SQLite may be busy for a moment while a cycle writes


@dataclasses.dataclass
class Health:
    """Everything one scrape exports (None: the series is left out)."""

    metadata_up: bool = True
    cycles: Dict[str, int] = dataclasses.field(
        default_factory=lambda: {o.value: 0 for o in Outcome})
    last: Optional[Decision] = None
    first_cycle_at: Optional[float] = None
    cycle_seconds: Optional[float] = None
    component_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    running: int = 0
    running_since: Optional[float] = None
    pending_spans: Optional[int] = None
    quarantined_spans: Optional[int] = None
    consecutive_data_blocked: int = 0
    last_push_at: Optional[float] = None
    last_pushed_version: Optional[int] = None
    stable: Optional[int] = None
    canary: Optional[int] = None
    previous: Optional[int] = None
    control: Optional[int] = None
    # The last accepted span's fresh-span evaluation: {version: {auc, stderr, rows, labels}}
    # (labels as the manifest had them when the span was scored), and that span.
    fresh_span: Optional[int] = None
    fresh_span_auc: Dict[str, dict] = dataclasses.field(default_factory=dict)
    # Release actions (promote, rollback, remove_canary, control pin/unpin, fresh-label passes)
    # by (action, by): "operator", "guard" or "fresh_labels".
    release_actions: Dict[tuple, int] = dataclasses.field(default_factory=dict)
    skew: Optional[dict] = None
    skew_alarms: Optional[int] = None


# -- reading the home ------------------------------------------------------------------------


def read_health(config: PipelineConfig, data_root: Optional[str] = None) -> Health:
    """One pass over the home: ML Metadata (opened once, read-only), manifest, skew result."""
    health = Health()
    if os.path.exists(Home.of(config).metadata_path):
        for attempt in range(READ_ATTEMPTS):
            try:
                store = _open_readonly(Home.of(config).metadata_path)
                health = _from_metadata(store, config, data_root)
                break
            except Exception as error:  # noqa: BLE001 - a scrape reports, it never fails
                if attempt + 1 == READ_ATTEMPTS:
                    LOG.warning("pipeline metrics: cannot read ML Metadata at %s: %s",
                                Home.of(config).metadata_path, first_line(error, 300)
                                if str(error) else type(error).__name__)
                    health = Health(metadata_up=False)
                else:
                    time.sleep(0.2 * (attempt + 1))
    _read_release(config, health)
    _read_skew(config.home, health)
    return health


def _open_readonly(path: str):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

    connection = mlmd_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = path
    connection.sqlite.connection_mode = mlmd_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(connection)


def _from_metadata(store, config: PipelineConfig, data_root: Optional[str]) -> Health:
    from ctpipe.pipeline.home import cycles

    health = Health()
    pipeline = config.pipeline_name
    records = cycles.cycle_records(store, pipeline)
    actions = cycles.operator_actions(store, pipeline)
    decisions = [r.decision for r in records if r.decision is not None]
    for decision in decisions:
        health.cycles[decision.outcome.value] += 1
    about_spans = [d for d in decisions if d.outcome != Outcome.NO_NEW_DATA]
    health.last = about_spans[-1] if about_spans else None
    if records:
        health.first_cycle_at = min(r.started_at for r in records)
    running = [r for r in records if r.running]
    health.running = len(running)
    health.running_since = min((r.started_at for r in running), default=None)
    pushes = [d for d in decisions if d.outcome == Outcome.PUSHED]
    if pushes:
        health.last_push_at = pushes[-1].finished_at
        health.last_pushed_version = pushes[-1].model_version
    health.consecutive_data_blocked = consecutive_data_blocked(decisions, actions)
    scored = [d for d in about_spans if d.fresh_span_auc
              and d.outcome in (Outcome.PUSHED, Outcome.NOT_BLESSED)]  # gate-accepted labels
    if scored:
        health.fresh_span, health.fresh_span_auc = scored[-1].span, scored[-1].fresh_span_auc
    for action in actions:
        if action.action in RELEASE_ACTIONS:
            key = (action.action, str(action.details.get("by") or "operator"))
            health.release_actions[key] = health.release_actions.get(key, 0) + 1
    with_run = [d for d in about_spans if d.run_id]
    if with_run:
        health.cycle_seconds = with_run[-1].seconds
        health.component_seconds = component_seconds(store, pipeline, with_run[-1].run_id)
    from ctpipe.pipeline.home import ledger_store

    ledger, _ = ledger_store.latest_ledger(store, pipeline)
    health.quarantined_spans = len(ledger.quarantined_spans())
    if data_root:
        health.pending_spans = _pending(data_root, records, actions, config.from_span)
    return health


def fresh_lift(fresh: Dict[str, dict]) -> Optional[tuple]:
    """(stable - control, its standard error) from one fresh-span evaluation; None unless both
    were scored."""
    def labelled(label: str) -> Optional[dict]:
        return next((s for s in fresh.values() if label in (s.get("labels") or [s.get("label")])
                     and s.get("auc") is not None), None)

    stable, control = labelled("stable"), labelled("control")
    if stable is None or control is None:
        return None
    stderr = (float(stable.get("stderr") or 0) ** 2 + float(control.get("stderr") or 0) ** 2) ** 0.5
    return round(stable["auc"] - control["auc"], 4), round(stderr, 4)


def consecutive_data_blocked(decisions: List[Decision], actions=()) -> int:
    """data_blocked decisions since the last one that let data through or the last operator
    release (see the module docstring); `decisions` oldest first."""
    released = max((a.at for a in actions if a.action == RELEASE_ACTION), default=0.0)
    count = 0
    for decision in reversed(decisions):
        if (decision.finished_at or 0.0) <= released:
            break
        if decision.outcome not in GATE_VERDICTS:
            continue
        if decision.outcome != Outcome.DATA_BLOCKED:
            break
        count += 1
    return count


def component_seconds(store, pipeline: str, run_id: str) -> Dict[str, float]:
    """Seconds per component of one pipeline run, from its executions' MLMD times."""
    from ctpipe.pipeline.home.outcomes import LAYOUTS
    from ctpipe.pipeline.home.outcomes import component_seconds as run_seconds

    run = None
    for _, run_type in LAYOUTS:
        run = store.get_context_by_type_and_name(run_type, run_id)
        if run is not None:
            break
    if run is None:
        return {}
    return {name: round(seconds, 3) for name, seconds in run_seconds(store, run, pipeline).items()}


def _pending(data_root: str, records, actions, from_span: Optional[int]) -> Optional[int]:
    from ctpipe.pipeline.home import cycles
    from ctpipe.pipeline.spans import discover_spans

    try:
        available = sorted(discover_spans(data_root))
    except BadInput as error:
        LOG.warning("pipeline metrics: no pending spans: %s", error)
        return None
    return len(cycles.plan_spans(available, records, actions, from_span).pending)


def _read_release(config: PipelineConfig, health: Health) -> None:
    from ctpipe.components import release

    base = Home.of(config).model_dir
    path = release.manifest_path(os.path.dirname(base))
    try:
        if "://" in path:
            current = release.read_release(path, config.model_name, base)
        else:  # local: read without importing TensorFlow (release.read uses tf.io.gfile)
            current = release.Release(config.model_name, base)
            if os.path.exists(path):
                with open(path) as handle:
                    current = next((r for r in release.from_text(handle.read())
                                    if r.model_name == config.model_name), current)
    except (release.ReleaseError, OSError) as error:
        LOG.warning("pipeline metrics: cannot read the release manifest %s: %s", path, error)
        return
    health.stable, health.canary, health.previous, health.control = (
        current.stable, current.canary, current.previous, current.control)


def _read_skew(home: str, health: Health) -> None:
    latest = Home(home).skew_latest
    if not os.path.exists(latest):
        return
    try:
        with open(latest) as handle:
            result = json.load(handle)
        drifted, at = bool(result["drifted"]), float(result["at"])
        anomalies = len(result.get("anomalies") or [])
    except (OSError, ValueError, KeyError, TypeError) as error:
        LOG.warning("pipeline metrics: unreadable skew result %s: %s", latest, error)
        return
    health.skew = {"drifted": drifted, "at": at, "anomalies": anomalies}
    health.skew_alarms = int(drifted)
    history = Home(home).skew_history
    if os.path.exists(history):
        alarms = 0
        with open(history) as handle:
            for line in handle:
                try:
                    alarms += bool(json.loads(line).get("drifted")) if line.strip() else 0
                except (ValueError, AttributeError):
                    continue  # a torn last line while the writer appends
        health.skew_alarms = alarms
