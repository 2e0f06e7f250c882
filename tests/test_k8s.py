"""The TF Serving manifests: every overlay renders (kubectl kustomize), every object validates
against the Kubernetes 1.30 schemas offline (kubernetes-validate, strict), and the settings that
matter for serving are there."""
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support import REPO

K8S = REPO / "serving" / "k8s"
OVERLAYS = {"gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu", "default": K8S}
KUBERNETES_VERSION = "1.30.0"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl (with built-in kustomize) is not installed")


def render(path):
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request):
    return request.param, render(OVERLAYS[request.param])


def _by_kind(docs):
    return {doc["kind"]: doc for doc in docs}


def _container(docs):
    return _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _args(docs):
    return dict(a.lstrip("-").split("=", 1) for a in _container(docs)["args"])


def test_every_object_validates_against_kubernetes_schemas(rendered):
    import kubernetes_validate

    _, docs = rendered
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "ConfigMap",
                                         "PersistentVolumeClaim", "PodDisruptionBudget",
                                         "HorizontalPodAutoscaler", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_gpu_is_the_default_and_cpu_has_none(rendered):
    name, docs = rendered
    container, pod = _container(docs), _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    gpu = name in ("gpu", "default")
    assert container["image"] == ("tensorflow/serving:2.16.1-gpu" if gpu
                                  else "tensorflow/serving:2.16.1")
    limits = container["resources"]["limits"]
    if gpu:
        assert limits["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu"
                                           for t in pod["tolerations"])
        assert 0 < float(_args(docs)["per_process_gpu_memory_fraction"]) < 1
    else:
        assert "nvidia.com/gpu" not in limits and "tolerations" not in pod


def test_ports_probes_and_service(rendered):
    _, docs = rendered
    container = _container(docs)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 8500,
                                                                           "http": 8501}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/v1/models/big_tipper", "port": "http"}
    service = _by_kind(docs)["Service"]
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [8500, 8501]
    selector = service["spec"]["selector"]
    pod_labels = _by_kind(docs)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        spec = _by_kind(docs)[kind]["spec"]
        labels = (spec.get("selector") or spec["podSelector"])["matchLabels"]
        assert labels.items() <= pod_labels.items(), kind
    assert _by_kind(docs)["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        _by_kind(docs)["Deployment"]["metadata"]["name"]


def test_server_flags_and_config_files(rendered):
    name, docs = rendered
    args = _args(docs)
    assert args["port"] == "8500" and args["rest_api_port"] == "8501"
    for flag in ("model_config_file_poll_wait_seconds", "batching_parameters_file",
                 "monitoring_config_file"):
        assert flag in args
    assert args["enable_batching"] == "true" and args["enable_model_warmup"] == "true"
    config_map = _by_kind(docs)["ConfigMap"]["data"]
    mounts = {m["name"]: m["mountPath"] for m in _container(docs)["volumeMounts"]}
    # The release manifest on the models volume decides what serves - nothing pinned here.
    assert args["model_config_file"] == f"{mounts['models']}/models.config"
    assert "models.config" not in config_map
    assert "allow_version_labels_for_unavailable_models" not in args
    assert float(args["model_config_file_poll_wait_seconds"]) <= 10
    [init] = _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][-1]
    assert script.startswith("[ -s /models/models.config ] ||")  # never overwrites a release
    assert {m["mountPath"] for m in init["volumeMounts"]} == {mounts["models"]}
    assert 'path: "/monitoring/prometheus/metrics"' in config_map["monitoring.config"]
    batch = int(re.search(r"max_batch_size \{ value: (\d+) \}", config_map["batching.config"])[1])
    threads = int(re.search(r"num_batch_threads \{ value: (\d+) \}",
                            config_map["batching.config"])[1])
    if name == "cpu":
        assert batch <= 64 and threads <= int(_container(docs)["resources"]["limits"]["cpu"])
    else:
        assert batch >= 128


