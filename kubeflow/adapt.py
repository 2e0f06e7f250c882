"""Post-compile adaptation: the PipelineSpec TFX compiles, made runnable on open-source KFP 2.x.

What open-source KFP lacks, and what replaces it (each a container step running our image):
  - `resolver` executors (PreviousGateState, LatestBlessedModel): KFP's backend refuses them
    ("resolver executors not implemented"). Each becomes `ctpipe.kubeflow.steps resolve`, which
    queries KFP's ML Metadata with the same meaning, scoped to *this* pipeline's contexts, and
    writes the ExecutorOutput the launcher registers.
  - ExampleGen's `pre_cache_check` driver (span resolution) is never called. A `SpanSelect` step
    runs first: it reads this pipeline's decisions from ML Metadata and the data root, picks
    the oldest pending span (same rules as the local runner: pipeline/cycles.py) and hands
    ExampleGen a range config; our ExampleGen executor resolves the span from it. When nothing
    is pending, every other step is skipped by its trigger condition: the run is no_new_data.
  - Models reach TF Serving: the Pusher either writes to object storage or gets the models PVC
    mounted through the platform spec (a second YAML document).
Inputs fed by our resolvers are marked optional (empty on the first run).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

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
    "LatestBlessedModel-model-blessing-resolver": "blessing",
    "LatestBlessedModel-model-resolver": "model",
}
OPTIONAL_INPUTS = {"DataGate": ("previous_state", "production_model", "span_selection"),
                   "Trainer": ("base_model",), "Evaluator": ("baseline_model",),
                   "LatestBlessedModel-model-resolver": ("input",)}
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


def replace_resolvers(spec: Dict[str, Any], config: PipelineConfig) -> None:
    executors = spec["deploymentSpec"]["executors"]
    for task, kind in RESOLVER_KINDS.items():
        label = _executor_label(spec, task)
        if "resolver" not in executors[label]:
            raise ValueError(f"{task} is no resolver any more; update RESOLVER_KINDS")
        executors[label] = _step_container(config, "resolve", "--kind", kind)
        spec["root"]["dag"]["tasks"][task].get("inputs", {}).get("parameters", {}).clear()


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


def mark_optional_inputs(spec: Dict[str, Any]) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    for task, keys in OPTIONAL_INPUTS.items():
        artifacts = spec["components"][tasks[task]["componentRef"]["name"]][
            "inputDefinitions"]["artifacts"]
        for key in keys:
            if key in artifacts:
                artifacts[key]["isOptional"] = True


def uses_object_storage(path: str) -> bool:
    return path.startswith(("gs://", "s3://", "hdfs://"))


def platform_spec(spec: Dict[str, Any], config: PipelineConfig) -> Optional[Dict[str, Any]]:
    """The kfp-kubernetes document that mounts the models PVC into the Pusher (None when it
    pushes to object storage)."""
    if uses_object_storage(config.kfp_serving_dir):
        return None
    if not config.kfp_serving_dir.startswith(config.kfp_models_mount.rstrip("/") + "/"):
        from ctpipe.pipeline.errors import ConfigError

        raise ConfigError(f"kfp_serving_dir {config.kfp_serving_dir} must be object storage or "
                          f"a folder under kfp_models_mount {config.kfp_models_mount}")
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
        _executor_label(spec, "Pusher"): {"pvcMount": [
            {"mountPath": config.kfp_models_mount, "constant": config.kfp_models_pvc}]}}}}}}


def adapt_for_open_source_kfp(spec: Dict[str, Any], config: PipelineConfig,
                              data_root_parameter: str) -> List[Dict[str, Any]]:
    """[PipelineSpec, platform spec?]: the YAML documents KFP's API takes."""
    spec = copy.deepcopy(spec)
    replace_resolvers(spec, config)
    add_span_select(spec, config, data_root_parameter)
    mark_optional_inputs(spec)
    spec["root"]["inputDefinitions"]["parameters"][data_root_parameter]["defaultValue"] = \
        config.kfp_data_root
    spec["defaultPipelineRoot"] = config.kfp_pipeline_root
    platform = platform_spec(spec, config)
    return [spec] + ([platform] if platform else [])


def executor_kinds(spec: Dict[str, Any]) -> List[str]:
    """Which executor kinds a spec uses (open-source KFP runs `container` and `importer`)."""
    return sorted({kind for executor in spec["deploymentSpec"]["executors"].values()
                   for kind in executor})
