"""`ctpipe guard`: watch the live canary and act when it misbehaves.

Every `--window` seconds it scrapes the server's Prometheus metrics (ours, or any server that
exports TF Serving's request metrics with a `version` label) and compares the window's deltas
with bounds:

  error rate       non-OK requests / requests answered by the version
  p99 latency      from the latency histogram's buckets (an upper bound: the bucket edge)
  disagreement     shadow rows whose decision differs / shadow rows (serve --shadow)

A breach by the canary takes it out of traffic (the `canary` label is removed from the release
manifest); a breach by stable while a previous stable exists rolls stable back. Each action is
recorded in ML Metadata with the numbers behind it (pipeline/ops/release.py). With
`promotion = "live"` (or its old name "auto"), a canary that passed every check over a window
with enough traffic is promoted; with "both", only once fresh labels passed it too
(pipeline/ops/fresh_labels.py). A window with too little traffic decides nothing and says so.
"""
from __future__ import annotations

import dataclasses
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

from ctpipe.components.serving_metric_names import (
    METRICS_PATH,
    REQUEST_COUNT,
    REQUEST_LATENCY,
    SHADOW_DISAGREEMENTS,
    SHADOW_ROWS,
)
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput


@dataclasses.dataclass
class Bounds:
    max_error_rate: float = 0.05
    max_p99_seconds: float = 0.5
    max_disagreement: float = 0.10
    min_requests: int = 20


Samples = Dict[str, List[tuple]]  # metric sample name -> [(labels, value)]


def scrape(server: str, timeout: float = 5.0) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    url = server.rstrip("/") + METRICS_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as error:
        raise BadInput(f"cannot scrape {url}: {getattr(error, 'reason', error)}")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
            if family.type == "counter" and sample.name == family.name + "_total":
                # the parser names counter samples <family>_total; TF Serving's have no suffix
                samples.setdefault(family.name, []).append((sample.labels, sample.value))
    return samples


def _total(samples: Samples, name: str, **match: str) -> float:
    return sum(value for labels, value in samples.get(name, [])
               if all(labels.get(k) == v for k, v in match.items()))


def _delta(before: Samples, after: Samples, name: str, **match: str) -> float:
    return max(0.0, _total(after, name, **match) - _total(before, name, **match))


def version_health(before: Samples, after: Samples, model: str, version: int) -> Dict[str, Any]:
    """The window's figures for one version (any route: label, percentage or explicit)."""
    match = {"model_name": model, "version": str(version)}
    requests = _delta(before, after, REQUEST_COUNT, **match)
    ok = _delta(before, after, REQUEST_COUNT, status="OK", **match)
    edges = sorted({labels["le"] for labels, _ in after.get(f"{REQUEST_LATENCY}_bucket", [])},
                   key=float)
    p99 = None
    for edge in edges if requests else []:
        if _delta(before, after, f"{REQUEST_LATENCY}_bucket", le=edge, **match) >= \
                0.99 * requests:
            p99 = float(edge)
            break
    shadow_match = {"model_name": model, "canary_version": str(version)}
    rows = _delta(before, after, SHADOW_ROWS, **shadow_match)
    flips = _delta(before, after, SHADOW_DISAGREEMENTS, **shadow_match)
    return {"version": version, "requests": int(requests),
            "error_rate": round((requests - ok) / requests, 4) if requests else None,
            "p99_seconds": p99,
            "shadow": {"rows": int(rows),
                       "disagreement": round(flips / rows, 4) if rows else None}}


def breaches(health: Dict[str, Any], bounds: Bounds) -> List[str]:
    found = []
    if health["requests"] >= bounds.min_requests:
        if health["error_rate"] is not None and health["error_rate"] > bounds.max_error_rate:
            found.append(f"error rate {health['error_rate']:.1%} > {bounds.max_error_rate:.1%} "
                         f"over {health['requests']} requests")
        if health["p99_seconds"] is not None and health["p99_seconds"] > bounds.max_p99_seconds:
            found.append(f"p99 latency <= {health['p99_seconds'] * 1000:g} ms bucket exceeds "
                         f"{bounds.max_p99_seconds * 1000:g} ms")
    disagreement = health["shadow"]["disagreement"]
    if disagreement is not None and health["shadow"]["rows"] >= bounds.min_requests and \
            disagreement > bounds.max_disagreement:
        found.append(f"shadow disagreement {disagreement:.1%} > {bounds.max_disagreement:.1%} "
                     f"over {health['shadow']['rows']} rows")
    return found


