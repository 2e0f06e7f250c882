"""Request counts and latency histograms per model/version/API, in Prometheus text format
(served at /monitoring/prometheus/metrics, the path TF Serving uses)."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Dict, Tuple

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
Labels = Tuple[Tuple[str, str], ...]


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Dict[Labels, int] = defaultdict(int)
        self._buckets: Dict[Labels, list] = {}
        self._sums: Dict[Labels, float] = defaultdict(float)

    def observe(self, model: str, version: str, api: str, entrypoint: str, status: str,
                seconds: float) -> None:
        base = (("model_name", model), ("version", version), ("API", api),
                ("entrypoint", entrypoint))
        with self._lock:
            self._counts[base + (("status", status),)] += 1
            buckets = self._buckets.setdefault(base, [0] * (len(BUCKETS) + 1))
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sums[base] += seconds

    def render(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for labels, count in sorted(self._counts.items()):
                lines.append(f":tensorflow:serving:request_count{{{_fmt(labels)}}} {count}")
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for labels, buckets in sorted(self._buckets.items()):
                running = 0
                for bound, count in zip(list(BUCKETS) + ["+Inf"], buckets):
                    running += count
                    le = bound if bound == "+Inf" else repr(bound)
                    lines.append(f":tensorflow:serving:request_latency_bucket"
                                 f"{{{_fmt(labels + (('le', str(le)),))}}} {running}")
                lines.append(f":tensorflow:serving:request_latency_sum{{{_fmt(labels)}}} "
                             f"{self._sums[labels]:.6f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{_fmt(labels)}}} "
                             f"{running}")
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)
