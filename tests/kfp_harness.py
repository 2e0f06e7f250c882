"""Runs a compiled open-source-KFP spec by KFP's own rules - without a cluster.

Each behaviour is one small function below, named after what it mirrors and citing the
kubeflow/pipelines source it follows, pinned at backend 2.5.0 (tag 2.5.0); where the newest 2.x
(2.17.0) differs, the comment says so. Paths are relative to backend/src/v2/.

  argo_depends               compiler/argocompiler/dag.go  addImplicitDependencies, depends()
  driver_resolve_inputs      driver/driver.go  resolveInputs, resolveUpstreamArtifacts,
                             resolveUpstreamParameters (2.17.0: driver/resolve.go)
  driver_condition           driver/driver.go  Container (expr.Condition, NotTriggered)
  driver_provision_outputs   driver/driver.go  provisionOutputs
  driver_pod_resources       driver/driver.go  initPodSpecPatch/getPodResource, then the
                             Kubernetes API server's container validation
  launcher_prepare_folders   component/launcher_v2.go  prepareOutputFolders (as the image user)
  launcher_record_outputs    component/launcher_v2.go  uploadOutputArtifacts,
                             mergeRuntimeArtifacts, collectOutputParameters;
                             metadata/converter.go toMLMDArtifact
  mlmd_*                     metadata/client.go  GetPipeline, CreateExecution, PublishExecution,
                             RecordArtifact (root DAG execution from driver.go RootDAG)

The steps run as subprocesses of a venv holding the built wheel, as uid 10001 (the image's
user) when the harness runs as root, with the executor input substituted for `{{$}}`.
What stays out of reach: images and pulls, the API server, Argo retries and caching, RBAC, pod
scheduling on real nodes, and the metadata-grpc-service (the steps get SQLite through
CTPIPE_MLMD_SQLITE; the records are written in KFP's layout either way).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import time
import types
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from google.protobuf import json_format
from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.pipeline.home.store import open_store, sqlite_connection

BACKEND = "2.5.0"
COMPLETE, FAILED = "COMPLETE", "FAILED"
SKIPPED = "SKIPPED"    # trigger condition false: a CANCELED execution, no outputs
OMITTED = "OMITTED"    # an upstream task did not succeed: Argo never starts it, no execution
NOT_RUN = (SKIPPED, OMITTED)
IMAGE_UID = 10001      # kubeflow/Dockerfile USER
CONTAINER_EXECUTION, DAG_EXECUTION = "system.ContainerExecution", "system.DAGExecution"
_TITLE = re.compile(r"title:\s*(\S+)")


class DriverError(Exception):
    """The driver exits non-zero: the task fails, and no execution is created for it."""


@dataclasses.dataclass
class RunResult:
    run_id: str
    states: Dict[str, str]
    logs: Dict[str, str]
    executor_inputs: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> List[str]:
        return [task for task, state in self.states.items() if state == FAILED]


# -- Argo scheduling ---------------------------------------------------------------------------

def argo_depends(task: Dict[str, Any]) -> List[str]:
    """The tasks that must have Succeeded before this task's driver starts.
    argocompiler/dag.go: DAG() first calls addImplicitDependencies, which adds the producer
    of every taskOutputParameter/taskOutputArtifact input to dependentTasks (unchanged from
    2.0.0 to 2.17.0); depends() then writes `A.Succeeded && B.Succeeded`. A Skipped, Omitted or
    Failed upstream leaves the task Omitted: no driver runs, so ML Metadata has no execution."""
    needed = set(task.get("dependentTasks", []))
    inputs = task.get("inputs", {})
    for value in list(inputs.get("artifacts", {}).values()) + \
            list(inputs.get("parameters", {}).values()):
        for kind in ("taskOutputArtifact", "taskOutputParameter"):
            if kind in value:
                needed.add(value[kind]["producerTask"])
    return sorted(needed)


def argo_order(tasks: Dict[str, Any]) -> List[str]:
    remaining = {name: set(argo_depends(task)) for name, task in tasks.items()}
    unknown = {d for needs in remaining.values() for d in needs} - set(tasks)
    if unknown:  # addImplicitDependencies: "unknown producer task %q in DAG"
        raise ValueError(f"unknown producer task {sorted(unknown)} in DAG")
    ordered: List[str] = []
    while remaining:
        ready = sorted(name for name, needs in remaining.items() if needs <= set(ordered))
        if not ready:
            raise ValueError(f"cycle among tasks {sorted(remaining)}")
        ordered += ready
        for name in ready:
            del remaining[name]
    return ordered


# -- ML Metadata in KFP's layout ---------------------------------------------------------------

def mlmd_value_to_metadata(value: pb.Value) -> Any:
    """metadata/converter.go toRuntimeArtifact: double and int both become JSON numbers."""
    kind = value.WhichOneof("value")
    if kind in ("double_value", "int_value"):
        return float(getattr(value, kind))
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return json_format.MessageToDict(value.struct_value)
    return None


def metadata_to_mlmd(value: Any, target: pb.Value) -> None:
    """metadata/converter.go StructValueToMLMDValue: number -> double, bool -> int 0/1,
    string -> string, list/struct -> struct {"list": ...} / {"struct": ...}."""
    if isinstance(value, bool):
        target.int_value = int(value)
    elif isinstance(value, (int, float)):
        target.double_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    else:
        target.struct_value.update({"list" if isinstance(value, list) else "struct": value})


def type_title(artifact_type: Dict[str, Any]) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    match = _TITLE.search(artifact_type.get("instanceSchema", ""))
    return match.group(1) if match else "system.Artifact"


class Metadata:
    """The records KFP's driver and launcher write (metadata/client.go)."""

    def __init__(self, path: str):
        self.store = open_store(sqlite_connection(path))

    def _type(self, kind: str, name: str) -> int:
        getter, putter, proto = {
            "context": (self.store.get_context_type, self.store.put_context_type,
                        pb.ContextType),
            "execution": (self.store.get_execution_type, self.store.put_execution_type,
                          pb.ExecutionType),
            "artifact": (self.store.get_artifact_type, self.store.put_artifact_type,
                         pb.ArtifactType)}[kind]
        try:
            return getter(name).id
        except Exception:  # noqa: BLE001 - not registered yet
            return putter(proto(name=name))

    def get_pipeline(self, pipeline: str, run_id: str) -> List[pb.Context]:
        """GetPipeline: system.Pipeline (one per name) and system.PipelineRun (its child)."""
        context = self.store.get_context_by_type_and_name("system.Pipeline", pipeline)
        if context is None:
            [pid] = self.store.put_contexts([pb.Context(
                type_id=self._type("context", "system.Pipeline"), name=pipeline)])
            [context] = self.store.get_contexts_by_id([pid])
        [rid] = self.store.put_contexts([pb.Context(
            type_id=self._type("context", "system.PipelineRun"), name=run_id)])
        self.store.put_parent_contexts([pb.ParentContext(child_id=rid, parent_id=context.id)])
        return self.store.get_contexts_by_id([context.id, rid])

    def create_execution(self, contexts: List[pb.Context], task: Optional[str], state: int,
                         parent_dag: Optional[int], inputs: Dict[str, List[Dict[str, Any]]],
                         execution_type: str = CONTAINER_EXECUTION) -> pb.Execution:
        """CreateExecution: RUNNING, or CANCELED when not triggered; task_name/display_name
        and parent_dag_id; input artifacts as INPUT events keyed by input name. The root DAG
        (RootDAG) has neither task name nor parent."""
        execution = pb.Execution(type_id=self._type("execution", execution_type),
                                 last_known_state=state)
        if task is not None:
            execution.custom_properties["task_name"].string_value = task
            execution.custom_properties["display_name"].string_value = task
        if parent_dag is not None:
            execution.custom_properties["parent_dag_id"].int_value = parent_dag
        pairs = []
        for key, items in inputs.items():
            for item in items:
                event = pb.Event(type=pb.Event.INPUT)
                event.path.steps.add().key = key
                pairs.append((self.store.get_artifacts_by_id([int(item["name"])])[0], event))
        execution_id, _, _ = self.store.put_execution(execution, pairs, contexts)
        return self.store.get_executions_by_id([execution_id])[0]

    def publish_execution(self, execution: pb.Execution, contexts: List[pb.Context], state: int,
                          outputs: Dict[str, List[Dict[str, Any]]],
                          parameters: Dict[str, Any]) -> None:
        """PublishExecution + RecordArtifact: LIVE artifacts (metadata as custom properties,
        display_name defaulting to the output name), OUTPUT events, output parameters in the
        execution's `outputs` custom property."""
        execution.last_known_state = state
        if parameters:
            execution.custom_properties["outputs"].struct_value.update(parameters)
        pairs = []
        for key, items in outputs.items():
            for item in items:
                artifact = pb.Artifact(type_id=self._type("artifact", type_title(item["type"])),
                                       uri=item["uri"], state=pb.Artifact.LIVE)
                for name, value in (item.get("metadata") or {}).items():
                    metadata_to_mlmd(value, artifact.custom_properties[name])
                if "display_name" not in artifact.custom_properties:
                    artifact.custom_properties["display_name"].string_value = key
                event = pb.Event(type=pb.Event.OUTPUT)
                event.path.steps.add().key = key
                pairs.append((artifact, event))
        self.store.put_execution(execution, pairs, contexts)

    def executions_in_dag(self, run: pb.Context, dag_id: int) -> Dict[str, pb.Execution]:
        """GetExecutionsInDAG(filter=true): this DAG's executions by task name."""
        return {e.custom_properties["task_name"].string_value: e
                for e in self.store.get_executions_by_context(run.id)
                if e.custom_properties["parent_dag_id"].int_value == dag_id
                and "task_name" in e.custom_properties}

    def output_artifacts(self, execution_id: int) -> Dict[str, Dict[str, Any]]:
        """GetOutputArtifactsByExecutionId, as RuntimeArtifacts (toRuntimeArtifact)."""
        events = [e for e in self.store.get_events_by_execution_ids([execution_id])
                  if e.type == pb.Event.OUTPUT]
        found = {}
        for event in events:
            [artifact] = self.store.get_artifacts_by_id([event.artifact_id])
            [kind] = self.store.get_artifact_types_by_id([artifact.type_id])
            found[event.path.steps[0].key] = {
                "name": str(artifact.id), "uri": artifact.uri, "type": {"schemaTitle": kind.name},
                "metadata": {k: mlmd_value_to_metadata(v)
                             for k, v in artifact.custom_properties.items()}}
        return found


