"""`ctpipe watch` re-executes itself every `watch_restart_cycles` decisions (pipeline/run/watch.py)
to bound the memory tf_keras keeps per `model.fit`.

The subprocess test runs the real CLI, the real runner lock and the real os.execv, but with a
fake cycle (a sitecustomize.py on PYTHONPATH, inherited across exec, replaces `next_cycle` by
one that decides `data_blocked` at once): restarts count decisions, and a real data_blocked
cycle costs tens of seconds of TFX. os.execv keeps the PID, so the test asserts on the printed
restart lines, the decisions counted across images, and that each image holds the lock.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ctpipe.pipeline.config import ConfigError, PipelineConfig
from ctpipe.pipeline.run import watch as watch_module
from ctpipe.pipeline.run.watch import (
    CYCLES_DONE_ENV,
    cycles_done_from_env,
    restart_command,
    restart_due,
    restart_environ,
)

from tests.support import REPO, ctpipe_command


def test_restart_decision_counts_this_images_decisions_and_never_past_max_cycles():
    assert not restart_due(24, 25, decided=24, max_cycles=None)
    assert restart_due(25, 25, decided=25, max_cycles=None)
    assert restart_due(25, 25, decided=75, max_cycles=None)  # after earlier restarts
    assert not restart_due(100, 0, decided=100, max_cycles=None)  # 0 = never
    assert restart_due(2, 2, decided=4, max_cycles=5)
    assert not restart_due(2, 2, decided=5, max_cycles=5)  # about to stop anyway


def test_restart_command_and_environment_carry_the_count():
    argv = ["watch", "--data-root", "d", "--home", "h", "--max-cycles", "5"]
    assert restart_command(argv, "/py") == ["/py", "-m", "ctpipe.pipeline.commands.main", *argv]
    assert restart_command(argv)[0] == sys.executable
    env = restart_environ({"PATH": "/bin"}, 7)
    assert env == {"PATH": "/bin", CYCLES_DONE_ENV: "7"}
    assert cycles_done_from_env(env) == 7 and CYCLES_DONE_ENV not in env  # not inherited on
    assert cycles_done_from_env({}) == 0
    assert cycles_done_from_env({CYCLES_DONE_ENV: "junk"}) == 0


def test_watch_restart_cycles_is_validated():
    assert PipelineConfig().watch_restart_cycles == 25
    assert PipelineConfig.from_mapping({"watch_restart_cycles": 0}).watch_restart_cycles == 0
    with pytest.raises(ConfigError, match="watch_restart_cycles"):
        PipelineConfig.from_mapping({"watch_restart_cycles": -1})


def test_in_process_watch_never_execs(tmp_path, monkeypatch):
    """watch() without restart_argv (library callers, tests) never replaces the process."""
    from ctpipe.pipeline.home.outcomes import DATA_BLOCKED, Decision

    monkeypatch.setattr(watch_module, "next_cycle", lambda *a, **k: Decision(
        DATA_BLOCKED, span=1, model_version=None, reasons=[], metrics={}, training_spans=[]))
    monkeypatch.setattr("ctpipe.pipeline.observe.report.write_after_cycle", lambda *a, **k: None)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("exec'd"))
    config = PipelineConfig(home=str(tmp_path / "home"), data_root=str(tmp_path),
                            watch_restart_cycles=1)
    lines = []
    assert watch_module.watch(config, 0.01, 3, lambda d: None, lines.append,
                              release_memory=False) == 0
    assert lines[-1] == "watch: stopped after 3 decision(s)"


SITECUSTOMIZE = '''
import fcntl, json, os
from ctpipe.pipeline.home.outcomes import DATA_BLOCKED, Decision
from ctpipe.pipeline.run import watch
import ctpipe.pipeline.observe.report as report

LOG = os.environ["FAKE_CYCLE_LOG"]

def next_cycle(config, progress=None, record_nothing_new=True):
    with open(LOG) as handle:
        span = len(handle.readlines()) + 1
    # The runner lock must be held by this image: a new open file description cannot take it.
    with open(os.path.join(config.home, ".ctpipe.lock"), "a") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
    with open(LOG, "a") as handle:
        handle.write(json.dumps({"span": span, "pid": os.getpid(), "lock_held": held}) + "\\n")
    return Decision(DATA_BLOCKED, span=span, model_version=None, reasons=["fake"], metrics={},
                    training_spans=[])

watch.next_cycle = next_cycle
report.write_after_cycle = lambda *a, **k: None
'''


def test_watch_restarts_itself_keeps_the_lock_and_counts_max_cycles_across_images(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    log = tmp_path / "cycles.jsonl"
    log.write_text("")
    config = tmp_path / "config.toml"
    config.write_text("watch_restart_cycles = 2\n")
    env = {**os.environ, "PYTHONPATH": str(shim),
           "FAKE_CYCLE_LOG": str(log)}
    env.pop(CYCLES_DONE_ENV, None)
    done = subprocess.run(ctpipe_command(
        "watch", "--data-root", str(tmp_path), "--home", str(tmp_path / "home"),
        "--interval", "0.1", "--max-cycles", "5", "--json", "--config", str(config)),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr.splitlines()
    restarts = [line for line in err if line.startswith("watch: restarting")]
    assert len(restarts) == 2, done.stderr  # after decisions 2 and 4; 5 = --max-cycles: stop
    assert all(line.startswith("watch: restarting to release memory after 2 cycles (RSS ")
               and line.endswith(" MiB)") for line in restarts)
    assert sum(line.startswith("watch: polling") for line in err) == 3  # one per image
    assert not any("another ctpipe run or watch" in line for line in err)  # lock re-taken
    assert err[-1] == "watch: stopped after 5 decision(s)"
    decisions = [json.loads(line) for line in done.stdout.splitlines()]
    assert [d["span"] for d in decisions] == [1, 2, 3, 4, 5]
    cycles = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(cycles) == 5
    assert len({c["pid"] for c in cycles}) == 1  # os.execv: the same process, a new image
    assert all(c["lock_held"] for c in cycles)
