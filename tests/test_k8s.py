"""The TF Serving manifests: every overlay renders (kubectl kustomize), every object validates
against the Kubernetes 1.30 schemas offline (kubernetes-validate, strict), and the settings that
matter for serving are there."""
import re
import shutil
import subprocess

import pytest
import yaml

from ctpipe.serving.model_config import parse_models

from tests.conftest import REPO

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
    assert args["model_config_file"] == f"{mounts['config']}/models.config"
    [model] = parse_models(config_map["models.config"])  # the real ModelServerConfig proto
    assert model.name == "big_tipper" and model.base_path.startswith(mounts["models"])
    assert set(model.labels) == {"stable", "canary"} and model.policy == "latest"
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
