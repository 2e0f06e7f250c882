"""`ctpipe kubeflow lint SPEC`: static checks of a compiled spec against what its backend does.

Each check names the backend rule it stands for (kubeflow/pipelines at backend 2.5.0, the oldest
and newest 2.x where they differ; Kubernetes API validation for resources). `compile` runs
these and refuses to write a spec that fails; users run them on specs they edited.

  kfp (open-source KFP 2.0-2.5, YAML: PipelineSpec + optional platform spec)
    executors     only `container` and `importer` (argocompiler/dag.go task(): "resolver
                  executors not implemented"; compiler/visitor.go); no trigger condition on an
                  importer ("triggerPolicy.condition on importer task is not supported")
    schema        schemaVersion 2.1.0 (what the API server's template loader accepts for v2)
    parameters    every declared non-optional input parameter without a default has a value
                  (driver.go resolveInputs)
    dependencies  every producer a task reads from is a task and is in its dependentTasks
                  (the KFP SDK compiler always writes them; addImplicitDependencies in
                  argocompiler/dag.go refuses unknown producers)
    resources     cpu/memory limits and requests parse as Kubernetes quantities once the driver
                  formats them (driver.go getPodResource: "%v", "%vG"); accelerator.type is used
                  verbatim as the resource name (initPodSpecPatch), so it must be a valid
                  container resource name: standard (cpu, memory, ...) or domain-prefixed
                  extended (nvidia.com/gpu); its count a positive whole number
    optional      `isOptional` on an artifact input fed by a task does nothing (driver.go
                  resolveInputs resolves every artifact input); an input fed by a resolver step
                  that can find nothing must be read through a marker-aware entrypoint
    platform      the second document is a kfp-kubernetes PlatformSpec whose executors exist;
                  each pvcMount has a mountPath and exactly one of `constant` (2.0-2.5) or
                  `pvcNameParameter` (2.5 only, refused: the README promises 2.0-2.5)
  vertex (PipelineJob JSON)
    the same dependency check; executors container/importer/resolver; accelerator.type a Vertex
    machine enum (NVIDIA_TESLA_T4), not a Kubernetes resource name.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

from ctpipe.kubeflow.entrypoint import MODULE as ENTRYPOINT_MODULE
from ctpipe.pipeline.errors import KubeflowError

KFP_SCHEMA_VERSION = "2.1.0"
KFP_EXECUTORS = ("container", "importer")
VERTEX_EXECUTORS = ("container", "importer", "resolver")
STEP_MODULE = "ctpipe.kubeflow.steps"
# k8s.io/apimachinery/pkg/api/resource: ParseQuantity
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E"
                       r"|[eE][+-]?\d+)?$")
# k8s.io/apimachinery/pkg/util/validation: IsQualifiedName (prefix: IsDNS1123Subdomain)
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_VERTEX_ACCELERATOR = re.compile(r"^(NVIDIA|TPU)_[A-Z0-9_]+$")


def quantity_error(text: str) -> str:
    """'' when Kubernetes parses `text` as a non-negative quantity."""
    if not _QUANTITY.match(text):
        return f"{text!r} is not a Kubernetes quantity"
    if text.startswith("-"):
        return f"{text!r} is negative"
    return ""


def resource_name_error(name: str) -> str:
    """'' when `name` is a valid container resource name (pkg/apis/core/validation:
    validateContainerResourceName: standard, hugepages-*, or a qualified extended name)."""
    if "/" not in name:
        if name in STANDARD_CONTAINER_RESOURCES or name.startswith("hugepages-"):
            return ""
        return (f"{name!r} must be a standard resource for containers or a domain-prefixed "
                "extended resource such as nvidia.com/gpu")
    prefix, _, part = name.partition("/")
    if not _DNS_SUBDOMAIN.match(prefix) or len(prefix) > 253 or not _NAME_PART.match(part) \
            or len(part) > 63:
        return f"{name!r} is not a qualified resource name (prefix/name)"
    return ""


def _tasks(spec: Dict[str, Any]) -> Dict[str, Any]:
    return spec.get("root", {}).get("dag", {}).get("tasks", {})


def _executor(spec: Dict[str, Any], task: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    component = spec.get("components", {}).get(task.get("componentRef", {}).get("name"), {})
    label = component.get("executorLabel", "")
    return label, spec.get("deploymentSpec", {}).get("executors", {}).get(label, {})


def _producers(task: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(input key, producer task) for each task-fed input."""
    found = []
    inputs = task.get("inputs", {})
    for group in ("artifacts", "parameters"):
        for key, value in inputs.get(group, {}).items():
            for kind in ("taskOutputArtifact", "taskOutputParameter"):
                if kind in value:
                    found.append((key, value[kind].get("producerTask", "")))
    return found


