"""Container steps that replace what open-source KFP does not implement (kubeflow/adapt.py).

    python -m ctpipe.kubeflow.steps resolve --kind ledger|blessing|model ...
    python -m ctpipe.kubeflow.steps span-select --max-attempts 3 ...
    (both: --pipeline NAME --mlmd-host H --mlmd-port P --executor-input '{{$}}')

Both read KFP's ML Metadata (metadata-grpc-service) in KFP's layout - system.Pipeline and
system.PipelineRun contexts, the task name on each execution, artifact metadata as custom
properties with numbers as doubles - scoped to *this* pipeline's runs, never store-wide. They
write the ExecutorOutput JSON the KFP launcher registers (resolved artifacts keep their uri).

CTPIPE_MLMD_SQLITE, when set, names a SQLite ML Metadata file to use instead of the gRPC
service: the test harness (tests/kfp_harness.py) runs these steps that way.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.pipeline import cycles, outcomes

SQLITE_OVERRIDE = "CTPIPE_MLMD_SQLITE"
SPAN_DIR = re.compile(r"^span-(\d+)/?$")


def connect(host: str, port: int):
    path = os.environ.get(SQLITE_OVERRIDE)
    if path:
        return outcomes.open_store(outcomes.sqlite_connection(path))
    return outcomes.open_store(outcomes.grpc_connection(host, port))


def _metadata(artifact: mlmd_pb2.Artifact) -> Dict[str, Any]:
    metadata: Dict[str, Any] = {}
    for key, value in artifact.custom_properties.items():
        kind = value.WhichOneof("value")
        if kind in ("int_value", "double_value"):
            metadata[key] = float(getattr(value, kind))
        elif kind == "string_value":
            metadata[key] = value.string_value
        elif kind == "struct_value":
            from google.protobuf import json_format

            metadata[key] = json_format.MessageToDict(value.struct_value)
    return metadata


def task_outputs(store, pipeline: str, task: str, key: str
                 ) -> List[Tuple[mlmd_pb2.Execution, mlmd_pb2.Artifact]]:
    """(execution, artifact) for every LIVE output `key` of `task` in this pipeline's runs,
    oldest first. Only completed executions count."""
    found = []
    for run in outcomes.pipeline_runs(store, pipeline):
        executions = [e for e in store.get_executions_by_context(run.id)
                      if e.custom_properties[outcomes.KFP_TASK_NAME].string_value == task
                      and e.last_known_state == mlmd_pb2.Execution.COMPLETE]
        if not executions:
            continue
        by_id = {e.id: e for e in executions}
        events = [e for e in store.get_events_by_execution_ids(list(by_id))
                  if e.type == mlmd_pb2.Event.OUTPUT and e.path.steps
                  and e.path.steps[0].key == key]
        artifacts = {a.id: a for a in store.get_artifacts_by_id(
            [e.artifact_id for e in events])} if events else {}
        for event in events:
            artifact = artifacts[event.artifact_id]
            if artifact.state == mlmd_pb2.Artifact.LIVE:
                found.append((by_id[event.execution_id], artifact))
    return sorted(found, key=lambda pair: pair[1].id)


def resolve_ledger(store, pipeline: str, _: Dict[str, Any]) -> List[mlmd_pb2.Artifact]:
    states = task_outputs(store, pipeline, "DataGate", "state")
    return [states[-1][1]] if states else []


def resolve_blessing(store, pipeline: str, _: Dict[str, Any]) -> List[mlmd_pb2.Artifact]:
    blessings = [artifact for _, artifact in task_outputs(store, pipeline, "Evaluator",
                                                          "blessing")
                 if _metadata(artifact).get("blessed") == 1.0]
    return blessings[-1:]


def resolve_model(store, pipeline: str, executor_input: Dict[str, Any]
                  ) -> List[mlmd_pb2.Artifact]:
    """The model the resolved blessing blessed: the `model` input of its Evaluator run."""
    given = executor_input.get("inputs", {}).get("artifacts", {}).get("input", {}).get(
        "artifacts", [])
    if not given:
        return []
    for execution, blessing in task_outputs(store, pipeline, "Evaluator", "blessing"):
        if blessing.uri != given[0]["uri"]:
            continue
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == mlmd_pb2.Event.INPUT and e.path.steps
                  and e.path.steps[0].key == "model"]
        if events:
            return store.get_artifacts_by_id([events[0].artifact_id])
    return []


RESOLVERS = {"ledger": resolve_ledger, "blessing": resolve_blessing, "model": resolve_model}


def _runtime_artifact(artifact: mlmd_pb2.Artifact, type_title: str) -> Dict[str, Any]:
    return {"name": str(artifact.id), "uri": artifact.uri, "metadata": _metadata(artifact),
            "type": {"schemaTitle": type_title}}


def write_executor_output(executor_input: Dict[str, Any], output: Dict[str, Any]) -> None:
    import tensorflow as tf

    path = executor_input["outputs"]["outputFile"]
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as handle:
        json.dump(output, handle)


def run_resolve(args: argparse.Namespace, executor_input: Dict[str, Any]) -> None:
    store = connect(args.mlmd_host, args.mlmd_port)
    [key] = list(executor_input["outputs"]["artifacts"])
    declared = executor_input["outputs"]["artifacts"][key]["artifacts"][0].get("type", {})
    resolved = RESOLVERS[args.kind](store, args.pipeline, executor_input)
    title = declared.get("schemaTitle", "system.Artifact")
    write_executor_output(executor_input, {"artifacts": {key: {"artifacts": [
        _runtime_artifact(artifact, title) for artifact in resolved]}}})
    print(f"resolved {args.kind}: {[a.uri for a in resolved] or 'nothing yet'}")


# -- span selection ----------------------------------------------------------------------------


def spans_under(data_root: str) -> List[int]:
    """span-<N>/ folders holding at least one file, on any filesystem TF reads (gs://, s3://)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(data_root):
        return []
    spans = []
    for name in tf.io.gfile.listdir(data_root):
        match = SPAN_DIR.match(name)
        if match and tf.io.gfile.listdir(os.path.join(data_root, name.rstrip("/"))):
            spans.append(int(match.group(1)))
    return sorted(spans)


def cycle_records_from_runs(store, pipeline: str) -> List[cycles.CycleRecord]:
    """The runner's bookkeeping rebuilt from KFP runs: one record per run that worked on a span."""
    records = []
    for index, decision in enumerate(outcomes.history(store, pipeline)):
        if decision.span is None or decision.outcome == outcomes.NO_NEW_DATA:
            continue
        state = cycles.FAILED_STATE if decision.outcome == outcomes.FAILED else cycles.COMPLETE
        records.append(cycles.CycleRecord(
            id=index, pipeline=pipeline, span=decision.span, attempt=0, state=state,
            started_at=decision.finished_at or 0.0, runs_before=0, decision=decision))
    return records


def select_span(available: List[int], records: List[cycles.CycleRecord], max_attempts: int
                ) -> Dict[str, Any]:
    """The selection: the oldest pending span that has attempts left (pure)."""
    plan = cycles.plan_spans(available, records)
    gave_up = [s for s in plan.pending if plan.attempts.get(s, 0) >= max_attempts]
    candidates = [s for s in plan.pending if s not in gave_up]
    if not candidates:
        newest = max(available) if available else -1
        reason = plan.describe_nothing(newest) if available else "no spans under the data root"
        return {"pending": 0.0, "span": -1.0, "attempt": 0.0, "reason": reason,
                "gave_up": json.dumps(gave_up)}
    span = candidates[0]
    return {"pending": 1.0, "span": float(span),
            "attempt": float(plan.attempts.get(span, 0) + 1),
            "reason": f"oldest pending span {span}", "gave_up": json.dumps(gave_up)}


def range_config_json(span: int) -> str:
    from tfx.proto import range_config_pb2
    from tfx.utils import proto_utils

    return proto_utils.proto_to_json(range_config_pb2.RangeConfig(
        static_range=range_config_pb2.StaticRange(start_span_number=span,
                                                  end_span_number=span)))


def run_span_select(args: argparse.Namespace, executor_input: Dict[str, Any]) -> None:
    import tensorflow as tf

    store = connect(args.mlmd_host, args.mlmd_port)
    data_root = executor_input["inputs"]["parameterValues"]["data_root"]
    selection = select_span(spans_under(data_root), cycle_records_from_runs(store, args.pipeline),
                            args.max_attempts)
    span = int(selection["span"])
    range_config = range_config_json(span) if selection["pending"] else ""
    output = executor_input["outputs"]
    artifact = output["artifacts"]["selection"]["artifacts"][0]
    tf.io.gfile.makedirs(artifact["uri"])
    with tf.io.gfile.GFile(os.path.join(artifact["uri"], "selection.json"), "w") as handle:
        json.dump(selection, handle)
    parameter_file = output.get("parameters", {}).get("range_config", {}).get("outputFile")
    if parameter_file:
        tf.io.gfile.makedirs(os.path.dirname(parameter_file))
        with tf.io.gfile.GFile(parameter_file, "w") as handle:
            handle.write(range_config)
    write_executor_output(executor_input, {
        "artifacts": {"selection": {"artifacts": [dict(artifact, metadata=selection)]}},
        "parameterValues": {"range_config": range_config}})
    print(f"span-select: {selection['reason']}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctpipe.kubeflow.steps")
    parser.add_argument("step", choices=("resolve", "span-select"))
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--mlmd-host", required=True)
    parser.add_argument("--mlmd-port", type=int, required=True)
    parser.add_argument("--kind", choices=sorted(RESOLVERS))
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--executor-input", required=True, help="KFP's {{$}} (JSON)")
    args = parser.parse_args(argv)
    executor_input = json.loads(args.executor_input)
    if args.step == "resolve":
        if not args.kind:
            parser.error("resolve needs --kind")
        run_resolve(args, executor_input)
    else:
        run_span_select(args, executor_input)
    return 0


if __name__ == "__main__":
    sys.exit(main())