def enough_traffic(health: Dict[str, Any], bounds: Bounds) -> bool:
    return health["requests"] >= bounds.min_requests or \
        health["shadow"]["rows"] >= bounds.min_requests


def evaluate(config: PipelineConfig, before: Samples, after: Samples, bounds: Bounds,
             server: str, window_seconds: float) -> Dict[str, Any]:
    """One decision over one window; acts on the release manifest when a bound is breached."""
    from ctpipe.pipeline.home.release import release_state
    from ctpipe.pipeline.ops import release as release_ops

    state = release_state(config)
    report: Dict[str, Any] = {"at": round(time.time(), 3), "window_seconds": window_seconds,
                              "stable": None, "canary": None, "action": None, "reasons": []}
    if state.stable is None:
        report["reasons"].append("nothing released yet")
        return report
    stable = version_health(before, after, config.model_name, state.stable)
    report["stable"] = stable
    canary = None
    if state.canary is not None:
        canary = version_health(before, after, config.model_name, state.canary)
        report["canary"] = canary
        found = breaches(canary, bounds)
        if found:
            reason = f"guard: canary {state.canary} " + "; ".join(found)
            report["action"] = release_ops.remove_canary(
                config, reason, server, user="guard", health=canary)
            report["reasons"] = found
            return report
    found = breaches(stable, bounds)
    if found and state.previous is not None:
        reason = f"guard: stable {state.stable} " + "; ".join(found)
        report["action"] = release_ops.rollback(config, None, reason, server, user="guard")
        report["reasons"] = found
        return report
    if found:
        report["reasons"] = [f"stable {state.stable}: " + "; ".join(found) +
                             " (no previous stable to roll back to)"]
        return report
    if canary is not None and config.promotes_on_live_traffic:
        if config.promotion == "both" and not _fresh_labels_passed(config, state.canary):
            report["reasons"].append(f"canary {state.canary}: waiting for fresh labels to "
                                     "pass it too (promotion = \"both\")")
        elif enough_traffic(canary, bounds):
            report["action"] = release_ops.promote(
                config, None, f"guard: canary {state.canary} passed every live check over "
                f"{window_seconds:g} s ({canary['requests']} requests, "
                f"{canary['shadow']['rows']} shadow rows)", server, user="guard")
        else:
            report["reasons"].append(f"canary {state.canary}: too little traffic to decide "
                                     f"({canary['requests']} requests, "
                                     f"{canary['shadow']['rows']} shadow rows)")
    return report


def _fresh_labels_passed(config: PipelineConfig, version: int) -> bool:
    from ctpipe.pipeline.ops.fresh_labels import fresh_passes

    return fresh_passes(config, version)


def _figures(health: Optional[Dict[str, Any]]) -> str:
    if health is None:
        return "none"
    errors = "-" if health["error_rate"] is None else f"{health['error_rate']:.1%}"
    p99 = "-" if health["p99_seconds"] is None else f"<= {health['p99_seconds'] * 1000:g} ms"
    disagreement = health["shadow"]["disagreement"]
    shadow = "-" if disagreement is None else f"{disagreement:.1%}"
    return (f"v{health['version']} {health['requests']} req, errors {errors}, p99 {p99}, "
            f"shadow disagreement {shadow}")


def describe(report: Dict[str, Any]) -> str:
    action = report["action"]
    done = f" -> {action['action']}: {action['reason']}" if action else ""
    why = f" ({'; '.join(report['reasons'])})" if report["reasons"] and not action else ""
    return (f"guard: stable {_figures(report['stable'])} | canary {_figures(report['canary'])}"
            f"{done}{why}")


def guard_once(config: PipelineConfig, server: str, window_seconds: float,
               bounds: Optional[Bounds] = None) -> Dict[str, Any]:
    """One window, for `ctpipe watch` and tests."""
    before = scrape(server)
    time.sleep(window_seconds)
    return evaluate(config, before, scrape(server), bounds or Bounds(), server, window_seconds)
