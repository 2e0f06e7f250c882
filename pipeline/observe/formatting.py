"""How decisions, histories and lists look to a person (the commands print; this formats)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence


def _metric_text(metrics: Dict[str, Dict[str, float]]) -> str:
    parts = []
    for model in ("candidate", "baseline"):
        values = metrics.get(model)
        if values:
            shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
            parts.append(f"{model}: {shown}")
    return " | ".join(parts) or "none (nothing was evaluated)"


# outcome -> (headline, what it means): the terminal lines and the HTML reports both say this.
HEADLINES: Dict[str, tuple] = {
    "pushed": ("PUSHED", "candidate blessed and published"),
    "data_blocked": ("DATA BLOCKED", "span quarantined, nothing trained, production unchanged"),
    "not_blessed": ("NOT BLESSED", "candidate rejected, production unchanged"),
    "failed": ("FAILED", "the span stays pending and is retried, production unchanged"),
    "gave_up": ("GAVE UP", "span quarantined after repeated failures, production unchanged"),
    "no_new_data": ("NOTHING NEW", "no span to process, production unchanged"),
}


def format_decision(decision) -> str:
    title, meaning = HEADLINES[decision.outcome.value]
    headline = (f"{title} model version {decision.model_version}"
                if decision.outcome.value == "pushed" else f"{title} - {meaning}")
    attempt = f" (attempt {decision.attempt})" if (decision.attempt or 1) > 1 else ""
    subject = f"span {decision.span}" if decision.span is not None else "no pending span"
    lines = [f"{subject}: {headline}{attempt}"]
    lines += [f"  why: {reason}" for reason in decision.reasons]
    labels = decision.checks.get("labels")
    if labels and labels.get("production_auc_on_span") is not None:
        lines.append(f"  labels: production model AUC {labels['production_auc_on_span']} on "
                     f"this span vs {labels['production_auc_expected']} on spans "
                     f"{', '.join(map(str, labels['reference_spans']))}")
    if decision.outcome.value in ("pushed", "not_blessed"):
        lines.append(f"  metrics: {_metric_text(decision.metrics)}")
        lines.append(f"  trained on spans: {', '.join(map(str, decision.training_spans))}")
        warm = decision.checks.get("warm_start")
        if warm:
            lines.append(f"  {warm['reason']}")
    if decision.seconds is not None:
        lines.append(f"  took {decision.seconds:.1f} s")
    return "\n".join(lines)


def list_text(values) -> str:
    if values is None:
        return "? (pass --data-root)"
    return ", ".join(map(str, values)) or "none"


def time_text(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%SZ")


def history_table(decisions: Sequence) -> str:
    header = f"{'span':>4}  {'outcome':<12} {'AUC':>7} {'baseline':>8} {'served':>6} " \
             f"{'window':<10} {'secs':>6}  reason"
    rows = [header, "-" * len(header)]
    served: Optional[int] = None
    for d in decisions:
        if d.outcome == "no_new_data":
            continue
        if d.outcome == "pushed":
            served = d.model_version
        auc = d.metrics.get("candidate", {}).get("auc")
        base = d.metrics.get("baseline", {}).get("auc")
        window = ",".join(map(str, d.training_spans)) or "-"
        rows.append(f"{str(d.span):>4}  {d.outcome:<12} {_num(auc):>7} {_num(base):>8} "
                    f"{str(served if served is not None else '-'):>6} {window:<10} "
                    f"{_num(d.seconds, '.1f'):>6}  {_headline_reason(d)[:90]}")
    return "\n".join(rows)


def _headline_reason(decision) -> str:
    """The most specific reason: blocked and not-blessed decisions start with a summary line
    ("span N quarantined", "candidate not blessed"); the first detail after it says why. A
    failed cycle's last reason is the error itself."""
    reasons = decision.reasons
    if decision.outcome in ("data_blocked", "not_blessed") and len(reasons) > 1:
        return reasons[1]
    if decision.outcome == "failed" and len(reasons) > 1:
        return f"{reasons[0]}: {reasons[-1]}"
    return reasons[0] if reasons else ""


def _num(value: Optional[float], fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def labels_change(details: dict) -> str:
    """'stable=1, canary=2 -> stable=2, previous=1' for a release action's details."""
    def text(labels):
        return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "none"
    return f"{text(details.get('before'))} -> {text(details.get('after'))}"


# -- history and lineage (pipeline/home/lineage.py gathers them) ---------------------------


def timeline_text(entries: List[Dict[str, Any]]) -> str:
    lines = []
    for entry in entries:
        when = time_text(entry["at"]) if entry["at"] else "?"
        if entry["kind"] == "cycle":
            auc = (entry["metrics"].get("candidate") or {}).get("auc")
            base = (entry["metrics"].get("baseline") or {}).get("auc")
            versus = f" AUC {auc} vs {base}" if auc is not None else ""
            pushed = f" -> v{entry['model_version']}" if entry["model_version"] else ""
            parent = (f", warm start v{entry['warm_start_parent']}"
                      if entry["warm_start_parent"] else "")
            window = ",".join(map(str, entry["training_spans"])) or "-"
            seconds = f" {entry['seconds']:.0f}s" if entry["seconds"] is not None else ""
            lines.append(f"{when}  span {entry['span']} {entry['outcome']}{pushed}{versus} "
                         f"(window {window}{parent}){seconds}: "
                         f"{(entry['reasons'] or [''])[0][:100]}")
        else:
            subject = (f"span {entry['span']}" if entry["span"] is not None
                       else labels_change(entry))
            who = entry["by"] or entry["user"]
            lines.append(f"{when}  {entry['action']} {subject} by {who}: {entry['reason']}")
    return "\n".join(lines) or "no cycles yet"


def lineage_text(found: Dict[str, Any]) -> str:
    lines = [f"version {found['version']}: trained on spans "
             f"{', '.join(map(str, found['training_spans'])) or '?'}"]
    if found["training_examples_uri"]:
        lines.append(f"  training examples: {found['training_examples_uri']}")
    for uri in found["statistics_uris"]:
        lines.append(f"  statistics: {uri}")
    training = found["training"]
    if training:
        lines.append(f"  training: {training.get('steps_run')} of {training.get('steps_budget')}"
                     f" steps, best eval loss {training.get('best_val_loss')}")
    lines.append("  warm-start chain:")
    for link in found["warm_start_chain"]:
        label = f"v{link['version']}" if link["version"] else "unpushed model"
        spans = ",".join(map(str, link["training_spans"])) or "?"
        lines.append(f"    {label} (spans {spans}): {link['warm_start'] or 'warm start'}"
                     + (" [files removed by retention]" if link["files_removed"] else ""))
    baseline = found["baseline"]
    lines.append("  compared with: " + ("nothing (first model)" if baseline is None else
                                        f"v{baseline['version'] or '?'}"))
    cycle = found["pushed_by_cycle"]
    if cycle:
        lines.append(f"  pushed by the cycle of span {cycle['span']}: {cycle['reasons'][0]}")
    for event in found["release_events"]:
        lines.append(f"  {time_text(event['at'])} {event['action']} "
                     f"({', '.join(event['labels'])}) by {event['by'] or event['user']}: "
                     f"{event['reason']}")
    return "\n".join(lines)