def check_executors(spec: Dict[str, Any], allowed: Tuple[str, ...]) -> List[str]:
    problems = []
    for label, executor in sorted(spec.get("deploymentSpec", {}).get("executors", {}).items()):
        kinds = sorted(set(executor) - set(allowed))
        if kinds:
            problems.append(f"executors: {label} is a {'/'.join(kinds)} executor; this backend "
                            f"runs only {', '.join(allowed)}")
    if allowed == KFP_EXECUTORS:
        for name, task in sorted(_tasks(spec).items()):
            if "importer" in _executor(spec, task)[1] and \
                    task.get("triggerPolicy", {}).get("condition"):
                problems.append(f"executors: {name} is an importer with a trigger condition "
                                "(not supported by the Argo compiler)")
    return problems


def check_dependencies(spec: Dict[str, Any]) -> List[str]:
    problems = []
    tasks = _tasks(spec)
    for name, task in sorted(tasks.items()):
        listed = set(task.get("dependentTasks", []))
        for unknown in sorted(listed - set(tasks)):
            problems.append(f"dependencies: {name} depends on unknown task {unknown}")
        for key, producer in _producers(task):
            if producer not in tasks:
                problems.append(f"dependencies: {name}.{key} reads from unknown task {producer}")
            elif producer not in listed:
                problems.append(f"dependencies: {name}.{key} reads {producer} but {producer} "
                                f"is not in {name}'s dependentTasks")
    return problems


def check_parameters(spec: Dict[str, Any]) -> List[str]:
    """A declared, non-optional input parameter without a default must be given by the task
    (driver.go resolveInputs: "neither value nor default value provided ...")."""
    problems = []
    for name, task in sorted(_tasks(spec).items()):
        component = spec.get("components", {}).get(task.get("componentRef", {}).get("name"), {})
        given = task.get("inputs", {}).get("parameters", {})
        for key, definition in sorted(component.get("inputDefinitions", {}).get(
                "parameters", {}).items()):
            if key not in given and not definition.get("isOptional") \
                    and "defaultValue" not in definition:
                problems.append(f"parameters: {name} declares {key} but the task gives it no "
                                "value and it has no default")
    return problems


def check_resources(spec: Dict[str, Any]) -> List[str]:
    problems = []
    for label, executor in sorted(spec.get("deploymentSpec", {}).get("executors", {}).items()):
        resources = executor.get("container", {}).get("resources", {})
        # The driver's formatting of the numeric fields (getPodResource), then ParseQuantity.
        for field, unit in (("cpuLimit", ""), ("cpuRequest", ""), ("memoryLimit", "G"),
                            ("memoryRequest", "G")):
            if field in resources:
                value = resources[field]
                error = "" if isinstance(value, (int, float)) and value >= 0 else "not a number"
                error = error or quantity_error(f"{value:g}{unit}")
                if error:
                    problems.append(f"resources: {label} {field} {value!r}: {error}")
        for field in ("resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit",
                      "resourceMemoryRequest"):
            value = resources.get(field)
            if value and "{{" not in value and quantity_error(value):
                problems.append(f"resources: {label} {field}: {quantity_error(value)}")
        accelerator = resources.get("accelerator")
        if accelerator:
            name = accelerator.get("resourceType") or accelerator.get("type", "")
            error = resource_name_error(name) if "{{" not in name else ""
            if error:
                problems.append(f"resources: {label} accelerator: {error}")
            count = str(accelerator.get("resourceCount") or accelerator.get("count", ""))
            if "{{" not in count and not re.fullmatch(r"[1-9]\d*", count):
                problems.append(f"resources: {label} accelerator count {count!r} must be a "
                                "positive whole number (extended resources)")
    return problems


def check_optional_inputs(spec: Dict[str, Any]) -> List[str]:
    problems = []
    tasks = _tasks(spec)
    for name, task in sorted(tasks.items()):
        component = spec.get("components", {}).get(task.get("componentRef", {}).get("name"), {})
        definitions = component.get("inputDefinitions", {}).get("artifacts", {})
        _, consumer = _executor(spec, task)
        command = consumer.get("container", {}).get("command", [])
        aware = bool({ENTRYPOINT_MODULE, STEP_MODULE} & set(command))
        for key, value in sorted(task.get("inputs", {}).get("artifacts", {}).items()):
            if "taskOutputArtifact" not in value:
                continue
            if definitions.get(key, {}).get("isOptional"):
                problems.append(f"optional: {name}.{key} is isOptional, but the driver resolves "
                                "every artifact input (resolveInputs): it always arrives")
            producer = value["taskOutputArtifact"].get("producerTask", "")
            _, source = _executor(spec, tasks.get(producer, {}))
            args = source.get("container", {}).get("args", [])
            if args[:1] == ["resolve"] and STEP_MODULE in source["container"].get(
                    "command", []) and not aware:
                problems.append(f"optional: {name}.{key} comes from resolver step {producer}, "
                                f"which can resolve nothing, but {name} does not start through "
                                f"{ENTRYPOINT_MODULE} (it would load a phantom artifact)")
    return problems


