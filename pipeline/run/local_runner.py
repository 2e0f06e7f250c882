"""Continuous-training cycles on this machine: LocalDagRunner, Beam DirectRunner, SQLite MLMD.

The runner picks the span (the oldest pending one, pipeline/home/cycles.py), records the attempt
before it starts, runs `create_pipeline(config)` (the wiring lives in pipeline/definition.py
alone), applies the release step (fresh-label promotion or retirement of the canary, then the
new version on trial: pipeline/ops/fresh_labels.py), records the decision, then applies the
retention policy. Two locks on the home:

  runner lock  held by `ctpipe run` / `ctpipe watch` for their whole life: one runner per home;
               a second one exits at once (HomeBusy, exit 7);
  write lock   held while a cycle runs, and by operator commands while they change the ledger,
               so an operator's change never interleaves with a gate's.

Temp files of a cycle go to <home>/tmp/<cycle> and are removed after it (and at the next start,
if the cycle was killed), so nothing accumulates in the system temp dir.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Iterator, List, Optional

from ctpipe.components.basics import first_line
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home, cycles
from ctpipe.pipeline.home.outcomes import (
    FAILED,
    GAVE_UP,
    NO_NEW_DATA,
    Decision,
    decision_for_run,
    pipeline_runs,
    read_run,
)
from ctpipe.pipeline.home.release import release_state
from ctpipe.pipeline.home.store import open_store, sqlite_connection
from ctpipe.pipeline.spans import check_span, discover_spans

Progress = Callable[[str], None]
_COMPONENT_EVENT = re.compile(r"^Component (\S+) is (running|finished)\.$")
KILLED_REASON = "the cycle was killed or its runner died before it recorded a decision"


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


@contextlib.contextmanager
def cycle_tempdir(root: str, name: str) -> Iterator[str]:
    """Point tempfile and child processes at <root>/<name> (root: the home's tmp folder);
    remove the root afterwards."""
    shutil.rmtree(root, ignore_errors=True)  # what a killed cycle left
    path = os.path.join(root, name)
    os.makedirs(path)
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = path, path
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(root, ignore_errors=True)


def cycle_log_path(config: PipelineConfig, span: int) -> str:
    return Home.of(config).log_path(span)


def _last_run_id(store, pipeline: str) -> int:
    runs = pipeline_runs(store, pipeline)
    return runs[-1].id if runs else 0


# -- settling what earlier (dead) runners left -------------------------------------------------


def _recover(store, config: PipelineConfig, record: cycles.CycleRecord) -> Decision:
    """The decision of a cycle whose runner died: its pipeline run's, if that run finished
    with a final decision (the runner died just before recording it); else a failed attempt."""
    runs = [run for run in pipeline_runs(store, config.pipeline_name)
            if run.id > record.runs_before]
    found = decision_for_run(read_run(store, runs[0], config.pipeline_name)) if runs else None
    if found is not None and found.outcome.final and found.span == record.span:
        found.reasons.append("recovered: the runner stopped before recording this decision")
        found.attempt = record.attempt
        return found
    return Decision(FAILED, span=record.span, model_version=None, reasons=[KILLED_REASON],
                    metrics={}, training_spans=[], finished_at=time.time(),
                    attempt=record.attempt, run_id=runs[0].name if runs else None)


def settle(store, config: PipelineConfig) -> List[Decision]:
    """Close stale RUNNING cycles, remove half-copied pushes, then give up on spans that used
    all their attempts.
    Call with the write lock held. Returns the gave_up decisions made."""
    from ctpipe.components.atomic_pusher import remove_stale_incoming

    records = cycles.cycle_records(store, config.pipeline_name)
    for record in records:
        if record.running:
            cycles.finish_cycle(store, record.id, _recover(store, config, record))
    remove_stale_incoming(Home.of(config).model_dir)  # a push killed mid-copy (never served)
    return give_up_exhausted(store, config)


def give_up_exhausted(store, config: PipelineConfig) -> List[Decision]:
    from ctpipe.pipeline.home import ledger_store

    plan = cycles.plan_spans([], cycles.cycle_records(store, config.pipeline_name),
                             cycles.operator_actions(store, config.pipeline_name))
    decisions = []
    for span, attempts in sorted(plan.attempts.items()):
        if span in plan.decided or attempts < config.max_attempts:
            continue
        error = plan.last_error.get(span, "unknown error")
        reason = f"gave up after {attempts} failed attempts; last error: {error}"
        decision = Decision(GAVE_UP, span=span, model_version=None,
                            reasons=[f"span {span} quarantined: {reason}"], metrics={},
                            training_spans=[], finished_at=time.time(), attempt=attempts)
        action = cycles.record_action(store, config.pipeline_name, "quarantine", span,
                                      reason, automatic=True)
        ledger, _ = ledger_store.latest_ledger(store, config.pipeline_name)
        ledger_store.publish_ledger(store, config.pipeline_name, Home.of(config).pipeline_root,
                                    ledger.quarantine(span, [reason], by="attempts"), action.id)
        cycles.record_decision(store, config.pipeline_name, decision, attempts)
        decisions.append(decision)
    return decisions


# -- one cycle ---------------------------------------------------------------------------------


def _nothing_new(span: Optional[int], why: str, started: float) -> Decision:
    return Decision(NO_NEW_DATA, span=span, model_version=None, reasons=[why], metrics={},
                    training_spans=[], finished_at=time.time(),
                    seconds=round(time.time() - started, 1))


def choose_span(config: PipelineConfig, store) -> tuple:
    """(span to process or None, its attempt number, why there is nothing to do)."""
    available = discover_spans(config.data_root)
    plan = cycles.plan_spans(available, cycles.cycle_records(store, config.pipeline_name),
                             cycles.operator_actions(store, config.pipeline_name),
                             from_span=config.from_span)
    if config.span is not None:
        if config.span not in available:
            raise BadInput(f"span {config.span} not found under {config.data_root}")
        if config.span in plan.decided:
            return None, 0, (f"span {config.span} already has a final decision "
                             f"({plan.decided[config.span].outcome})")
        target = config.span
    elif plan.pending:
        target = plan.pending[0]
    else:
        return None, 0, plan.describe_nothing(max(available))
    return target, plan.attempts.get(target, 0) + 1, ""


def run_cycle(config: PipelineConfig, progress: Optional[Progress] = None,
              record_nothing_new: bool = True) -> Decision:
    """One cycle on the oldest pending span (or config.span), holding the runner lock."""
    config = config.with_absolute_paths()
    with Home.of(config).runner_lock():
        return next_cycle(config, progress, record_nothing_new)


def run_all(config: PipelineConfig, progress: Optional[Progress] = None,
            on_decision: Optional[Callable[[Decision], None]] = None) -> List[Decision]:
    """Every pending span, oldest first, one cycle each; stops at a failed cycle (its span
    stays pending, so later spans never overtake it)."""
    config = config.with_absolute_paths()
    decisions: List[Decision] = []
    with Home.of(config).runner_lock():
        while True:
            decision = next_cycle(config, progress, record_nothing_new=not decisions)
            if decision.outcome == NO_NEW_DATA and decisions:
                break
            decisions.append(decision)
            if on_decision:
                on_decision(decision)
            if decision.outcome in (NO_NEW_DATA, FAILED) or config.span is not None:
                break
    return decisions


def next_cycle(config: PipelineConfig, progress: Optional[Progress] = None,
               record_nothing_new: bool = True) -> Decision:
    """Caller holds the runner lock. Settles leftovers, then runs the next pending span."""
    started = time.time()
    home = Home.of(config)
    connection = sqlite_connection(home.metadata_path)
    with home.write_lock(wait_seconds=60.0):
        store = open_store(connection)
        gave_up = settle(store, config)
        if gave_up:
            return gave_up[0]
        span, attempt, why_nothing = choose_span(config, store)
        if span is None:
            decision = _nothing_new(config.span, why_nothing, started)
            if record_nothing_new:
                cycles.record_decision(store, config.pipeline_name, decision)
            return decision
        cycle_id = cycles.start_cycle(store, config.pipeline_name, span, attempt,
                                      _last_run_id(store, config.pipeline_name))
        try:
            decision = _run_pipeline(config, store, connection, span, attempt, cycle_id,
                                     started, progress)
        except BadInput as error:
            cycles.finish_cycle(store, cycle_id, Decision(
                FAILED, span=span, model_version=None, reasons=[str(error)], metrics={},
                training_spans=[], finished_at=time.time(), attempt=attempt,
                seconds=round(time.time() - started, 1)))
            give_up_exhausted(store, config)
            raise
        except KeyboardInterrupt:
            cycles.finish_cycle(store, cycle_id, Decision(
                FAILED, span=span, model_version=None,
                reasons=["abandoned: the runner was asked to stop"], metrics={},
                training_spans=[], finished_at=time.time(), attempt=attempt,
                checks={"abandoned": True}))
            raise
        store = open_store(connection)
        cycles.finish_cycle(store, cycle_id, decision)
        if decision.outcome == FAILED:
            gave_up = give_up_exhausted(store, config)
            if gave_up:
                gave_up[0].reasons.insert(0, decision.reasons[-1])
                return gave_up[0]
        else:
            from ctpipe.pipeline.run.retention import apply_retention

            apply_retention(store, config)
        return decision


def _settle_release(config: PipelineConfig, decision: Decision, run) -> Decision:
    """Fresh-label promotion / retirement, then the new version on trial (pipeline/ops/
    fresh_labels.py). A failure there is reported on the decision, never loses it."""
    from ctpipe.pipeline.ops.fresh_labels import settle_release

    examples = run.outputs.get("CsvExampleGen", {}).get("examples")
    try:
        return settle_release(config, decision, examples.uri if examples is not None else None)
    except Exception as exc:  # noqa: BLE001 - the span's decision is recorded regardless
        logging.exception("release step failed")
        decision.reasons.append(f"release step failed: {first_line(exc, with_type=True)}")
        return decision


def _run_pipeline(config: PipelineConfig, store, connection, span: int, attempt: int,
                  cycle_id: int, started: float, progress: Optional[Progress]) -> Decision:
    from tfx import v1 as tfx

    from ctpipe.pipeline.definition import create_pipeline

    rows = check_span(span, os.path.join(config.data_root, f"span-{span}"))
    # Beam's portable runner (Flink): a job server that does not answer is one line now, not a
    # 60 s wait and a stack deep inside the first Beam component. No-op for other runners.
    from ctpipe.pipeline.run.flink_local import FlinkError, require_job_server
    try:
        require_job_server(config.beam_pipeline_args)
    except FlinkError as error:
        return Decision(FAILED, span=span, model_version=None, reasons=[str(error)], metrics={},
                        training_spans=[], attempt=attempt, finished_at=time.time(),
                        seconds=round(time.time() - started, 1))
    if progress:
        retry = f", attempt {attempt}" if attempt > 1 else ""
        progress(f"[   0.0s] span {span}: {rows} rows{retry}, starting the pipeline "
                 f"(log: {cycle_log_path(config, span)})")
    known_runs = {c.id for c in pipeline_runs(store, config.pipeline_name)}
    # Stable now is the Evaluator's baseline for this cycle (pipeline/definition.py StableModel).
    baseline_version = release_state(config).stable
    cycle = dataclasses.replace(config, span=span)
    handler = ProgressHandler(span, progress) if progress else None
    error = None
    home = Home.of(config)
    with cycle_tempdir(home.tmp_dir, f"cycle-{cycle_id}"), \
            captured_logs(cycle_log_path(config, span), handler):
        try:
            tfx.orchestration.LocalDagRunner().run(create_pipeline(
                cycle, metadata_connection_config=tfx.orchestration.metadata
                .sqlite_metadata_connection_config(home.metadata_path)))
        except Exception as exc:  # noqa: BLE001 - reported as a FAILED decision below
            logging.exception("pipeline run failed")
            error = exc
        store = open_store(connection)
        new_runs = [c for c in pipeline_runs(store, config.pipeline_name)
                    if c.id not in known_runs]
        run = read_run(store, new_runs[-1], config.pipeline_name) if new_runs else None
        if run is not None:
            decision = decision_for_run(run, baseline_version)
            if error is None:  # scores models: TF's temp files stay in the cycle's folder
                decision = _settle_release(config, decision, run)
    if run is None:
        decision = Decision(FAILED, span=span, model_version=None, metrics={},
                            training_spans=[], reasons=["the pipeline recorded no run"],
                            baseline_version=baseline_version)
    decision.span = span
    if error is not None and decision.outcome != FAILED:
        decision = dataclasses.replace(decision, outcome=FAILED, model_version=None)
    if error is not None:
        decision.reasons.append(first_line(error, with_type=True))
    decision.attempt = attempt
    decision.finished_at = time.time()
    decision.seconds = round(time.time() - started, 1)
    return decision
