"""The fresh-label verdict, pure: what a span's labels say of the canary on trial against
stable (README "Release"), and the release change it makes. Shared by the local runner's step
(pipeline/ops/fresh_labels.py, which records operator actions) and, on Kubeflow, the Pusher
(components/atomic_pusher.py), which applies it to the manifest where it writes before naming
the new version; the DataGate's `fresh_span_auc` reaches it through the Trainer's lineage."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ctpipe.components import release
from ctpipe.components.label_check import fresh_tolerance

BY = "fresh_labels"
PROMOTE, RETIRE, PASSED = "promote", "retire", "fresh_labels_pass"
# Key of the Trainer's lineage (components/trainer.py) holding the DataGate's scores.
LINEAGE_KEY = "fresh_labels"


def verdict(fresh: Dict[str, Dict[str, Any]], stable: int, canary: int, span: Optional[int],
            min_rows: int) -> Dict[str, Any]:
    """Pure: what the span's labels say of `canary` against `stable`.
    {"action": "promote" | "retire" | None, "reason": str, and the numbers}."""
    s, c = fresh.get(str(stable)) or {}, fresh.get(str(canary)) or {}
    numbers: Dict[str, Any] = {"span": span, "stable": stable, "canary": canary,
                               "stable_auc": s.get("auc"), "canary_auc": c.get("auc"),
                               "min_rows": min_rows}
    if s.get("auc") is None or c.get("auc") is None:
        missing = [f"v{v}" for v, x in ((stable, s), (canary, c)) if x.get("auc") is None]
        return {**numbers, "action": None,
                "reason": f"no fresh-span AUC for {', '.join(missing)} on span {span}: "
                          "nothing decided"}
    rows = min(int(s.get("rows") or 0), int(c.get("rows") or 0))
    tolerance = fresh_tolerance(float(s.get("stderr") or 0.0), float(c.get("stderr") or 0.0))
    difference = round(c["auc"] - s["auc"], 4)
    numbers.update(rows=rows, tolerance=tolerance, difference=difference,
                   stable_stderr=s.get("stderr"), canary_stderr=c.get("stderr"))
    figures = (f"canary v{canary} AUC {c['auc']:.4f} vs stable v{stable} {s['auc']:.4f} on "
               f"span {span} ({rows} eval rows, tolerance {tolerance:.4f})")
    if rows < min_rows:
        return {**numbers, "action": None,
                "reason": f"fresh labels: {figures}: fewer than {min_rows} rows, the canary "
                          "stays on trial"}
    if c["auc"] >= s["auc"] - tolerance:
        return {**numbers, "action": PROMOTE,
                "reason": f"fresh labels: {figures}: not worse than stable beyond the "
                          "tolerance"}
    return {**numbers, "action": RETIRE,
            "reason": f"fresh labels: {figures}: worse by {-difference:.4f}, beyond the "
                      "tolerance"}


def promotes_on_fresh_labels(promotion: str) -> bool:
    return promotion in ("fresh_labels", "both")


def settled(current: release.Release, fresh: Dict[str, Dict[str, Any]], span: Optional[int],
            min_rows: int, promotion: str) -> "tuple[release.Release, Optional[Dict[str, Any]]]":
    """Pure: the release after the verdict on `current`'s canary, and the verdict (None when
    there is no canary on trial against a stable). `applied` says whether it moved labels:
    only with promotion "fresh_labels", or "both" for a retirement (a promotion there also
    needs the live guard)."""
    if current.canary is None or current.stable is None:
        return current, None
    judged = verdict(fresh, current.stable, current.canary, span, min_rows)
    judged["applied"] = False
    if not promotes_on_fresh_labels(promotion) or judged["action"] is None:
        return current, judged
    if judged["action"] == PROMOTE and promotion == "fresh_labels":
        judged["applied"] = True
        return release.promoted(current, current.canary), judged
    if judged["action"] == RETIRE:
        judged["applied"] = True
        return release.without_canary(current), judged
    return current, judged