# -- driver ------------------------------------------------------------------------------------

def driver_resolve_inputs(task: Dict[str, Any], component: Dict[str, Any],
                          root_parameters: Dict[str, Any], metadata: Metadata, run: pb.Context,
                          dag_id: int) -> Dict[str, Any]:
    """resolveInputs. Parameters: runtime constants, the root DAG's inputs, or a producer's
    `outputs`. Artifacts: the producer's recorded output artifact, read back from ML Metadata.
    `isOptional` only matters for parameters; every artifact input is resolved, and a missing
    producer fails the driver: 2.17.0 returns "cannot find producer task"; 2.5.0 builds that
    error but drops it (`cfg.err(...)` without return) and then dereferences the nil producer,
    so the driver crashes. Either way the task fails and no execution is created."""
    tasks = metadata.executions_in_dag(run, dag_id)

    def producer(name: str) -> pb.Execution:
        if name not in tasks:
            raise DriverError(f"cannot find producer task {name!r}")
        return tasks[name]

    parameters: Dict[str, Any] = {}
    definitions = component.get("inputDefinitions", {}).get("parameters", {})
    for key, value in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" in value:
            parameters[key] = value["runtimeValue"]["constant"]
        elif "componentInputParameter" in value:
            parameters[key] = root_parameters.get(value["componentInputParameter"])
        elif "taskOutputParameter" in value:
            source = value["taskOutputParameter"]
            outputs = producer(source["producerTask"]).custom_properties["outputs"]
            produced = json_format.MessageToDict(outputs.struct_value)
            if source["outputParameterKey"] not in produced:
                raise DriverError(f"cannot find output parameter {source['outputParameterKey']!r}"
                                  f" of producer task {source['producerTask']!r}")
            parameters[key] = produced[source["outputParameterKey"]]
    for key, spec in definitions.items():  # handleParamTypeValidationAndConversion
        if key not in parameters and not spec.get("isOptional") and "defaultValue" not in spec:
            raise DriverError(f"neither value nor default value provided for non-optional "
                              f"parameter {key!r}")
    artifacts: Dict[str, List[Dict[str, Any]]] = {}
    for key, value in task.get("inputs", {}).get("artifacts", {}).items():
        source = value["taskOutputArtifact"]
        outputs = metadata.output_artifacts(producer(source["producerTask"]).id)
        if source["outputArtifactKey"] not in outputs:
            raise DriverError(f"cannot find output artifact key {source['outputArtifactKey']!r} "
                              f"in producer task {source['producerTask']!r}")
        artifacts[key] = [outputs[source["outputArtifactKey"]]]
    return {"parameterValues": parameters,
            "artifacts": {k: {"artifacts": v} for k, v in artifacts.items()}}


