"""Scaling: spans of 1x, 10x and 100x the sample size, generated at bench time by resampling the
sample's rows with noise (never committed), and two ctpipe cycles on each (a cold first cycle on
span 1, then span 2 arriving: a two-span window with a warm start)."""
from __future__ import annotations

import csv
import os
import random
from typing import Dict, List, Optional

from ctpipe.pipeline.bench.measure import component_seconds, decided, python, run_process
from ctpipe.pipeline.run.progress import Progress

# Continuous columns get multiplicative noise; coordinates a few metres of jitter. Categorical
# codes, labels and empty cells (missing values) are kept as they are.
RELATIVE_NOISE = {"fare": 0.05, "trip_miles": 0.05, "trip_seconds": 0.05}
ABSOLUTE_NOISE = {"pickup_latitude": 1e-4, "pickup_longitude": 1e-4,
                  "dropoff_latitude": 1e-4, "dropoff_longitude": 1e-4}
SOURCE_SPANS = (10, 11)  # ~1.2k rows each: "the sample size"
# Which rows each component handles in the incremental cycle (a span is split 2:1 train:eval).
NEW_SPAN_COMPONENTS = ("CsvExampleGen", "StatisticsGen", "ExampleValidator", "DataGate")


def _noisy(name: str, value: str, rng: random.Random) -> str:
    if value == "" or (name not in RELATIVE_NOISE and name not in ABSOLUTE_NOISE):
        return value
    number = float(value)
    if name in RELATIVE_NOISE:
        number *= max(0.0, 1.0 + rng.gauss(0.0, RELATIVE_NOISE[name]))
    else:
        number += rng.gauss(0.0, ABSOLUTE_NOISE[name])
    return str(int(round(number))) if name == "trip_seconds" else f"{number:.6f}"


def scaled_span(source_csv: str, factor: int, target_csv: str, seed: int,
                count: Optional[int] = None) -> int:
    """Write factor x the source's rows (or `count` rows), drawn with replacement and jittered;
    returns rows."""
    rng = random.Random(seed)
    with open(source_csv, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    os.makedirs(os.path.dirname(target_csv), exist_ok=True)
    count = len(rows) * factor if count is None else count
    with open(target_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for _ in range(count):
            row = rows[rng.randrange(len(rows))]
            writer.writerow([_noisy(name, value, rng) for name, value in zip(header, row)])
    return count


def run_scaling(sample_dir: str, work: str, factors: List[int],
                progress: Progress) -> List[Dict[str, object]]:
    results = []
    for factor in factors:
        root = os.path.join(work, f"scale-{factor}x")
        data_root, home = os.path.join(root, "data"), os.path.join(root, "home")
        with progress.step(f"scaling {factor}x: generate spans"):
            rows = [scaled_span(os.path.join(sample_dir, f"span-{source}", "data.csv"), factor,
                                os.path.join(data_root, f"span-{index}", "data.csv"),
                                seed=1000 * factor + index)
                    for index, source in enumerate(SOURCE_SPANS, start=1)]
        cycles = {}
        for which, extra in (("first", ["--from-span", "1"]), ("incremental", [])):
            with progress.step(f"scaling {factor}x: {which} cycle ({sum(rows):,} rows)"):
                run = run_process(f"{factor}x {which}", python(
                    "ctpipe.pipeline.commands.main", "run", "--data-root", data_root,
                    "--home", home, "--json", *extra), os.path.join(root, f"{which}.log"))
            if not decided(run):
                raise RuntimeError(f"scaling {factor}x {which} cycle failed "
                                   f"(exit {run.returncode}); see {run.log}")
            run.components = component_seconds(os.path.join(home, "metadata.sqlite"), "ctpipe")
            cycles[which] = run.to_dict()
        incremental = cycles["incremental"]["components"]
        handled = {name: rows[1] for name in NEW_SPAN_COMPONENTS}
        handled["Trainer"] = round(sum(rows) * 2 / 3)
        handled["Evaluator"] = round(rows[1] / 3)
        rows_per_second = {name: round(count / incremental[name])
                           for name, count in handled.items() if incremental.get(name)}
        results.append({"factor": factor, "span_rows": rows, "cycles": cycles,
                        "incremental_rows_per_second": rows_per_second})
    return results


def markdown(results: List[Dict[str, object]]) -> str:
    base = results[0]["cycles"]["incremental"]["seconds"] if results else None
    lines = ["| scale | rows (span 1 + 2) | first s | incremental s | vs 1x | peak RSS MiB "
             "| rows/s: ExampleGen | StatisticsGen | Trainer | Evaluator |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        first, incremental = result["cycles"]["first"], result["cycles"]["incremental"]
        speed = result["incremental_rows_per_second"]
        peak = max(first["peak_rss_mib"], incremental["peak_rss_mib"])
        lines.append(
            f"| {result['factor']}x | {sum(result['span_rows']):,} | {first['seconds']} "
            f"| {incremental['seconds']} | {incremental['seconds'] / base:.2f}x | {peak:.0f} "
            f"| {speed.get('CsvExampleGen', '')} | {speed.get('StatisticsGen', '')} "
            f"| {speed.get('Trainer', '')} | {speed.get('Evaluator', '')} |")
    return "\n".join(lines)
