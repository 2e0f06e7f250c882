"""Benchmark: cycle times, per-component times (from ML Metadata) and peak memory.

Usage: python -m ctpipe.pipeline.benchmark [--spans 1 2 3] [--home DIR]
Runs one cycle per span in a fresh home, in one process (as `ctpipe demo` does), and prints
figures; it asserts nothing - speed goals are read here, not enforced by tests.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from typing import List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--home", help="home to use (default: a new temporary folder)")
    args = parser.parse_args(argv)

    from ctpipe.pipeline.cli import quiet_libraries

    quiet_libraries()
    started = time.time()
    from ctpipe.pipeline import outcomes
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.demo import REPO_SAMPLE
    from ctpipe.pipeline.local_runner import run_cycle
    from ctpipe.pipeline.spans import check_span
    imports = time.time() - started

    home = args.home or tempfile.mkdtemp(prefix="ctpipe-bench-")
    data_root = os.path.join(home, "incoming")
    config = PipelineConfig(home=home, data_root=data_root)
    print(f"imports: {imports:.1f} s   home: {home}")
    print(f"{'span':>4} {'rows':>6} {'outcome':<12} {'cycle s':>8}  per component (s)")
    for span in args.spans:
        target = os.path.join(data_root, f"span-{span}")
        os.makedirs(target, exist_ok=True)
        shutil.copyfile(REPO_SAMPLE / f"span-{span}" / "data.csv", os.path.join(target, "data.csv"))
        rows = check_span(span, target)
        decision = run_cycle(config)
        store = outcomes.open_store(outcomes.sqlite_connection(config.metadata_path))
        run = outcomes.pipeline_runs(store, config.pipeline_name)[-1]
        times = component_seconds(store, run, config.pipeline_name)
        shown = "  ".join(f"{name}={seconds:.1f}" for name, seconds in times if seconds >= 0.1)
        print(f"{span:>4} {rows:>6} {decision.outcome:<12} {decision.seconds:>8.1f}  {shown}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MiB   total: {time.time() - started:.1f} s")


def component_seconds(store, run_context, pipeline_name: str):
    result = []
    for execution in store.get_executions_by_context(run_context.id):
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type == "node"]
        name = nodes[0][len(pipeline_name) + 1:] if nodes else str(execution.id)
        seconds = (execution.last_update_time_since_epoch -
                   execution.create_time_since_epoch) / 1000.0
        result.append((name, seconds))
    return result


if __name__ == "__main__":
    main()
