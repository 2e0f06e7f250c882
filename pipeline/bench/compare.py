"""ctpipe against two stock TFX anchors (pipeline/bench/stock.py), side by side in one run on
the same data root: a first cycle (spans 1..N-1 present), then an incremental one (span N
arrives). One more span, the held-out span, is never copied into the data root: no pipeline
ever reads it, and every final model is scored on the whole of it.

Naive stock has no notion of history: every cycle re-reads everything, so its incremental cycle
is its second run. Expert stock and ctpipe start a fresh home at the newest span (first cycle);
their incremental cycle runs in a home that has already processed spans 1..N-1 one by one
(untimed), the steady state of a pipeline that has been running for a while - the model then
carries the whole history through its warm-start chain, as it would in production. Both use a
window of the same number of spans (PipelineConfig.window_spans)."""
from __future__ import annotations

import glob
import os
import shutil
import sys
from typing import Dict, List, Optional

from ctpipe.pipeline.bench.measure import (
    CycleRun,
    component_seconds,
    decided,
    latest_artifact_uri,
    model_auc,
    overlap,
    python,
    run_process,
)
from ctpipe.pipeline.bench.stock import EXPERT_PIPELINE_NAME, STOCK_PIPELINE_NAME
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.run.progress import Progress

CTPIPE_PIPELINE_NAME = "ctpipe"
KINDS = ("stock", "expert", "ctpipe")  # naive stock, expert stock, ours
PIPELINE_NAMES = {"stock": STOCK_PIPELINE_NAME, "expert": EXPERT_PIPELINE_NAME,
                  "ctpipe": CTPIPE_PIPELINE_NAME}
WINDOW_SPANS = PipelineConfig().window_spans


def copy_span(sample_dir: str, span: int, data_root: str) -> None:
    target = os.path.join(data_root, f"span-{span}")
    os.makedirs(target, exist_ok=True)
    for path in glob.glob(os.path.join(sample_dir, f"span-{span}", "*.csv")):
        shutil.copy(path, target)


STEADY_HOME = "ctpipe-steady"
EXPERT_STEADY_HOME = "expert-steady"


def _home(kind: str, which: str) -> str:
    if which == "incremental":
        return {"ctpipe": STEADY_HOME, "expert": EXPERT_STEADY_HOME}.get(kind, kind)
    return kind


def _catch_up(kind: str, work: str, data_root: str, spans: List[int],
              train_steps: int) -> CycleRun:
    """A steady-state home: every span so far processed in order (not timed as a cycle)."""
    home = os.path.join(work, _home(kind, "incremental"))
    if kind == "expert":
        argv = python("ctpipe.pipeline.bench.stock", "--expert", "--data-root", data_root,
                      "--home", home, "--train-steps", str(train_steps), "--window-spans",
                      str(WINDOW_SPANS), "--spans", *map(str, spans))
    else:
        argv = python("ctpipe.pipeline.commands.main", "run", "--all", "--from-span",
                      str(spans[0]), "--data-root", data_root, "--home", home, "--json")
    run = run_process(f"{kind} history", argv, os.path.join(work, f"{kind}-history.log"))
    if not decided(run):
        raise RuntimeError(f"catching up spans ({kind}) failed (exit {run.returncode}); "
                           f"see {run.log}")
    return run


def _cycle(kind: str, which: str, work: str, data_root: str, train_steps: int) -> CycleRun:
    home = os.path.join(work, _home(kind, which))
    log = os.path.join(work, f"{kind}-{which}.log")
    if kind in ("stock", "expert"):
        argv = python("ctpipe.pipeline.bench.stock", "--data-root", data_root, "--home", home,
                      "--train-steps", str(train_steps))
        if kind == "expert":
            argv += ["--expert", "--window-spans", str(WINDOW_SPANS)]
    else:
        argv = python("ctpipe.pipeline.commands.main", "run", "--data-root", data_root,
                      "--home", home, "--json")
    run = run_process(f"{kind} {which}", argv, log)
    if not decided(run):
        raise RuntimeError(f"{run.label} failed with exit code {run.returncode}; see {log}")
    run.components = component_seconds(os.path.join(home, "metadata.sqlite"),
                                       PIPELINE_NAMES[kind])
    return run


