"""The pipeline's own health in Prometheus text format, read from ML Metadata and the home.

    ctpipe metrics --home H [--data-root D] [--textfile /var/lib/node_exporter/ctpipe.prom]
    ctpipe watch ... --metrics-port 9108      (serves the same at http://127.0.0.1:9108/metrics)

Every value is recomputed at each scrape from what the home keeps - the runner's cycle records
and operator actions (pipeline/cycles.py), the newest ledger (pipeline/ledger_store.py), the
newest pipeline run's executions, the release manifest (components/release.py) and the latest
skew result - never from counters in a process, so a restarted `watch` (or a cron job writing
the textfile) reports the same numbers. ML Metadata is opened once per scrape, read-only.

Metrics (all gauges unless marked; labels `pipeline` and `model_name` on every series, so any
two of them join without `on(...)`):

  ctpipe_metadata_up                       1 when ML Metadata could be read (a home with no
                                           metadata.sqlite yet is an empty, healthy home)
  ctpipe_cycles_total{outcome} (counter)   cycles recorded per outcome, every outcome present;
                                           MLMD keeps every record, so these never decrease
  ctpipe_last_outcome{outcome}             one-hot: the outcome of the last cycle that concerned
                                           a span (`no_new_data` polls are left out, or an
                                           hourly cron would hide a blocked span in an hour)
  ctpipe_last_cycle_span, ctpipe_last_cycle_timestamp_seconds    of that cycle
  ctpipe_first_cycle_timestamp_seconds     when the first cycle started (the "never pushed"
                                           clock of the no-push alert)
  ctpipe_cycle_seconds                     wall seconds of the last cycle that ran the pipeline
  ctpipe_component_seconds{component}      per component of that cycle's pipeline run (MLMD
                                           execution create -> last update, as
                                           pipeline/bench/measure.py measures)
  ctpipe_cycles_running, ctpipe_running_cycle_started_timestamp_seconds
  ctpipe_pending_spans                     only with a data root (spans waiting for a decision)
  ctpipe_quarantined_spans                 spans the newest ledger keeps out of training
  ctpipe_consecutive_data_blocked          data_blocked decisions since the last gate verdict
                                           that let data through (pushed / not_blessed) or the
                                           last operator `quarantine release`; failed, gave_up
                                           and no_new_data cycles give no verdict on data and
                                           neither break nor extend the run
  ctpipe_last_push_timestamp_seconds, ctpipe_seconds_since_last_push   absent before a push
  ctpipe_last_pushed_version
  ctpipe_stable_version, ctpipe_canary_version, ctpipe_previous_version   from
                                           <home>/serving/models.config; absent when unset
  ctpipe_canary_on_trial                   1 while the manifest names a canary
  ctpipe_skew_drifted, ctpipe_skew_anomalies, ctpipe_skew_last_check_timestamp_seconds,
  ctpipe_skew_alarms_total (counter)       from the skew contract below; absent before a result
  ctpipe_metrics_generated_timestamp_seconds, ctpipe_metrics_collect_seconds
                                           when and how fast this exposition was made (a stale
                                           textfile shows here)

The skew contract (for `ctpipe skew`, pipeline/skew.py): after each check, write
  <home>/skew/latest.json     {"drifted": <bool>, "at": <unix seconds>, "anomalies": [...]}
    replaced whole (temporary file in the same folder, then rename), one entry in "anomalies"
    per breached comparator (any JSON; only the count is exported), and append the same object
    as one line to
  <home>/skew/history.jsonl   one JSON object per check, oldest first (append-only).
`ctpipe_skew_alarms_total` counts the history's lines with "drifted": true; without a history
file it is 1 or 0 from latest.json alone. A missing or unreadable latest.json exports no skew
series (and a warning in the log).

Alert rules over these series: serving/k8s/monitoring/ctpipe-alerts.yaml.
"""
from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import logging
import os
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional

from ctpipe.pipeline.command_line import EXIT_OK, add_config_flags, load_config
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.outcomes import Decision, Outcome

