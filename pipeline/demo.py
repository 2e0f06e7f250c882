"""`ctpipe demo`: bootstrap on early sample spans, then feed later ones as arrivals.

The arrivals include one span whose contract is broken at run time (the gate blocks it) and one
whose labels are shuffled (same label rate, same features: the production model's score on it
collapses, so the gate blocks it as poisoned), then a clean span whose window holds neither,
and a cycle with nothing new. Prints the decision table and the home to serve.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ctpipe.pipeline import corruptions
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.formatting import format_decision, history_table
from ctpipe.pipeline.local_runner import run_cycle
from ctpipe.pipeline.outcomes import Decision
from ctpipe.pipeline.spans import BadInput

REPO_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
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


def run_demo(config: PipelineConfig, home: Optional[str], sample_root: Optional[str],
             as_json: bool, progress: Callable[[str], None]) -> int:
    from ctpipe.pipeline.report import write_after_cycle

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
        write_after_cycle(config, progress)
    index = os.path.join(home, "reports", "index.html")
    if as_json:
        print(json.dumps({"home": home, "decisions": [d.to_dict() for d in decisions],
                          "report": index}))
    else:
        print()
        print(history_table(decisions))
        print()
        print(f"home: {home}")
        print(f"served models: {config.serving_model_dir}")
        print(f"next: ctpipe status --home {home}")
        _say_what_the_window_shows(decisions)
        print(f"reports (every cycle, offline HTML): {index}")
    return 0 if all(d.outcome != "failed" for d in decisions) else 1
