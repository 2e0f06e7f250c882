"""Server hardening ("Safe deployment"): REST Content-Length rules, socket timeouts and the
bounded worker pool, gRPC limits and error statuses, MultiInference version rules, the status
tables, warmup of every signature, and TF Serving's wire encoding of Predict outputs.
Small models (tests/test_tf_serving_port.py's half_plus_two, built by TF Serving's generator:
the TF1 model for the server, the TF2 one - six signatures - for warmup), real sockets, real
stubs."""
import json
import os
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from ctpipe.components.signatures import WARMUP_FILE
from ctpipe.serving import http_transport, model_config
from ctpipe.serving.core import ServingCore
from ctpipe.serving.errors import GRPC_CODE_NUMBER, GRPC_CODE_OF_HTTP, HTTP_STATUS, ServingError
from ctpipe.serving.grpc_service import start_grpc, to_tensor_proto
from ctpipe.serving.registry import ModelRegistry
from ctpipe.serving.rest import DEFAULT_TIMEOUT_SECONDS, start_rest
from ctpipe.serving.servables import Servable
from ctpipe.serving.server import start_server

from tests.support import wait_until
from tests.test_tf_serving_port import CLASSIFY, REGRESS, build_half_plus_two

LIMIT = 4096


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_half_plus_two(tmp_path_factory.mktemp("hardening") / "half_plus_two")


@pytest.fixture(scope="module")
def server(base):
    running = start_server(model_config.single_model("default", base), grpc_port=0,
                           rest_port=0, max_request_bytes=LIMIT)
    yield running
    running.stop()


class Rest:
    """start_rest with our own bounds on a model-less registry (the connection rules need no
    model: /monitoring/prometheus/metrics answers any GET)."""

    def __init__(self, **bounds):
        self.registry = ModelRegistry([]).start()
        self.server = start_rest(ServingCore(self.registry), "127.0.0.1", 0, LIMIT, **bounds)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.registry.stop()


