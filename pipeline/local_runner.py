"""One continuous-training cycle on this machine: LocalDagRunner, Beam DirectRunner, SQLite MLMD.

The runner only picks the span, sets locations and metadata, and runs `create_pipeline(config)`;
the wiring lives in pipeline/pipeline.py alone. A lock on the home directory keeps two cycles from
deciding (and pushing) at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import time
from typing import Callable, Iterator, Optional, Tuple

from pipeline.config import PipelineConfig
from pipeline.outcomes import (NO_NEW_DATA, Decision, decision_for_run, open_store,
                               pipeline_runs, processed_spans, read_run, record_no_new_data,
                               sqlite_connection)
from pipeline.spans import BadInput, check_span, discover_spans

Progress = Callable[[str], None]
_COMPONENT_EVENT = re.compile(r"^Component (\S+) is (running|finished)\.$")


class CycleBusy(BadInput):
    """Another cycle holds this home."""


class ProgressHandler(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished' log lines into progress lines."""

    def __init__(self, span: int, emit: Progress):
        super().__init__(logging.INFO)
        self.span, self.emit_line, self.started = span, emit, time.monotonic()
        self.component_started = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log record must not break the cycle
            return
        skipped = message.startswith("Skipping execution for ")
        match = _COMPONENT_EVENT.match(message)
        if not match and not skipped:
            return
        now = time.monotonic()
        if skipped:
            node, what = message.rsplit(" ", 1)[-1], "skipped (data gate closed)"
        elif match.group(2) == "running":
            node, what = match.group(1), "running"
            self.component_started[node] = now
        else:
            node = match.group(1)
            what = f"done in {now - self.component_started.get(node, now):.1f}s"
        self.emit_line(f"[{now - self.started:6.1f}s] span {self.span} {node}: {what}")


@contextlib.contextmanager
def home_lock(home: str) -> Iterator[None]:
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".ctpipe.lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CycleBusy(f"another ctpipe cycle is running on home {home}")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def captured_logs(log_path: str, progress: Optional[logging.Handler]) -> Iterator[None]:
    """All TFX/absl/TF/Beam logging goes to the cycle's log file; only progress reaches the
    terminal. Loggers are restored afterwards (Beam and TF install terminal handlers)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    loggers = [logging.getLogger(), logging.getLogger("absl"), logging.getLogger("tensorflow")]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    for logger in loggers:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.INFO)
        logger.addHandler(file_handler)
        if logger.name != "root":
            logger.propagate = False
    absl_logger = logging.getLogger("absl")
    if progress:
        absl_logger.addHandler(progress)
    # TF's SavedModel export toggles absl verbosity (CRITICAL, then WARNING - not the level it
    # found), which would silence the orchestrator's progress lines for the rest of the cycle.
    absl_logger.setLevel = lambda level: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del absl_logger.setLevel
        for logger, level, propagate, handlers in saved:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            for handler in handlers:
                logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        file_handler.close()


def choose_span(config: PipelineConfig, store) -> Tuple[Optional[int], int, str]:
    """(span to process or None, the span considered, why there is nothing new)."""
    spans = discover_spans(config.data_root)
    target = config.span if config.span is not None else max(spans)
    if target not in spans:
        raise BadInput(f"span {target} not found under {config.data_root}")
    done = processed_spans(store, config.pipeline_name)
    if target in done:
        return None, target, f"span {target} was already processed (newest span under " \
                             f"{config.data_root}); waiting for span {max(done) + 1}"
    if done and target < max(done) and config.span is None:
        return None, target, f"span {target} is older than the last processed span {max(done)}"
    return target, target, ""


def run_cycle(config: PipelineConfig, progress: Optional[Progress] = None) -> Decision:
    """Run one cycle: pick the newest unprocessed span, check it, run the pipeline, decide."""
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline

    config = dataclasses.replace(config, home=os.path.abspath(config.home),
                                 data_root=os.path.abspath(config.data_root))
    with home_lock(config.home):
        started = time.time()
        connection = sqlite_connection(config.metadata_path)
        store = open_store(connection)
        span, considered, why_nothing = choose_span(config, store)
        if span is None:
            decision = Decision(NO_NEW_DATA, span=considered, model_version=None,
                                reasons=[why_nothing], metrics={}, training_spans=[],
                                finished_at=time.time(), seconds=round(time.time() - started, 1))
            record_no_new_data(store, decision)
            return decision
        rows = check_span(span, os.path.join(config.data_root, f"span-{span}"))
        if progress:
            progress(f"[   0.0s] span {span}: {rows} rows, starting the pipeline "
                     f"(log: {cycle_log_path(config, span)})")
        known_runs = {c.id for c in pipeline_runs(store, config.pipeline_name)}
        cycle = dataclasses.replace(config, span=span)
        handler = ProgressHandler(span, progress) if progress else None
        error = None
        with captured_logs(cycle_log_path(config, span), handler):
            try:
                tfx.orchestration.LocalDagRunner().run(create_pipeline(
                    cycle, metadata_connection_config=tfx.orchestration.metadata
                    .sqlite_metadata_connection_config(config.metadata_path)))
            except Exception as exc:  # noqa: BLE001 - reported as a FAILED decision below
                logging.exception("pipeline run failed")
                error = exc
        store = open_store(connection)
        new_runs = [c for c in pipeline_runs(store, config.pipeline_name)
                    if c.id not in known_runs]
        if not new_runs:
            raise RuntimeError(f"the pipeline recorded no run ({error or 'unknown reason'})")
        decision = decision_for_run(read_run(store, new_runs[-1], config.pipeline_name))
        if error is not None and decision.outcome != "failed":
            decision = dataclasses.replace(decision, outcome="failed", model_version=None)
        if error is not None:
            decision.reasons.append(f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                                    if str(error) else type(error).__name__)
        decision.seconds = round(time.time() - started, 1)
        return decision


def cycle_log_path(config: PipelineConfig, span: int) -> str:
    return os.path.join(config.home, "logs", f"span-{span}.log")
