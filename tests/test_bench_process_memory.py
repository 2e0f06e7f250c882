"""The bench's per-process peak RSS (pipeline/bench/process_memory.py): it must see grandchildren
(the worker pool's harnesses are ours twice removed) and name them by role."""
from __future__ import annotations

import subprocess
import sys
import time

from ctpipe.pipeline.bench.process_memory import PeakMemory, descendants, role

# A child that starts a grandchild whose command line looks like a Beam SDK harness (the worker
# pool starts each as `python -c "...SdkHarness(...).run()"`) holding ~64 MiB.
GRANDCHILD = "import time; SdkHarness = bytearray(64 << 20); time.sleep(30)"
CHILD = ("import subprocess, sys, time; "
         f"subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}]); time.sleep(30)")


def test_roles_follow_the_entry_classes_and_modules():
    assert role("java -cp x org.apache.flink.runtime.taskexecutor.TaskManagerRunner") == \
        "Flink TaskManager"
    assert role("/v/bin/python -m ctpipe.pipeline.commands.main run --json") == "ctpipe run"
    assert role("/usr/bin/sleep 5") == "sleep"


def test_a_grandchild_is_sampled_under_its_role_with_its_memory():
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        deadline = time.monotonic() + 20
        memory = PeakMemory()
        while time.monotonic() < deadline:
            memory.sample()
            if memory.peak_by_role.get("Beam SDK harness", 0) >= 64:
                break
            time.sleep(0.2)
        assert len(descendants(memory.root)) >= 2
        assert memory.peak_by_role.get("Beam SDK harness", 0) >= 64, memory.to_dict()
        assert memory.peak_total >= memory.peak_by_role["Beam SDK harness"]
    finally:
        for pid in descendants(child.pid):
            subprocess.run(["kill", str(pid)], check=False)
        child.kill()
        child.wait()