def _score(runs: Dict[str, CycleRun], work: str, which: str,
           held_out: Optional[str]) -> Dict[str, Dict[str, int]]:
    """Every model on rows none of them trained on, twice, with a leak check that counts real
    overlaps (by row_key(), the row's normalized values, against every train split each home
    ever wrote):
    - held-out span: a whole span never copied into the data root;
    - all spans: naive stock's eval split minus every row in ctpipe's and expert stock's train
      splits. The ExampleGens do not split alike - stock hashes each serialized tf.Example and
      offers no hook for another key short of a custom executor (`partition_feature_name`
      takes one feature), ours hashes the raw CSV row (csv_ingest.raw_row_key), and expert
      stock types each span by its own rows - so many of naive stock's eval rows are in the
      others' training data. They are dropped and counted.
    AUC standard errors are Hanley-McNeil (label_check.auc_stderr)."""
    from ctpipe.pipeline.bench.measure import records, split_files, write_rows_outside

    meta = {kind: os.path.join(work, _home(kind, which), "metadata.sqlite") for kind in runs}
    train = {kind: split_files(path, "train") for kind, path in meta.items()}
    others = [path for kind in runs if kind != "stock" for path in train[kind]]
    all_eval = os.path.join(work, f"eval-rows-neither-trained-on-{which}.tfrecord.gz")
    clean = write_rows_outside(
        _split_files(latest_artifact_uri(meta["stock"], "Examples"), "eval"), others, all_eval)
    eval_sets = {"all_spans": [all_eval], "held_out_span": [held_out] if held_out else []}
    leaks = {name: {"rows": len(records(files)),
                    **{f"in_{kind}_training": overlap(files, train[kind]) for kind in runs}}
             for name, files in eval_sets.items() if files}
    leaks["all_spans"]["stock_eval_rows_dropped_as_in_others_training"] = \
        clean["dropped_rows_seen_in_training"]
    for kind, path in meta.items():
        model = latest_artifact_uri(path, "Model")
        runs[kind].auc_all_spans, runs[kind].auc_all_spans_stderr = model_auc(model, [all_eval])
        if held_out:
            runs[kind].auc_held_out_span, runs[kind].auc_held_out_span_stderr = model_auc(
                model, [held_out])
    return leaks


