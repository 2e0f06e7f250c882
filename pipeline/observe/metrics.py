"""The pipeline's own health in Prometheus text format, read from ML Metadata and the home.

    ctpipe metrics --home H [--data-root D] [--textfile /var/lib/node_exporter/ctpipe.prom]
    ctpipe watch ... --metrics-port 9108      (serves the same at http://127.0.0.1:9108/metrics)

Every value is recomputed at each scrape from what the home keeps - the runner's cycle records
and operator actions (pipeline/home/cycles.py), the newest ledger
(pipeline/home/ledger_store.py), the
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
  ctpipe_control_version                   the pinned control version (`ctpipe control pin`)
  ctpipe_canary_on_trial                   1 while the manifest names a canary
  ctpipe_fresh_span_auc{version,label}     every labelled version's AUC on the last accepted
                                           span, scored before training on it (out-of-time;
                                           one series per label a version had: a version both
                                           stable and control has two); absent before one
  ctpipe_fresh_span_auc_stderr{version,label}, ctpipe_fresh_span_rows{version,label}
  ctpipe_fresh_span                        the span those numbers come from
  ctpipe_fresh_span_lift, ctpipe_fresh_span_lift_stderr   stable - control on that span (what
                                           retraining buys over the pinned control)
  ctpipe_release_actions_total{action,by} (counter)   promote / rollback / remove_canary /
                                           control_pin / control_unpin / fresh_labels_pass, by
                                           operator, guard or fresh_labels
  ctpipe_skew_drifted, ctpipe_skew_anomalies, ctpipe_skew_last_check_timestamp_seconds,
  ctpipe_skew_alarms_total (counter)       from the skew contract below; absent before a result
  ctpipe_metrics_generated_timestamp_seconds, ctpipe_metrics_collect_seconds
                                           when and how fast this exposition was made (a stale
                                           textfile shows here)

The skew contract (for `ctpipe skew`, pipeline/observe/skew.py): after each check, write
  <home>/skew/latest.json     {"drifted": <bool>, "at": <unix seconds>, "anomalies": [...]}
    replaced whole (temporary file in the same folder, then rename), one entry in "anomalies"
    per breached comparator (any JSON; only the count is exported), and append the same object
    as one line to
  <home>/skew/history.jsonl   one JSON object per check, oldest first (append-only).
`ctpipe_skew_alarms_total` counts the history's lines with "drifted": true; without a history
file it is 1 or 0 from latest.json alone. A missing or unreadable latest.json exports no skew
series (and a warning in the log).

Reading the home: pipeline/observe/health.py. Serving over HTTP: pipeline/observe/metrics_http.py.
Alert rules over these series: serving/k8s/monitoring/ctpipe-alerts.yaml.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, Iterator, List, Optional

from ctpipe.components.basics import atomic_write
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.observe.health import SPAN_OUTCOMES, Health, fresh_lift, read_health

LOG = logging.getLogger(__name__)
PREFIX = "ctpipe_"
TEXTFILE_SUFFIX = ".prom"  # node-exporter's textfile collector reads only *.prom


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
    gauge("control_version", "Version labelled control (pinned) in the release manifest.",
          health.control)
    gauge("canary_on_trial", "1 while the release manifest names a canary.",
          int(health.canary is not None))
    fresh_families(health, ids, base, out)
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


def fresh_families(health: Health, ids: List[str], base: List[str], out: List[object]) -> None:
    """The fresh-span series (see the module docstring) and the release-action counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if health.fresh_span_auc:
        families_ = {name: GaugeMetricFamily(PREFIX + name, text, labels=base + ["version",
                                                                                 "label"])
                     for name, text in (
                         ("fresh_span_auc", "AUC of each labelled version on the last accepted "
                          "span, before training on it."),
                         ("fresh_span_auc_stderr", "Hanley-McNeil standard error of that AUC."),
                         ("fresh_span_rows", "Eval rows that AUC was measured on."))}
        for version, score in sorted(health.fresh_span_auc.items()):
            if score.get("auc") is None:
                continue
            for label in score.get("labels") or [score.get("label") or "unlabelled"]:
                at = ids + [str(version), label]
                families_["fresh_span_auc"].add_metric(at, float(score["auc"]))
                families_["fresh_span_auc_stderr"].add_metric(at, float(score.get("stderr") or 0))
                families_["fresh_span_rows"].add_metric(at, float(score.get("rows") or 0))
        out.extend(families_.values())
        span = GaugeMetricFamily(PREFIX + "fresh_span", "Span of the fresh-span numbers.",
                                 labels=base)
        span.add_metric(ids, float(health.fresh_span if health.fresh_span is not None else -1))
        out.append(span)
        lift = fresh_lift(health.fresh_span_auc)
        if lift is not None:
            for name, value, text in (
                    ("fresh_span_lift", lift[0], "Stable's minus control's fresh-span AUC."),
                    ("fresh_span_lift_stderr", lift[1], "Standard error of that lift.")):
                family = GaugeMetricFamily(PREFIX + name, text, labels=base)
                family.add_metric(ids, float(value))
                out.append(family)
    actions = CounterMetricFamily(PREFIX + "release_actions", "Release actions recorded in ML "
                                  "Metadata, by action and by whom.",
                                  labels=base + ["action", "by"])
    for (action, by), count in sorted(health.release_actions.items()):
        actions.add_metric(ids + [action, by], float(count))
    out.append(actions)


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
    atomic_write(path, text)  # umask permissions: node-exporter must read it
