"""Release by fresh labels: after a cycle, the new span's labels judge the canary on trial, then
the new candidate goes on trial (or not). Called by the local runner (pipeline/run/
local_runner.py) once the pipeline run decided, before the cycle's decision is recorded.

Order within one cycle (README "Release"):
  1. the DataGate scored every labelled version on the new span's eval split before training
     (components/label_check.py `fresh_span_scores`, decision.fresh_span_auc);
  2. the Evaluator compared the candidate with stable *as it was when the cycle started*: that
     is the decision's `baseline_version`, stable at decision time;
  3. here, only when the gate accepted the span (a blocked span's labels are not trusted) and
     `promotion` is "fresh_labels" or "both": the canary is promoted when its fresh-span AUC is
     >= stable's - tolerance with >= `fresh_min_rows` eval rows, retired when below; each move is
     an operator action by "fresh_labels" with the numbers (`history`, the report, metrics);
  4. then the new version (the Pusher published it unlabelled): it replaces a canary still on
     trial only if its AUC on the same eval rows is at least that canary's (a better canary is
     never replaced by a worse one); when the canary was just promoted, it must pass the
     Evaluator's rule against that new stable (AUC >= new stable's - max_auc_drop, same rows).
     Otherwise the decision becomes not_blessed and the version stays unlabelled.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Optional

from ctpipe.components import release
from ctpipe.components.fresh_labels import BY, PASSED, PROMOTE, RETIRE, verdict  # noqa: F401
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.home import Home, cycles
from ctpipe.pipeline.home.outcomes import NOT_BLESSED, PUSHED, Decision
from ctpipe.pipeline.home.release import release_state
from ctpipe.pipeline.ops import release as release_ops

LOG = logging.getLogger(__name__)


def fresh_passes(config: PipelineConfig, version: int) -> bool:
    """promotion = "both": did fresh labels pass this canary (the guard then needs live
    traffic too)?"""
    store = Home.of(config).open_store()
    return any(a.action == PASSED and a.details.get("canary") == version
               for a in cycles.operator_actions(store, config.pipeline_name))


def candidate_auc(version_dir: str, examples_uri: str) -> Dict[str, Any]:
    """The new version on the span's eval split: the same rows as the fresh-span AUCs."""
    import numpy as np

    from ctpipe.components.label_check import auc, auc_stderr, eval_files, score_saved_model

    labels, scores = score_saved_model(version_dir, eval_files(examples_uri))
    value = auc(labels, scores)
    positives = int(np.asarray(labels).astype(bool).sum())
    value = None if value is None else round(value, 4)
    return {"auc": value, "rows": int(len(labels)),
            "stderr": auc_stderr(value, positives, len(labels) - positives)}


def settle_release(config: PipelineConfig, decision: Decision,
                   examples_uri: Optional[str]) -> Decision:
    """Steps 3 and 4 of the module docstring; returns the decision with checks["release"]
    (labels before and after, the fresh-label verdict, the candidate-vs-canary numbers)."""
    if decision.outcome not in (PUSHED, NOT_BLESSED):
        return decision  # blocked, failed, gave up: nothing moves
    before = release_state(config)
    info: Dict[str, Any] = {"before": dict(before.labels)}
    incumbent, promoted = before.canary, False
    if before.canary is not None and before.stable is not None:
        judged = verdict(decision.fresh_span_auc, before.stable, before.canary, decision.span,
                         config.fresh_min_rows)
        info["fresh_labels"] = judged
        details = {"fresh": {k: v for k, v in judged.items() if k not in ("action", "reason")},
                   "span_of_labels": decision.span}
        if not config.promotes_on_fresh_labels:
            judged["applied"] = False  # recorded only ("manual" / "live")
        elif judged["action"] == PROMOTE and config.promotion == "both":
            cycles.record_action(Home.of(config).open_store(), config.pipeline_name, PASSED,
                                 None, judged["reason"] + " (promotion also needs the live "
                                 "guard)", by=BY, canary=before.canary, **details)
            judged["applied"] = True
        elif judged["action"] == PROMOTE:
            release_ops.promote(config, before.canary, judged["reason"], user=BY, **details)
            judged["applied"], promoted = True, True
        elif judged["action"] == RETIRE:
            release_ops.remove_canary(config, judged["reason"], user=BY, **details)
            judged["applied"], incumbent = True, None
    if decision.outcome == PUSHED and decision.model_version is not None:
        decision = _place_candidate(config, decision, incumbent, promoted, examples_uri, info)
    info["after"] = dict(release_state(config).labels)
    decision.checks = {**decision.checks, "release": info}
    return decision


def _place_candidate(config: PipelineConfig, decision: Decision, incumbent: Optional[int],
                     promoted: bool, examples_uri: Optional[str],
                     info: Dict[str, Any]) -> Decision:
    """The new version goes on trial unless the canary it displaces did better on this span
    (strictly: a better canary is never replaced by a worse one). When that canary was just
    promoted, the new version is the next challenger of the new stable and passes with the
    Evaluator's own rule against it (AUC change >= -max_auc_drop on the same rows)."""
    version = decision.model_version
    home = Home.of(config)
    incumbent_auc = (decision.fresh_span_auc.get(str(incumbent)) or {}).get("auc") \
        if incumbent is not None else None
    if incumbent_auc is not None and examples_uri:
        mine = candidate_auc(os.path.join(home.model_dir, str(version)), examples_uri)
        allowed = config.max_auc_drop if promoted else 0.0
        info["candidate_vs_canary"] = {"candidate": version, "canary": incumbent,
                                       "canary_now_stable": promoted,
                                       "candidate_auc": mine["auc"],
                                       "canary_auc": incumbent_auc, "allowed_drop": allowed,
                                       "rows": mine["rows"]}
        if mine["auc"] is not None and mine["auc"] < incumbent_auc - allowed:
            if promoted:
                reason = (f"candidate v{version} AUC {mine['auc']:.4f} < v{incumbent}'s "
                          f"{incumbent_auc:.4f} - max_auc_drop {allowed:g} on span "
                          f"{decision.span}'s eval rows: v{incumbent} was just promoted by "
                          f"fresh labels and the candidate is worse than the new stable "
                          f"(v{version} stays unlabelled)")
            else:
                reason = (f"candidate v{version} AUC {mine['auc']:.4f} < canary v{incumbent}'s "
                          f"{incumbent_auc:.4f} on span {decision.span}'s eval rows: a better "
                          f"canary is never replaced by a worse one (v{version} stays "
                          "unlabelled)")
            return dataclasses.replace(decision, outcome=NOT_BLESSED, model_version=None,
                                       reasons=[reason] + decision.reasons)
    rest = config.serving_rest
    change = release.apply(home.manifest_path, config.model_name, home.model_dir,
                           lambda current: release.after_push(current, version),
                           release.rest_waiter(rest) if rest else None)
    if change.get("note"):
        LOG.warning("%s", change["note"])
    return decision
