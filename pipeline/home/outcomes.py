"""Decisions, read back from ML Metadata: what each cycle decided, why, and with which metrics.

Why MLMD and not a side file: the artifacts the components wrote (the gate's ledger properties,
the Evaluator's blessing and evaluation, the Pusher's pushed version) *are* the decision; a JSON
file written beside them could disagree. The local runner computes each decision once with
`decision_for_run` and records it with its cycle (pipeline/home/cycles.py), so `ctpipe run` and
`ctpipe status` print the same thing; on Kubeflow, `history` derives every run's decision from
its artifacts the same way.
"""
from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.components.basics import ExitCode


class Outcome(str, enum.Enum):
    """What a cycle decided. The first four are final: the span is done with. `failed` leaves
    the span pending (retried); `no_new_data` concerns no span."""

    PUSHED = "pushed"
    DATA_BLOCKED = "data_blocked"
    NOT_BLESSED = "not_blessed"
    GAVE_UP = "gave_up"
    NO_NEW_DATA = "no_new_data"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def final(self) -> bool:
        return self in FINAL_OUTCOMES

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


PUSHED, DATA_BLOCKED, NOT_BLESSED, GAVE_UP, NO_NEW_DATA, FAILED = (
    Outcome.PUSHED, Outcome.DATA_BLOCKED, Outcome.NOT_BLESSED, Outcome.GAVE_UP,
    Outcome.NO_NEW_DATA, Outcome.FAILED)
FINAL_OUTCOMES = (PUSHED, DATA_BLOCKED, NOT_BLESSED, GAVE_UP)
# The process exit code of `ctpipe run` for each outcome (README: "Exit codes").
EXIT_CODES = {PUSHED: ExitCode.OK, FAILED: ExitCode.INTERNAL, DATA_BLOCKED: ExitCode.DATA_BLOCKED,
              NOT_BLESSED: ExitCode.NOT_BLESSED, NO_NEW_DATA: ExitCode.NO_NEW_DATA,
              GAVE_UP: ExitCode.GAVE_UP}
NO_NEW_DATA_TYPE = "ctpipe.NoNewData"  # how homes made before pipeline/home/cycles.py recorded it
# Resolver nodes "fail" on an empty store (first cycle); that is not a failed cycle.
NODES_ALLOWED_TO_FAIL = ("PreviousGateState", "StableModel", "StableModel-model-resolver",
                         "StableModel-pushed_model-resolver", "LatestBlessedModel",
                         "LatestBlessedModel-model-blessing-resolver",
                         "LatestBlessedModel-model-resolver")


@dataclasses.dataclass
class Decision:
    outcome: Outcome
    span: Optional[int]
    model_version: Optional[int]
    reasons: List[str]
    metrics: Dict[str, Dict[str, float]]
    training_spans: List[int]
    run_id: Optional[str] = None
    finished_at: Optional[float] = None
    seconds: Optional[float] = None
    # The gate's numbers: production model on this span vs expected (labels), warm start.
    checks: Dict[str, Any] = dataclasses.field(default_factory=dict)
    attempt: Optional[int] = None
    # The stable version when the cycle decided (the Evaluator's baseline), and every live
    # version's AUC on this span before training on it ({version: {auc, rows, stderr}}).
    baseline_version: Optional[int] = None
    fresh_span_auc: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Decision":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


# Two ML Metadata layouts: TFX's own orchestrators (local) and the KFP v2 backend (cluster).
LAYOUTS = (("pipeline", "pipeline_run"), ("system.Pipeline", "system.PipelineRun"))
KFP_TASK_NAME = "task_name"
# Marks the run context an operator's ledger change is recorded in (home/kfp_runs.py): not a cycle.
OPERATOR_RUN = "ctpipe_operator_action"


def _prop(artifact: mlmd_pb2.Artifact, name: str) -> Any:
    for properties in (artifact.custom_properties, artifact.properties):
        if name in properties:
            value = properties[name]
            kind = value.WhichOneof("value")
            if kind == "double_value" and float(value.double_value).is_integer():
                return int(value.double_value)  # KFP stores artifact metadata numbers as doubles
            return getattr(value, kind) if kind else None
    return None


@dataclasses.dataclass
class RunRecord:
    """Everything one pipeline run left in MLMD, keyed by node id and output key."""

    run_id: str
    states: Dict[str, int]
    outputs: Dict[str, Dict[str, mlmd_pb2.Artifact]]
    started_ms: int
    finished_ms: int


