"""Peak RSS of every process under this one, by role, sampled from /proc while a step runs.

`wait4` only reports the peak of the one child it reaps. A cycle on Flink spreads over a
JobManager, a TaskManager, Beam's job server, the worker pool and the SDK harnesses it forks, and
the `ctpipe run` process: all of them children (or grandchildren) of the bench process, since
flink_local.up starts the cluster from here. Sampling every `interval` seconds can miss a spike
shorter than that; the peaks are lower bounds, which the table says.
"""
from __future__ import annotations

import os
import threading
from typing import Dict, Iterable, List, Optional, Tuple

from ctpipe.pipeline.run.memory import rss_mib

# First match wins: (substring of the command line, role). Flink's JVMs are told apart by
# their entry classes (flink-console.sh), Beam's Python harness by its module.
ROLES: Tuple[Tuple[str, str], ...] = (
    ("StandaloneSessionClusterEntrypoint", "Flink JobManager"),
    ("TaskManagerRunner", "Flink TaskManager"),
    ("FlinkJobServerDriver", "Beam job server"),
    ("flink_worker_pool", "Beam worker pool"),
    # worker_pool_main starts each harness as `python -c "...SdkHarness(...).run()"`.
    ("SdkHarness", "Beam SDK harness"),
    ("ctpipe.pipeline.commands.main", "ctpipe run"),
)


def role(cmdline: str) -> str:
    for needle, name in ROLES:
        if needle in cmdline:
            return name
    return os.path.basename(cmdline.split(" ", 1)[0]) or "other"


def _parent_of(pid: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> List[int]:
    """Every live process whose chain of parents reaches `root` (not `root` itself)."""
    parents = {int(pid): _parent_of(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    children: Dict[int, List[int]] = {}
    for pid, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


class PeakMemory:
    """Context manager: samples the RSS of every descendant of this process until it exits.

    Reports per role the peak of any one process, how many processes had that role, and the peak
    of the sum over all processes at one sample (what the host had to hold at once)."""

    def __init__(self, interval: float = 0.5, root: Optional[int] = None) -> None:
        self.interval = interval
        self.root = root or os.getpid()
        self.peak_by_role: Dict[str, float] = {}
        self.pids_by_role: Dict[str, set] = {}
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def sample(self, pids: Optional[Iterable[int]] = None) -> None:
        total = 0.0
        for pid in (descendants(self.root) if pids is None else pids):
            rss = rss_mib(pid)
            if not rss:  # gone since the listing, or a kernel thread
                continue
            name = role(_cmdline(pid))
            total += rss
            self.peak_by_role[name] = max(self.peak_by_role.get(name, 0.0), rss)
            self.pids_by_role.setdefault(name, set()).add(pid)
        self.peak_total = max(self.peak_total, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def to_dict(self) -> Dict[str, object]:
        return {"interval_s": self.interval, "peak_total_mib": round(self.peak_total),
                "by_role": {name: {"peak_rss_mib": round(peak),
                                   "processes": len(self.pids_by_role[name])}
                            for name, peak in sorted(self.peak_by_role.items())}}
