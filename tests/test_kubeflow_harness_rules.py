"""Each rule of tests/kfp_harness.py on its own, on toy specs (no subprocess runs TFX here):
what KFP 2.5.0 does, so the scenarios in test_kubeflow_harness.py pass for the right reasons."""
import json
import sys
import time

import pytest
import yaml
from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.kubeflow.entrypoint import NONE_KEY, rewrite_argv, strip_none_markers

from tests import kfp_harness as kfp

DATASET = {"schemaTitle": "system.Dataset"}
# A container step that writes what $CTPIPE_OUT says as its ExecutorOutput (python -c).
WRITER = ("import json,os,sys; e=json.loads(sys.argv[1]); o=e['outputs']; "
          "out=json.loads(os.environ.get('CTPIPE_OUT','{}')); "
          "os.makedirs(os.path.dirname(o['outputFile']),exist_ok=True); "
          "open(o['outputFile'],'w').write(json.dumps(out)); print(json.dumps(e['inputs']))")


def _component(outputs=(), inputs=(), optional=()):
    return {"executorLabel": "x",
            "inputDefinitions": {"artifacts": {k: {"artifactType": DATASET,
                                                   **({"isOptional": True} if k in optional
                                                      else {})} for k in inputs}},
            "outputDefinitions": {"artifacts": {k: {"artifactType": DATASET}
                                                for k in outputs}}}


def _spec(tasks, components, resources=None):
    container = {"image": "img", "command": ["python", "-c", WRITER], "args": ["{{$}}"]}
    if resources:
        container["resources"] = resources
    executors = {}
    for name, component in components.items():
        component["executorLabel"] = f"{name}_executor"
        executors[f"{name}_executor"] = {"container": dict(container)}
    return {"pipelineInfo": {"name": "toy"}, "schemaVersion": "2.1.0",
            "root": {"dag": {"tasks": tasks}}, "components": components,
            "deploymentSpec": {"executors": executors}}


def _harness(tmp_path, spec, env=None):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return kfp.KfpHarness(path, tmp_path / "kfp", sys.executable, mounts={}, env=env,
                          run_as=None)


def _reads(producer, key="out"):
    return {"taskOutputArtifact": {"producerTask": producer, "outputArtifactKey": key}}


def test_argo_adds_implicit_dependencies_and_waits_for_success():
    """dag.go addImplicitDependencies: a data input orders tasks even without dependentTasks."""
    task = {"dependentTasks": ["a"], "inputs": {"artifacts": {"x": _reads("b")}}}
    assert kfp.argo_depends(task) == ["a", "b"]
    assert kfp.argo_order({"c": task, "a": {}, "b": {}}) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unknown producer task"):
        kfp.argo_order({"c": task, "a": {}})


def test_missing_producer_fails_the_driver_and_creates_no_execution(tmp_path):
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}}},
                 {"a": _component(outputs=["out"])})
    harness = _harness(tmp_path, spec)
    run = harness.run()
    task = {"inputs": {"artifacts": {"x": _reads("ghost")}}}
    [root] = [e.id for e in harness.store.get_executions() if "task_name" not in
              e.custom_properties]
    with pytest.raises(kfp.DriverError, match="cannot find producer task 'ghost'"):
        kfp.driver_resolve_inputs(task, {}, {}, harness.metadata, harness.store
                                  .get_context_by_type_and_name("system.PipelineRun",
                                                                run.run_id), root)


def test_launcher_records_a_phantom_for_an_output_the_step_did_not_list(tmp_path):
    """uploadOutputArtifacts: declared but not in ExecutorOutput -> still recorded, and the
    consumer receives it even though its input is isOptional (resolveInputs)."""
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}},
                  "b": {"componentRef": {"name": "b"}, "taskInfo": {"name": "b"},
                        "dependentTasks": ["a"], "inputs": {"artifacts": {"x": _reads("a")}}}},
                 {"a": _component(outputs=["out"]),
                  "b": _component(inputs=["x"], optional=["x"])})
    run = _harness(tmp_path, spec).run()
    assert run.states == {"a": kfp.COMPLETE, "b": kfp.COMPLETE}, run.logs
    [given] = run.executor_inputs["b"]["inputs"]["artifacts"]["x"]["artifacts"]
    assert "/pipeline_root/a/" in given["uri"] and given["uri"].endswith("/out")
    assert given["metadata"] == {"display_name": "out"}  # the phantom: nothing written there