LOG = logging.getLogger(__name__)
PREFIX = "ctpipe_"
METRICS_PATH = "/metrics"
SKEW_DIR = "skew"
SKEW_LATEST = "latest.json"
SKEW_HISTORY = "history.jsonl"
TEXTFILE_SUFFIX = ".prom"  # node-exporter's textfile collector reads only *.prom
# Outcomes that are the gate's verdict on a span's data.
GATE_VERDICTS = (Outcome.PUSHED, Outcome.DATA_BLOCKED, Outcome.NOT_BLESSED)
SPAN_OUTCOMES = tuple(o for o in Outcome if o != Outcome.NO_NEW_DATA)
RELEASE_ACTION = "release"  # pipeline/operator.py quarantine_release
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
    skew: Optional[dict] = None
    skew_alarms: Optional[int] = None


# -- reading the home ------------------------------------------------------------------------


def read_health(config: PipelineConfig, data_root: Optional[str] = None) -> Health:
    """One pass over the home: ML Metadata (opened once, read-only), manifest, skew result."""
    health = Health()
    if os.path.exists(config.metadata_path):
        for attempt in range(READ_ATTEMPTS):
            try:
                health = _from_metadata(_open_readonly(config.metadata_path), config, data_root)
                break
            except Exception as error:  # noqa: BLE001 - a scrape reports, it never fails
                if attempt + 1 == READ_ATTEMPTS:
                    LOG.warning("pipeline metrics: cannot read ML Metadata at %s: %s",
                                config.metadata_path, str(error).splitlines()[0][:300]
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
    from ctpipe.pipeline import cycles

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
    with_run = [d for d in about_spans if d.run_id]
    if with_run:
        health.cycle_seconds = with_run[-1].seconds
        health.component_seconds = component_seconds(store, pipeline, with_run[-1].run_id)
    health.quarantined_spans = len(_latest_ledger(store, pipeline).quarantined_spans())
    if data_root:
        health.pending_spans = _pending(data_root, records, actions, config.from_span)
    return health


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
    from ctpipe.pipeline.outcomes import LAYOUTS
    from ctpipe.pipeline.outcomes import component_seconds as run_seconds

    run = None
    for _, run_type in LAYOUTS:
        run = store.get_context_by_type_and_name(run_type, run_id)
        if run is not None:
            break
    if run is None:
        return {}
    return {name: round(seconds, 3) for name, seconds in run_seconds(store, run, pipeline).items()}


def _latest_ledger(store, pipeline: str):
    from ctpipe.components.ledger import LEDGER_FILE, Ledger
    from ctpipe.pipeline import ledger_store

    artifact = ledger_store.latest_ledger_artifact(store, pipeline)
    if artifact is None:
        return Ledger()
    if "://" in artifact.uri:  # object storage: TensorFlow's file system
        return ledger_store.read_ledger_file(artifact.uri)
    path = os.path.join(artifact.uri, LEDGER_FILE)
    if not os.path.exists(path):
        return Ledger()
    with open(path) as handle:  # local: no TensorFlow import in a cron job
        return Ledger.from_json(handle.read())


def _pending(data_root: str, records, actions, from_span: Optional[int]) -> Optional[int]:
    from ctpipe.pipeline import cycles
    from ctpipe.pipeline.spans import discover_spans

    try:
        available = sorted(discover_spans(data_root))
    except BadInput as error:
        LOG.warning("pipeline metrics: no pending spans: %s", error)
        return None
    return len(cycles.plan_spans(available, records, actions, from_span).pending)


def _read_release(config: PipelineConfig, health: Health) -> None:
    from ctpipe.components import release

    base = os.path.abspath(config.serving_model_dir)
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
    health.stable, health.canary, health.previous = (current.stable, current.canary,
                                                     current.previous)


def _read_skew(home: str, health: Health) -> None:
    folder = os.path.join(home, SKEW_DIR)
    latest = os.path.join(folder, SKEW_LATEST)
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
    history = os.path.join(folder, SKEW_HISTORY)
    if os.path.exists(history):
        alarms = 0
        with open(history) as handle:
            for line in handle:
                try:
                    alarms += bool(json.loads(line).get("drifted")) if line.strip() else 0
                except (ValueError, AttributeError):
                    continue  # a torn last line while the writer appends
        health.skew_alarms = alarms


# -- the exposition --------------------------------------------------------------------------


class PipelineCollector:
    """A prometheus_client collector: each collect() reads the home afresh."""

    def __init__(self, config: PipelineConfig, data_root: Optional[str] = None):
        self.config = config
        self.data_root = data_root

    def collect(self) -> Iterator[object]:
        started = time.time()
        health = read_health(self.config, self.data_root)
        yield from families(health, self.config, started, time.time() - started)


def families(health: Health, config: PipelineConfig, generated_at: float,
             collect_seconds: float) -> List[object]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    ids = [config.pipeline_name, config.model_name]
    base = ["pipeline", "model_name"]
    out: List[object] = []

    def gauge(name: str, text: str, value, counter: bool = False) -> None:
        """One series; None leaves the family out."""
        if value is not None:
            family = (CounterMetricFamily if counter else GaugeMetricFamily)(
                PREFIX + name, text, labels=base)
            family.add_metric(ids, float(value))
            out.append(family)

    def by(name: str, text: str, label: str, values: Dict[str, float],
           counter: bool = False) -> None:
        """One series per value of `label`."""
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(
            PREFIX + name, text, labels=base + [label])
        for label_value, number in values.items():
            family.add_metric(ids + [label_value], float(number))
        out.append(family)

    last = health.last
    gauge("metadata_up", "1 when ML Metadata of the home could be read.",
          int(health.metadata_up))
    by("cycles", "Cycles recorded in ML Metadata, by outcome.", "outcome", health.cycles,
       counter=True)
    by("last_outcome", "1 for the outcome of the last cycle that concerned a span.", "outcome",
       {o.value: int(last is not None and last.outcome == o) for o in SPAN_OUTCOMES})
    gauge("last_cycle_span", "Span of the last cycle that concerned a span.",
          last.span if last is not None else None)
    gauge("last_cycle_timestamp_seconds", "Unix time the last cycle that concerned a span ended.",
          last.finished_at if last is not None else None)
    gauge("first_cycle_timestamp_seconds", "Unix time the first cycle of this home started.",
          health.first_cycle_at)
    gauge("cycle_seconds", "Wall seconds of the last cycle that ran the pipeline.",
          health.cycle_seconds)
    if health.component_seconds:
        by("component_seconds", "Seconds per component in the last cycle's pipeline run.",
           "component", health.component_seconds)
    gauge("cycles_running", "Cycles recorded as running (a dead runner's until settled).",
          health.running)
    gauge("running_cycle_started_timestamp_seconds",
          "Unix time the oldest running cycle started.", health.running_since)
    gauge("pending_spans", "Spans under the data root waiting for a final decision.",
          health.pending_spans)
    gauge("quarantined_spans", "Spans the newest ledger keeps out of training.",
          health.quarantined_spans)
    gauge("consecutive_data_blocked", "data_blocked decisions in a row (since the last pushed "
          "or not_blessed decision or operator release).", health.consecutive_data_blocked)
    gauge("last_push_timestamp_seconds", "Unix time the last pushed cycle ended.",
          health.last_push_at)
    gauge("seconds_since_last_push", "Seconds since the last push (for people; alerts use "
          "time() - ctpipe_last_push_timestamp_seconds).",
          generated_at - health.last_push_at if health.last_push_at is not None else None)
    gauge("last_pushed_version", "Model version of the last push.", health.last_pushed_version)
    gauge("stable_version", "Version labelled stable in the release manifest.", health.stable)
    gauge("canary_version", "Version labelled canary in the release manifest.", health.canary)
    gauge("previous_version", "Version labelled previous in the release manifest.",
          health.previous)
    gauge("canary_on_trial", "1 while the release manifest names a canary.",
          int(health.canary is not None))
    if health.skew is not None:
        gauge("skew_drifted", "1 when the latest skew check found serving data drifted.",
              int(health.skew["drifted"]))
        gauge("skew_anomalies", "Breached skew comparators in the latest skew check.",
              health.skew["anomalies"])
        gauge("skew_last_check_timestamp_seconds", "Unix time of the latest skew check.",
              health.skew["at"])
        gauge("skew_alarms", "Skew checks that found drift.", health.skew_alarms, counter=True)
    gauge("metrics_generated_timestamp_seconds", "Unix time this exposition was made.",
          generated_at)
    gauge("metrics_collect_seconds", "Seconds spent reading the home for this exposition.",
          collect_seconds)
    return out


def registry(config: PipelineConfig, data_root: Optional[str] = None):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(config, data_root))
    return registry