class _Inputs:
    """What a trigger condition sees: inputs.artifacts['k'].artifacts[0].metadata['m']."""

    def __init__(self, inputs: Dict[str, Any]):
        self.artifacts = {key: types.SimpleNamespace(artifacts=[
            types.SimpleNamespace(metadata=a.get("metadata", {})) for a in group["artifacts"]])
            for key, group in inputs.get("artifacts", {}).items()}
        self.parameter_values = inputs.get("parameterValues", {})


def evaluate_condition(condition: str, inputs: Dict[str, Any]) -> bool:
    """The subset of CEL that KFP trigger policies use here: comparisons, &&, ||, !."""
    expression = condition.replace("&&", " and ").replace("||", " or ")
    expression = re.sub(r"!(?!=)", " not ", expression)
    return bool(eval(expression, {"__builtins__": {}},  # noqa: S307 - our own compiled spec
                     {"inputs": _Inputs(inputs), "true": True, "false": False}))


def driver_condition(task: Dict[str, Any], inputs: Dict[str, Any]) -> bool:
    """Container(): expr.Condition over the resolved inputs. An evaluation error (a missing
    metadata key) returns before CreateExecution: driver failure, no execution. False: the
    execution is created CANCELED (ExecutionConfig.NotTriggered) and Argo skips the executor
    (`when: condition != false`, argocompiler/dag.go task())."""
    condition = task.get("triggerPolicy", {}).get("condition")
    if not condition:
        return True
    try:
        return evaluate_condition(condition, inputs)
    except (KeyError, IndexError) as error:
        raise DriverError(f"trigger condition failed: {error!r}")


