"""Local server behaviour beyond the client contract: hot swap under load, version policy and
labels from a model config file, reload, REST error bodies, size limit, metrics, binding."""
import json
import urllib.error
import urllib.request

import pytest

from ctpipe.components.atomic_pusher import publish_atomically
from ctpipe.serving import model_config
from ctpipe.serving.clients import GrpcClient
from ctpipe.serving.server import start_server

from tests.support import RequestLoad, wait_until

pytestmark = pytest.mark.e2e
MODEL = "big_tipper"


def _post(url, body: bytes, content_type="application/json"):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture()
def pushed(long_run):
    """The oldest and newest version the long run left on disk (retention removes others)."""
    from ctpipe.components.layout import versions_on_disk

    base = long_run.home / "serving" / MODEL
    on_disk = versions_on_disk(str(base))
    return base / str(on_disk[0]), base / str(on_disk[-1])


@pytest.fixture()
def versions(pushed, tmp_path):
    """A base path holding those two as versions 1 and 2."""
    base = tmp_path / "two" / MODEL
    for directory in pushed:
        publish_atomically(str(directory), str(base))
    return base


def test_new_push_swaps_in_without_failed_requests(pushed, tmp_path):
    base = tmp_path / "models" / MODEL
    publish_atomically(str(pushed[0]), str(base))
    server = start_server(model_config.single_model(MODEL, str(base)), grpc_port=0,
                          rest_port=0, poll_seconds=0.2)
    client = GrpcClient(server.grpc_address, MODEL, retries=0)
    row = {"examples": [b""]}  # an empty tf.Example: every feature missing, still scored
    try:
        with RequestLoad(lambda: client.predict(row, "serving_default")) as load:
            assert wait_until(lambda: load.served > 20)
            assert publish_atomically(str(pushed[1]), str(base)) == 2
            assert wait_until(lambda: [s["version"] for s in client.status()
                                       if s["state"] == "AVAILABLE"] == [2])
            before = load.served
            assert wait_until(lambda: load.served > before + 20)
    finally:
        client.close()
        metrics = server.core.metrics.render()
        server.stop()
    assert load.failures == []
    assert 'version="2",version_label="",API="predict"' in metrics
    assert 'version="1",version_label="",API="predict"' in metrics


def test_policy_and_labels_from_a_model_config_file(versions, tmp_path):
    config = model_config.to_text([model_config.ModelSpecConfig(
        name=MODEL, base_path=str(versions), policy="specific", specific_versions=(1, 2),
        labels={"stable": 1, "canary": 2})])
    server = start_server(model_config.parse_models(config), grpc_port=0, rest_port=0)
    try:
        status, body = _post(f"{server.rest_url}/v1/models/{MODEL}/labels/stable:predict",
                             json.dumps({"signature_name": "serving_default",
                                         "instances": [{"b64": ""}]}).encode())
        assert status == 200 and len(body["predictions"]) == 1
        stable = GrpcClient(server.grpc_address, MODEL, version_label="stable")
        canary = GrpcClient(server.grpc_address, MODEL, version_label="canary")
        assert [s["version"] for s in stable.status()] == [1]
        assert [s["version"] for s in canary.status()] == [2]
        with urllib.request.urlopen(f"{server.rest_url}/v1/models/{MODEL}") as response:
            listed = json.loads(response.read())["model_version_status"]
        assert sorted(s["version"] for s in listed) == ["1", "2"]
        # move the label with HandleReloadConfigRequest, as a rollout would
        import grpc
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
        from tensorflow_serving.config import model_server_config_pb2
        moved = config.replace("value: 1", "value: 2") if "value: 1" in config else config
        request = model_management_pb2.ReloadConfigRequest(config=text_format.Parse(
            moved, model_server_config_pb2.ModelServerConfig()))
        with grpc.insecure_channel(server.grpc_address) as channel:
            reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=30)
        assert reply.status.error_code == 0, reply.status.error_message
        assert [s["version"] for s in stable.status()] == [2]
        stable.close()
        canary.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(long_run):
    running = start_server(model_config.single_model(MODEL, str(long_run.home / "serving" / MODEL)),
                           grpc_port=0, rest_port=0, max_request_bytes=64 * 1024)
    yield running
    running.stop()


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "JSON Parse error"),
    (b'{"instances": [1], "inputs": [1]}', 400, "exactly one of"),
    (b'{"signature_name": "nope", "instances": [1]}', 400, "not found"),
    (b'[1, 2]', 400, "JSON Value: [1,2] Is not object"),  # TF Serving's json_tensor.cc
])
def test_rest_errors_are_json_with_status(server, body, status, fragment):
    code, reply = _post(f"{server.rest_url}/v1/models/{MODEL}:predict", body)
    assert code == status and fragment in reply["error"]


def test_rest_404s(server):
    for path in ("/v1/models/nope", f"/v1/models/{MODEL}/versions/77", "/v2/whatever"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.rest_url + path)
        assert error.value.code == 404 and "error" in json.loads(error.value.read())
    # an unknown label is a bad request in TF Serving (ServerCore: INVALID_ARGUMENT)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server.rest_url}/v1/models/{MODEL}/labels/missing")
    assert error.value.code == 400


def test_request_size_is_limited(server):
    code, reply = _post(f"{server.rest_url}/v1/models/{MODEL}:predict",
                        json.dumps({"instances": ["x" * 100_000]}).encode())
    assert code == 413 and "exceeds" in reply["error"]


def test_metrics_and_loopback_binding(server):
    _post(f"{server.rest_url}/v1/models/{MODEL}:predict", b"{bad")
    _post(f"{server.rest_url}/v1/models/{MODEL}:predict", b'{"instances": [{"b64": ""}]}')
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics") as response:
        text = response.read().decode()
    assert ":tensorflow:serving:request_latency_bucket" in text
    assert 'API="predict",entrypoint="REST",status="OK"' in text
    assert 'API="predict",entrypoint="REST",status="INVALID_ARGUMENT"' in text
    assert server.host == "127.0.0.1"


def test_serve_command_rejects_bad_config(tmp_path):
    from tests.support import ctpipe

    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: 'x' } }")
    result = ctpipe("serve", "--model-config-file", str(bad), "--port", "0",
                    "--rest-api-port", "0")
    assert result.returncode == 2 and "base_path" in result.stderr