def exposition(config: PipelineConfig, data_root: Optional[str] = None) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry(config, data_root)).decode("utf-8")


def write_textfile(config: PipelineConfig, path: str, data_root: Optional[str] = None) -> None:
    """The exposition as a node-exporter textfile: written beside `path` under a name the
    collector ignores, flushed to disk, then renamed over it - a scrape sees the old file or
    the new one, never half of one."""
    if not path.endswith(TEXTFILE_SUFFIX):
        raise BadInput(f"textfile {path} must end in {TEXTFILE_SUFFIX} "
                       "(node-exporter's textfile collector reads only those)")
    text = exposition(config, data_root)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadInput(f"textfile folder {folder} does not exist")
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}."
                                     f"{threading.get_ident()}.tmp")
    try:
        with open(temporary, "w") as handle:  # umask permissions: node-exporter must read it
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# -- the HTTP endpoint -----------------------------------------------------------------------


class MetricsServer(http.server.ThreadingHTTPServer):
    """GET /metrics; one scrape reads the home at a time (others wait for it)."""

    daemon_threads = True

    def __init__(self, address, registry):
        super().__init__(address, _Handler)
        self.registry = registry
        self.scrape_lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, name="ctpipe-metrics",
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{host if ':' not in host else f'[{host}]'}:{self.port}{METRICS_PATH}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        # The classic text format (every Prometheus 2.x and 3.x, and other scrapers, read it;
        # our names need none of 1.0.0's UTF-8 escaping).
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._send(404, "text/plain; charset=utf-8",
                       f"not found: metrics are at {METRICS_PATH}\n".encode(), body)
            return
        try:
            with self.server.scrape_lock:
                payload = generate_latest(self.server.registry)
        except Exception as error:  # noqa: BLE001 - answer 500, keep serving
            LOG.exception("pipeline metrics: scrape failed")
            self._send(500, "text/plain; charset=utf-8",
                       f"{type(error).__name__}: {error}\n".encode(), body)
            return
        self._send(200, CONTENT_TYPE_PLAIN_0_0_4, payload, body)

    def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        LOG.debug("pipeline metrics: " + format, *args)