def driver_provision_outputs(pipeline_root: str, task: str, component: Dict[str, Any],
                             pod: Path) -> Dict[str, Any]:
    """provisionOutputs: one artifact per declared output at
    <pipeline root>/<task>/<uuid>/<output> (metadata.GenerateOutputURI), output parameters in
    /tmp/kfp/outputs/<name>, the ExecutorOutput at /tmp/kfp_outputs/output_metadata.json
    (component.OutputMetadataFilepath) - the pod's /tmp is `pod/tmp` here."""
    salt = str(uuid.uuid4())
    definitions = component.get("outputDefinitions", {})
    return {
        "artifacts": {key: {"artifacts": [{
            "uri": f"{pipeline_root.rstrip('/')}/{task}/{salt}/{key}",
            "type": spec["artifactType"], "metadata": spec.get("metadata", {})}]}
            for key, spec in definitions.get("artifacts", {}).items()},
        "parameters": {key: {"outputFile": str(pod / "tmp" / "kfp" / "outputs" / key)}
                       for key in definitions.get("parameters", {})},
        "outputFile": str(pod / "tmp" / "kfp_outputs" / "output_metadata.json")}


# Kubernetes: k8s.io/apimachinery resource.ParseQuantity; pkg/apis/core/validation
# validateContainerResourceName / IsQualifiedName.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E"
                       r"|[eE][+-]?\d+)?$")
_QUALIFIED = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/([A-Za-z0-9][-A-Za-z0-9_.]*)?"
                        r"[A-Za-z0-9]$")


