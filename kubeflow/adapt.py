"""Post-compile adaptation: the PipelineSpec TFX compiles, made runnable on open-source KFP 2.x.

What open-source KFP lacks, and what replaces it (each a container step running our image):
  - `resolver` executors (PreviousGateState, StableModel): KFP's backend refuses them
    ("resolver executors not implemented"). Each becomes `ctpipe.kubeflow.steps resolve`, which
    queries KFP's ML Metadata with the same meaning, scoped to *this* pipeline's contexts, and
    writes the ExecutorOutput the launcher registers. StableModel (compiled with a stock
    strategy: pipeline/definition.py STABLE_BY_STEP) reads the release manifest where this
    run's Pusher writes it - object storage, or the models PVC mounted into it as into the
    Pusher - and resolves the Model pushed as its `stable` version.
  - ExampleGen's `pre_cache_check` driver (span resolution) is never called. A `SpanSelect` step
    runs first: it reads this pipeline's decisions from ML Metadata and the data root, picks
    the oldest pending span (same rules as the local runner: pipeline/home/cycles.py) and hands
    ExampleGen a range config; our ExampleGen executor resolves the span from it. When nothing
    is pending, every other step is skipped by its trigger condition: the run is no_new_data.
  - Models reach TF Serving: the Pusher either writes to object storage or gets the models PVC
    mounted through the platform spec (a second YAML document); so do the steps that read the
    release manifest (StableModel, and DataGate for its fresh-span scores).
  - "Nothing resolved" (no blessed model on the first run): KFP records a phantom artifact for
    it and hands it on whatever `isOptional` says, so our resolvers mark it (NONE_KEY) and every
    TFX step runs through ctpipe.kubeflow.entrypoint, which drops marked inputs. `isOptional`
    is removed from task-fed artifact inputs: it would promise what the backend does not do.
  - Every task lists each producer it reads from in `dependentTasks`, as the KFP SDK compiler
    writes specs (the backend also derives them: argocompiler/dag.go addImplicitDependencies).
`ctpipe kubeflow lint` (kubeflow/lint.py) checks the result; compile refuses a failing spec.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from ctpipe.kubeflow.entrypoint import MODULE as ENTRYPOINT_MODULE
from ctpipe.kubeflow.entrypoint import TFX_ENTRYPOINT
from ctpipe.pipeline.config import PipelineConfig

SPAN_SELECT = "SpanSelect"
SELECTION_KEY = "selection"
SELECTION_INPUT = f"_{SPAN_SELECT}.{SELECTION_KEY}"
RANGE_CONFIG = "range_config"
STEP_MODULE = "ctpipe.kubeflow.steps"
DATASET_TYPE = {"instanceSchema": "title: tfx.Dataset\ntype: object\n"}
# Resolver task -> what our step resolves (ctpipe.kubeflow.steps.RESOLVERS).
RESOLVER_KINDS = {
    "PreviousGateState": "ledger",
    "StableModel": "stable",
}
# Steps that read or write the release manifest beside kfp_serving_dir: the models PVC is
# mounted into each (platform spec) unless it is object storage.
MANIFEST_TASKS = ("StableModel", "DataGate", "Pusher")
GATE_SELECTION_INPUT = "span_selection"  # DataGate's own input (components/data_gate.py)


def pending_condition(key: str) -> str:
    return f"inputs.artifacts['{key}'].artifacts[0].metadata['pending'] == 1.0"


def _step_container(config: PipelineConfig, step: str, *args: str) -> Dict[str, Any]:
    return {"container": {
        "image": config.image,
        "command": ["python", "-m", STEP_MODULE],
        "args": [step, "--pipeline", config.pipeline_name, "--mlmd-host", config.kfp_mlmd_host,
                 "--mlmd-port", str(config.kfp_mlmd_port), *args, "--executor-input", "{{$}}"],
    }}


def _executor_label(spec: Dict[str, Any], task: str) -> str:
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["components"][component]["executorLabel"]


def stable_parameters(config: PipelineConfig) -> Dict[str, str]:
    """What `resolve --kind stable` reads: the manifest where this run's Pusher writes it.
    Handed over as parameters (not arguments), like the Pusher's own base directory."""
    from ctpipe.pipeline.definition import manifest_for

    return {"manifest": manifest_for(config, config.kfp_serving_dir),
            "model_name": config.model_name}


