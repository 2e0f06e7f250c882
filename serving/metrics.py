"""Request counts and latency histograms per model, version, label and API, plus shadow-scoring
and request-log figures, in Prometheus text format (served at /monitoring/prometheus/metrics,
the path TF Serving uses). The names: components/serving_metric_names.py.

TF Serving has no per-version metrics (serving#1970); here every request is counted under the
version that answered it and the label it reached it by (`stable`, `canary`, or "" when the
request named a version or the model has no labels), so a canary's error rate and latency can
be read - by a person, by Prometheus alerts, and by `ctpipe guard`.
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

from ctpipe.components.serving_metric_names import (
    REQUEST_COUNT,
    REQUEST_LATENCY,
    SHADOW_LATENCY,
    SHADOW_PREFIX,
)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
Labels = Tuple[Tuple[str, str], ...]



class _Histograms:
    def __init__(self):
        self.buckets: Dict[Labels, List[int]] = {}
        self.sums: Dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, seconds: float) -> None:
        buckets = self.buckets.setdefault(labels, [0] * (len(BUCKETS) + 1))
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[labels] += seconds

    def render(self, name: str, lines: List[str]) -> None:
        lines.append(f"# TYPE {name} histogram")
        for labels, buckets in sorted(self.buckets.items()):
            running = 0
            for bound, count in zip(list(BUCKETS) + ["+Inf"], buckets):
                running += count
                le = bound if bound == "+Inf" else repr(bound)
                lines.append(f"{name}_bucket{{{_fmt(labels + (('le', str(le)),))}}} {running}")
            lines.append(f"{name}_sum{{{_fmt(labels)}}} {self.sums[labels]:.6f}")
            lines.append(f"{name}_count{{{_fmt(labels)}}} {running}")


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Dict[Labels, int] = defaultdict(int)
        self._latency = _Histograms()
        self._shadow_counts: Dict[Tuple[str, Labels], float] = defaultdict(float)
        self._shadow_latency = _Histograms()
        self._gauges: List[Callable[[], List[str]]] = []

    def observe(self, model: str, version: str, api: str, entrypoint: str, status: str,
                seconds: float, label: str = "") -> None:
        base = (("model_name", model), ("version", version), ("version_label", label),
                ("API", api), ("entrypoint", entrypoint))
        with self._lock:
            self._counts[base + (("status", status),)] += 1
            self._latency.observe(base, seconds)

    def observe_shadow(self, model: str, stable: int, canary: int, rows: int, flips: int,
                       abs_diff_sum: float, seconds: float, status: str = "OK") -> None:
        """One shadow comparison: canary scored the request stable answered."""
        labels = (("model_name", model), ("stable_version", str(stable)),
                  ("canary_version", str(canary)))
        with self._lock:
            self._shadow_counts[("requests_total", labels + (("status", status),))] += 1
            if status == "OK":
                self._shadow_counts[("rows_total", labels)] += rows
                self._shadow_counts[("disagreements_total", labels)] += flips
                self._shadow_counts[("abs_diff_sum", labels)] += abs_diff_sum
                self._shadow_latency.observe(labels, seconds)

    def count_shadow_dropped(self, model: str) -> None:
        with self._lock:
            self._shadow_counts[("dropped_total", (("model_name", model),))] += 1

    def add_gauges(self, render: Callable[[], List[str]]) -> None:
        """Extra exposition lines computed at scrape time (labels, request-log figures)."""
        self._gauges.append(render)

    def render(self) -> str:
        lines = [f"# TYPE {REQUEST_COUNT} counter"]
        with self._lock:
            for labels, count in sorted(self._counts.items()):
                lines.append(f"{REQUEST_COUNT}{{{_fmt(labels)}}} {count}")
            self._latency.render(REQUEST_LATENCY, lines)
            kinds: Dict[str, List[str]] = defaultdict(list)
            for (kind, labels), value in sorted(self._shadow_counts.items()):
                kinds[kind].append(f"{SHADOW_PREFIX}_{kind}{{{_fmt(labels)}}} {value:g}")
            for kind, kind_lines in sorted(kinds.items()):
                lines.append(f"# TYPE {SHADOW_PREFIX}_{kind} counter")
                lines.extend(kind_lines)
            if self._shadow_latency.buckets:
                self._shadow_latency.render(SHADOW_LATENCY, lines)
        for render in self._gauges:
            lines.extend(render())
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)