def encode_span(sample_dir: str, span: int, path: str) -> str:
    """A sample span as one GZIP TFRecord file of tf.Examples for scoring both models: typed
    by the curated schema as ctpipe's ExampleGen types it (stock writes the same bytes where it
    infers the contract's types; tests/test_csv_ingest.py), except that empty cells carry no
    type (`Feature()`): a stock model whose data never held a value of a column (its SchemaGen
    then makes it BYTES) must still parse the rows. The values are the same for both models."""
    import apache_beam as beam

    from ctpipe.components.csv_ingest import _SpreadsheetCsvToExample

    with beam.Pipeline() as pipeline:
        _ = (pipeline
             | _SpreadsheetCsvToExample({"input_base": sample_dir}, f"span-{span}/*")
             | beam.Map(_untyped_empty_cells)
             | beam.Map(lambda example: example.SerializeToString(deterministic=True))
             | beam.io.WriteToTFRecord(path, shard_name_template="",
                                       compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    return path


def _untyped_empty_cells(example):
    for feature in example.features.feature.values():
        kind = feature.WhichOneof("kind")
        if kind and not getattr(feature, kind).value:
            feature.Clear()
    return example


def _split_files(uri: str, split: str) -> List[str]:
    return sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*")))


def compare(sample_dir: str, work: str, first_spans: List[int], new_span: int,
            train_steps: int, progress: Progress,
            held_out_span: Optional[int] = None) -> Dict[str, object]:
    data_root = os.path.join(work, "data")
    for span in first_spans:
        copy_span(sample_dir, span, data_root)
    held_out = None
    if held_out_span is not None:
        if held_out_span in first_spans or held_out_span == new_span:
            raise ValueError(f"held-out span {held_out_span} is one the pipelines read")
        if glob.glob(os.path.join(sample_dir, f"span-{held_out_span}", "*.csv")):
            held_out = encode_span(sample_dir, held_out_span,
                                   os.path.join(work, f"held-out-span-{held_out_span}.tfrecord.gz"))
        else:
            print(f"no sample span {held_out_span}: no held-out-span AUC", file=sys.stderr)
    cycles: Dict[str, Dict[str, object]] = {}
    history: Dict[str, CycleRun] = {}
    for which in ("first", "incremental"):
        if which == "incremental":
            for kind in ("expert", "ctpipe"):
                with progress.step(f"{kind}: process spans {first_spans[0]}..{first_spans[-1]} "
                                   "one by one (steady-state home, untimed)"):
                    history[kind] = _catch_up(kind, work, data_root, first_spans, train_steps)
            copy_span(sample_dir, new_span, data_root)
        runs: Dict[str, CycleRun] = {}
        for kind in KINDS:
            with progress.step(f"{kind}: {which} cycle"):
                runs[kind] = _cycle(kind, which, work, data_root, train_steps)
        with progress.step(f"AUC of every model after the {which} cycle"):
            leaks = _score(runs, work, which, held_out)
        ours = runs["ctpipe"].seconds
        cycles[which] = {
            **{kind: runs[kind].to_dict() for kind in KINDS},
            "ratio": round(ours / runs["stock"].seconds, 2),
            "ratio_vs_expert": round(ours / runs["expert"].seconds, 2),
            "leak_check": leaks}
    cycles["incremental"]["steady_state_history"] = {
        kind: {"seconds": run.seconds, "log": run.log} for kind, run in history.items()}
    return {"data": {"first_spans": first_spans, "new_span": new_span,
                     "held_out_span": held_out_span if held_out else None,
                     "stock_train_steps": train_steps, "window_spans": WINDOW_SPANS},
            "cycles": cycles}


LABELS = {"stock": "naive stock", "expert": "expert stock", "ctpipe": "ctpipe"}


def markdown(result: Dict[str, object]) -> str:
    """One row per cycle and pipeline; ctpipe's time as a ratio of each anchor's."""
    held_out = result["data"].get("held_out_span")
    lines = [f"| cycle | pipeline | s | ctpipe ÷ this | peak RSS MiB "
             f"| AUC held-out span {held_out} | AUC eval rows none trained on "
             "| leaked rows (held-out / all) |",
             "|---|---|---|---|---|---|---|---|"]
    auc = lambda run, key: f"{run[key]} ± {run[key + '_stderr']}"  # noqa: E731
    for which, cycle in result["cycles"].items():
        leaks = cycle["leak_check"]
        sets = [leaks.get("held_out_span", {}), leaks["all_spans"]]
        ours = cycle["ctpipe"]["seconds"]
        for kind in KINDS:
            run = cycle.get(kind)
            if run is None:
                continue
            ratio = f"{ours / run['seconds']:.2f}" if run["seconds"] else ""
            leaked = " / ".join(str(s.get(f"in_{kind}_training", "-")) for s in sets)
            lines.append(f"| {which} | {LABELS[kind]} | {run['seconds']} | {ratio} "
                         f"| {run['peak_rss_mib']:.0f} | {auc(run, 'auc_held_out_span')} "
                         f"| {auc(run, 'auc_all_spans')} | {leaked} |")
    rows = ", ".join(
        f"{w}: {c['leak_check'].get('held_out_span', {}).get('rows', '-')} / "
        f"{c['leak_check']['all_spans']['rows']} "
        f"({c['leak_check']['all_spans']['stock_eval_rows_dropped_as_in_others_training']} "
        "dropped)" for w, c in result["cycles"].items())
    window = result["data"].get("window_spans")
    lines += ["", "AUC ± Hanley-McNeil standard error. Leaked rows: eval rows found (by "
              "normalized row) in any train split of that pipeline. Rows held-out / all spans "
              f"(naive stock's eval split without the rows the others trained on): {rows}. "
              f"Expert stock and ctpipe train on a window of {window} spans with warm start; "
              "their incremental cycle runs in a home that processed every earlier span."]
    lines += ["", "Per component (s, ML Metadata):", ""]
    columns = [(w, k) for w, cycle in result["cycles"].items() for k in KINDS if k in cycle]
    names: List[str] = []
    for which, kind in columns:
        names += [n for n in result["cycles"][which][kind]["components"] if n not in names]
    header = " | ".join(f"{w} {LABELS[k]}" for w, k in columns)
    lines += [f"| component | {header} |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [result["cycles"][w][k]["components"].get(name) for w, k in columns]
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v}" for v in cells)
                     + " |")
    return "\n".join(lines)
