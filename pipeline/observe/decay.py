"""How fast a model decays (issue 17 item 5): every labelled version's fresh-span AUC (scored by
the data gate before anything trained on the span, decision.fresh_span_auc) by its age - the
number of spans between the last span of its training window and the span scored. Age 1 is the
first span the model never saw, the one fresh labels judge a canary on; ages 2, 3... are the
spans a version keeps serving if nothing replaces it.

Only spans the gate accepted count (a blocked span's labels are not trusted, as in release by
fresh labels). Pure: decisions in, a table out (`ctpipe decay`, report data)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from ctpipe.pipeline.home.outcomes import Decision, Outcome

ACCEPTED = (Outcome.PUSHED, Outcome.NOT_BLESSED)


def decay_table(decisions: List[Decision]) -> Dict[str, Any]:
    """{"versions": [{version, trained_to, in_window_auc, by_age: {age: {span, auc, stderr,
    rows}}}], "by_age": [{age, versions, mean_auc, mean_change, change_stderr}]}.

    `in_window_auc` is the Evaluator's AUC on the version's own training span's eval split
    (age 0, not out of time). `mean_change` at age k is the mean over versions scored at both
    ages 1 and k of AUC(k) - AUC(1): how much a model loses from its first fresh span on, with
    the standard error of that mean (from the per-version Hanley-McNeil errors)."""
    trained: Dict[int, Decision] = {}
    for decision in decisions:
        if decision.outcome == Outcome.PUSHED and decision.model_version is not None:
            trained[decision.model_version] = decision
    versions: Dict[int, Dict[str, Any]] = {}
    for version, decision in sorted(trained.items()):
        window = list(decision.training_spans or []) or \
            ([decision.span] if decision.span is not None else [])
        versions[version] = {"version": version, "trained_to": max(window) if window else None,
                             "in_window_auc": ((decision.metrics or {}).get("candidate")
                                               or {}).get("auc"),
                             "by_age": {}}
    for decision in decisions:
        if decision.outcome not in ACCEPTED or decision.span is None:
            continue
        for key, score in (decision.fresh_span_auc or {}).items():
            entry = versions.get(int(key))
            if entry is None or entry["trained_to"] is None or score.get("auc") is None:
                continue
            age = decision.span - entry["trained_to"]
            if age < 1:
                continue
            entry["by_age"][age] = {"span": decision.span, "auc": score["auc"],
                                    "stderr": score.get("stderr"), "rows": score.get("rows")}
    rows = [entry for entry in versions.values() if entry["by_age"]]
    return {"versions": rows, "by_age": _by_age(rows)}


def _by_age(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    ages = sorted({age for entry in rows for age in entry["by_age"]})
    summary = []
    for age in ages:
        scored = [entry for entry in rows if age in entry["by_age"]]
        aucs = [entry["by_age"][age]["auc"] for entry in scored]
        paired = [entry for entry in scored if 1 in entry["by_age"]]
        changes = [entry["by_age"][age]["auc"] - entry["by_age"][1]["auc"] for entry in paired]
        variance = sum((entry["by_age"][age].get("stderr") or 0.0) ** 2
                       + (0.0 if age == 1 else (entry["by_age"][1].get("stderr") or 0.0) ** 2)
                       for entry in paired)
        summary.append({
            "age": age, "versions": [entry["version"] for entry in scored],
            "mean_auc": round(sum(aucs) / len(aucs), 4),
            "mean_change": round(sum(changes) / len(changes), 4) if changes else None,
            "change_stderr": round(math.sqrt(variance) / len(changes), 4) if changes else None})
    return summary


def decay_text(table: Dict[str, Any]) -> str:
    """A version x age grid of fresh-span AUCs, then the mean by age."""
    rows = table["versions"]
    if not rows:
        return "no fresh-span AUCs yet: a version is scored on each accepted span after its " \
               "training window"
    ages = [entry["age"] for entry in table["by_age"]]
    lines = ["fresh-span AUC by age (spans after the version's training window):",
             f"{'version':>8} {'trained to':>10} {'in window':>9} " +
             " ".join(f"{'+' + str(age):>7}" for age in ages)]
    for entry in rows:
        cells = " ".join(f"{_number(entry['by_age'].get(age, {}).get('auc')):>7}"
                         for age in ages)
        lines.append(f"{'v' + str(entry['version']):>8} {_number(entry['trained_to'], 0):>10} "
                     f"{_number(entry['in_window_auc']):>9} {cells}")
    lines.append("mean by age:")
    for item in table["by_age"]:
        change = "" if item["mean_change"] is None or item["age"] == 1 else (
            f", change from age 1 {item['mean_change']:+.4f} ± {item['change_stderr']:.4f}")
        lines.append(f"  +{item['age']}: AUC {item['mean_auc']:.4f} over "
                     f"{len(item['versions'])} version(s){change}")
    return "\n".join(lines)


def _number(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else str(int(value))
