"""Issue 20's targets, read from one `make bench` result: each with its figure from this run and
whether it is met. Nothing here measures; a figure that the run did not produce is "not run".

Also the split of each component's time into fixed start-up and per-row work, from the 1x and
100x incremental cycles of the scaling step: t = fixed + rows / rate, solved for the two sizes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

SCALING_COMPONENTS = ("CsvExampleGen", "StatisticsGen", "Trainer", "Evaluator")
ROWS_PER_SECOND_TARGET = 20_000

# The serving runs `make bench` makes: (result key, title, how the targets table names it, TF
# Serving batching parameters file text, or None for no batching). TF Serving's defaults give a
# batch thread per CPU; the tuned file sets one, which measured best here, where the clients
# share the server's 2 CPUs (TF Serving's batching guide: "The best value to use is of course a
# function of your workload and system").
SERVING_MODES = (
    ("serving", "Serving", "no batching", None),
    ("serving_batching", "Serving, server-side batching on (TF Serving's default parameters)",
     "batching on", ""),
    ("serving_batching_tuned", "Serving, server-side batching on, one batch thread",
     "batching on, one batch thread", "num_batch_threads { value: 1 }\n"),
)


def _target(name: str, value: Optional[float], target: float, comparison: str,
            unit: str = "", rounds: Optional[List[float]] = None) -> Dict[str, Any]:
    """`rounds`: the values a median `value` was taken over (serving's alternating rounds)."""
    met = None if value is None else (value >= target if comparison == ">=" else value <= target)
    row = {"target": f"{name} {comparison} {target:g}{unit}",
           "value": None if value is None else round(value, 4), "met": met}
    if rounds:
        row["rounds"] = [round(each, 4) for each in rounds]
    return row


def _cycle(result: Dict[str, Any], which: str, kind: str) -> Optional[Dict[str, Any]]:
    return result.get("comparison", {}).get("cycles", {}).get(which, {}).get(kind)


def targets(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    ours = _cycle(result, "incremental", "ctpipe")
    for kind, label, limit in (("stock", "naive stock", 0.4), ("expert", "expert stock", 0.7)):
        anchor = _cycle(result, "incremental", kind)
        ratio = (ours["seconds"] / anchor["seconds"]
                 if ours and anchor and anchor["seconds"] else None)
        rows.append(_target(f"incremental cycle ÷ {label}", ratio, limit, "<=", "×"))
    for kind, label in (("stock", "naive stock"), ("expert", "expert stock")):
        anchor = _cycle(result, "incremental", kind)
        margin = (ours["auc_held_out_span"] - anchor["auc_held_out_span"]
                  if ours and anchor and ours.get("auc_held_out_span") is not None
                  and anchor.get("auc_held_out_span") is not None else None)
        rows.append(_target(f"held-out-span AUC − {label}'s", margin, -0.005, ">="))
    scaling = {entry["factor"]: entry for entry in result.get("scaling", [])}
    speed = scaling.get(100, {}).get("incremental_rows_per_second", {})
    for name in SCALING_COMPONENTS:
        rows.append(_target(f"100x {name} rows/s", speed.get(name), ROWS_PER_SECOND_TARGET,
                            ">="))
    if 1 in scaling and 100 in scaling:
        ratio = (scaling[100]["cycles"]["incremental"]["seconds"]
                 / scaling[1]["cycles"]["incremental"]["seconds"])
    else:
        ratio = None
    rows.append(_target("100x incremental cycle ÷ 1x", ratio, 2.5, "<=", "×"))
    for mode, _, how, _ in SERVING_MODES:
        figures = (result.get(mode) or {}).get("ratios", [])
        wanted = {"gRPC / in-process rate, serving_raw batch 32, c8": (0.8, ">=", "×"),
                  "gRPC p99 ms, serving_raw batch 1, c8": (10.0, "<=", " ms")}
        for name, (limit, comparison, unit) in wanted.items():
            figure = next((f for f in figures if f["name"] == name), None)
            label = f"{name} ({how})"
            rows.append(_target(label, figure["value"] if figure else None, limit, comparison,
                                unit, figure.get("rounds") if figure else None))
    return rows


def fixed_and_per_row(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per component: fixed seconds, marginal rows/s, and the fixed share at 1x and 100x."""
    scaling = {entry["factor"]: entry for entry in result.get("scaling", [])}
    if 1 not in scaling or 100 not in scaling:
        return []
    small, large = scaling[1], scaling[100]
    out = []
    for name in SCALING_COMPONENTS:
        t1 = small["cycles"]["incremental"]["components"].get(name)
        t100 = large["cycles"]["incremental"]["components"].get(name)
        r1 = _rows(small, name)
        r100 = _rows(large, name)
        if not (t1 and t100 and r1 and r100) or r100 == r1:
            continue
        per_row = max(t100 - t1, 1e-9) / (r100 - r1)  # seconds per row
        fixed = max(t1 - per_row * r1, 0.0)
        out.append({"component": name, "fixed_s": round(fixed, 2),
                    "marginal_rows_per_s": round(1 / per_row),
                    "fixed_share_1x": round(min(fixed / t1, 1.0), 2),
                    "fixed_share_100x": round(min(fixed / t100, 1.0), 2)})
    return out


def _rows(entry: Dict[str, Any], name: str) -> Optional[float]:
    speed = entry.get("incremental_rows_per_second", {}).get(name)
    seconds = entry["cycles"]["incremental"]["components"].get(name)
    return speed * seconds if speed and seconds else None


def markdown(result: Dict[str, Any]) -> str:
    lines = ["| target | this run | met |", "|---|---|---|"]
    for row in targets(result):
        met = {True: "yes", False: "**no**", None: "not run"}[row["met"]]
        value = "" if row["value"] is None else row["value"]
        if row.get("rounds"):
            value = f"{value} (median of {', '.join(f'{each:.3g}' for each in row['rounds'])})"
        lines.append(f"| {row['target']} | {value} | {met} |")
    split = fixed_and_per_row(result)
    if split:
        lines += ["", "Start-up vs per-row work (incremental cycles at 1x and 100x, "
                  "t = fixed + rows / rate):", "",
                  "| component | fixed s | marginal rows/s | fixed share at 1x | at 100x |",
                  "|---|---|---|---|---|"]
        for row in split:
            lines.append(f"| {row['component']} | {row['fixed_s']} | "
                         f"{row['marginal_rows_per_s']:,} | {row['fixed_share_1x']:.0%} | "
                         f"{row['fixed_share_100x']:.0%} |")
    return "\n".join(lines)
