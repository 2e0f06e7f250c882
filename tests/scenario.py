"""The long-run scenario: 20+ real cycles on sample spans with everything a month unattended
brings - a backlog, a broken contract, shuffled labels, a lasting drift an operator accepts, a
killed cycle, failing cycles (retried, then given up), a span quarantined after the fact, and
`ctpipe watch` stopped with SIGTERM. The invariants are checked after every step.

Run once per test session (conftest.long_run); every test of test_continuity.py and test_e2e.py
reads what it left: decisions, ML Metadata, served files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

from tests.support import (
    REPO,
    Invariants,
    ctpipe,
    ctpipe_command,
    deliver,
    directory_bytes,
    temp_entries,
    wait_for_line,
)

# Small step budgets keep a cycle ~20 s; max_attempts 2 reaches "gave up" in two failures.
CONFIG = """
min_steps = 40
max_steps = 80
max_attempts = 2
keep_cycles = 4
"""
LASTING_CHANGE = "shift_payments"  # from span 8 on, cash trips move to cards for good


@dataclasses.dataclass
class LongRun:
    home: Path
    data_root: Path
    config_path: Path
    steps: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    violations: List[str] = dataclasses.field(default_factory=list)
    temp_growth: List[str] = dataclasses.field(default_factory=list)
    disk_bytes: List[int] = dataclasses.field(default_factory=list)
    served_after: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    # {version folder: its files, relative, when the version first appeared} - retention may
    # remove an old version's folder later, once no label needs it.
    version_files: Dict[str, List[str]] = dataclasses.field(default_factory=dict)

    def args(self, *extra: str) -> List[str]:
        return ["--data-root", str(self.data_root), "--home", str(self.home),
                "--config", str(self.config_path), *extra]


def _corruption(span: int, default: str = "") -> str:
    return LASTING_CHANGE if span >= 8 and not default else default


def _arrive(run: LongRun, span: int, corruption: str = "") -> None:
    deliver(run.data_root, (span - 1) % 16 + 1, span, _corruption(span, corruption))


def _break_production_state(run: LongRun):
    """A disk fault: the production (stable) model's warm-start state, which the next Trainer
    reads, becomes unreadable. Returns the repair."""
    from ctpipe.components.stable_model import models_by_version, stable_version
    from ctpipe.pipeline.home.store import open_store, sqlite_connection

    store = open_store(sqlite_connection(str(run.home / "metadata.sqlite")))
    stable = stable_version(str(run.home / "serving" / "models.config"), "big_tipper")
    state_file = (Path(models_by_version(store, [stable])[stable].uri) / "warm_start"
                  / "preprocessing.json")
    saved = state_file.read_text()
    state_file.write_text("{not json")
    return lambda: state_file.write_text(saved)


def _decisions(lines: str) -> List[dict]:
    return [json.loads(line) for line in lines.splitlines() if line.strip().startswith("{")]


def run_long_scenario(root: Path) -> LongRun:
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.run.local_runner import run_cycle

    run = LongRun(home=root / "home", data_root=root / "incoming",
                  config_path=root / "ctpipe.toml")
    run.data_root.mkdir(parents=True)
    run.config_path.write_text(CONFIG)
    config = PipelineConfig.from_sources(str(run.config_path), {
        "home": str(run.home), "data_root": str(run.data_root)})
    invariants = Invariants(run.home, keep_versions=4)  # keep_cycles in CONFIG
    temp_before = temp_entries()

    def after(label: str, **result: Any) -> None:
        run.steps[label] = result
        run.violations += [f"after {label}: {problem}" for problem in invariants.check()]
        grown = sorted(temp_entries() - temp_before)
        if grown:
            run.temp_growth.append(f"after {label}: {grown}")
        run.disk_bytes.append(directory_bytes(run.home / "pipeline_root"))
        base = run.home / "serving" / "big_tipper"
        run.served_after[label] = sorted(os.listdir(base)) if base.exists() else []
        for version in run.served_after[label]:
            if version not in run.version_files:
                run.version_files[version] = sorted(
                    str(path.relative_to(base / version))
                    for path in (base / version).rglob("*") if path.is_file())
        print(f"--- {label}: {json.dumps(result, default=str)[:300]}", flush=True)

    def cycle(label: str) -> None:
        after(label, decision=run_cycle(config, progress=print))

    # 1-2: clean spans, one at a time.
    for span in (1, 2):
        _arrive(run, span)
        cycle(f"span{span}")
    # 3-5: a backlog of three spans, the last with a broken contract: `run --all`.
    for span, corruption in ((3, ""), (4, ""), (5, "break_contract")):
        _arrive(run, span, corruption)
    result = ctpipe("run", *run.args("--all", "--json"))
    after("backlog", returncode=result.returncode, decisions=_decisions(result.stdout),
          stderr=result.stderr[-2000:])
    # 6: shuffled labels (same label rate, same features). 7: clean.
    _arrive(run, 6, "shuffle_labels")
    cycle("shuffled")
    _arrive(run, 7)
    cycle("after_shuffled")
    # 8: a lasting change (drift); the operator accepts it; 9 trains with it.
    _arrive(run, 8)
    cycle("drifted")
    result = ctpipe("quarantine", "release", "8", "--home", str(run.home), "--config",
                    str(run.config_path), "--reason", "card-only fleet: lasting change",
                    "--json")
    after("release", returncode=result.returncode, output=result.stdout, stderr=result.stderr)
    _arrive(run, 9)
    cycle("after_release")
    # 10: the runner is killed with -9 while the Trainer runs; the next run retries the span.
    _arrive(run, 10)
    process = subprocess.Popen(ctpipe_command("run", *run.args()), cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: List[str] = []
    reached = wait_for_line(process.stderr, "Trainer: running", timeout=300, seen=seen)
    process.kill()
    process.wait(timeout=60)
    after("killed", reached_trainer=reached, returncode=process.returncode,
          stderr="".join(seen)[-1500:])
    cycle("after_kill")
    # 11: the production model's warm-start state is unreadable for one cycle (a disk fault):
    # the cycle fails, the span stays pending, the next run (fault repaired) decides it.
    _arrive(run, 11)
    repair = _break_production_state(run)
    cycle("failing")
    repair()
    cycle("after_failing")
    # 12: the same fault twice in a row: after max_attempts (2) the span is given up.
    _arrive(run, 12)
    repair = _break_production_state(run)
    cycle("failing_again")
    cycle("gave_up")
    repair()
    _arrive(run, 13)
    cycle("after_gave_up")
    # Bad data found after the fact: span 9 leaves all future windows and warm starts.
    result = ctpipe("quarantine", "add", "9", "--home", str(run.home), "--config",
                    str(run.config_path), "--reason", "meter fault found in audit", "--json")
    after("quarantine_add", returncode=result.returncode, output=result.stdout,
          stderr=result.stderr)
    for span in (14, 15, 16):
        _arrive(run, span)
        cycle(f"span{span}")
    cycle("nothing_new")
    # 17-18 under `ctpipe watch`; a second runner is refused; SIGTERM during the second
    # cycle lets it finish, then watch exits 0.
    _arrive(run, 17)
    _arrive(run, 18)
    watcher = subprocess.Popen(ctpipe_command("watch", "--interval", "1", "--json",
                                              *run.args()), cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch_err: List[str] = []
    started = wait_for_line(watcher.stderr, "span 17 CsvExampleGen: running", 300, watch_err)
    busy = ctpipe("run", *run.args())
    second = wait_for_line(watcher.stderr, "span 18 CsvExampleGen: running", 300, watch_err)
    watcher.send_signal(signal.SIGTERM)
    stop_sent = time.monotonic()
    out, err = watcher.communicate(timeout=600)
    after("watch", started=started, second_cycle_started=second,
          busy_returncode=busy.returncode, busy_stderr=busy.stderr.strip(),
          returncode=watcher.returncode, decisions=_decisions(out),
          stop_seconds=round(time.monotonic() - stop_sent, 1),
          stderr=("".join(watch_err) + err)[-3000:])
    return run
