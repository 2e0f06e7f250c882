"""Scaling by runner: the Beam components (ExampleGen, StatisticsGen, Evaluator) of one ctpipe
cycle on a scaled span, on the DirectRunner in-memory, the DirectRunner multi_processing (one
worker per core) and the local Flink cluster (pipeline/run/flink_local.py, parallelism 2).

Each runner gets a fresh home and the same generated span (scaling.scaled_span of sample span 10,
never committed) and runs a first cycle through the real CLI (`ctpipe run --config <runner>.toml`);
seconds per component come from ML Metadata, rows/s from the rows each component handles. The
cluster is started on free ports in the work folder and always stopped.

Hook for `make bench` (pipeline/bench/__main__.py, after the scaling step; it takes
len(scales) * len(runners) progress steps):
    result["scaling_by_runner"] = flink_scaling.run_by_runner(sample, work, scales, progress)
    print(flink_scaling.markdown(result["scaling_by_runner"]))
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List, Sequence

from ctpipe.pipeline.bench.measure import component_seconds, python, run_process
from ctpipe.pipeline.bench.scaling import SOURCE_SPANS, scaled_span
from ctpipe.pipeline.run.progress import Progress

RUNNERS = ("direct", "multi_processing", "flink")
DIRECT_ARGS = {"direct": [],
               "multi_processing": ["--direct_running_mode=multi_processing",
                                    "--direct_num_workers=0"]}
BEAM_COMPONENTS = ("CsvExampleGen", "StatisticsGen", "Evaluator")


def _toml(path: str, beam_args: Sequence[str]) -> str:
    with open(path, "w") as handle:
        handle.write("beam_pipeline_args = [\n"
                     + "".join(f"  {json.dumps(arg)},\n" for arg in beam_args) + "]\n")
    return path


def _handled(rows: int) -> Dict[str, int]:
    """Rows each Beam component reads in a first cycle on one span (split 2:1 train:eval)."""
    return {"CsvExampleGen": rows, "StatisticsGen": rows, "Evaluator": round(rows / 3)}


def run_by_runner(sample_dir: str, work: str, factors: Sequence[int], progress: Progress,
                  runners: Sequence[str] = RUNNERS) -> List[Dict[str, object]]:
    from ctpipe.pipeline.run import flink_local

    state_dir = os.path.join(work, "flink-state")
    cluster = None
    results: List[Dict[str, object]] = []
    try:
        if "flink" in runners:
            started = time.monotonic()
            cluster = flink_local.up(state_dir, flink_local.Ports.free(), timeout=240)
            print(f"Flink cluster up in {time.monotonic() - started:.1f}s: {cluster.web_ui}",
                  file=sys.stderr)
        for factor in factors:
            root = os.path.join(work, f"by-runner-{factor}x")
            data_root = os.path.join(root, "data")
            rows = scaled_span(os.path.join(sample_dir, f"span-{SOURCE_SPANS[0]}", "data.csv"),
                               factor, os.path.join(data_root, "span-1", "data.csv"),
                               seed=1000 * factor + 1)
            for runner in runners:
                args = cluster.beam_args() if runner == "flink" else DIRECT_ARGS[runner]
                config = _toml(os.path.join(root, f"{runner}.toml"), args)
                home = os.path.join(root, f"home-{runner}")
                with progress.step(f"scaling {factor}x on {runner}: first cycle ({rows:,} rows)"):
                    run = run_process(f"{factor}x {runner}", python(
                        "ctpipe.pipeline.commands.main", "run", "--config", config,
                        "--data-root", data_root, "--home", home, "--json"),
                        os.path.join(root, f"{runner}.log"))
                if run.returncode != 0:
                    raise RuntimeError(f"{factor}x on {runner} failed (exit {run.returncode}); "
                                       f"see {run.log}")
                run.components = component_seconds(os.path.join(home, "metadata.sqlite"),
                                                   "ctpipe")
                speed = {name: round(count / run.components[name])
                         for name, count in _handled(rows).items() if run.components.get(name)}
                results.append({"factor": factor, "rows": rows, "runner": runner,
                                "cycle": run.to_dict(), "rows_per_second": speed})
    finally:
        if cluster is not None:
            flink_local.down(state_dir)
    return results


def markdown(results: List[Dict[str, object]]) -> str:
    lines = ["| scale | rows | runner | cycle s | ExampleGen s | StatisticsGen s | Evaluator s "
             "| rows/s: ExampleGen | StatisticsGen | Evaluator |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        seconds, speed = result["cycle"]["components"], result["rows_per_second"]
        lines.append(
            f"| {result['factor']}x | {result['rows']:,} | {result['runner']} "
            f"| {result['cycle']['seconds']} "
            + "".join(f"| {seconds.get(name, '')} " for name in BEAM_COMPONENTS)
            + "".join(f"| {speed.get(name, '')} " for name in BEAM_COMPONENTS) + "|")
    return "\n".join(lines)
