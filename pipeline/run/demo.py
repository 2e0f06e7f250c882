"""`ctpipe demo`: bootstrap on early sample spans, then feed later ones as arrivals.

The arrivals include one span whose contract is broken at run time (the gate blocks it) and one
whose labels are shuffled (same label rate, same features: the production model's score on it
collapses, so the gate blocks it as poisoned), then a clean span whose window holds neither,
and a cycle with nothing new. After the first push the operator pins version 1 as the control
(the A/B test that never ends); from then on, with the default `promotion = "fresh_labels"`, each
accepted span's labels judge the canary on trial against stable, so stable moves off version 1
without an operator. Prints the decision table, the release actions and the home to serve.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.home.outcomes import Decision
from ctpipe.pipeline.home.release import release_state
from ctpipe.pipeline.observe.formatting import format_decision, history_table
from ctpipe.pipeline.ops.release import describe, pin_control
from ctpipe.pipeline.run import corruptions
from ctpipe.pipeline.run.local_runner import run_cycle
from ctpipe.pipeline.spans import BadInput

REPO_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"  # in the checkout
# (sample span, what happens to it on arrival); None = no new span arrives.
ARRIVALS: List[Tuple[Optional[int], Optional[str]]] = [
    (1, None), (2, None), (3, None), (4, None),
    (5, "break_contract"), (6, "shuffle_labels"), (7, None), (None, None),
]


def deliver(sample_root: Path, data_root: str, span: int, corruption: Optional[str]) -> None:
    target = os.path.join(data_root, f"span-{span}")
    os.makedirs(target, exist_ok=True)
    source = sample_root / f"span-{span}" / "data.csv"
    if corruption:
        corruptions.CORRUPTIONS[corruption](str(source), os.path.join(target, "data.csv"))
    else:
        shutil.copyfile(source, os.path.join(target, "data.csv"))


def _say_what_the_window_shows(decisions: List[Decision]) -> None:
    blocked = [d.span for d in decisions if d.outcome == "data_blocked"]
    trained = [d for d in decisions if d.training_spans]
    if blocked and trained:
        last = trained[-1]
        kept_out = [span for span in blocked if span not in last.training_spans]
        print(f"span {last.span} trained on spans {', '.join(map(str, last.training_spans))}:"
              f" quarantined span(s) {', '.join(map(str, kept_out))} never reach a window")


def _release_lines(decision: Decision) -> List[str]:
    judged = (decision.checks.get("release") or {}).get("fresh_labels")
    if not judged:
        return []
    action = judged.get("action") or "no change"
    return [f"    release by fresh labels: {action}: {judged.get('reason', '')}"]


def _say_what_fresh_labels_did(config: PipelineConfig) -> None:
    from ctpipe.pipeline.home import cycles

    store = Home.of(config).open_store()
    moves = [a for a in cycles.operator_actions(store, config.pipeline_name)
             if a.details.get("by") == "fresh_labels"]
    stables = [a.details.get("after", {}).get("stable") for a in moves if a.action == "promote"]
    if stables:
        print(f"stable moved by fresh labels, no operator: "
              f"{' -> '.join(map(str, [moves[0].details['before'].get('stable')] + stables))}")
    for action in moves:
        print(f"  {action.action}: {action.reason}")
    if not moves:
        print("fresh labels moved nothing (no canary was on trial when an accepted span came)")


def run_demo(config: PipelineConfig, home: Optional[str], sample_root: Optional[str],
             as_json: bool, progress: Callable[[str], None]) -> int:
    from ctpipe.pipeline.observe.report import write_after_cycle

    home = os.path.abspath(home or tempfile.mkdtemp(prefix="ctpipe-demo-"))
    sample = Path(sample_root) if sample_root else REPO_SAMPLE
    if not (sample / "span-1").is_dir():
        raise BadInput(f"sample spans not found under {sample}")
    data_root = os.path.join(home, "incoming")
    os.makedirs(data_root, exist_ok=True)
    config = dataclasses.replace(config, home=home, data_root=data_root)
    progress(f"demo home: {home} (arrivals land in {data_root})")
    decisions: List[Decision] = []
    for span, corruption in ARRIVALS:
        if span is not None:
            note = f" ({corruption.replace('_', ' ')} at arrival)" if corruption else ""
            progress(f"--- span {span} arrives{note}")
            deliver(sample, data_root, span, corruption)
        else:
            progress("--- no new span arrives")
        decision = run_cycle(config, progress=progress)
        decisions.append(decision)
        progress(format_decision(decision))
        for line in _release_lines(decision):
            progress(line)
        if decision.model_version is not None and release_state(config).control is None:
            result = pin_control(config, decision.model_version, "demo: the control group "
                                 "that never ends (lift = stable - control)", user="demo")
            progress(f"--- operator: control pin {decision.model_version}: {describe(result)}")
        write_after_cycle(config, progress)
    index = Home.of(config).report_index
    if as_json:
        print(json.dumps({"home": home, "decisions": [d.to_dict() for d in decisions],
                          "report": index}))
    else:
        print()
        print(history_table(decisions))
        print()
        state = release_state(config)
        print(f"home: {home}")
        print(f"release now: stable {state.stable}, canary {state.canary}, previous "
              f"{state.previous}, control {state.control} "
              f"(manifest {Home.of(config).manifest_path})")
        print(f"model base path (every pushed version; the manifest says which serve): "
              f"{Home.of(config).model_dir}")
        _say_what_fresh_labels_did(config)
        _say_what_the_window_shows(decisions)
        print(f"next: ctpipe status --home {home}; ctpipe history --home {home}")
        print(f"reports (every cycle, offline HTML): {index}")
    return 0 if all(d.outcome != "failed" for d in decisions) else 1