@pytest.fixture()
def rest_factory():
    made = []

    def make(**bounds):
        made.append(Rest(**bounds))
        return made[-1]
    yield make
    for rest in made:
        rest.close()


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket):
    """(status, headers, body) of one response; raises on a connection closed before it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def _exchange(port: int, data: bytes):
    with _connect(port) as sock:
        sock.sendall(data)
        status, headers, body = _read_response(sock)
    is_json = headers.get("content-type") == "application/json"
    return status, headers, json.loads(body) if body and is_json else body


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


PREDICT_PATH = "/v1/models/default:predict"


# -- Content-Length ------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, status, fragment", [
    ("", 411, "Content-Length"),
    ("Content-Length: abc\r\n", 400, "not a number"),
    ("Content-Length: 1_0\r\n", 400, "not a number"),
    ("Content-Length: +5\r\n", 400, "not a number"),
    ("Content-Length: -5\r\n", 400, "negative"),
    ("Content-Length: 5\r\nContent-Length: 6\r\n", 400, "conflicting"),
    ("Transfer-Encoding: chunked\r\n", 411, "Transfer-Encoding"),
    (f"Content-Length: {LIMIT + 1}\r\n", 413, "exceeds the limit"),
    ("Content-Length: 1000000000000\r\n", 413, "exceeds the limit"),
])
def test_bad_content_length_is_refused_at_once_with_a_json_error(server, headers, status,
                                                                  fragment):
    """No body is sent: each answer must come without waiting for one (a negative length used
    to slip past the limit), and the connection closes after it."""
    started = time.monotonic()
    with _connect(server.rest_port) as sock:
        sock.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        code, reply_headers, body = _read_response(sock)
        assert _closed_by_server(sock, 5.0)
    assert time.monotonic() - started < 5.0
    assert code == status and fragment in json.loads(body)["error"]
    assert reply_headers["content-type"] == "application/json"
    assert reply_headers["connection"] == "close"


def test_expect_100_continue_over_the_limit_is_refused_before_the_body(server):
    with _connect(server.rest_port) as sock:
        sock.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {10 ** 9}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        code, _, body = _read_response(sock)
    assert code == 413 and "exceeds" in json.loads(body)["error"]


def _predict_after_100_continue(sock: socket.socket):
    """A predict sent with Expect: 100-continue, its body only after the 100: (code, body)."""
    body = json.dumps({"instances": [2.0]}).encode()
    sock.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                 "\r\nExpect: 100-continue\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 100")
    sock.sendall(body)
    code, _, reply = _read_response(sock)
    return code, reply


def test_expect_100_continue_within_the_limit_goes_on(server):
    with _connect(server.rest_port) as sock:
        code, reply = _predict_after_100_continue(sock)
    assert code == 200 and json.loads(reply) == {"predictions": [3.0]}


class _RecordingSocket:
    """The server side of a connection, recording what each sendall sends."""

    def __init__(self, sock, sends):
        self._sock, self._sends = sock, sends

    def sendall(self, data):
        self._sends.append(bytes(data))
        return self._sock.sendall(data)


def test_each_response_leaves_in_one_send_headers_and_body(server, monkeypatch):
    """A response is one sendall (a send drops and retakes the GIL: two per response cost
    REST ~4% at batch 32, 8 threads); the 100 Continue still goes out before the body."""
    sends: list = []
    original = http_transport._SocketWriter.__init__
    monkeypatch.setattr(http_transport._SocketWriter, "__init__", lambda self, sock: original(
        self, _RecordingSocket(sock, sends)))
    with _connect(server.rest_port) as sock:
        code, reply = _predict_after_100_continue(sock)
        sock.sendall(b"GET /v1/models/nosuchmodel HTTP/1.1\r\nHost: x\r\n\r\n")
        missing, _, _ = _read_response(sock)
    assert (code, missing) == (200, 404)
    assert [send[:12] for send in sends] == [b"HTTP/1.1 100", b"HTTP/1.1 200", b"HTTP/1.1 404"]
    assert sends[1].endswith(reply) and b"\r\n\r\n" in sends[2]


def test_a_large_refused_body_still_gets_its_413(server):
    """The client sends a body far over the limit before reading: the server answers 413 and
    drops the rest (lingering close) instead of resetting the connection under it."""
    body = b"x" * (8 * 1024 * 1024)
    with _connect(server.rest_port) as sock:
        sock.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                     "\r\n\r\n".encode())
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, _, reply = _read_response(sock)
    assert code == 413 and "exceeds" in json.loads(reply)["error"]


def test_keep_alive_survives_request_errors(server):
    """A bad JSON body is read whole, so the same connection serves the next request."""
    bad, good = b"{nope", json.dumps({"instances": [2.0]}).encode()
    with _connect(server.rest_port) as sock:
        for body, status in ((bad, 400), (good, 200)):
            sock.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         f"{len(body)}\r\n\r\n".encode() + body)
            code, headers, _ = _read_response(sock)
            assert code == status and headers.get("connection") != "close"


def test_http_layer_errors_are_json(server):
    assert _exchange(server.rest_port, b"PUT /v1/models/default HTTP/1.1\r\nHost: x\r\n\r\n")[::2] \
        == (501, {"error": "Unsupported method ('PUT')"})
    code, _, body = _exchange(server.rest_port, b"GARBAGE\r\n\r\n")
    assert code == 400 and "error" in body


def test_a_get_with_a_body_closes_the_connection(server):
    """The body of a GET is never read, so it must not be parsed as the next request."""
    code, headers, _ = _exchange(server.rest_port, b"GET /v1/models/default HTTP/1.1\r\nHost: x"
                                 b"\r\nContent-Length: 5\r\n\r\nhello")
    assert code == 200 and headers["connection"] == "close"


# -- timeouts and the bounded pool ---------------------------------------------------------------
def test_default_timeout_constant():
    assert DEFAULT_TIMEOUT_SECONDS == 30.0


def test_a_silent_client_is_dropped_after_the_timeout(rest_factory):
    rest = rest_factory(timeout=0.5, max_workers=1, max_pending=4)
    started = time.monotonic()
    with _connect(rest.port) as sock:
        assert _closed_by_server(sock, 10.0)
    assert time.monotonic() - started < 5.0
    status, _, _ = _exchange(rest.port, b"GET /monitoring/prometheus/metrics HTTP/1.1\r\n"
                             b"Host: x\r\n\r\n")
    assert status == 200  # the only worker is free again


def test_a_trickling_client_cannot_stretch_the_deadline(rest_factory):
    """One header byte every 0.2 s is never a 0.5 s silence, yet the whole request must arrive
    within the timeout of its first byte."""
    rest = rest_factory(timeout=0.5, max_workers=1, max_pending=4)
    started = time.monotonic()
    with _connect(rest.port) as sock:
        closed = False
        for byte in b"GET /monitoring/prometheus/metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 10:
                break
        assert closed or _closed_by_server(sock, 1.0)
    assert time.monotonic() - started < 5.0


def test_half_a_body_is_answered_408(server, base):
    registry = ModelRegistry(model_config.single_model("default", base)).start()
    rest = start_rest(ServingCore(registry), "127.0.0.1", 0, LIMIT, timeout=0.5)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    try:
        with _connect(rest.server_address[1]) as sock:
            sock.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                         "\r\n\r\n{\"instances\":".encode())
            code, headers, body = _read_response(sock)
        assert code == 408 and "not received within" in json.loads(body)["error"]
        assert headers["connection"] == "close"
    finally:
        rest.shutdown()
        rest.server_close()
        registry.stop()


def test_beyond_workers_and_waiting_places_connections_get_503(rest_factory):
    rest = rest_factory(timeout=1.5, max_workers=1, max_pending=1)
    holder = _connect(rest.port)  # takes the only worker, sends nothing
    assert wait_until(lambda: rest.server._idle == 0, 5)
    waiting = _connect(rest.port)  # takes the only waiting place
    waiting.sendall(b"GET /monitoring/prometheus/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_until(lambda: len(rest.server._queue) == 1, 5)
    try:
        status, headers, body = _exchange(rest.port, b"GET /monitoring/prometheus/metrics "
                                          b"HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1" and "busy" in body["error"]
        assert rest.server.busy_refusals == 1
        # the holder times out; the waiting connection is then served
        waiting.settimeout(10)
        assert _read_response(waiting)[0] == 200
    finally:
        holder.close()
        waiting.close()


def test_an_idle_keep_alive_connection_yields_to_a_waiting_one(rest_factory):
    rest = rest_factory(timeout=20.0, max_workers=1, max_pending=2)
    request = b"GET /monitoring/prometheus/metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(rest.port) as idle:
        idle.sendall(request)
        code, headers, _ = _read_response(idle)
        assert code == 200 and headers.get("connection") != "close"  # kept alive, now idle
        started = time.monotonic()
        assert _exchange(rest.port, request)[0] == 200
        assert time.monotonic() - started < 5.0  # not the 20 s idle timeout
        assert _closed_by_server(idle, 5.0)


def test_a_taken_port_is_an_os_error(rest_factory):
    rest = rest_factory()
    with pytest.raises(OSError):
        start_rest(ServingCore(rest.registry), "127.0.0.1", rest.port, LIMIT)


def test_rest_bounds_are_validated(rest_factory):
    with pytest.raises(ValueError):
        rest_factory(max_workers=0)
    with pytest.raises(ValueError):
        rest_factory(timeout=0)


# -- gRPC ----------------------------------------------------------------------------------------
class _BlockingRegistry:
    """A registry whose status() waits for `release` (or raises `error`)."""

    def __init__(self, error=None):
        self.release, self.entered, self.error = threading.Event(), threading.Event(), error

    def status(self, name, version=None, label=None):
        self.entered.set()
        if self.error is not None:
            raise self.error
        self.release.wait(10)
        return []

    def model_names(self):
        return []

    def labels(self, name):
        return {}


def _status_request(name="m"):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return request


def test_grpc_rpcs_beyond_the_limit_are_resource_exhausted():
    registry = _BlockingRegistry()
    server, port = start_grpc(ServingCore(registry), "127.0.0.1", 0, LIMIT, workers=1,
                              max_concurrent_rpcs=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            first = stub.GetModelStatus.future(_status_request(), timeout=20)
            assert registry.entered.wait(10)
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetModelStatus(_status_request(), timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            registry.release.set()
            assert len(first.result().model_version_status) == 0
    finally:
        registry.release.set()
        server.stop(grace=0)


class _CountingRegistry(_BlockingRegistry):
    """Counts the status() calls running at once (each waits for `release`)."""

    def __init__(self):
        super().__init__()
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def status(self, name, version=None, label=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().status(name, version, label)
        finally:
            with self.lock:
                self.running -= 1


def test_grpc_handler_threads_default_to_twice_the_cpus(monkeypatch):
    """Without --grpc_max_threads a server that may run on 1 of the machine's 4 CPUs runs 2
    handlers at once (the former fixed 8, or 2 x the machine's CPUs, ran 6 of these 6 RPCs at
    once); the RPCs beyond them wait for a thread instead of being refused, as the concurrency
    limit is per thread (8 x 2)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # one schedulable CPU
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # of a bigger machine
    registry = _CountingRegistry()
    server, port = start_grpc(ServingCore(registry), "127.0.0.1", 0, LIMIT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            calls = [stub.GetModelStatus.future(_status_request(), timeout=20)
                     for _ in range(6)]
            assert wait_until(lambda: registry.most >= 2, 10)
            time.sleep(0.5)  # time for more handlers to enter, were there more threads
            assert registry.most == 2
            registry.release.set()
            assert all(len(call.result().model_version_status) == 0 for call in calls)
    finally:
        registry.release.set()
        server.stop(grace=0)


def test_rest_threads_default_to_four_per_cpu_this_process_may_run_on(monkeypatch,
                                                                       rest_factory):
    """TF Serving's --rest_api_num_threads defaults to 4 x NumSchedulableCPUs()
    (model_servers/main.cc): a server pinned to 3 CPUs of a 64-CPU node runs 12 REST threads,
    not 256."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    rest = rest_factory()
    assert rest.server.max_workers == 12
    assert len([t for t in threading.enumerate() if t.name.startswith("rest-")
                and t in rest.server._workers]) == 12


def test_grpc_max_threads_below_one_is_a_usage_error(capsys):
    from ctpipe.pipeline.commands.main import main

    assert main(["serve", "--model-base-path", "/nonexistent", "--model-name", "m",
                 "--grpc_max_threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--grpc_max_threads must be at least 1, got 0" in err


def test_grpc_unexpected_errors_are_internal_not_unknown():
    core = ServingCore(_BlockingRegistry(error=RuntimeError("disk on fire")))
    server, port = start_grpc(core, "127.0.0.1", 0, LIMIT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    _status_request(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert "RuntimeError: disk on fire" in raised.value.details()
        assert 'API="model_status",entrypoint="GRPC",status="INTERNAL"' in core.metrics.render()
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_grpc_rejections_before_the_core_are_counted(server, stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_pb2.PredictRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Missing ModelSpec"
    assert 'API="predict",entrypoint="GRPC",status="INVALID_ARGUMENT"' in \
        server.core.metrics.render()


def test_predict_outputs_use_the_typed_value_fields(stub):
    """TF Serving writes outputs with AsProtoField: float_val even for a batch (make_tensor_proto
    would put 2+ values in tensor_content)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0, 4.0, 6.0], np.float32)))
    output = stub.Predict(request, timeout=10).outputs["y"]
    assert list(output.float_val) == [3.0, 4.0, 5.0] and output.tensor_content == b""
    assert [d.size for d in output.tensor_shape.dim] == [3]


