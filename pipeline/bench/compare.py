"""ctpipe against the stock reference pipeline, side by side in one run on the same data root:
a first cycle (spans 1..N-1 present), then an incremental one (span N arrives).

Stock has no notion of history: every cycle re-reads everything, so its incremental cycle is
its second run. ctpipe's first cycle is a fresh home, which starts at the newest span; its
incremental cycle runs in a home that has already processed spans 1..N-1 one by one (untimed),
the steady state of a pipeline that has been running for a while - its model then carries the
whole history through its warm-start chain, as it would in production."""
from __future__ import annotations

import glob
import os
import shutil
from typing import Dict, List

from ctpipe.pipeline.bench.measure import (
    CycleRun,
    component_seconds,
    latest_artifact_uri,
    model_auc,
    overlap,
    python,
    run_process,
)
from ctpipe.pipeline.bench.stock import STOCK_PIPELINE_NAME
from ctpipe.pipeline.progress import Progress

CTPIPE_PIPELINE_NAME = "ctpipe"


def copy_span(sample_dir: str, span: int, data_root: str) -> None:
    target = os.path.join(data_root, f"span-{span}")
    os.makedirs(target, exist_ok=True)
    for path in glob.glob(os.path.join(sample_dir, f"span-{span}", "*.csv")):
        shutil.copy(path, target)


STEADY_HOME = "ctpipe-steady"


def _home(kind: str, which: str) -> str:
    return STEADY_HOME if kind == "ctpipe" and which == "incremental" else kind


def _catch_up(work: str, data_root: str, first_span: int) -> CycleRun:
    """The steady-state home: every span so far processed in order (not timed as a cycle)."""
    home = os.path.join(work, STEADY_HOME)
    run = run_process("ctpipe history", python(
        "ctpipe.pipeline.cli", "run", "--all", "--from-span", str(first_span), "--data-root",
        data_root, "--home", home, "--json"), os.path.join(work, "ctpipe-history.log"))
    if run.returncode != 0:
        raise RuntimeError(f"catching up spans failed (exit {run.returncode}); see {run.log}")
    return run


def _cycle(kind: str, which: str, work: str, data_root: str, train_steps: int) -> CycleRun:
    home = os.path.join(work, _home(kind, which))
    log = os.path.join(work, f"{kind}-{which}.log")
    if kind == "stock":
        argv = python("ctpipe.pipeline.bench.stock", "--data-root", data_root, "--home", home,
                      "--train-steps", str(train_steps))
        name = STOCK_PIPELINE_NAME
    else:
        argv = python("ctpipe.pipeline.cli", "run", "--data-root", data_root, "--home", home,
                      "--json")
        name = CTPIPE_PIPELINE_NAME
    run = run_process(f"{kind} {which}", argv, log)
    if run.returncode != 0:
        raise RuntimeError(f"{run.label} failed with exit code {run.returncode}; see {log}")
    run.components = component_seconds(os.path.join(home, "metadata.sqlite"), name)
    return run


def _score(runs: Dict[str, CycleRun], work: str, which: str) -> Dict[str, object]:
    """Both models on the same held-out data, twice:
    - the newest span's eval split as ctpipe's ExampleGen wrote it (what the Evaluator gates
      on; a few dozen rows on the small spans, hence the error bars);
    - every span's eval rows: stock's eval split, thousands of rows.
    Both ExampleGens hash identical tf.Examples into the same splits, so neither model trained
    on these rows; the overlap counts below prove it."""
    ours_meta = os.path.join(work, _home("ctpipe", which), "metadata.sqlite")
    stock_meta = os.path.join(work, "stock", "metadata.sqlite")
    newest_eval = _split_files(latest_artifact_uri(ours_meta, "Examples", "CsvExampleGen"),
                               "eval")
    all_eval = _split_files(latest_artifact_uri(stock_meta, "Examples"), "eval")
    for kind, meta in (("ctpipe", ours_meta), ("stock", stock_meta)):
        model = latest_artifact_uri(meta, "Model")
        runs[kind].auc, runs[kind].auc_stderr = model_auc(model, newest_eval)
        runs[kind].auc_all_spans, runs[kind].auc_all_spans_stderr = model_auc(model, all_eval)
    stock_train = _split_files(latest_artifact_uri(stock_meta, "Examples"), "train")
    ours_train = _split_files(latest_artifact_uri(ours_meta, "Examples", "DataGate"), "train")
    return {"eval_files": newest_eval,
            "eval_rows_in_stock_training": overlap(newest_eval, stock_train),
            "all_spans_eval_rows_in_ctpipe_training": overlap(all_eval, ours_train)}