def test_restricted_security_context_and_read_only_models(rendered):
    _, docs = rendered
    pod = _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    container = _container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    models = next(m for m in _container(docs)["volumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is True
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["claimName"] == _by_kind(docs)["PersistentVolumeClaim"]["metadata"]["name"]


def test_the_bootstrap_manifest_is_written_once_and_parses(tmp_path):
    """Run the init container's script as the pod would (with /models pointed at a folder)."""
    [init] = _by_kind(render(OVERLAYS["default"]))["Deployment"]["spec"]["template"]["spec"][
        "initContainers"]
    script = init["command"][-1].replace("/models/", f"{tmp_path}/")
    subprocess.run(["sh", "-c", script], check=True)
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    written = (tmp_path / "models.config").read_text()
    config = text_format.Parse(written, model_server_config_pb2.ModelServerConfig())
    assert config.HasField("model_config_list") and not config.model_config_list.config
    (tmp_path / "models.config").write_text("a release")
    subprocess.run(["sh", "-c", script], check=True)
    assert (tmp_path / "models.config").read_text() == "a release"


CANARY_ROUTE = K8S / "canary-route"


def _route():
    docs = render(CANARY_ROUTE)
    return docs, next(d for d in docs if d["kind"] == "HTTPRoute")


def test_canary_route_renders_and_core_objects_validate():
    import kubernetes_validate

    docs, route = _route()
    for doc in docs:
        if doc["kind"] != "HTTPRoute":  # a Gateway API CRD: checked structurally below
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    service = _by_kind(docs)["Service"]
    ports = {p["port"] for p in service["spec"]["ports"]}
    assert route["metadata"]["namespace"] == service["metadata"]["namespace"]
    for rule in route["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            assert backend["name"] == service["metadata"]["name"] and backend["port"] in ports
        weights = [b.get("weight", 1) for b in rule["backendRefs"]]
        if len(weights) > 1:
            assert sum(weights) == 100


def route_request(route, path, draw):
    """What a Gateway API implementation does with one request path: the first rule whose
    match fits (Exact before PathPrefix, as the spec orders them), a backend chosen by weight
    (`draw` in [0, 100)), and its URLRewrite. Returns the path the backend receives."""
    def matches(match):
        value, kind = match["path"]["value"], match["path"]["type"]
        if kind == "Exact":
            return path == value
        return path == value or path.startswith(value.rstrip("/") + "/")

    rules = sorted(route["spec"]["rules"], key=lambda rule: min(
        0 if m["path"]["type"] == "Exact" else 1 for m in rule["matches"]))
    for rule in rules:
        if any(matches(m) for m in rule["matches"]):
            total = 0
            for backend in rule["backendRefs"]:
                total += backend.get("weight", 100 // len(rule["backendRefs"]))
                if draw < total:
                    for item in backend.get("filters", []):
                        if item["type"] == "URLRewrite":
                            return item["urlRewrite"]["path"]["replaceFullPath"]
                    return path
    raise AssertionError(f"no rule routes {path}")


def test_canary_route_splits_unlabelled_predicts_on_a_real_server(long_run, tmp_path):
    """Requests routed as the HTTPRoute says, sent to our TF-Serving-compatible server that
    serves the release manifest: 10 % of unlabelled predicts are answered by the canary."""
    import json
    import urllib.request

    from ctpipe.components import release
    from ctpipe.components.atomic_pusher import publish_atomically
    from ctpipe.components.layout import versions_on_disk
    from ctpipe.serving import model_config
    from ctpipe.serving.server import start_server

    _, route = _route()
    base = tmp_path / "serving" / "big_tipper"
    pushed = long_run.home / "serving" / "big_tipper"
    on_disk = versions_on_disk(str(pushed))
    for version in (on_disk[0], on_disk[-1]):  # become versions 1 and 2 here
        publish_atomically(str(pushed / str(version)), str(base))
    manifest = release.manifest_path(str(tmp_path / "serving"))
    release.write(manifest, [release.Release("big_tipper", str(base), {"stable": 1,
                                                                        "canary": 2})])
    server = start_server(model_config.single_model("big_tipper", str(base)), grpc_port=0,
                          rest_port=0, poll_seconds=0.2, config_file=manifest)
    body = json.dumps({"signature_name": "serving_default",
                       "instances": [{"b64": ""}]}).encode()

    def score(path):
        request = urllib.request.Request(server.rest_url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["predictions"][0][0]

    try:
        by_label = {label: score(f"/v1/models/big_tipper/labels/{label}:predict")
                    for label in ("stable", "canary")}
        assert by_label["stable"] != by_label["canary"]
        answers = [score(route_request(route, "/v1/models/big_tipper:predict", draw))
                   for draw in range(0, 100, 5)]
        assert route_request(route, "/v1/models/big_tipper/versions/1:predict", 99) == \
            "/v1/models/big_tipper/versions/1:predict"
        assert route_request(route, "/v1/models/big_tipper", 99) == "/v1/models/big_tipper"
    finally:
        server.stop()
    assert answers.count(by_label["canary"]) == 2 and answers.count(by_label["stable"]) == 18