def driver_pod_resources(container: Dict[str, Any]) -> Dict[str, str]:
    """initPodSpecPatch: memory as "%vG", cpu as "%v", each through ParseQuantity (a bad one
    fails the driver); the accelerator's `type` becomes the limit's resource name verbatim,
    which the API server then validates like any container resource (a bad name: the pod is
    rejected and the task fails)."""
    resources = container.get("resources", {})
    limits: Dict[str, str] = {}
    for field, name, fmt in (("memoryLimit", "memory", "{:g}G"), ("cpuLimit", "cpu", "{:g}")):
        if resources.get(field):
            text = fmt.format(resources[field])
            if not _QUANTITY.match(text):
                raise DriverError(f"failed to init podSpecPatch: quantities must match the "
                                  f"regular expression: {text!r}")
            limits[name] = text
    accelerator = resources.get("accelerator") or {}
    if accelerator.get("type") and str(accelerator.get("count", "")) not in ("", "0"):
        name, count = accelerator["type"], str(accelerator["count"])
        if "/" not in name and name not in ("cpu", "memory", "ephemeral-storage") \
                and not name.startswith("hugepages-"):
            raise DriverError(f"Pod is invalid: spec.containers[0].resources.limits[{name}]: "
                              "Invalid value: must be a standard resource for containers")
        if "/" in name and not _QUALIFIED.match(name):
            raise DriverError(f"Pod is invalid: resources.limits[{name}]: Invalid value: "
                              "must be a qualified name")
        if not re.fullmatch(r"[1-9]\d*", count):
            raise DriverError(f"Pod is invalid: resources.limits[{name}]: must be an integer")
        limits[name] = count
    return limits


# -- launcher ----------------------------------------------------------------------------------

def launcher_prepare_folders(outputs: Dict[str, Any], user: Optional[int]) -> None:
    """prepareOutputFolders, run by the launcher inside the user's container, i.e. as the
    image's user: the output parameter folders and each artifact's parent folder."""
    folders = [os.path.dirname(p["outputFile"]) for p in outputs["parameters"].values()]
    folders += [os.path.dirname(outputs["outputFile"])]
    folders += [os.path.dirname(a["uri"]) for group in outputs["artifacts"].values()
                for a in group["artifacts"]]
    # Not KFP: the pipeline root stands in for object storage (gs://, s3://, minio:// - the
    # only roots KFP 2.x takes), where writing <uri>/file needs no folder. A local folder
    # does, so the harness makes the artifact folder too.
    folders += [a["uri"] for group in outputs["artifacts"].values() for a in group["artifacts"]]
    subprocess.run(["mkdir", "-p", *folders], check=True, user=user)


def launcher_record_outputs(outputs: Dict[str, Any], executor_output: Dict[str, Any]
                            ) -> Dict[str, List[Dict[str, Any]]]:
    """uploadOutputArtifacts: EVERY declared output artifact is recorded, whether the
    ExecutorOutput lists it or not (a "phantom": the provisioned uri, the declared metadata).
    When listed, only the first item is merged in (mergeRuntimeArtifacts): its non-empty uri
    replaces ours, its metadata fields are added. Unchanged at 2.17.0."""
    recorded = {}
    for key, group in outputs["artifacts"].items():
        artifact = dict(group["artifacts"][0], metadata=dict(
            group["artifacts"][0].get("metadata") or {}))
        listed = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
        if listed:
            if listed[0].get("uri"):
                artifact["uri"] = listed[0]["uri"]
            artifact["metadata"].update(listed[0].get("metadata") or {})
        recorded[key] = [artifact]
    return recorded


def launcher_output_parameters(outputs: Dict[str, Any], executor_output: Dict[str, Any]
                               ) -> Dict[str, Any]:
    """collectOutputParameters: ExecutorOutput parameterValues first, else the output file;
    a declared parameter with neither fails the task."""
    values = dict(executor_output.get("parameterValues", {}))
    for key, spec in outputs["parameters"].items():
        if key not in values:
            if not os.path.exists(spec["outputFile"]):
                raise DriverError(f"failed to read output parameter {key!r}")
            values[key] = Path(spec["outputFile"]).read_text()
    return values


# -- the run -----------------------------------------------------------------------------------

