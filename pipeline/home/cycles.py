"""Span bookkeeping in ML Metadata: cycle records, operator actions, and which spans are pending.

Why records of our own beside TFX's: a pipeline run only exists once TFX starts it, and a cycle
killed with -9 or failing before the gate leaves nothing that says which span it was working on.
So the runner writes a `ctpipe.Cycle` execution *before* it starts the pipeline (state RUNNING,
the span, the attempt) and completes it with the decision afterwards. A RUNNING record found
while holding the home's lock belongs to a dead runner: it is settled from what its pipeline run
left (a finished run keeps its decision; anything else is a failed attempt).

Rules (README "Span bookkeeping"):
  - a span is done once a cycle recorded a final decision (pushed, data_blocked, not_blessed,
    gave_up); failed and killed cycles leave it pending;
  - on a fresh home the first span is the newest (or `from_span`); from then on every span at or
    above the first processed one without a final decision is pending, processed oldest first;
  - after `max_attempts` failed attempts the span gets the final decision gave_up, and is
    quarantined with the last error as its reason;
  - `quarantine release` of a span that never got past the pipeline reopens it (pending again,
    attempts counted afresh).

Operator actions (`ctpipe.OperatorAction`) are executions with the action, span, reason, time and
user, so `status` and the history show who did what and why.
"""
from __future__ import annotations

import dataclasses
import getpass
import json
import time
from typing import Any, Dict, Iterable, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.pipeline.home.outcomes import FINAL_OUTCOMES, Decision, Outcome

CYCLE_TYPE = "ctpipe.Cycle"
ACTION_TYPE = "ctpipe.OperatorAction"
RUNNING, COMPLETE, FAILED_STATE = (mlmd_pb2.Execution.RUNNING, mlmd_pb2.Execution.COMPLETE,
                                   mlmd_pb2.Execution.FAILED)


@dataclasses.dataclass
class CycleRecord:
    id: int
    pipeline: str
    span: Optional[int]
    attempt: int
    state: int
    started_at: float
    runs_before: int
    decision: Optional[Decision]

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def final(self) -> bool:
        return self.decision is not None and self.decision.outcome in FINAL_OUTCOMES

    @property
    def failed(self) -> bool:
        return self.decision is not None and self.decision.outcome == Outcome.FAILED


@dataclasses.dataclass
class OperatorAction:
    id: int
    action: str
    span: Optional[int]
    reason: str
    at: float
    user: str
    details: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# -- ML Metadata I/O ---------------------------------------------------------------------------


def _type_id(store: mlmd.MetadataStore, name: str) -> int:
    try:
        return store.get_execution_type(name).id
    except mlmd.errors.NotFoundError:
        return store.put_execution_type(mlmd_pb2.ExecutionType(name=name))


def _executions(store: mlmd.MetadataStore, type_name: str, pipeline: str):
    try:
        executions = store.get_executions_by_type(type_name)
    except mlmd.errors.NotFoundError:
        return []
    return sorted((e for e in executions
                   if e.custom_properties["pipeline"].string_value == pipeline),
                  key=lambda e: e.id)


def _set(execution: mlmd_pb2.Execution, values: Dict[str, Any]) -> None:
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or isinstance(value, int):
            execution.custom_properties[key].int_value = int(value)
        elif isinstance(value, float):
            execution.custom_properties[key].double_value = value
        else:
            execution.custom_properties[key].string_value = str(value)


def _get(execution: mlmd_pb2.Execution, key: str, default: Any = None) -> Any:
    if key not in execution.custom_properties:
        return default
    value = execution.custom_properties[key]
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else default


def start_cycle(store: mlmd.MetadataStore, pipeline: str, span: int, attempt: int,
                runs_before: int) -> int:
    execution = mlmd_pb2.Execution(type_id=_type_id(store, CYCLE_TYPE),
                                   last_known_state=RUNNING)
    _set(execution, {"pipeline": pipeline, "span": span, "attempt": attempt,
                     "started_at": round(time.time(), 3), "runs_before": runs_before})
    return store.put_executions([execution])[0]


def finish_cycle(store: mlmd.MetadataStore, cycle_id: int, decision: Decision) -> None:
    [execution] = store.get_executions_by_id([cycle_id])
    execution.last_known_state = FAILED_STATE if decision.outcome == Outcome.FAILED else COMPLETE
    _set(execution, {"outcome": decision.outcome.value,
                     "decision": json.dumps(decision.to_dict())})
    store.put_executions([execution])


def record_decision(store: mlmd.MetadataStore, pipeline: str, decision: Decision,
                    attempt: int = 0) -> int:
    """A cycle that runs no pipeline (nothing new, giving up on a span): started and finished."""
    cycle_id = start_cycle(store, pipeline, decision.span if decision.span is not None else -1,
                           attempt, runs_before=0)
    finish_cycle(store, cycle_id, decision)
    return cycle_id