def check_platform(spec: Dict[str, Any], platform: Dict[str, Any]) -> List[str]:
    problems = []
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as error:
        return [f"platform: not a PlatformSpec: {str(error).splitlines()[0]}"]
    executors = platform.get("platforms", {}).get("kubernetes", {}).get(
        "deploymentSpec", {}).get("executors")
    if not isinstance(executors, dict):
        return ["platform: no platforms.kubernetes.deploymentSpec.executors"]
    known = spec.get("deploymentSpec", {}).get("executors", {})
    for label, config in sorted(executors.items()):
        if label not in known:
            problems.append(f"platform: executor {label} is not in the PipelineSpec")
        for mount in config.get("pvcMount", []):
            if not mount.get("mountPath"):
                problems.append(f"platform: {label} pvcMount without mountPath")
            sources = [k for k in ("constant", "pvcNameParameter", "taskOutputParameter",
                                   "componentInputParameter") if k in mount]
            if sources != ["constant"]:
                problems.append(f"platform: {label} pvcMount must name its claim with "
                                f"`constant` (backends 2.0-2.5), got {sources or 'nothing'}")
    return problems


def lint_kfp(documents: List[Dict[str, Any]]) -> List[str]:
    if not documents:
        return ["schema: empty file"]
    spec = documents[0]
    problems = []
    if spec.get("schemaVersion") != KFP_SCHEMA_VERSION:
        problems.append(f"schema: schemaVersion {spec.get('schemaVersion')!r}, open-source KFP "
                        f"wants {KFP_SCHEMA_VERSION}")
    problems += check_executors(spec, KFP_EXECUTORS)
    problems += check_dependencies(spec)
    problems += check_parameters(spec)
    problems += check_resources(spec)
    problems += check_optional_inputs(spec)
    if len(documents) > 2:
        problems.append(f"platform: {len(documents)} documents; KFP reads the spec and one "
                        "platform spec")
    if len(documents) > 1:
        problems += check_platform(spec, documents[1])
    return problems


def lint_vertex(job: Dict[str, Any]) -> List[str]:
    spec = job.get("pipelineSpec")
    if not isinstance(spec, dict):
        return ["schema: no pipelineSpec in the PipelineJob"]
    problems = check_executors(spec, VERTEX_EXECUTORS) + check_dependencies(spec)
    for label, executor in sorted(spec.get("deploymentSpec", {}).get("executors", {}).items()):
        accelerator = executor.get("container", {}).get("resources", {}).get("accelerator")
        if accelerator and not _VERTEX_ACCELERATOR.match(accelerator.get("type", "")):
            problems.append(f"resources: {label} accelerator {accelerator.get('type')!r} is not "
                            "a Vertex AI accelerator type (e.g. NVIDIA_TESLA_T4)")
    return problems


class LintFailed(KubeflowError):
    """A spec that fails lint (exit 2); `problems` holds one line per problem."""

    def __init__(self, what: str, problems: List[str]):
        self.problems = problems
        super().__init__(f"{what} fails lint ({len(problems)} problems): {problems[0]}")


def require_clean(documents: List[Dict[str, Any]], target: str, what: str) -> None:
    problems = lint_documents(documents, target)
    if problems:
        raise LintFailed(what, problems)


def lint_documents(documents: List[Dict[str, Any]], target: str) -> List[str]:
    return lint_vertex(documents[0]) if target == "vertex" else lint_kfp(documents)


def target_of(documents: List[Dict[str, Any]]) -> str:
    return "vertex" if documents and "pipelineSpec" in documents[0] else "kfp"


def lint_file(path: str) -> List[str]:
    from ctpipe.kubeflow.runner import load_documents

    try:
        documents = load_documents(path)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        return [f"schema: {path} is not a readable compiled spec: {error}"]
    except Exception as error:  # noqa: BLE001 - yaml.YAMLError and friends: one line out
        return [f"schema: {path} is not a readable compiled spec: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"]
    if not all(isinstance(d, dict) for d in documents):
        return [f"schema: {path} holds a document that is not a mapping"]
    return lint_documents(documents, target_of(documents))