class KfpHarness:
    def __init__(self, spec_path: Path, root: Path, python: str, mounts: Dict[str, str],
                 env: Optional[Dict[str, str]] = None, timeout: int = 900,
                 run_as: Optional[int] = -1):
        documents = [d for d in yaml.safe_load_all(Path(spec_path).read_text()) if d]
        self.spec = documents[0]
        self.platform = documents[1] if len(documents) > 1 else {}
        self.root, self.python, self.mounts = Path(root), python, mounts
        self.env, self.timeout = env or {}, timeout
        # uid 10001 as in the image, where the harness may switch users (it runs as root) and
        # that user can start the interpreter (a venv whose base Python sits under a private
        # /root cannot be): `user_note` says which it was.
        self.user = (IMAGE_UID if os.geteuid() == 0 else None) if run_as == -1 else run_as
        self.user_note = f"steps run as uid {self.user}" if self.user is not None else \
            f"steps run as uid {os.geteuid()} (not root: cannot switch)"
        if self.user is not None and not self._can_run_as(self.user):
            self.user_note = (f"steps run as uid {os.geteuid()}: uid {self.user} cannot start "
                              f"{python}")
            self.user = None
        self.pipeline_root = str(self.root / "pipeline_root")
        self.temp_dir = self.root / "pod-tmp"  # the steps' TMPDIR, to see what they leave
        for folder in (self.root, Path(self.pipeline_root), self.temp_dir, self.root / "work",
                       self.root / "home", *map(Path, mounts.values())):
            folder.mkdir(parents=True, exist_ok=True)
        self.mlmd_path = str(self.root / "mlmd.sqlite")
        self.metadata = Metadata(self.mlmd_path)
        self.store = self.metadata.store
        self._give_to_user(self.root, *map(Path, mounts.values()))
        self.runs = 0

    def _can_run_as(self, uid: int) -> bool:
        try:
            return subprocess.run([self.python, "-c", "import ctpipe"], user=uid, cwd="/",
                                  capture_output=True, timeout=120).returncode == 0
        except OSError:
            return False

    def _give_to_user(self, *paths: Path) -> None:
        if self.user is not None:
            for path in paths:
                subprocess.run(["chown", "-R", f"{self.user}:{self.user}", str(path)],
                               check=True)

    def _map_mounts(self, component: Dict[str, Any], text: str, into_pod: bool) -> str:
        """The platform spec's PVC mounts, as local folders (mountPath <-> local folder)."""
        executors = self.platform.get("platforms", {}).get("kubernetes", {}).get(
            "deploymentSpec", {}).get("executors", {})
        for mount in executors.get(component["executorLabel"], {}).get("pvcMount", []):
            pod = mount["mountPath"].rstrip("/") + "/"
            local = self.mounts[mount["constant"]].rstrip("/") + "/"
            text = text.replace(pod, local) if into_pod else text.replace(local, pod)
        return text

    def run(self, parameters: Optional[Dict[str, Any]] = None) -> RunResult:
        self.runs += 1
        run_id = f"run-{self.runs}-{int(time.time())}"
        contexts = self.metadata.get_pipeline(self.spec["pipelineInfo"]["name"], run_id)
        root_parameters = {name: spec.get("defaultValue") for name, spec in
                           self.spec["root"].get("inputDefinitions", {}).get("parameters",
                                                                             {}).items()}
        root_parameters.update(parameters or {})
        # RootDAG: a DAGExecution with the run's inputs, no task name, no parent.
        root = self.metadata.create_execution(contexts, None, pb.Execution.RUNNING, None, {},
                                              execution_type=DAG_EXECUTION)
        tasks = self.spec["root"]["dag"]["tasks"]
        result = RunResult(run_id=run_id, states={}, logs={})
        for name in argo_order(tasks):
            upstream = argo_depends(tasks[name])
            if result.failed or any(result.states[u] != COMPLETE for u in upstream):
                # depends(): `X.Succeeded`; Argo's DAG stops scheduling after a failure.
                result.states[name] = OMITTED
                continue
            try:
                result.states[name] = self._run_task(name, tasks[name], root_parameters,
                                                     contexts, root.id, result)
            except DriverError as error:
                result.logs[name] = f"driver: {error}"
                result.states[name] = FAILED
        root.last_known_state = pb.Execution.FAILED if result.failed else pb.Execution.COMPLETE
        self.store.put_execution(root, [], contexts)
        return result

    def _run_task(self, name: str, task: Dict[str, Any], root_parameters: Dict[str, Any],
                  contexts: List[pb.Context], dag_id: int, result: RunResult) -> str:
        component = self.spec["components"][task["componentRef"]["name"]]
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        if "container" not in executor:  # argocompiler/dag.go task()
            raise DriverError(f"{sorted(executor)} executors not implemented")
        inputs = driver_resolve_inputs(task, component, root_parameters, self.metadata,
                                       contexts[1], dag_id)
        input_items = {k: v["artifacts"] for k, v in inputs["artifacts"].items()}
        if not driver_condition(task, inputs):
            self.metadata.create_execution(contexts, name, pb.Execution.CANCELED, dag_id,
                                           input_items)
            return SKIPPED
        execution = self.metadata.create_execution(contexts, name, pb.Execution.RUNNING,
                                                   dag_id, input_items)
        # After CreateExecution, as in Container(): a refused pod leaves it RUNNING.
        driver_pod_resources(executor["container"])
        pod = self.root / "pods" / f"{result.run_id}-{name}"
        outputs = driver_provision_outputs(self.pipeline_root, name, component, pod)
        executor_input = {"inputs": inputs, "outputs": outputs}
        result.executor_inputs[name] = executor_input
        pod.mkdir(parents=True)
        self._give_to_user(pod)
        launcher_prepare_folders(outputs, self.user)
        serialized = self._map_mounts(component, json.dumps(executor_input), into_pod=True)
        container = executor["container"]
        command = [self.python if part == "python" else part for part in container["command"]]
        args = [part.replace("{{$}}", serialized) for part in container.get("args", [])]
        env = dict(os.environ, CTPIPE_MLMD_SQLITE=self.mlmd_path, TF_CPP_MIN_LOG_LEVEL="3",
                   TMPDIR=str(self.temp_dir), HOME=str(self.root / "home"), **self.env)
        env.pop("PYTHONPATH", None)
        # PYTHONFAULTHANDLER: a step stopped at the deadline first prints every thread's stack
        # (and so do the processes it started, which inherit it: Beam's SDK workers).
        env["PYTHONFAULTHANDLER"] = "1"
        step = subprocess.Popen(command + args, cwd=self.root / "work", env=env,
                                user=self.user, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True)
        try:
            stdout, stderr = step.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            # A hung step fails with what it printed and where each thread stood (SIGABRT:
            # faulthandler's dump), so the caller sees where it stopped; the deadline stands in
            # for a pod's activeDeadlineSeconds (KFP sets none by default: there, a hung pod
            # waits forever). The whole process group: a child still holding the pipes (a
            # multi_processing SDK worker) would otherwise keep the last read open forever.
            stdout, stderr = _stop_group(step)
            result.logs[name] = f"harness: stopped after {self.timeout} s\n" + \
                (stdout + stderr)[-12000:]
            self.metadata.publish_execution(execution, contexts, pb.Execution.FAILED, {}, {})
            return FAILED
        result.logs[name] = (stdout + stderr)[-4000:]
        if step.returncode != 0:
            self.metadata.publish_execution(execution, contexts, pb.Execution.FAILED, {}, {})
            return FAILED
        output_file = Path(outputs["outputFile"])
        executor_output = json.loads(self._map_mounts(
            component, output_file.read_text(), into_pod=False)) if output_file.exists() else {}
        try:
            parameters = launcher_output_parameters(outputs, executor_output)
        except DriverError as error:
            result.logs[name] += f"\nlauncher: {error}"
            self.metadata.publish_execution(execution, contexts, pb.Execution.FAILED, {}, {})
            return FAILED
        self.metadata.publish_execution(execution, contexts, pb.Execution.COMPLETE,
                                        launcher_record_outputs(outputs, executor_output),
                                        parameters)
        return COMPLETE


def _stop_group(step: subprocess.Popen) -> Tuple[str, str]:
    """SIGABRT to the step (faulthandler prints its threads), then, once it has ended or after
    5 s, to the rest of its process group (the children's dumps follow its own instead of
    interleaving with it), then SIGKILL to what is left; what the step printed, read for at
    most 20 s after each. start_new_session: the group's id is the step's pid."""
    step.send_signal(signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        step.wait(5)
    for signum in (signal.SIGABRT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # the whole group has already ended
            os.killpg(step.pid, signum)
        try:
            return step.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    return "", "harness: the step's output stayed open after SIGKILL\n"


def run_executions(store, run_id: str) -> List[Tuple[str, str, int]]:
    """(execution type, task name, state) of one run, as KFP left them."""
    run = store.get_context_by_type_and_name("system.PipelineRun", run_id)
    kinds = {t.id: t.name for t in store.get_execution_types()}
    return sorted((kinds[e.type_id], e.custom_properties["task_name"].string_value,
                   e.last_known_state) for e in store.get_executions_by_context(run.id))