def test_launcher_merges_only_the_first_listed_artifact():
    outputs = {"artifacts": {"out": {"artifacts": [{"uri": "gs://r/a/1/out", "type": DATASET,
                                                     "metadata": {}}]}}}
    listed = {"artifacts": {"out": {"artifacts": [
        {"uri": "gs://elsewhere/model", "metadata": {"blessed": 1.0}},
        {"uri": "gs://ignored", "metadata": {}}]}}}
    [recorded] = kfp.launcher_record_outputs(outputs, listed)["out"]
    assert recorded["uri"] == "gs://elsewhere/model" and recorded["metadata"] == {"blessed": 1.0}
    marked = {"artifacts": {"out": {"artifacts": [{"metadata": {NONE_KEY: 1.0}}]}}}
    [phantom] = kfp.launcher_record_outputs(outputs, marked)["out"]
    assert phantom["uri"] == "gs://r/a/1/out" and phantom["metadata"] == {NONE_KEY: 1.0}


def test_metadata_round_trips_through_ml_metadata_as_kfp_converts_it(tmp_path):
    """A bool becomes int 0/1 in MLMD and a number when read back: `== 1.0` still holds."""
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}},
                  "b": {"componentRef": {"name": "b"}, "taskInfo": {"name": "b"},
                        "dependentTasks": ["a"], "inputs": {"artifacts": {"x": _reads("a")}},
                        "triggerPolicy": {"condition":
                                          "inputs.artifacts['x'].artifacts[0].metadata['ok'] "
                                          "== 1.0"}}},
                 {"a": _component(outputs=["out"]), "b": _component(inputs=["x"])})
    out = {"artifacts": {"out": {"artifacts": [{"metadata": {"ok": True, "n": 3}}]}}}
    run = _harness(tmp_path, spec, env={"CTPIPE_OUT": json.dumps(out)}).run()
    assert run.states["b"] == kfp.COMPLETE, run.logs
    metadata = run.executor_inputs["b"]["inputs"]["artifacts"]["x"]["artifacts"][0]["metadata"]
    assert metadata["ok"] == 1.0 and metadata["n"] == 3.0


def test_skipped_tasks_are_cancelled_their_consumers_omitted_and_a_root_dag_recorded(tmp_path):
    gate = "inputs.artifacts['x'].artifacts[0].metadata['go'] == 1.0"
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}},
                  "b": {"componentRef": {"name": "b"}, "taskInfo": {"name": "b"},
                        "dependentTasks": ["a"], "inputs": {"artifacts": {"x": _reads("a")}},
                        "triggerPolicy": {"condition": gate}},
                  "c": {"componentRef": {"name": "c"}, "taskInfo": {"name": "c"},
                        "dependentTasks": ["b"], "inputs": {"artifacts": {"y": _reads("b")}}}},
                 {"a": _component(outputs=["out"]), "b": _component(inputs=["x"],
                                                                     outputs=["out"]),
                  "c": _component(inputs=["y"])})
    out = {"artifacts": {"out": {"artifacts": [{"metadata": {"go": 0.0}}]}}}
    harness = _harness(tmp_path, spec, env={"CTPIPE_OUT": json.dumps(out)})
    run = harness.run()
    assert run.states == {"a": kfp.COMPLETE, "b": kfp.SKIPPED, "c": kfp.OMITTED}
    assert kfp.run_executions(harness.store, run.run_id) == [
        ("system.ContainerExecution", "a", pb.Execution.COMPLETE),
        ("system.ContainerExecution", "b", pb.Execution.CANCELED),
        ("system.DAGExecution", "", pb.Execution.COMPLETE)]
    b = [e for e in harness.store.get_executions()
         if e.custom_properties["task_name"].string_value == "b"][0]
    root = [e for e in harness.store.get_executions() if "task_name" not in
            e.custom_properties][0]
    assert b.custom_properties["parent_dag_id"].int_value == root.id


def test_a_condition_on_a_missing_metadata_key_fails_without_an_execution(tmp_path):
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}},
                  "b": {"componentRef": {"name": "b"}, "taskInfo": {"name": "b"},
                        "dependentTasks": ["a"], "inputs": {"artifacts": {"x": _reads("a")}},
                        "triggerPolicy": {"condition": "inputs.artifacts['x'].artifacts[0]"
                                                       ".metadata['nope'] == 1.0"}}},
                 {"a": _component(outputs=["out"]), "b": _component(inputs=["x"])})
    harness = _harness(tmp_path, spec)
    run = harness.run()
    assert run.states["b"] == kfp.FAILED and "trigger condition" in run.logs["b"]
    assert [t for _, t, _ in kfp.run_executions(harness.store, run.run_id)] == ["a", ""]