@pytest.mark.parametrize("array", [
    np.array([[1.5, -2.0], [np.nan, np.inf]], np.float32), np.arange(6, dtype=np.int64),
    np.array([1, 2], np.int32), np.array([True, False]), np.array(3.25, np.float64),
    np.array([b"a", b"\xff"], dtype=object), np.zeros([0, 3], np.float32),
    np.array([1, 2], np.uint8), np.array([1.0], np.float16),
])
def test_to_tensor_proto_round_trips(array):
    back = tf.make_ndarray(to_tensor_proto(array))
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


# -- MultiInference beyond TF Serving's own cases --------------------------------------------------
def _multi(specs, x=2.0):
    request = inference_pb2.MultiInferenceRequest()
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    for signature, method, version, label in specs:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        if version is not None:
            task.model_spec.version.value = version
        if label:
            task.model_spec.version_label = label
    return request


@pytest.mark.parametrize("second", [(999, ""), (None, "stable")])
def test_multi_inference_tasks_must_not_name_other_versions(stub, second):
    request = _multi([("regress_x_to_y", REGRESS, 123, ""), ("classify_x_to_y", CLASSIFY) + second])
    with pytest.raises(grpc.RpcError) as raised:
        stub.MultiInference(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "same model version" in raised.value.details()


def test_multi_inference_later_tasks_may_leave_the_version_to_the_first(stub):
    request = _multi([("regress_x_to_y", REGRESS, 123, ""), ("regress_x_to_y2", REGRESS, None, ""),
                      ("classify_x_to_y", CLASSIFY, 123, "")])
    results = stub.MultiInference(request, timeout=10).results
    assert [r.model_spec.version.value for r in results] == [123, 123, 123]
    assert results[1].regression_result.regressions[0].value == 4.0


@pytest.mark.parametrize("specs, code, fragment", [
    ([], "INVALID_ARGUMENT", "no tasks"),
    ([("regress_x2_to_y3", REGRESS, None, "")], "INVALID_ARGUMENT", ""),  # float input
    # TF Serving's default (no method-name check): refused for its inputs, not its method
    ([("serving_default", REGRESS, None, "")], "INVALID_ARGUMENT",
     "No regression inputs found in SignatureDef"),
    ([("regress_x_to_y", "tensorflow/serving/predict", None, "")], "UNIMPLEMENTED", "predict"),
])
def test_multi_inference_refusals(stub, specs, code, fragment):
    with pytest.raises(grpc.RpcError) as raised:
        stub.MultiInference(_multi(specs), timeout=10)
    assert raised.value.code() == getattr(grpc.StatusCode, code)
    assert fragment in raised.value.details()


def test_multi_inference_with_context(stub):
    request = inference_pb2.MultiInferenceRequest()
    listed = request.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(100.0)
    listed.examples.add().features.feature["x"].float_list.value.append(2.0)  # overrides
    listed.examples.add()  # takes the context's x
    task = request.tasks.add(method_name=REGRESS)
    task.model_spec.name = "default"
    task.model_spec.signature_name = "regress_x_to_y"
    values = [r.value for r in stub.MultiInference(request, timeout=10).results[0]
              .regression_result.regressions]
    assert values == [3.0, 52.0]


# -- status tables -----------------------------------------------------------------------------
def test_status_tables_cover_every_grpc_code():
    names = {code.name for code in grpc.StatusCode}
    assert set(HTTP_STATUS) == names == set(GRPC_CODE_NUMBER)
    assert all(GRPC_CODE_NUMBER[code.name] == code.value[0] for code in grpc.StatusCode)
    assert set(GRPC_CODE_OF_HTTP.values()) <= names
    # TF Serving's ToHTTPStatusCode (model_servers/http_server.cc), literally
    assert HTTP_STATUS == {
        "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
        "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
        "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
    for http, code in GRPC_CODE_OF_HTTP.items():
        if http in HTTP_STATUS.values():
            assert HTTP_STATUS[code] == http  # the way back lands on a code that maps there


def test_error_statuses_map_through_the_table():
    for code, http in HTTP_STATUS.items():
        assert ServingError(code, "x").http == http
    assert ServingError("RESOURCE_EXHAUSTED", "x", http=413).http == 413


# -- warmup ------------------------------------------------------------------------------------
def _write_warmup(export_dir, logs):
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def _example_input(model_input, x=2.0):
    model_input.example_list.examples.add().features.feature["x"].float_list.value.append(x)


def _logs():
    predict = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="default"))
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0]))
    classify = prediction_log_pb2.ClassifyLog()
    classify.request.model_spec.signature_name = "classify_x_to_y"
    _example_input(classify.request.input)
    regress = prediction_log_pb2.RegressLog()
    regress.request.model_spec.signature_name = "regress_x_to_y"
    _example_input(regress.request.input)
    multi = prediction_log_pb2.MultiInferenceLog()
    task = multi.request.tasks.add(method_name=REGRESS)
    task.model_spec.signature_name = "regress_x_to_y2"
    _example_input(multi.request.input)
    return [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
                request=predict)),
            prediction_log_pb2.PredictionLog(classify_log=classify),
            prediction_log_pb2.PredictionLog(regress_log=regress),
            prediction_log_pb2.PredictionLog(multi_inference_log=multi)]