def node_ids(store: mlmd.MetadataStore, executions: List[mlmd_pb2.Execution],
             pipeline_name: str) -> Dict[int, str]:
    """{execution id: node id} in either layout (TFX's node contexts, KFP's task names)."""
    node_of = {}
    for execution in executions:
        if KFP_TASK_NAME in execution.custom_properties:  # KFP v2: the task name is the node id
            node_of[execution.id] = execution.custom_properties[KFP_TASK_NAME].string_value
            continue
        for context in store.get_contexts_by_execution(execution.id):
            if context.type == "node":
                node_of[execution.id] = context.name[len(pipeline_name) + 1:]
    return node_of


# KFP records the run itself as a root DAG execution in the run's context (driver.go
# RootDAG, 2.5.0); it fails whenever a task fails, so it is not a component of the run.
KFP_DAG_EXECUTION = "system.DAGExecution"


def component_executions(store: mlmd.MetadataStore,
                         run_context: mlmd_pb2.Context) -> List[mlmd_pb2.Execution]:
    return [e for e in store.get_executions_by_context(run_context.id)
            if e.type != KFP_DAG_EXECUTION]


def component_seconds(store: mlmd.MetadataStore, run_context: mlmd_pb2.Context,
                      pipeline_name: str) -> Dict[str, float]:
    """Seconds per component of one pipeline run, from its executions' ML Metadata times
    (a node with several executions counts their sum)."""
    executions = component_executions(store, run_context)
    node_of = node_ids(store, executions, pipeline_name)
    seconds: Dict[str, float] = {}
    for execution in executions:
        name = node_of.get(execution.id, str(execution.id))
        seconds[name] = seconds.get(name, 0.0) + (execution.last_update_time_since_epoch
                                                  - execution.create_time_since_epoch) / 1000.0
    return seconds


def read_run(store: mlmd.MetadataStore, run_context: mlmd_pb2.Context,
             pipeline_name: str) -> RunRecord:
    executions = component_executions(store, run_context)
    node_of = node_ids(store, executions, pipeline_name)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    output_events = [e for e in events if e.type == mlmd_pb2.Event.OUTPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id(
        sorted({e.artifact_id for e in output_events}))}
    outputs: Dict[str, Dict[str, mlmd_pb2.Artifact]] = {}
    for event in output_events:
        key = event.path.steps[0].key if event.path.steps else ""
        outputs.setdefault(node_of.get(event.execution_id, "?"), {})[key] = \
            artifacts[event.artifact_id]
    times = [e.create_time_since_epoch for e in executions] + \
            [e.last_update_time_since_epoch for e in executions]
    return RunRecord(run_id=run_context.name,
                     states={node_of.get(e.id, "?"): e.last_known_state for e in executions},
                     outputs=outputs, started_ms=min(times, default=0),
                     finished_ms=max(times, default=0))


IDENTICAL_PROPERTY = "identical_to_warm_start"  # set by components/atomic_pusher.py