def replace_resolvers(spec: Dict[str, Any], config: PipelineConfig) -> None:
    executors = spec["deploymentSpec"]["executors"]
    for task, kind in RESOLVER_KINDS.items():
        label = _executor_label(spec, task)
        if "resolver" not in executors[label]:
            raise ValueError(f"{task} is no resolver any more; update RESOLVER_KINDS")
        executors[label] = _step_container(config, "resolve", "--kind", kind)
        # The resolver's parameters (resolver_class, source_uri) go from the task AND the
        # component: the driver refuses a declared non-optional parameter without a value
        # (driver.go resolveInputs, handleParamTypeValidationAndConversion).
        task_spec = spec["root"]["dag"]["tasks"][task]
        task_spec.get("inputs", {}).pop("parameters", None)
        spec["components"][task_spec["componentRef"]["name"]].get(
            "inputDefinitions", {}).pop("parameters", None)
        if kind == "stable":
            component = spec["components"][task_spec["componentRef"]["name"]]
            for name, value in stable_parameters(config).items():
                component.setdefault("inputDefinitions", {}).setdefault("parameters", {})[
                    name] = {"parameterType": "STRING"}
                task_spec.setdefault("inputs", {}).setdefault("parameters", {})[name] = {
                    "runtimeValue": {"constant": value}}


def add_span_select(spec: Dict[str, Any], config: PipelineConfig, data_root_parameter: str
                    ) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    spec["components"][SPAN_SELECT] = {
        "executorLabel": f"{SPAN_SELECT}_executor",
        "inputDefinitions": {"parameters": {"data_root": {"parameterType": "STRING"}}},
        "outputDefinitions": {
            "artifacts": {SELECTION_KEY: {"artifactType": dict(DATASET_TYPE)}},
            "parameters": {RANGE_CONFIG: {"parameterType": "STRING"}}},
    }
    spec["deploymentSpec"]["executors"][f"{SPAN_SELECT}_executor"] = _step_container(
        config, "span-select", "--max-attempts", str(config.max_attempts))
    for name, task in tasks.items():
        # The gate reads the selection itself (given-up spans); one input key per artifact,
        # since ML Metadata records an artifact once per execution and direction.
        key = GATE_SELECTION_INPUT if name == "DataGate" else SELECTION_INPUT
        component = spec["components"][task["componentRef"]["name"]]
        definitions = component.setdefault("inputDefinitions", {})
        definitions.setdefault("artifacts", {})[key] = {"artifactType": dict(DATASET_TYPE)}
        task.setdefault("inputs", {}).setdefault("artifacts", {})[key] = {
            "taskOutputArtifact": {"producerTask": SPAN_SELECT,
                                   "outputArtifactKey": SELECTION_KEY}}
        task["dependentTasks"] = sorted(set(task.get("dependentTasks", [])) | {SPAN_SELECT})
        pending = pending_condition(key)
        condition = task.get("triggerPolicy", {}).get("condition")
        task["triggerPolicy"] = {"condition": f"({pending}) && {condition}"
                                 if condition else pending}
    example_gen = tasks["CsvExampleGen"]
    example_gen["inputs"]["parameters"][RANGE_CONFIG] = {"taskOutputParameter": {
        "producerTask": SPAN_SELECT, "outputParameterKey": RANGE_CONFIG}}
    spec["components"][example_gen["componentRef"]["name"]]["inputDefinitions"][
        "parameters"][RANGE_CONFIG] = {"parameterType": "STRING"}
    # The driver hook OSS KFP never calls; the executor resolves the span (csv_ingest.py).
    spec["deploymentSpec"]["executors"][_executor_label(spec, "CsvExampleGen")][
        "container"].pop("lifecycle", None)
    tasks[SPAN_SELECT] = {
        "componentRef": {"name": SPAN_SELECT}, "taskInfo": {"name": SPAN_SELECT},
        "inputs": {"parameters": {"data_root": {
            "componentInputParameter": data_root_parameter}}}}