class _Spy:
    def __init__(self, key, call, seen):
        self.key, self.call, self.seen = key, call, seen

    def __call__(self, tensors):
        self.seen.append(self.key)
        return self.call(tensors)


class _ProtoSpy:
    """A ProtoCall that records its signature when a request runs on it (the proto path);
    its own warm-up runs are not requests and are not recorded."""

    def __init__(self, key, proto_call, seen):
        self.key, self.proto_call, self.seen = key, proto_call, seen

    def run(self, requests):
        self.seen.append(self.key)
        return self.proto_call.run(requests)

    def __getattr__(self, name):
        return getattr(self.proto_call, name)


def _spied(path):
    """A servable whose every signature call - on the tensor path or the proto path - is
    recorded in `seen` under its signature key."""
    servable = Servable("default", 123, path)
    seen = []
    servable._calls = {k: _Spy(k, v, seen) for k, v in servable._calls.items()}
    servable._proto_calls = {k: _ProtoSpy(k, v, seen)
                             for k, v in servable._proto_calls.items()}
    return servable, seen


@pytest.fixture()
def export_dir(tmp_path):
    return os.path.join(build_half_plus_two(tmp_path / "m", tf2=True), "00000123")


def test_every_record_type_replays_against_its_own_signature(export_dir):
    _write_warmup(export_dir, _logs())
    servable, seen = _spied(export_dir)
    assert servable.warm_up() == 4 + 2  # four records, then the two x2 signatures
    assert seen[:4] == ["serving_default", "classify_x_to_y", "regress_x_to_y",
                        "regress_x_to_y2"]
    assert sorted(seen[4:]) == ["classify_x2_to_y3", "regress_x2_to_y3"]
    assert servable.warmed_up == {
        "serving_default": "record", "classify_x_to_y": "record", "regress_x_to_y": "record",
        "regress_x_to_y2": "record", "classify_x2_to_y3": "synthetic",
        "regress_x2_to_y3": "synthetic"}


