"""Container steps that replace what open-source KFP does not implement (kubeflow/adapt.py).

    python -m ctpipe.kubeflow.steps resolve --kind ledger|stable|blessing|model ...
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
import sys
from typing import Any, Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.kubeflow.entrypoint import NONE_KEY, is_none_marker
from ctpipe.pipeline.home import cycles, outcomes
from ctpipe.pipeline.home import store as mlmd_store
from ctpipe.pipeline.home.kfp_runs import task_outputs
from ctpipe.pipeline.spans import SPAN_DIR

SQLITE_OVERRIDE = "CTPIPE_MLMD_SQLITE"


def connect(host: str, port: int):
    path = os.environ.get(SQLITE_OVERRIDE)
    if path:
        return mlmd_store.open_store(mlmd_store.sqlite_connection(path))
    return mlmd_store.open_store(mlmd_store.grpc_connection(host, port))


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
    given = [a for a in executor_input.get("inputs", {}).get("artifacts", {}).get(
        "input", {}).get("artifacts", []) if not is_none_marker(a)]
    if not given:  # the blessing resolver found nothing (its phantom carries the marker)
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


def _release_version(value: Any) -> str:
    """A pushed_version as KFP's metadata carries it (string, or a number as a double)."""
    return str(int(value)) if isinstance(value, (int, float)) else str(value)


def resolve_stable(store, pipeline: str, executor_input: Dict[str, Any]
                   ) -> Dict[str, List[mlmd_pb2.Artifact]]:
    """The production model (components/stable_model.py, on KFP): the manifest at this run's
    serving dir names stable's version; among this pipeline's Pusher outputs published as that
    version (newest first), the `model` input of the Pusher run that pushed it. Nothing when
    there is no manifest, no stable, or no such push in this pipeline."""
    from ctpipe.components.stable_model import MODEL_KEY, PUSHED_KEY, stable_version

    found: Dict[str, List[mlmd_pb2.Artifact]] = {MODEL_KEY: [], PUSHED_KEY: []}
    parameters = executor_input.get("inputs", {}).get("parameterValues", {})
    version = stable_version(parameters["manifest"], parameters["model_name"])
    if version is None:
        return found
    pushes = [(execution, artifact) for execution, artifact in
              task_outputs(store, pipeline, "Pusher", PUSHED_KEY)
              if _metadata(artifact).get("pushed") == 1.0
              and _release_version(_metadata(artifact).get("pushed_version")) == str(version)]
    for execution, pushed in reversed(pushes):
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == mlmd_pb2.Event.INPUT and e.path.steps
                  and e.path.steps[0].key == MODEL_KEY]
        models = [m for m in store.get_artifacts_by_id([e.artifact_id for e in events])
                  if m.state == mlmd_pb2.Artifact.LIVE]
        if models:
            models[0].custom_properties["release_version"].int_value = version
            return {MODEL_KEY: models[:1], PUSHED_KEY: [pushed]}
    return found


RESOLVERS = {"ledger": resolve_ledger, "stable": resolve_stable, "blessing": resolve_blessing,
             "model": resolve_model}


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
    declared = executor_input["outputs"]["artifacts"]
    resolved = RESOLVERS[args.kind](store, args.pipeline, executor_input)
    if not isinstance(resolved, dict):  # one output key
        [key] = list(declared)
        resolved = {key: resolved}
    output: Dict[str, Any] = {}
    for key, group in declared.items():
        title = group["artifacts"][0].get("type", {}).get("schemaTitle", "system.Artifact")
        # Nothing resolved: the launcher records the declared artifact anyway
        # (uploadOutputArtifacts), so say so in its metadata; consumers drop it
        # (ctpipe.kubeflow.entrypoint). One resolved artifact: the launcher keeps our uri and
        # metadata (mergeRuntimeArtifacts, first item only).
        listed = [_runtime_artifact(artifact, title) for artifact in resolved.get(key, [])[:1]] \
            or [{"metadata": {NONE_KEY: 1.0}, "type": {"schemaTitle": title}}]
        output[key] = {"artifacts": listed}
    write_executor_output(executor_input, {"artifacts": output})
    print(f"resolved {args.kind}: "
          f"{ {k: [a.uri for a in v] for k, v in resolved.items() if v} or 'nothing yet'}")


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
