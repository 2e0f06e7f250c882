"""Soak: N cycles in one `watch` process (this one), RSS after each (issue 20, item 7).

Spans of `rows` rows are resampled with noise from the sample spans in turn (scaling.scaled_span)
before the watch starts; watch then runs every one of them, oldest first, as it would over weeks
of arriving spans. Reported: RSS after each cycle, the mean of each quarter, the last quarter
against the second (target: within 5 %), and the least-squares slope in MiB per cycle (from the
second cycle on: the first one imports and warms everything).
"""
from __future__ import annotations

import os
import time
from typing import Dict, List

from ctpipe.components.basics import end_process
from ctpipe.pipeline.bench.scaling import scaled_span
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.run.memory import rss_mib

SOAK_ROWS = 400


def make_spans(sample_dir: str, data_root: str, count: int, rows: int) -> List[int]:
    sources = sorted(int(name.split("-")[1]) for name in os.listdir(sample_dir)
                     if name.startswith("span-"))
    for index in range(1, count + 1):
        source = sources[(index - 1) % len(sources)]
        scaled_span(os.path.join(sample_dir, f"span-{source}", "data.csv"), 1,
                    os.path.join(data_root, f"span-{index}", "data.csv"), seed=index,
                    count=rows)
    return list(range(1, count + 1))


def slope(values: List[float]) -> float:
    """Least-squares MiB per cycle."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    var = sum((x - mean_x) ** 2 for x in range(n))
    return round(sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / var, 2)


def summarize(rss: List[float]) -> Dict[str, object]:
    quarter = max(1, len(rss) // 4)
    quarters = [rss[i * quarter:(i + 1) * quarter] for i in range(4)]
    means = [round(sum(q) / len(q), 1) if q else None for q in quarters]
    last_vs_second = (round(means[3] / means[1] - 1, 4)
                      if means[1] and means[3] else None)
    return {"quarter_mean_mib": means, "last_vs_second_quarter": last_vs_second,
            "slope_mib_per_cycle": slope(rss[1:]), "max_mib": max(rss) if rss else None}


def soak(sample_dir: str, work: str, cycles: int, rows: int = SOAK_ROWS,
         release_memory: bool = True) -> Dict[str, object]:
    from ctpipe.pipeline.run.watch import watch

    root = os.path.join(work, f"soak-{'release' if release_memory else 'keep'}")
    data_root, home = os.path.join(root, "data"), os.path.join(root, "home")
    make_spans(sample_dir, data_root, cycles, rows)
    config = PipelineConfig(data_root=data_root, home=home, from_span=1)
    per_cycle: List[Dict[str, object]] = []
    started = [time.monotonic()]

    def on_decision(decision) -> None:
        now = time.monotonic()
        per_cycle.append({"cycle": len(per_cycle) + 1, "span": decision.span,
                          "outcome": str(getattr(decision.outcome, "value", decision.outcome)),
                          "seconds": round(now - started[0], 1), "rss_mib": rss_mib()})
        started[0] = now
        print(f"soak: cycle {len(per_cycle)}/{cycles} span {decision.span} "
              f"{per_cycle[-1]['outcome']} {per_cycle[-1]['seconds']}s "
              f"RSS {per_cycle[-1]['rss_mib']} MiB", flush=True)

    watch(config, interval=0.0, max_cycles=cycles, on_decision=on_decision,
          say=lambda line: None, release_memory=release_memory)
    rss = [c["rss_mib"] for c in per_cycle]
    return {"cycles": per_cycle, "rows_per_span": rows, "release_memory": release_memory,
            **summarize(rss)}


def soak_process(sample_dir: str, work: str, cycles: int,
                 rows: int = SOAK_ROWS) -> Dict[str, object]:
    """The same soak through the real command, `ctpipe watch --max-cycles N --json`, as an
    operator runs it: its RSS is read from /proc by PID after each decision line. That PID
    stays the same when watch replaces its image every `watch_restart_cycles` decisions
    (os.execv), so this is one process's memory over the whole soak, restarts included."""
    import json
    import subprocess
    import sys

    root = os.path.join(work, "soak-process")
    data_root, home = os.path.join(root, "data"), os.path.join(root, "home")
    make_spans(sample_dir, data_root, cycles, rows)
    argv = [sys.executable, "-m", "ctpipe.pipeline.commands.main", "watch", "--data-root",
            data_root, "--home", home, "--from-span", "1", "--interval", "0",
            "--max-cycles", str(cycles), "--json"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    per_cycle: List[Dict[str, object]] = []
    started = time.monotonic()
    log_path = os.path.join(root, "watch.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            for line in process.stdout:
                if not line.startswith("{"):
                    log.write(line)
                    continue
                decision = json.loads(line)
                now = time.monotonic()
                per_cycle.append({"cycle": len(per_cycle) + 1, "span": decision.get("span"),
                                  "outcome": decision.get("outcome"),
                                  "seconds": round(now - started, 1),
                                  "rss_mib": rss_mib(process.pid)})
                started = now
                print(f"soak (process): cycle {len(per_cycle)}/{cycles} span "
                      f"{decision.get('span')} {decision.get('outcome')} "
                      f"{per_cycle[-1]['seconds']}s "
                      f"RSS {per_cycle[-1]['rss_mib']} MiB", flush=True)
        except BaseException:  # the bench stopped or failed: `watch` is stopped by its PID
            end_process(process)
            raise
        returncode = process.wait()
    with open(log_path) as log:  # watch says it (stderr) before each os.execv
        restarts = sum("watch: restarting" in line for line in log)
    rss = [c["rss_mib"] for c in per_cycle]
    return {"cycles": per_cycle, "rows_per_span": rows, "release_memory": True,
            "process": True, "restarts": restarts, "returncode": returncode, **summarize(rss)}


def markdown(result: Dict[str, object]) -> str:
    means = " / ".join(str(m) for m in result["quarter_mean_mib"])
    how = ("`ctpipe watch` process, restarts " + str(result["restarts"])
           if result.get("process") else
           f"in-process watch(), release {'on' if result['release_memory'] else 'off'}")
    return (f"| soak ({len(result['cycles'])} cycles, {result['rows_per_span']} rows/span, "
            f"{how}) | quarter means MiB "
            f"{means} | last vs 2nd quarter {result['last_vs_second_quarter']} "
            f"| slope {result['slope_mib_per_cycle']} MiB/cycle | max {result['max_mib']} |")