def test_without_a_warmup_file_every_signature_is_tried_once(export_dir):
    servable, seen = _spied(export_dir)
    assert servable.warm_up() == 3  # serving_default and the two x2 signatures ran
    assert sorted(seen) == sorted(servable.signature_defs)
    skipped = {k for k, v in servable.warmed_up.items() if v.startswith("skipped")}
    assert skipped == {"classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"}  # x required
    assert "Feature: x" in servable.warmed_up["regress_x_to_y"]


def test_a_failing_record_fails_the_load_as_in_tf_serving(export_dir):
    log = _logs()[1]
    log.classify_log.request.model_spec.signature_name = "regress_x_to_y"  # wrong method
    _write_warmup(export_dir, [log])
    with pytest.raises(ServingError) as raised:
        Servable("default", 123, export_dir).warm_up()
    assert raised.value.code == "INVALID_ARGUMENT"


def test_unsupported_and_too_many_records_fail_the_load(export_dir, monkeypatch):
    from ctpipe.serving import servables

    _write_warmup(export_dir, [prediction_log_pb2.PredictionLog(
        session_run_log=prediction_log_pb2.SessionRunLog())])
    with pytest.raises(ServingError) as raised:
        Servable("default", 123, export_dir).warm_up()
    assert raised.value.code == "UNIMPLEMENTED"
    _write_warmup(export_dir, _logs())
    monkeypatch.setattr(servables, "MAX_WARMUP_RECORDS", 3)
    with pytest.raises(ServingError) as raised:
        Servable("default", 123, export_dir).warm_up()
    assert "exceeds the maximum (3)" in raised.value.message


def test_a_model_whose_synthetic_warmup_fails_still_loads(tmp_path):
    """A signature that raises on zeros (a check on its input) is skipped, the version serves."""
    class Picky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):
            tf.debugging.assert_positive(x)
            return {"y": x}

    module = Picky()
    base = tmp_path / "picky"
    tf.saved_model.save(module, str(base / "1"),
                        signatures={"serving_default": module.predict.get_concrete_function()})
    running = start_server(model_config.single_model("picky", str(base)), grpc_port=0,
                           rest_port=0)
    try:
        servable = running.core.registry.resolve("picky")
        assert servable.warmed_up["serving_default"].startswith("skipped")
        assert servable.predict("", {"x": np.array([2.0], np.float32)})["y"].tolist() == [2.0]
    finally:
        running.stop()
