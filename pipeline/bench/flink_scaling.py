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

from ctpipe.pipeline.bench.measure import component_seconds, decided, python, run_process
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
                if not decided(run):
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


def run_large_on_flink(sample_dir: str, work: str, factor: int,
                       progress: Progress) -> Dict[str, object]:
    """One span of `factor` x the sample size (both source spans: ~2.4k rows each x factor),
    generated here, through a first cycle on the local Flink cluster, with the peak RSS of every
    process (the cycle's, the cluster's, the harnesses') sampled while it runs."""
    from ctpipe.pipeline.bench.process_memory import PeakMemory
    from ctpipe.pipeline.run import flink_local

    root = os.path.join(work, f"flink-{factor}x")
    data_root, home = os.path.join(root, "data"), os.path.join(root, "home")
    target = os.path.join(data_root, "span-1", "data.csv")
    with progress.step(f"flink {factor}x: generate the span"):
        started = time.monotonic()
        for source in SOURCE_SPANS:
            scaled_span(os.path.join(sample_dir, f"span-{source}", "data.csv"), factor,
                        os.path.join(root, "parts", f"{source}.csv"), seed=1000 * factor + source)
        rows = _concatenate([os.path.join(root, "parts", f"{source}.csv")
                             for source in SOURCE_SPANS], target)
        generated = round(time.monotonic() - started, 1)
    state_dir = os.path.join(root, "flink-state")
    cluster = flink_local.up(state_dir, flink_local.Ports.free(), timeout=240)
    try:
        config = _toml(os.path.join(root, "flink.toml"), cluster.beam_args())
        with progress.step(f"flink {factor}x: first cycle ({rows:,} rows)"), \
                PeakMemory(interval=1.0) as memory:
            run = run_process(f"{factor}x flink", python(
                "ctpipe.pipeline.commands.main", "run", "--config", config,
                "--data-root", data_root, "--home", home, "--json"),
                os.path.join(root, "cycle.log"))
        jobs = flink_local.rest(cluster.ports, "/jobs/overview")["jobs"]
    finally:
        failed = "run" not in locals() or not decided(run)
        flink_local.down(state_dir, keep_logs=failed)  # the cluster's logs explain a failure
    run.components = component_seconds(os.path.join(home, "metadata.sqlite"), "ctpipe")
    speed = {name: round(count / run.components[name])
             for name, count in _handled(rows).items() if run.components.get(name)}
    return {"factor": factor, "rows": rows, "csv_mib": round(os.path.getsize(target) / 2**20),
            "generate_seconds": generated, "returncode": run.returncode,
            "cycle": run.to_dict(), "rows_per_second": speed, "memory": memory.to_dict(),
            "flink_jobs": sorted((job["name"], job["state"]) for job in jobs),
            "log": run.log}


def _concatenate(parts: Sequence[str], target: str) -> int:
    """One CSV from several with the same header; returns data rows."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    rows = 0
    with open(target, "w") as out:
        for index, part in enumerate(parts):
            with open(part) as handle:
                header = handle.readline()
                if index == 0:
                    out.write(header)
                for line in handle:
                    out.write(line)
                    rows += 1
            os.remove(part)
    return rows


def large_markdown(result: Dict[str, object]) -> str:
    cycle, memory = result["cycle"], result["memory"]
    lines = [f"{result['factor']}x span on Flink (parallelism 2): {result['rows']:,} rows "
             f"({result['csv_mib']} MiB CSV), exit {result['returncode']}, cycle "
             f"{cycle['seconds']} s; Flink jobs: "
             + ", ".join(f"{name} {state}" for name, state in result["flink_jobs"]), "",
             "| component | s | rows/s |", "|---|---|---|"]
    for name, seconds in cycle["components"].items():
        lines.append(f"| {name} | {seconds} | {result['rows_per_second'].get(name, '')} |")
    lines += ["", f"Peak RSS per process (sampled every {memory['interval_s']} s, so lower "
              f"bounds); all processes together at one sample: {memory['peak_total_mib']} MiB", "",
              "| process | peak RSS MiB | processes |", "|---|---|---|"]
    for name, entry in memory["by_role"].items():
        lines.append(f"| {name} | {entry['peak_rss_mib']} | {entry['processes']} |")
    return "\n".join(lines)


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