def decision_for_run(record: RunRecord, baseline_version: Optional[int] = None) -> Decision:
    """Turn one run's artifacts into the decision a person (or a machine) reads.
    `baseline_version`: stable when the cycle ran (the Evaluator's baseline)."""
    from ctpipe.components.evaluation import (  # TFMA: heavy import
        failed_thresholds,
        overall_metrics,
    )

    examples = record.outputs.get("CsvExampleGen", {}).get("examples")
    span = _prop(examples, "span") if examples is not None else None
    # Kubeflow runs start with SpanSelect (kubeflow/adapt.py): it names the span, or says that
    # nothing is pending and every other step was skipped.
    selection = record.outputs.get("SpanSelect", {}).get("selection")
    if span is None and selection is not None and (_prop(selection, "span") or -1) >= 0:
        span = _prop(selection, "span")
    base = dict(span=span, run_id=record.run_id, baseline_version=baseline_version,
                finished_at=record.finished_ms / 1000.0,
                seconds=round((record.finished_ms - record.started_ms) / 1000.0, 1))
    if selection is not None and not _prop(selection, "pending"):
        return Decision(NO_NEW_DATA, model_version=None, metrics={}, training_spans=[],
                        reasons=[str(_prop(selection, "reason") or "nothing pending")], **base)
    failed = [node for node, state in record.states.items()
              if state == mlmd_pb2.Execution.FAILED and node not in NODES_ALLOWED_TO_FAIL]
    if failed:
        return Decision(FAILED, model_version=None, metrics={}, training_spans=[],
                        reasons=[f"component {', '.join(sorted(failed))} failed"], **base)
    state = record.outputs.get("DataGate", {}).get("state")
    if state is None:
        return Decision(FAILED, model_version=None, metrics={}, training_spans=[],
                        reasons=["the data gate did not run"], **base)
    training_spans = json.loads(_prop(state, "training_spans") or "[]")
    base["checks"] = json.loads(_prop(state, "checks") or "{}")
    base["fresh_span_auc"] = json.loads(_prop(state, "fresh_span_auc") or "{}") or \
        base["checks"].get("fresh_span_auc", {})
    if not _prop(state, "accepted"):
        reasons = json.loads(_prop(state, "reasons") or "[]")
        return Decision(DATA_BLOCKED, model_version=None, metrics={}, training_spans=[],
                        reasons=[f"span {span} quarantined: {_blocked_summary(reasons)}"]
                        + reasons, **base)
    evaluation = record.outputs.get("Evaluator", {}).get("evaluation")
    blessing = record.outputs.get("Evaluator", {}).get("blessing")
    if evaluation is None or blessing is None:
        return Decision(FAILED, model_version=None, metrics={}, training_spans=training_spans,
                        reasons=["the span was accepted but no evaluation was recorded"], **base)
    metrics = overall_metrics(evaluation.uri)
    if not _prop(blessing, "blessed"):
        return Decision(NOT_BLESSED, model_version=None, metrics=metrics,
                        training_spans=training_spans,
                        reasons=["candidate not blessed"] + failed_thresholds(evaluation.uri),
                        **base)
    pushed = record.outputs.get("Pusher", {}).get("pushed_model")
    if pushed is not None and not _prop(pushed, "pushed") and _prop(pushed, IDENTICAL_PROPERTY):
        # No checkpoint beat the warm-start weights: a new version would be stable again.
        parent = f"stable v{baseline_version}" if baseline_version is not None \
            else "its warm-start parent"
        return Decision(NOT_BLESSED, model_version=None, metrics=metrics,
                        training_spans=training_spans,
                        reasons=[f"candidate identical to {parent}: training did not beat "
                                 "the warm-start weights, nothing pushed"], **base)
    if pushed is None or not _prop(pushed, "pushed"):
        return Decision(FAILED, model_version=None, metrics=metrics,
                        training_spans=training_spans,
                        reasons=["blessed, but the Pusher did not publish the model"], **base)
    version = int(_prop(pushed, "pushed_version"))
    return Decision(PUSHED, model_version=version, metrics=metrics, training_spans=training_spans,
                    reasons=[_blessed_reason(metrics)], **base)


def _blocked_summary(reasons: List[str]) -> str:
    if any("labels disagree" in reason for reason in reasons):
        return "its labels disagree with the production model"
    if all(": drift vs span" in reason for reason in reasons):
        return "it drifted from the accepted data"
    return "it fails the data contract"


def _blessed_reason(metrics: Dict[str, Dict[str, float]]) -> str:
    candidate = metrics.get("candidate", {}).get("auc")
    baseline = metrics.get("baseline", {}).get("auc")
    if baseline is None:
        return f"blessed: first model, AUC {candidate} meets the value threshold"
    change = candidate - baseline if candidate is not None else 0.0
    within = ", within the allowed drop (max_auc_drop)" if change < 0 else ""
    return (f"blessed: AUC {candidate} vs stable {baseline} ({change:+.4f}{within}) "
            "on this span's eval split")


def pipeline_runs(store: mlmd.MetadataStore, pipeline_name: str) -> List[mlmd_pb2.Context]:
    """Run contexts of this pipeline, oldest first, in either layout."""
    runs: List[mlmd_pb2.Context] = []
    for pipeline_type, run_type in LAYOUTS:
        try:
            pipeline = store.get_context_by_type_and_name(pipeline_type, pipeline_name)
        except mlmd.errors.NotFoundError:
            pipeline = None
        if pipeline is not None:
            runs += [c for c in store.get_children_contexts_by_context(pipeline.id)
                     if c.type == run_type]
    return sorted(runs, key=lambda c: c.id)


def history(store: mlmd.MetadataStore, pipeline_name: str) -> List[Decision]:
    """Every cycle, oldest first."""
    decisions = [decision_for_run(read_run(store, run, pipeline_name))
                 for run in pipeline_runs(store, pipeline_name)
                 if OPERATOR_RUN not in run.custom_properties]
    try:
        for execution in store.get_executions_by_type(NO_NEW_DATA_TYPE):
            decisions.append(Decision(**json.loads(
                execution.custom_properties["decision"].string_value)))
    except mlmd.errors.NotFoundError:
        pass
    return sorted(decisions, key=lambda d: d.finished_at or 0.0)


def last_pushed_version(decisions: List[Decision]) -> Optional[int]:
    """The newest pushed version - not necessarily what serves (the release manifest's
    stable label says that)."""
    pushed = [d.model_version for d in decisions if d.outcome == PUSHED]
    return pushed[-1] if pushed else None

