"""`ctpipe kubeflow lint`: passes on what compile writes for both targets, and rejects a spec
broken in each way the backend would reject or mis-run it; compile refuses to write one."""
import copy
import json

import pytest
import yaml

from ctpipe.kubeflow import lint
from ctpipe.kubeflow.runner import compile_pipeline, load_documents
from ctpipe.pipeline.config import PipelineConfig

from tests.support import ctpipe


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("lint")
    config = PipelineConfig()
    compile_pipeline(config, str(out / "ctpipe.yaml"), "kfp")
    compile_pipeline(config, str(out / "ctpipe.json"), "vertex")
    return out


@pytest.fixture()
def kfp_docs(outputs):
    return load_documents(str(outputs / "ctpipe.yaml"))


def test_lint_passes_on_the_default_outputs_of_both_targets(outputs):
    for name in ("ctpipe.yaml", "ctpipe.json"):
        result = ctpipe("kubeflow", "lint", str(outputs / name))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": ok")


def test_the_kfp_output_reads_every_producer_after_it_and_asks_for_nvidia_gpu(kfp_docs):
    spec = kfp_docs[0]
    gate = spec["root"]["dag"]["tasks"]["DataGate"]
    assert {"StableModel", "PreviousGateState", "ExampleValidator"} <= set(gate["dependentTasks"])
    trainer = spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert trainer["resources"]["accelerator"]["type"] == "nvidia.com/gpu"
    assert trainer["command"] == ["python", "-m", "ctpipe.kubeflow.entrypoint"]


def test_the_vertex_output_keeps_the_vertex_enum(outputs):
    [job] = load_documents(str(outputs / "ctpipe.json"))
    trainer = job["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]
    assert trainer["container"]["resources"]["accelerator"]["type"] == \
        PipelineConfig().gpu_type


def _executor(spec, task):
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]


def _missing_dependency(docs):
    docs[0]["root"]["dag"]["tasks"]["Evaluator"]["dependentTasks"] = [
        "CsvExampleGen", "DataGate", "SpanSelect", "Trainer"]


def _resolver_executor(docs):
    _executor(docs[0], "PreviousGateState").clear()
    _executor(docs[0], "PreviousGateState")["resolver"] = {"outputArtifactQueries": {}}


def _schema_2_0(docs):
    docs[0]["schemaVersion"] = "2.0.0"


def _vertex_gpu_name(docs):
    _executor(docs[0], "Trainer")["container"]["resources"]["accelerator"]["type"] = \
        "NVIDIA_TESLA_T4"


def _bad_memory(docs):
    _executor(docs[0], "Trainer")["container"]["resources"]["resourceMemoryLimit"] = "16 GB"


def _fractional_gpu(docs):
    _executor(docs[0], "Trainer")["container"]["resources"]["accelerator"]["count"] = "0.5"


def _optional_input(docs):
    spec = docs[0]
    component = spec["root"]["dag"]["tasks"]["Evaluator"]["componentRef"]["name"]
    spec["components"][component]["inputDefinitions"]["artifacts"]["baseline_model"][
        "isOptional"] = True


def _stock_entrypoint(docs):
    _executor(docs[0], "Evaluator")["container"]["command"][-1] = \
        "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def _platform_unknown_executor(docs):
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    executors["Pusher2_executor"] = executors.pop("Pusher_executor")


def _platform_pvc_parameter(docs):
    mount = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "Pusher_executor"]["pvcMount"][0]
    mount["pvcNameParameter"] = {"componentInputParameter": "pvc"}
    del mount["constant"]


def _undeclared_parameter(docs):
    spec = docs[0]
    component = spec["root"]["dag"]["tasks"]["PreviousGateState"]["componentRef"]["name"]
    spec["components"][component].setdefault("inputDefinitions", {})["parameters"] = {
        "resolver_class": {"parameterType": "STRUCT"}}


@pytest.mark.parametrize("break_it, fragment", [
    (_undeclared_parameter, "parameters: PreviousGateState declares resolver_class"),
    (_missing_dependency, "dependencies: Evaluator.baseline_model reads StableModel"),
    (_resolver_executor, "executors: PreviousGateState_executor is a resolver executor"),
    (_schema_2_0, "schema: schemaVersion '2.0.0'"),
    (_vertex_gpu_name, "must be a standard resource for containers"),
    (_bad_memory, "'16 GB' is not a Kubernetes quantity"),
    (_fractional_gpu, "positive whole number"),
    (_optional_input, "optional: Evaluator.baseline_model is isOptional"),
    (_stock_entrypoint, "optional: Evaluator.baseline_model comes from resolver step"),
    (_platform_unknown_executor, "platform: executor Pusher2_executor is not in"),
    (_platform_pvc_parameter, "`constant`"),
])
def test_lint_rejects_each_broken_spec(kfp_docs, tmp_path, break_it, fragment):
    docs = copy.deepcopy(kfp_docs)
    break_it(docs)
    problems = lint.lint_documents(docs, "kfp")
    assert any(fragment in problem for problem in problems), problems
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = ctpipe("kubeflow", "lint", str(path))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(problems) and all(line.startswith(str(path)) for line in lines)


def test_an_unreadable_spec_is_one_problem(tmp_path):
    path = tmp_path / "nope.yaml"
    path.write_text("{unbalanced: [")
    result = ctpipe("kubeflow", "lint", str(path), "--json")
    assert result.returncode == 2
    assert len(json.loads(result.stdout)["problems"]) == 1


def test_vertex_lint_wants_the_vertex_enum(outputs):
    [job] = load_documents(str(outputs / "ctpipe.json"))
    _executor(job["pipelineSpec"], "Trainer")["container"]["resources"]["accelerator"][
        "type"] = "nvidia.com/gpu"
    assert any("not a Vertex AI accelerator type" in p for p in lint.lint_documents([job],
                                                                                   "vertex"))


def test_compile_refuses_to_write_a_failing_spec(tmp_path, monkeypatch):
    from ctpipe.kubeflow import adapt

    # TFX's stock entrypoint would hand the Evaluator the first run's phantom baseline.
    monkeypatch.setattr(adapt, "use_marker_aware_entrypoint", lambda spec: None)
    out = tmp_path / "ctpipe.yaml"
    with pytest.raises(lint.LintFailed) as failed:
        compile_pipeline(PipelineConfig(), str(out), "kfp")
    assert not out.exists()
    assert any(problem.startswith("optional: Evaluator.baseline_model comes from resolver "
                                  "step StableModel") for problem in failed.value.problems)


@pytest.mark.parametrize("text, ok", [("4", True), ("0.5", True), ("16G", True),
                                      ("512Mi", True), ("1e3", True), ("16 GB", False),
                                      ("-1", False), ("G", False)])
def test_kubernetes_quantities(text, ok):
    assert (lint.quantity_error(text) == "") is ok


@pytest.mark.parametrize("name, ok", [("nvidia.com/gpu", True), ("amd.com/gpu", True),
                                      ("cpu", True), ("hugepages-2Mi", True),
                                      ("NVIDIA_TESLA_T4", False), ("gpu", False),
                                      ("Nvidia.com/gpu", False)])
def test_kubernetes_resource_names(name, ok):
    assert (lint.resource_name_error(name) == "") is ok
