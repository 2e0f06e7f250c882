"""`make bench`: ctpipe vs a stock TFX pipeline, scaling with the data, serving speed.

Usage: python -m ctpipe.pipeline.bench [--work DIR] [--scales 1 10 100] [--skip-scaling]
       [--skip-serving] [--json-out FILE]
       python -m ctpipe.pipeline.bench --soak N [--soak-rows 400] [--soak-keep-memory]
         (only the soak: N cycles in this one watch process, RSS per cycle)
Everything is measured side by side in this one run - the machine is noisy, so read the ratios.
It prints markdown tables and writes JSON; it asserts nothing (no test asserts on time).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from ctpipe.components.basics import end_process, exit_on_sigterm
from ctpipe.pipeline.bench.targets import SERVING_MODES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def machine() -> Dict[str, Any]:
    memory = None
    try:
        with open("/proc/meminfo") as handle:
            memory = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "memory_gib": memory,
            "python": platform.python_version(), "system": platform.platform()}


def serving_bench(work: str, model_base: str, quick: bool, mode: str = "serving",
                  batching: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """serving/benchmark.py on the model ctpipe just pushed, in its own process; `batching`:
    None, or the server batches (TF Serving's --enable_batching) with this parameters file
    text ("" = TF Serving's defaults)."""
    stem = os.path.join(work, mode.replace("_", "-"))
    out = f"{stem}.json"
    argv = [sys.executable, "-m", "ctpipe.serving.benchmark", "--model-base-path", model_base,
            "--json-out", out] + (["--quick"] if quick else [])
    if batching is not None:
        argv.append("--enable-batching")
        if batching:
            parameters = f"{stem}.batching.txt"
            with open(parameters, "w") as handle:
                handle.write(batching)
            argv += ["--batching-parameters-file", parameters]
    # stdout: the table and ratios (printed at the end); stderr: one progress line per cell
    # (Popen, not subprocess.run: run SIGKILLs its child when this process is stopped, and the
    # child's own server child would be left running; end_process asks it to stop first.)
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        printed, _ = child.communicate()
    finally:
        end_process(child)
    if child.returncode != 0 or not os.path.exists(out):
        print(f"serving benchmark failed (exit {child.returncode})", file=sys.stderr)
        return None
    with open(out) as handle:
        result = json.load(handle)
    result["markdown"] = printed.strip()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for homes, data and logs (default: new temp)")
    parser.add_argument("--sample", default=None, help="sample spans (default: data/sample)")
    parser.add_argument("--first-spans", type=int, default=10,
                        help="spans 1..N present before the first cycle, N+1 arrives for the "
                        "incremental one, N+2 is held out from both (default 10: held-out span 12 "
                        "has 1,083 rows; with 14, span 16 has 201 and its AUC an error of "
                        "+-0.027)")
    parser.add_argument("--stock-train-steps", type=int, default=200)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--skip-compare", action="store_true",
                        help="no stock-vs-ctpipe cycles (scaling/serving only)")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--flink", action="store_true",
                        help="also run each scale on DirectRunner multi_processing and on a local "
                        "Flink cluster (parallelism 2), per component")
    parser.add_argument("--flink-large", type=int, metavar="FACTOR",
                        help="also one span of FACTOR x the sample (1000: ~2.4M rows) through a "
                        "first cycle on a local Flink cluster, with every process's peak RSS")
    parser.add_argument("--quick", action="store_true",
                        help="scales 1 and 10 only, short serving loops")
    parser.add_argument("--json-out", help="also write the JSON here")
    parser.add_argument("--soak", type=int, metavar="N",
                        help="only the soak: N cycles in one watch process, RSS per cycle")
    parser.add_argument("--soak-rows", type=int, default=400, help="rows per soak span")
    parser.add_argument("--soak-process", action="store_true",
                        help="soak the real `ctpipe watch` command (its restarts included), "
                        "RSS read by PID after each decision")
    parser.add_argument("--soak-keep-memory", action="store_true",
                        help="soak without giving memory back after each cycle (the before)")
    args = parser.parse_args(argv)
    exit_on_sigterm()  # children (cycles, servers, clusters) are then stopped by their PIDs
    if args.soak:
        return _soak(args)

    from ctpipe.pipeline.bench import compare, scaling
    from ctpipe.pipeline.run.demo import REPO_SAMPLE
    from ctpipe.pipeline.run.progress import Progress

    sample = args.sample or str(REPO_SAMPLE)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="ctpipe-bench-"))
    os.makedirs(work, exist_ok=True)
    scales = [s for s in args.scales if s <= 10] if args.quick else args.scales
    steps = ((0 if args.skip_compare else 10) + (0 if args.skip_scaling else 3 * len(scales))
             + (3 * len([s for s in scales if s >= 10]) if args.flink else 0)
             + (2 if args.flink_large else 0)
             + (0 if args.skip_serving else len(SERVING_MODES)))
    progress = Progress(steps)
    started = time.monotonic()
    print(f"bench work folder: {work}", file=sys.stderr)

    result: Dict[str, Any] = {"machine": machine(), "work": work}
    if not args.skip_compare:
        result["comparison"] = compare.compare(
            sample, work, list(range(1, args.first_spans + 1)), args.first_spans + 1,
            args.stock_train_steps, progress, held_out_span=args.first_spans + 2)
    if not args.skip_scaling:
        result["scaling"] = scaling.run_scaling(sample, work, scales, progress)
    if args.flink:
        from ctpipe.pipeline.bench import flink_scaling

        # The Flink column: 10x and up (at 1x every runner only pays its start-up).
        result["scaling_by_runner"] = flink_scaling.run_by_runner(
            sample, work, [s for s in scales if s >= 10], progress)
    if args.flink_large:
        from ctpipe.pipeline.bench import flink_scaling

        result["flink_large"] = flink_scaling.run_large_on_flink(sample, work, args.flink_large,
                                                                 progress)
    if not args.skip_serving:
        served = os.path.join(work, "ctpipe-steady" if "comparison" in result else
                              f"scale-{scales[0]}x/home", "serving", "big_tipper")
        for mode, title, _, batching in SERVING_MODES:
            with progress.step(f"{title}: in-process vs gRPC vs REST"):
                result[mode] = serving_bench(work, served, args.quick, mode, batching)
    result["seconds"] = round(time.monotonic() - started, 1)

    info = result["machine"]
    if "comparison" in result:
        print(f"\n## Cycle time: ctpipe vs stock TFX ({info['cpus']} CPUs, {info['cpu']})\n")
        print(compare.markdown(result["comparison"]))
    if "scaling" in result:
        print("\n## Scaling with the data (ctpipe)\n")
        print(scaling.markdown(result["scaling"]))
    if "scaling_by_runner" in result:
        print("\n## Scaling by Beam runner (DirectRunner in-memory / multi_processing / Flink)\n")
        print(flink_scaling.markdown(result["scaling_by_runner"]))
    if "flink_large" in result:
        print("\n## One large span on Flink\n")
        print(flink_scaling.large_markdown(result["flink_large"]))
    for mode, title, _, _ in SERVING_MODES:
        if result.get(mode) and result[mode].get("markdown"):
            print(f"\n## {title}\n")
            print(result[mode]["markdown"])
    from ctpipe.pipeline.bench import targets

    result["targets"] = targets.targets(result)
    result["fixed_and_per_row"] = targets.fixed_and_per_row(result)
    print("\n## Targets (issue 20), this run\n")
    print(targets.markdown(result))
    path = args.json_out or os.path.join(work, "bench.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"\nJSON: {path}")
    return 0


def _soak(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.bench import soak
    from ctpipe.pipeline.run.demo import REPO_SAMPLE

    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="ctpipe-soak-"))
    os.makedirs(work, exist_ok=True)
    print(f"soak work folder: {work}", file=sys.stderr)
    sample = args.sample or str(REPO_SAMPLE)
    result = {"machine": machine(), "work": work, "soak": (
        soak.soak_process(sample, work, args.soak, args.soak_rows) if args.soak_process else
        soak.soak(sample, work, args.soak, args.soak_rows,
                  release_memory=not args.soak_keep_memory))}
    print(soak.markdown(result["soak"]))
    path = args.json_out or os.path.join(work, "soak.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
