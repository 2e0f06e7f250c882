"""Kubeflow: the compiled spec (real PipelineSpec proto), the image, and upload/schedule through
the real kfp.Client against a loopback stand-in for the KFP REST API (no KFP server here)."""
import http.server
import json
import re
import threading
import urllib.parse

import pytest
from google.protobuf import json_format

from ctpipe.kubeflow import client
from ctpipe.kubeflow.runner import DATA_ROOT_PARAMETER, compile_pipeline, load_documents
from ctpipe.pipeline.config import PipelineConfig

from tests.support import REPO, ctpipe

FLINK = REPO / "kubeflow" / "environments" / "flink.toml"

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The Vertex AI target: TFX's PipelineJob as compiled."""
    config = PipelineConfig.from_sources(str(FLINK))
    out = tmp_path_factory.mktemp("vertex")
    return config, compile_pipeline(config, str(out / "a.json"), "vertex"), \
        compile_pipeline(config, str(out / "b.json"), "vertex")


@pytest.fixture(scope="module")
def kfp_compiled(tmp_path_factory):
    """The default target: open-source KFP 2.x YAML, compiled by the real CLI."""
    out = tmp_path_factory.mktemp("kfp") / "ctpipe.yaml"
    result = ctpipe("kubeflow", "compile", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out


def test_kfp_target_is_schema_2_1_with_container_executors_only(kfp_compiled):
    from kfp.pipeline_spec import pipeline_spec_pb2

    summary, path = kfp_compiled
    assert summary["target"] == "kfp" and summary["schema_version"] == "2.1.0"
    assert summary["executor_kinds"] == ["container"]
    spec, platform = load_documents(str(path))
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    text = path.read_text()
    assert str(REPO) not in text and "schema.pbtxt\"" not in text  # no path of this machine
    assert "resolver" not in {kind for e in spec["deploymentSpec"]["executors"].values()
                              for kind in e}


def test_the_real_kfp_sdk_loads_the_compiled_file(kfp_compiled):
    from kfp import components

    _, path = kfp_compiled
    loaded = components.load_component_from_file(str(path))
    assert loaded.pipeline_spec.schema_version == "2.1.0"
    assert "SpanSelect" in loaded.pipeline_spec.root.dag.tasks


def test_resolvers_become_steps_scoped_to_this_pipeline(kfp_compiled):
    _, path = kfp_compiled
    spec, _ = load_documents(str(path))
    executors = spec["deploymentSpec"]["executors"]
    for task, kind in (("PreviousGateState", "ledger"), ("StableModel", "stable")):
        component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
        container = executors[spec["components"][component]["executorLabel"]]["container"]
        assert container["command"] == ["python", "-m", "ctpipe.kubeflow.steps"]
        assert container["args"][:3] == ["resolve", "--pipeline", "ctpipe"]
        assert container["args"][container["args"].index("--kind") + 1] == kind
    # The baseline is stable, read from the manifest beside the serving dir the Pusher writes.
    stable = spec["root"]["dag"]["tasks"]["StableModel"]["inputs"]["parameters"]
    assert stable == {"manifest": {"runtimeValue": {"constant": "/models/models.config"}},
                      "model_name": {"runtimeValue": {"constant": "big_tipper"}}}
    assert "LatestBlessedModel" not in path.read_text()


def test_span_select_gates_every_step_and_feeds_example_gen(kfp_compiled):
    _, path = kfp_compiled
    spec, _ = load_documents(str(path))
    tasks = spec["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        if name == "SpanSelect":
            continue
        assert "SpanSelect" in task["dependentTasks"], name
        key = "span_selection" if name == "DataGate" else "_SpanSelect.selection"
        assert f"['{key}'].artifacts[0].metadata['pending'] == 1.0" in \
            task["triggerPolicy"]["condition"], name
    assert "metadata['accepted'] == 1.0" in tasks["Trainer"]["triggerPolicy"]["condition"]
    assert tasks["CsvExampleGen"]["inputs"]["parameters"]["range_config"] == {
        "taskOutputParameter": {"producerTask": "SpanSelect",
                                "outputParameterKey": "range_config"}}
    example_gen = spec["deploymentSpec"]["executors"]["CsvExampleGen_executor"]["container"]
    assert "lifecycle" not in example_gen
    assert spec["root"]["inputDefinitions"]["parameters"][DATA_ROOT_PARAMETER][
        "defaultValue"] == PipelineConfig().kfp_data_root


def test_pushes_reach_the_models_pvc_or_object_storage(kfp_compiled, tmp_path):
    _, path = kfp_compiled
    _, platform = load_documents(str(path))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # The Pusher writes there; StableModel and DataGate read the release manifest there.
    assert sorted(executors) == ["DataGate_executor", "Pusher_executor", "StableModel_executor"]
    for executor in executors.values():
        assert executor["pvcMount"] == [{"mountPath": "/models", "constant": "ctpipe-models"}]
    config = tmp_path / "gcs.toml"
    config.write_text('kfp_serving_dir = "gs://bucket/models/big_tipper"\n')
    documents = compile_pipeline(PipelineConfig.from_sources(str(config)),
                                 str(tmp_path / "gcs.yaml"))
    assert len(documents) == 1  # no mount needed
    assert "gs://bucket/models/big_tipper" in json.dumps(
        documents[0]["root"]["dag"]["tasks"]["Pusher"])
    assert documents[0]["root"]["dag"]["tasks"]["StableModel"]["inputs"]["parameters"][
        "manifest"] == {"runtimeValue": {"constant": "gs://bucket/models/models.config"}}


def test_spec_is_a_real_pipeline_spec_and_deterministic(compiled):
    from kfp.pipeline_spec import pipeline_spec_pb2

    _, spec, again = compiled
    proto = json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert proto.pipeline_info.name == "ctpipe"
    assert spec == again


def _local_upstream(tmp_path):
    from ctpipe.pipeline.definition import create_pipeline

    local = create_pipeline(PipelineConfig(home=str(tmp_path), data_root=str(tmp_path)))
    return {c.id: {u.id for u in c.upstream_nodes} for c in local.components}


def test_dependencies_match_the_local_dag(kfp_compiled, tmp_path):
    """kfp (the default target) runs the local DAG node for node - StableModel included - plus
    SpanSelect, which every task waits for."""
    _, path = kfp_compiled
    spec, _ = load_documents(str(path))
    tasks = {n: t for n, t in spec["root"]["dag"]["tasks"].items() if n != "SpanSelect"}
    local_upstream = _local_upstream(tmp_path)
    assert set(tasks) == set(local_upstream)
    assert {"CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "StableModel",
            "Trainer", "Evaluator", "Pusher", "DataGate"} <= set(local_upstream)
    for name, task in tasks.items():
        kfp_upstream = set(task.get("dependentTasks", [])) - {"SpanSelect"}
        # KFP adds the gate as a dependency of the steps its condition reads
        assert kfp_upstream - {"DataGate"} == local_upstream[name] - {"DataGate"}, name
        assert local_upstream[name] <= kfp_upstream, name
    baseline = tasks["Evaluator"]["inputs"]["artifacts"]["baseline_model"]
    assert baseline["taskOutputArtifact"]["producerTask"] == "StableModel"


def test_vertex_differs_from_the_local_dag_only_in_its_baseline_resolver(compiled, tmp_path):
    """Vertex runs only TFX's stock resolvers: its baseline is the latest blessed model
    (README, "Run on Kubeflow"), in StableModel's place; everything else is the local DAG."""
    _, spec, _ = compiled
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]

    def node(name):  # KFP splits the blessed-model resolver into two tasks; it stands in
        return re.sub(r"^LatestBlessedModel(-model(-blessing)?-resolver)?$", "StableModel", name)
    local_upstream = _local_upstream(tmp_path)
    assert {node(t) for t in tasks} == set(local_upstream)
    assert "StableModel" not in tasks
    for name, task in tasks.items():
        if node(name) != name:
            continue
        kfp_upstream = {node(d) for d in task.get("dependentTasks", [])}
        assert kfp_upstream - {"DataGate"} == local_upstream[name] - {"DataGate"}, name
        assert local_upstream[name] <= kfp_upstream, name


def test_trainer_gets_the_gpu_and_beam_steps_their_resources(compiled):
    config, spec, _ = compiled
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    trainer = executors["Trainer_executor"]["container"]["resources"]
    assert trainer["accelerator"] == {"count": "1", "type": config.gpu_type}
    assert trainer["cpuLimit"] == config.trainer_cpu
    assert executors["Evaluator_executor"]["container"]["resources"]["memoryLimit"] == \
        config.evaluator_memory_gb
    assert executors["StatisticsGen_executor"]["container"]["resources"]["cpuLimit"] == \
        config.beam_cpu


def test_image_and_distributed_beam_args_are_carried(compiled):
    config, spec, _ = compiled
    containers = [e["container"] for e in spec["pipelineSpec"]["deploymentSpec"]["executors"]
                  .values() if "container" in e]
    assert containers and all(c["image"] == config.image for c in containers)
    for name in ("StatisticsGen_executor", "Evaluator_executor", "CsvExampleGen_executor"):
        args = spec["pipelineSpec"]["deploymentSpec"]["executors"][name]["container"]["args"]
        assert "--runner=PortableRunner" in args and "--job_endpoint=flink-jobserver:8099" in args
        assert "--execution_mode_for_batch=BATCH_FORCED" in args  # FLINK-10672


def test_data_root_is_a_runtime_parameter(compiled):
    config, spec, _ = compiled
    parameters = spec["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    assert DATA_ROOT_PARAMETER in parameters
    assert spec["runtimeConfig"]["parameters"][DATA_ROOT_PARAMETER] == \
        {"stringValue": config.kfp_data_root}
    example_gen = spec["pipelineSpec"]["root"]["dag"]["tasks"]["CsvExampleGen"]
    assert DATA_ROOT_PARAMETER in json.dumps(example_gen["inputs"])
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == config.kfp_pipeline_root


def test_dockerfile_is_pinned_minimal_and_non_root():
    text = (REPO / "kubeflow" / "Dockerfile").read_text()
    logical = text.replace("\\\n", " ")  # join continuation lines
    instructions = [line.split(None, 1) for line in logical.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    froms = [rest for op, rest in instructions if op == "FROM"]
    assert froms == ["tensorflow/tfx:1.16.0"]
    users = [rest.strip() for op, rest in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    copied = {source for op, rest in instructions if op == "COPY" for source in rest.split()[:-1]}
    assert copied <= {"constraints.txt", "pyproject.toml", "README.md", "pipeline/",
                      "components/", "schema/", "serving/", "kubeflow/"}
    assert not re.search(r"(?i)(password|secret|token|api_key|credentials)", text)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored  # deny by default: .venv, data, tests and outputs stay out
    assert not any(line.lstrip("!").startswith((".venv", "data", "tests")) for line in ignored)


class FakeKfp(http.server.BaseHTTPRequestHandler):
    """Just enough of the KFP v2beta1 REST API, with state, recording every request."""
    state: dict = {}

    def _reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        self.state["requests"].append(("GET", url.path))
        if url.path.endswith("/pipelines"):
            self._reply({"pipelines": self.state["pipelines"]})
        elif url.path.endswith("/versions"):
            self._reply({"pipeline_versions": self.state["versions"]})
        elif url.path.endswith("/experiments"):
            self._reply({"experiments": self.state["experiments"]})
        else:
            self._reply({})

    def do_POST(self):  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.state["requests"].append(("POST", url.path))
        if url.path.endswith("/pipelines/upload"):
            pipeline = {"pipeline_id": "p1", "display_name": query["name"][0]}
            self.state["pipelines"].append(pipeline)
            self.state["versions"].append({"pipeline_version_id": "v0",
                                           "display_name": query["name"][0]})
            self._reply(pipeline)
        elif url.path.endswith("/upload_version"):
            version = {"pipeline_version_id": f"v{len(self.state['versions'])}",
                       "display_name": query["name"][0], "pipeline_id": query["pipelineid"][0]}
            self.state["versions"].insert(0, version)
            self._reply(version)
        elif url.path.endswith("/experiments"):
            experiment = dict(json.loads(body), experiment_id="e1")
            self.state["experiments"].append(experiment)
            self._reply(experiment)
        elif url.path.endswith("/recurringruns"):
            self.state["recurring"].append(json.loads(body))
            self._reply({"recurring_run_id": "r1"})
        else:
            self._reply({"error": "unknown"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture()
def kfp_host():
    FakeKfp.state = {"requests": [], "pipelines": [], "versions": [], "experiments": [],
                     "recurring": []}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_upload_creates_then_versions_idempotently(kfp_host, compiled, tmp_path):
    package = tmp_path / "spec.json"
    package.write_text(json.dumps(compiled[1]))
    first = client.upload(kfp_host, str(package), "ctpipe")
    assert first["created"] and first["pipeline_id"] == "p1"
    again = client.upload(kfp_host, str(package), "ctpipe")
    assert not again["created"] and again["version_id"] == first["version_id"]
    uploads = [r for r in FakeKfp.state["requests"] if r[1].endswith("upload_version")]
    assert len(uploads) == 1


def test_schedule_creates_a_recurring_run_of_the_newest_version(kfp_host, compiled, tmp_path):
    package = tmp_path / "spec.json"
    package.write_text(json.dumps(compiled[1]))
    uploaded = client.upload(kfp_host, str(package), "ctpipe")
    result = client.schedule(kfp_host, "ctpipe", "0 3 * * *", "ctpipe",
                             {DATA_ROOT_PARAMETER: "gs://bucket/data"})
    assert result["cron"] == "0 0 3 * * *"
    body = FakeKfp.state["recurring"][0]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["pipeline_version_reference"]["pipeline_version_id"] == uploaded["version_id"]
    assert body["runtime_config"]["parameters"][DATA_ROOT_PARAMETER] == "gs://bucket/data"
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1


def test_schedule_before_upload_is_a_clear_error(kfp_host):
    with pytest.raises(client.KubeflowError, match="upload' first"):
        client.schedule(kfp_host, "ctpipe", "0 3 * * *", "ctpipe")


@pytest.mark.parametrize("cron, expected", [("0 3 * * *", "0 0 3 * * *"),
                                            ("0 */5 * * * *", "0 */5 * * * *")])
def test_cron_normalised(cron, expected):
    assert client.normalise_cron(cron) == expected


@pytest.mark.parametrize("cron", ["0 3 * *", "every day", "0 3 * * * * *"])
def test_bad_cron_rejected(cron):
    with pytest.raises(client.KubeflowError):
        client.normalise_cron(cron)


def test_unreachable_host_is_one_line_exit_2():
    result = ctpipe("kubeflow", "upload", "--host", "http://127.0.0.1:9",
                    "--package", str(REPO / "pyproject.toml"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    result = ctpipe("kubeflow", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *")
    assert result.returncode == 2 and "unreachable" in result.stderr


def test_compile_command_writes_the_vertex_spec(tmp_path):
    out = tmp_path / "spec.json"
    result = ctpipe("kubeflow", "compile", "--target", "vertex", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert "Trainer" in json.loads(result.stdout)["tasks"]
    assert json.loads(out.read_text())["pipelineSpec"]["pipelineInfo"]["name"] == "ctpipe"


def test_no_beam_step_builds_a_tfx_sdist_on_the_cluster(kfp_compiled):
    """The KFP entrypoint passes argv[0] on as a Beam arg, so TFX would build and ship an sdist
    of itself in every Beam step unless a dependency flag is there."""
    _, path = kfp_compiled
    spec, _ = load_documents(str(path))
    for label, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        if "kubeflow_v2_run_executor" in " ".join(container["command"]):
            assert "--sdk_container_image=ghcr.io/example/ctpipe:0.1.0" in container["args"], label


def test_stable_step_resolves_the_model_pushed_as_stable_in_this_pipeline_only(tmp_path):
    """`steps resolve --kind stable`: the manifest names stable's version; the Model is the
    `model` input of this pipeline's Pusher run that pushed that version (KFP's MLMD layout)."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from ctpipe.components import release
    from ctpipe.kubeflow import steps

    from tests.kfp_harness import Metadata

    metadata = Metadata(str(tmp_path / "mlmd.sqlite"))
    model_type = {"schemaTitle": "tfx.Model"}

    def cycle(pipeline, run, version):
        contexts = metadata.get_pipeline(pipeline, run)
        trainer = metadata.create_execution(contexts, "Trainer", pb.Execution.RUNNING, 0, {})
        metadata.publish_execution(trainer, contexts, pb.Execution.COMPLETE, {"model": [
            {"uri": f"/{pipeline}/{run}/model", "type": model_type}]}, {})
        [model] = [a for a in metadata.store.get_artifacts() if a.uri.endswith(f"{run}/model")
                   and a.uri.startswith(f"/{pipeline}/")]
        pusher = metadata.create_execution(contexts, "Pusher", pb.Execution.RUNNING, 0,
                                           {"model": [{"name": str(model.id)}]})
        metadata.publish_execution(pusher, contexts, pb.Execution.COMPLETE, {"pushed_model": [
            {"uri": f"/{pipeline}/{run}/pushed", "type": {"schemaTitle": "tfx.PushedModel"},
             "metadata": {"pushed": 1, "pushed_version": str(version)}}]}, {})
        return model

    first = cycle("ctpipe", "run-1", 1)
    second = cycle("ctpipe", "run-2", 2)
    cycle("other", "run-3", 1)  # another pipeline's version 1: never ours
    manifest = str(tmp_path / "models.config")
    executor_input = {"inputs": {"parameterValues": {"manifest": manifest,
                                                     "model_name": "big_tipper"}}}

    def resolved():
        return steps.resolve_stable(metadata.store, "ctpipe", executor_input)

    assert resolved() == {"model": [], "pushed_model": []}  # no manifest yet: cold start
    for stable, expected in ((1, first), (2, second)):
        release.write(manifest, [release.Release("big_tipper", str(tmp_path / "big_tipper"),
                                                 {"stable": stable, "canary": 2})])
        found = resolved()
        assert [m.id for m in found["model"]] == [expected.id], stable
        assert found["pushed_model"][0].uri == f"/ctpipe/run-{stable}/pushed"
    release.write(manifest, [release.Release("big_tipper", str(tmp_path / "big_tipper"),
                                             {"stable": 7})])
    assert resolved()["model"] == []  # stable was never pushed by this pipeline