def cycle_records(store: mlmd.MetadataStore, pipeline: str) -> List[CycleRecord]:
    records = []
    for execution in _executions(store, CYCLE_TYPE, pipeline):
        decision_json = _get(execution, "decision")
        span = _get(execution, "span", -1)
        records.append(CycleRecord(
            id=execution.id, pipeline=pipeline, span=None if span < 0 else span,
            attempt=_get(execution, "attempt", 0), state=execution.last_known_state,
            started_at=_get(execution, "started_at", 0.0),
            runs_before=_get(execution, "runs_before", 0),
            decision=Decision.from_dict(json.loads(decision_json)) if decision_json else None))
    return records


def record_action(store: mlmd.MetadataStore, pipeline: str, action: str, span: Optional[int],
                  reason: str, **details: Any) -> OperatorAction:
    execution = mlmd_pb2.Execution(type_id=_type_id(store, ACTION_TYPE),
                                   last_known_state=COMPLETE)
    at = round(time.time(), 3)  # ML Metadata keeps ~6 decimals of a double
    user = _user()
    _set(execution, {"pipeline": pipeline, "action": action, "span": span, "reason": reason,
                     "at": at, "user": user, "details": json.dumps(details)})
    [action_id] = store.put_executions([execution])
    return OperatorAction(id=action_id, action=action, span=span, reason=reason, at=at,
                          user=user, details=details)


def operator_actions(store: mlmd.MetadataStore, pipeline: str) -> List[OperatorAction]:
    return [OperatorAction(id=e.id, action=_get(e, "action", ""), span=_get(e, "span"),
                           reason=_get(e, "reason", ""), at=_get(e, "at", 0.0),
                           user=_get(e, "user", ""),
                           details=json.loads(_get(e, "details", "{}")))
            for e in _executions(store, ACTION_TYPE, pipeline)]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


# -- The plan: which spans are pending ---------------------------------------------------------


@dataclasses.dataclass
class SpanPlan:
    first_span: Optional[int]
    pending: List[int]
    decided: Dict[int, Decision]
    attempts: Dict[int, int]
    last_error: Dict[int, str]

    def describe_nothing(self, newest: int) -> str:
        if self.first_span is not None and newest < self.first_span:
            return (f"the newest span {newest} is below the first processed span "
                    f"{self.first_span}; waiting for span {self.first_span}")
        return (f"every span up to {newest} has a final decision; "
                f"waiting for span {newest + 1}")


def reopened_at(actions: Iterable[OperatorAction]) -> Dict[int, float]:
    """When each span was last reopened by an operator (final decisions before it no longer
    count)."""
    reopened: Dict[int, float] = {}
    for action in actions:
        if action.details.get("reopened") and action.span is not None:
            reopened[action.span] = action.at
    return reopened


def plan_spans(available: Iterable[int], records: List[CycleRecord],
               actions: Iterable[OperatorAction] = (),
               from_span: Optional[int] = None) -> SpanPlan:
    """Pure: pending spans (oldest first), final decisions and failed attempts per span."""
    available = sorted(set(available))
    reopened = reopened_at(actions)
    decided: Dict[int, Decision] = {}
    attempts: Dict[int, int] = {}
    last_error: Dict[int, str] = {}
    span_records = [r for r in records if r.span is not None]
    for record in span_records:
        if record.started_at < reopened.get(record.span, 0.0):
            continue
        if record.decision is not None and record.decision.checks.get("abandoned"):
            continue  # stopped on request (SIGTERM): not the span's fault
        if record.final:
            decided[record.span] = record.decision
        elif record.failed or record.running:
            attempts[record.span] = attempts.get(record.span, 0) + 1
            if record.decision and record.decision.reasons:
                last_error[record.span] = record.decision.reasons[-1]
    if span_records:
        first = min(r.span for r in span_records)
    elif available:
        first = from_span if from_span is not None else available[-1]
    else:
        first = None
    pending = [span for span in available
               if first is not None and span >= first and span not in decided]
    return SpanPlan(first_span=first, pending=pending, decided=decided, attempts=attempts,
                    last_error=last_error)


def history(store: mlmd.MetadataStore, pipeline: str) -> List[Decision]:
    """Every cycle, oldest first: the runner's cycle records where it kept them (local homes),
    else the decisions derived from the pipeline runs (Kubeflow's metadata store)."""
    from ctpipe.pipeline.home.outcomes import history as run_history

    records = cycle_records(store, pipeline)
    if not records:
        return run_history(store, pipeline)
    return [record.decision for record in records if record.decision is not None]


def in_progress(store: mlmd.MetadataStore, pipeline: str) -> List[CycleRecord]:
    return [record for record in cycle_records(store, pipeline) if record.running]