def producers(task: Dict[str, Any]) -> List[str]:
    """Every task whose output this task reads (artifacts and parameters)."""
    found = set()
    inputs = task.get("inputs", {})
    for value in list(inputs.get("artifacts", {}).values()) + \
            list(inputs.get("parameters", {}).values()):
        for kind in ("taskOutputArtifact", "taskOutputParameter"):
            if kind in value:
                found.add(value[kind]["producerTask"])
    return sorted(found)


def add_data_dependencies(spec: Dict[str, Any]) -> None:
    for task in spec["root"]["dag"]["tasks"].values():
        needed = set(task.get("dependentTasks", [])) | set(producers(task))
        if needed:
            task["dependentTasks"] = sorted(needed)


def drop_optional_task_inputs(spec: Dict[str, Any]) -> None:
    """The driver resolves every artifact input (resolveInputs ignores isOptional for
    artifacts at 2.5.0); "absent" is the NONE_KEY marker instead."""
    for task in spec["root"]["dag"]["tasks"].values():
        definitions = spec["components"][task["componentRef"]["name"]].get(
            "inputDefinitions", {}).get("artifacts", {})
        for key, value in task.get("inputs", {}).get("artifacts", {}).items():
            if "taskOutputArtifact" in value and key in definitions:
                definitions[key].pop("isOptional", None)


def use_marker_aware_entrypoint(spec: Dict[str, Any]) -> None:
    """TFX steps start through ctpipe.kubeflow.entrypoint (same arguments)."""
    for executor in spec["deploymentSpec"]["executors"].values():
        command = executor.get("container", {}).get("command", [])
        if command[-1:] == [TFX_ENTRYPOINT]:
            command[-1] = ENTRYPOINT_MODULE


def uses_object_storage(path: str) -> bool:
    return path.startswith(("gs://", "s3://", "hdfs://"))


def platform_spec(spec: Dict[str, Any], config: PipelineConfig) -> Optional[Dict[str, Any]]:
    """The kfp-kubernetes document that mounts the models PVC into the steps that read or write
    the release manifest (MANIFEST_TASKS; None when the Pusher writes to object storage)."""
    if uses_object_storage(config.kfp_serving_dir):
        return None
    if not config.kfp_serving_dir.startswith(config.kfp_models_mount.rstrip("/") + "/"):
        from ctpipe.pipeline.errors import ConfigError

        raise ConfigError(f"kfp_serving_dir {config.kfp_serving_dir} must be object storage or "
                          f"a folder under kfp_models_mount {config.kfp_models_mount}")
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
        _executor_label(spec, task): {"pvcMount": [
            {"mountPath": config.kfp_models_mount, "constant": config.kfp_models_pvc}]}
        for task in MANIFEST_TASKS}}}}}


def adapt_for_open_source_kfp(spec: Dict[str, Any], config: PipelineConfig,
                              data_root_parameter: str) -> List[Dict[str, Any]]:
    """[PipelineSpec, platform spec?]: the YAML documents KFP's API takes."""
    spec = copy.deepcopy(spec)
    replace_resolvers(spec, config)
    add_span_select(spec, config, data_root_parameter)
    add_data_dependencies(spec)
    drop_optional_task_inputs(spec)
    use_marker_aware_entrypoint(spec)
    spec["root"]["inputDefinitions"]["parameters"][data_root_parameter]["defaultValue"] = \
        config.kfp_data_root
    spec["defaultPipelineRoot"] = config.kfp_pipeline_root
    platform = platform_spec(spec, config)
    return [spec] + ([platform] if platform else [])


def executor_kinds(spec: Dict[str, Any]) -> List[str]:
    """Which executor kinds a spec uses (open-source KFP runs `container` and `importer`)."""
    return sorted({kind for executor in spec["deploymentSpec"]["executors"].values()
                   for kind in executor})