@pytest.mark.parametrize("resources, error", [
    ({"accelerator": {"type": "NVIDIA_TESLA_T4", "count": "1"}}, "standard resource"),
    ({"accelerator": {"type": "nvidia.com/gpu", "count": "0.5"}}, "integer"),
    ({"accelerator": {"type": "Nvidia.com/gpu", "count": "1"}}, "qualified"),
])
def test_pod_resources_are_validated_as_kubernetes_would(resources, error):
    with pytest.raises(kfp.DriverError, match=error):
        kfp.driver_pod_resources({"resources": resources})


def test_valid_pod_resources_become_limits():
    limits = kfp.driver_pod_resources({"resources": {
        "cpuLimit": 4.0, "memoryLimit": 16.0,
        "accelerator": {"type": "nvidia.com/gpu", "count": "1"}}})
    assert limits == {"cpu": "4", "memory": "16G", "nvidia.com/gpu": "1"}


def test_a_gpu_task_with_the_vertex_enum_fails_on_the_cluster(tmp_path):
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}}},
                 {"a": _component()},
                 resources={"accelerator": {"type": "NVIDIA_TESLA_T4", "count": "1"}})
    harness = _harness(tmp_path, spec)
    run = harness.run()
    assert run.states == {"a": kfp.FAILED} and "standard resource" in run.logs["a"]
    # the execution was created before the pod was refused: it stays RUNNING, as on KFP
    assert ("system.ContainerExecution", "a", pb.Execution.RUNNING) in \
        kfp.run_executions(harness.store, run.run_id)


def test_the_output_layout_is_kfps(tmp_path):
    outputs = kfp.driver_provision_outputs("gs://b/root", "Trainer", _component(
        outputs=["model"]), tmp_path)
    uri = outputs["artifacts"]["model"]["artifacts"][0]["uri"]
    assert uri.startswith("gs://b/root/Trainer/") and uri.endswith("/model")
    assert outputs["outputFile"].endswith("/tmp/kfp_outputs/output_metadata.json")


def test_the_entrypoint_drops_marked_inputs_only():
    executor_input = {"inputs": {"artifacts": {
        "baseline_model": {"artifacts": [{"uri": "x", "metadata": {NONE_KEY: 1.0}}]},
        "model": {"artifacts": [{"uri": "m", "metadata": {}}]}}}}
    stripped = strip_none_markers(json.loads(json.dumps(executor_input)))
    assert list(stripped["inputs"]["artifacts"]) == ["model"]
    argv = rewrite_argv(["--executor_class_path", "E", "--json_serialized_invocation_args",
                         json.dumps(executor_input), "--beam"])
    assert json.loads(argv[3]) == stripped and argv[-1] == "--beam"


def test_a_step_past_its_deadline_fails_with_its_output_and_stacks(tmp_path):
    """A hung step is stopped at the harness's deadline and fails (its execution FAILED, the
    next task not run) with what it printed and faulthandler's dump of where it waited,
    instead of a TimeoutExpired that loses both."""
    # ...and a child that inherits its output pipes and outlives it (as a Beam SDK worker
    # would): the harness must not wait for that child to close them.
    hang = ("import subprocess, sys, time; print('reading span', flush=True); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "time.sleep(600)")
    spec = _spec({"a": {"componentRef": {"name": "a"}, "taskInfo": {"name": "a"}},
                  "b": {"componentRef": {"name": "b"}, "taskInfo": {"name": "b"},
                        "dependentTasks": ["a"]}},
                 {"a": _component(), "b": _component()})
    spec["deploymentSpec"]["executors"]["a_executor"]["container"]["command"] = [
        "python", "-c", hang]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    harness = kfp.KfpHarness(path, tmp_path / "kfp", sys.executable, mounts={}, run_as=None,
                             timeout=3)
    started = time.monotonic()
    run = harness.run()
    assert time.monotonic() - started < 60
    assert run.states == {"a": kfp.FAILED, "b": kfp.OMITTED}
    assert run.logs["a"].startswith("harness: stopped after 3 s")
    assert "reading span" in run.logs["a"]
    assert 'File "<string>", line 1 in <module>' in run.logs["a"]  # where it slept
    assert "Current thread" in run.logs["a"] or "most recent call first" in run.logs["a"]
    states = {e.custom_properties["task_name"].string_value: e.last_known_state
              for e in harness.store.get_executions()}
    assert states["a"] == pb.Execution.FAILED and "b" not in states
