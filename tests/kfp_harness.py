"""Runs a compiled open-source-KFP spec the way KFP's driver and launcher do - without a cluster.

What it does, per run (one call of `run`):
  - tasks in topological order (dependentTasks and data dependencies);
  - inputs resolved as the driver does: constants, the run's parameters (root defaults), other
    tasks' output parameters and artifacts; a task whose producer was skipped is skipped;
  - the trigger policy (CEL over the task's inputs) evaluated on artifact metadata, numbers as
    doubles; a missing metadata key fails the task, as on KFP;
  - the ExecutorInput JSON substituted for `{{$}}`; output artifacts under a local pipeline
    root, their folders prepared as the launcher does; PVC mounts of the platform spec mapped
    to local folders;
  - each container's command run in a subprocess with the given interpreter (a venv holding
    the built wheel), in a folder outside the checkout;
  - ML Metadata recorded in KFP's layout (system.Pipeline / system.PipelineRun contexts,
    system.ContainerExecution with task_name, artifacts typed by schema title, metadata as
    custom properties; a resolver's uri override is kept).

What it cannot show: images, pulling, RBAC, pod scheduling (GPUs, resources), Argo's own
retries and caching, KFP's API server. README "Run on Kubeflow" says so too.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.pipeline.outcomes import open_store, sqlite_connection

SKIPPED, COMPLETE, FAILED = "SKIPPED", "COMPLETE", "FAILED"
_TITLE = re.compile(r"title:\s*(\S+)")


@dataclasses.dataclass
class RunResult:
    run_id: str
    states: Dict[str, str]
    logs: Dict[str, str]

    @property
    def failed(self) -> List[str]:
        return [task for task, state in self.states.items() if state == FAILED]


def _type_title(artifact_type: Dict[str, Any]) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    match = _TITLE.search(artifact_type.get("instanceSchema", ""))
    return match.group(1) if match else "system.Artifact"


def _order(tasks: Dict[str, Any]) -> List[str]:
    def upstream(task: Dict[str, Any]) -> set:
        found = set(task.get("dependentTasks", []))
        inputs = task.get("inputs", {})
        for value in list(inputs.get("artifacts", {}).values()) + \
                list(inputs.get("parameters", {}).values()):
            for key in ("taskOutputArtifact", "taskOutputParameter"):
                if key in value:
                    found.add(value[key]["producerTask"])
        return found
    remaining = {name: upstream(task) for name, task in tasks.items()}
    ordered: List[str] = []
    while remaining:
        ready = sorted(name for name, needs in remaining.items() if needs <= set(ordered))
        if not ready:
            raise ValueError(f"cycle among tasks {sorted(remaining)}")
        ordered += ready
        for name in ready:
            del remaining[name]
    return ordered


class _Inputs:
    """What a trigger condition sees: inputs.artifacts['k'].artifacts[0].metadata['m']."""

    def __init__(self, artifacts: Dict[str, List[Dict[str, Any]]], parameters: Dict[str, Any]):
        self.artifacts = {key: types.SimpleNamespace(artifacts=[
            types.SimpleNamespace(metadata=a.get("metadata", {})) for a in items])
            for key, items in artifacts.items()}
        self.parameter_values = parameters


def evaluate_condition(condition: str, artifacts: Dict[str, List[Dict[str, Any]]],
                       parameters: Dict[str, Any]) -> bool:
    """The subset of CEL that KFP trigger policies use here: comparisons, &&, ||, !."""
    expression = condition.replace("&&", " and ").replace("||", " or ")
    expression = re.sub(r"!(?!=)", " not ", expression)
    return bool(eval(expression, {"__builtins__": {}},  # noqa: S307 - our own compiled spec
                     {"inputs": _Inputs(artifacts, parameters), "true": True, "false": False}))


class KfpHarness:
    def __init__(self, spec_path: Path, root: Path, python: str, mounts: Dict[str, str],
                 env: Optional[Dict[str, str]] = None, timeout: int = 900):
        documents = [d for d in yaml.safe_load_all(Path(spec_path).read_text()) if d]
        self.spec = documents[0]
        self.platform = documents[1] if len(documents) > 1 else {}
        self.root, self.python, self.mounts = Path(root), python, mounts
        self.mlmd_path = str(self.root / "mlmd.sqlite")
        self.env, self.timeout = env or {}, timeout
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "work").mkdir(exist_ok=True)
        self.temp_dir = self.root / "pod-tmp"  # the steps' temp dir, to see what they leave
        self.temp_dir.mkdir(exist_ok=True)
        self.store = open_store(sqlite_connection(self.mlmd_path))
        self.runs = 0

    # -- ML Metadata in KFP's layout ---------------------------------------------------------
    def _context_type(self, name: str) -> int:
        try:
            return self.store.get_context_type(name).id
        except Exception:  # noqa: BLE001 - not registered yet
            return self.store.put_context_type(pb.ContextType(name=name))

    def _artifact_type(self, title: str) -> int:
        try:
            return self.store.get_artifact_type(title).id
        except Exception:  # noqa: BLE001
            return self.store.put_artifact_type(pb.ArtifactType(name=title))

    def _contexts(self, run_id: str) -> List[pb.Context]:
        name = self.spec["pipelineInfo"]["name"]
        pipeline = self.store.get_context_by_type_and_name("system.Pipeline", name)
        if pipeline is None:
            [pid] = self.store.put_contexts([pb.Context(
                type_id=self._context_type("system.Pipeline"), name=name)])
            [pipeline] = self.store.get_contexts_by_id([pid])
        [rid] = self.store.put_contexts([pb.Context(
            type_id=self._context_type("system.PipelineRun"), name=run_id)])
        self.store.put_parent_contexts([pb.ParentContext(child_id=rid, parent_id=pipeline.id)])
        return self.store.get_contexts_by_id([pipeline.id, rid])

    def _record(self, task: str, state: int, inputs: Dict[str, List[Dict[str, Any]]],
                outputs: Dict[str, List[Dict[str, Any]]], contexts: List[pb.Context]) -> None:
        try:
            type_id = self.store.get_execution_type("system.ContainerExecution").id
        except Exception:  # noqa: BLE001
            type_id = self.store.put_execution_type(
                pb.ExecutionType(name="system.ContainerExecution"))
        execution = pb.Execution(type_id=type_id, last_known_state=state)
        execution.custom_properties["task_name"].string_value = task
        pairs = []
        for direction, groups in ((pb.Event.INPUT, inputs), (pb.Event.OUTPUT, outputs)):
            for key, items in groups.items():
                for item in items:
                    artifact = pb.Artifact(type_id=self._artifact_type(item["title"]),
                                           uri=item["uri"], state=pb.Artifact.LIVE)
                    if item.get("id"):
                        artifact.id = item["id"]
                    for name, value in item.get("metadata", {}).items():
                        if isinstance(value, bool) or isinstance(value, (int, float)):
                            artifact.custom_properties[name].double_value = float(value)
                        elif isinstance(value, str):
                            artifact.custom_properties[name].string_value = value
                        else:
                            artifact.custom_properties[name].string_value = json.dumps(value)
                    event = pb.Event(type=direction)
                    event.path.steps.add().key = key
                    pairs.append((artifact, event, item))
        _, ids, _ = self.store.put_execution(execution, [(a, e) for a, e, _ in pairs], contexts)
        for (_, _, item), artifact_id in zip(pairs, ids):
            item["id"] = artifact_id

    # -- one run -----------------------------------------------------------------------------
    def _map_mounts(self, task_component: Dict[str, Any], text: str, into_pod: bool) -> str:
        """The platform spec's PVC mounts, as local folders: paths in what the pod reads are
        mapped to them (into_pod), paths in what it wrote mapped back to the pod's view."""
        label = task_component["executorLabel"]
        executors = self.platform.get("platforms", {}).get("kubernetes", {}).get(
            "deploymentSpec", {}).get("executors", {})
        for mount in executors.get(label, {}).get("pvcMount", []):
            pod = mount["mountPath"].rstrip("/") + "/"
            local = self.mounts[mount["constant"]].rstrip("/") + "/"
            text = text.replace(pod, local) if into_pod else text.replace(local, pod)
        return text

    def run(self, parameters: Optional[Dict[str, Any]] = None) -> RunResult:
        self.runs += 1
        run_id = f"run-{self.runs}-{int(time.time())}"
        contexts = self._contexts(run_id)
        root_parameters = {name: spec.get("defaultValue") for name, spec in
                           self.spec["root"].get("inputDefinitions", {}).get("parameters",
                                                                             {}).items()}
        root_parameters.update(parameters or {})
        tasks = self.spec["root"]["dag"]["tasks"]
        produced: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
        produced_parameters: Dict[str, Dict[str, Any]] = {}
        result = RunResult(run_id=run_id, states={}, logs={})
        for name in _order(tasks):
            if result.failed:
                result.states[name] = SKIPPED  # KFP stops scheduling after a failure
                continue
            result.states[name] = self._run_task(name, tasks[name], root_parameters, produced,
                                                 produced_parameters, contexts, run_id, result)
        return result

    def _run_task(self, name, task, root_parameters, produced, produced_parameters, contexts,
                  run_id, result) -> str:
        component = self.spec["components"][task["componentRef"]["name"]]
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        if "container" not in executor:
            raise AssertionError(f"{name}: only container executors run on open-source KFP, "
                                 f"got {sorted(executor)}")
        parameters: Dict[str, Any] = {}
        for key, value in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in value:
                parameters[key] = value["runtimeValue"]["constant"]
            elif "componentInputParameter" in value:
                parameters[key] = root_parameters[value["componentInputParameter"]]
            else:
                source = value["taskOutputParameter"]
                if result.states.get(source["producerTask"]) != COMPLETE:
                    return SKIPPED
                parameters[key] = produced_parameters[source["producerTask"]][
                    source["outputParameterKey"]]
        artifacts: Dict[str, List[Dict[str, Any]]] = {}
        for key, value in task.get("inputs", {}).get("artifacts", {}).items():
            source = value["taskOutputArtifact"]
            if result.states.get(source["producerTask"]) != COMPLETE:
                return SKIPPED
            artifacts[key] = produced[source["producerTask"]][source["outputArtifactKey"]]
        condition = task.get("triggerPolicy", {}).get("condition")
        if condition:
            try:
                if not evaluate_condition(condition, artifacts, parameters):
                    return SKIPPED
            except (KeyError, IndexError) as error:
                result.logs[name] = f"trigger condition failed: {error!r}"
                self._record(name, pb.Execution.FAILED, artifacts, {}, contexts)
                return FAILED
        task_dir = self.root / run_id / name
        outputs = {key: [{"title": _type_title(spec["artifactType"]),
                          "uri": str(task_dir / key), "metadata": {},
                          "type": spec["artifactType"]}]
                   for key, spec in component.get("outputDefinitions", {}).get(
                       "artifacts", {}).items()}
        parameter_files = {key: str(task_dir / "parameters" / key) for key in component.get(
            "outputDefinitions", {}).get("parameters", {})}
        output_file = task_dir / "executor_output.json"
        for items in outputs.values():  # the launcher prepares local output folders
            Path(items[0]["uri"]).mkdir(parents=True, exist_ok=True)
        executor_input = {
            "inputs": {"parameterValues": parameters,
                       "artifacts": {key: {"artifacts": [
                           {"name": str(item.get("id", "")), "uri": item["uri"],
                            "metadata": item.get("metadata", {}), "type": item["type"]}
                           for item in items]} for key, items in artifacts.items()}},
            "outputs": {"artifacts": {key: {"artifacts": [
                {"name": "", "uri": item["uri"], "metadata": {}, "type": item["type"]}
                for item in items]} for key, items in outputs.items()},
                "parameters": {key: {"outputFile": path}
                               for key, path in parameter_files.items()},
                "outputFile": str(output_file)},
        }
        serialized = self._map_mounts(component, json.dumps(executor_input), into_pod=True)
        container = executor["container"]
        command = [self.python if part == "python" else part for part in container["command"]]
        args = [part.replace("{{$}}", serialized) for part in container.get("args", [])]
        env = dict(os.environ, CTPIPE_MLMD_SQLITE=self.mlmd_path, TF_CPP_MIN_LOG_LEVEL="3",
                   TMPDIR=str(self.temp_dir), **self.env)
        env.pop("PYTHONPATH", None)
        done = subprocess.run(command + args, cwd=self.root / "work", env=env,
                              capture_output=True, text=True, timeout=self.timeout)
        result.logs[name] = (done.stdout + done.stderr)[-4000:]
        if done.returncode != 0:
            self._record(name, pb.Execution.FAILED, artifacts, {}, contexts)
            return FAILED
        if output_file.exists():
            executor_output = json.loads(self._map_mounts(component, output_file.read_text(),
                                                           into_pod=False))
            for key, listed in executor_output.get("artifacts", {}).items():
                if key in outputs:
                    declared = outputs[key][0]
                    outputs[key] = [dict(declared, uri=item.get("uri") or declared["uri"],
                                         metadata=item.get("metadata", {}))
                                    for item in listed.get("artifacts", [])]
            produced_parameters[name] = dict(executor_output.get("parameterValues", {}))
        else:
            produced_parameters[name] = {}
        for key, path in parameter_files.items():
            if key not in produced_parameters[name] and os.path.exists(path):
                produced_parameters[name][key] = Path(path).read_text()
        self._record(name, pb.Execution.COMPLETE, artifacts, outputs, contexts)
        produced[name] = outputs
        return COMPLETE