def serve_metrics(config: PipelineConfig, port: int, host: str = "127.0.0.1",
                  data_root: Optional[str] = None) -> MetricsServer:
    """Serve the exposition at http://host:port/metrics from a background thread (port 0: any
    free port, see `.port`). `close()` stops it."""
    try:
        server = MetricsServer((host, port), registry(config, data_root))
    except OSError as error:
        raise BadInput(f"cannot serve metrics on {host}:{port}: {error.strerror or error}")
    server.thread.start()
    return server


# -- CLI ---------------------------------------------------------------------------------------


def register(commands) -> None:
    metrics = commands.add_parser(
        "metrics", help="the pipeline's health in Prometheus text format (from ML Metadata)")
    metrics.add_argument("--home", required=True, help="pipeline home")
    metrics.add_argument("--data-root", help="also count the pending spans under this folder")
    metrics.add_argument("--textfile", help="write a node-exporter textfile (*.prom) atomically "
                         "instead of printing")
    add_config_flags(metrics)
    metrics.set_defaults(handler=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    config = load_config(args, home=args.home)
    if not os.path.isdir(config.home):
        raise BadInput(f"no pipeline home at {config.home}")
    if args.textfile:
        write_textfile(config, args.textfile, args.data_root)
        return EXIT_OK
    if args.json:
        samples = [{"name": s.name, "labels": s.labels, "value": s.value}
                   for family in registry(config, args.data_root).collect()
                   for s in family.samples]
        print(json.dumps(samples))
        return EXIT_OK
    sys.stdout.write(exposition(config, args.data_root))
    return EXIT_OK