def _split_files(uri: str, split: str) -> List[str]:
    return sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*")))


def compare(sample_dir: str, work: str, first_spans: List[int], new_span: int,
            train_steps: int, progress: Progress) -> Dict[str, object]:
    data_root = os.path.join(work, "data")
    for span in first_spans:
        copy_span(sample_dir, span, data_root)
    cycles: Dict[str, Dict[str, object]] = {}
    for which in ("first", "incremental"):
        if which == "incremental":
            with progress.step(f"ctpipe: process spans {first_spans[0]}..{first_spans[-1]} "
                               "one by one (steady-state home, untimed)"):
                history = _catch_up(work, data_root, first_spans[0])
            copy_span(sample_dir, new_span, data_root)
        runs: Dict[str, CycleRun] = {}
        for kind in ("stock", "ctpipe"):
            with progress.step(f"{kind}: {which} cycle"):
                runs[kind] = _cycle(kind, which, work, data_root, train_steps)
        with progress.step(f"AUC of both models after the {which} cycle"):
            scoring = _score(runs, work, which)
        cycles[which] = {
            "stock": runs["stock"].to_dict(), "ctpipe": runs["ctpipe"].to_dict(),
            "ratio": round(runs["ctpipe"].seconds / runs["stock"].seconds, 2),
            "eval_rows_in_stock_training": scoring["eval_rows_in_stock_training"],
            "all_spans_eval_rows_in_ctpipe_training":
                scoring["all_spans_eval_rows_in_ctpipe_training"],
            "eval_examples": scoring["eval_files"]}
    cycles["incremental"]["steady_state_history"] = {"seconds": history.seconds,
                                                     "log": history.log}
    return {"data": {"first_spans": first_spans, "new_span": new_span,
                     "stock_train_steps": train_steps}, "cycles": cycles}


def markdown(result: Dict[str, object]) -> str:
    lines = ["| cycle | ctpipe s | stock s | ratio | AUC newest span: ctpipe | stock "
             "| AUC all spans: ctpipe | stock | peak RSS MiB: ctpipe | stock |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    auc = lambda run, key: f"{run[key]} ± {run[key + '_stderr']}"  # noqa: E731
    for which, cycle in result["cycles"].items():
        ours, stock = cycle["ctpipe"], cycle["stock"]
        lines.append(f"| {which} | {ours['seconds']} | {stock['seconds']} | {cycle['ratio']} "
                     f"| {auc(ours, 'auc')} | {auc(stock, 'auc')} "
                     f"| {auc(ours, 'auc_all_spans')} | {auc(stock, 'auc_all_spans')} "
                     f"| {ours['peak_rss_mib']:.0f} | {stock['peak_rss_mib']:.0f} |")
    lines += ["", "Per component (s, ML Metadata):", ""]
    names = []
    for cycle in result["cycles"].values():
        for kind in ("ctpipe", "stock"):
            names += [n for n in cycle[kind]["components"] if n not in names]
    header = " | ".join(f"{w} {k}" for w in result["cycles"] for k in ("ctpipe", "stock"))
    lines += [f"| component | {header} |", "|---|" + "---|" * (2 * len(result["cycles"]))]
    for name in names:
        cells = []
        for cycle in result["cycles"].values():
            for kind in ("ctpipe", "stock"):
                value = cycle[kind]["components"].get(name)
                cells.append("" if value is None else f"{value}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
