"""TF Serving's REST API (port 8501) over the shared core.

GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
GET  /monitoring/prometheus/metrics

Errors are {"error": "..."} with the HTTP status of the gRPC code (pipeline/errors.py
HTTP_STATUS, TF Serving's ToHTTPStatusCode): 400 bad request, 404 unknown model/version/label,
500 internal - plus the statuses the HTTP layer answers by itself: 408 (the request did not
arrive in time), 411 (a POST without Content-Length), 413 (body over the limit, refused before
it is read), 501 (an HTTP method other than GET/POST), 503 (every worker and waiting place
taken).

Bounds, so that no client can hold the server:
- `timeout` (DEFAULT_TIMEOUT_SECONDS): a request - line, headers and body - must arrive within
  it of its first byte (the first request of a connection: of a worker taking it), and an idle
  keep-alive connection is closed after it; every socket write has it too.
- `max_workers` threads serve connections, one connection each at a time; up to `max_pending`
  more accepted connections wait for a worker (in arrival order); beyond that a connection is
  answered 503 with Retry-After at once - a short queue absorbs a burst, a flood is refused
  rather than queued without bound. While connections wait, a worker closes its keep-alive
  connection after the response it is writing, and idle keep-alive connections are closed, so
  waiting connections get a worker within about one request time.
- `max_body_bytes`: a larger Content-Length is answered 413 without reading the body.
"""
from __future__ import annotations

import collections
import http.server
import json
import logging
import os
import re
import select
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Optional, Tuple

from google.protobuf import json_format

from ctpipe.pipeline.errors import ServingError
from ctpipe.serving import json_codec
from ctpipe.serving.core import ServingCore
from ctpipe.serving.grpc_service import metadata_response, status_response

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
# TF Serving's default for --rest_api_num_threads is 4 x the CPUs
DEFAULT_MAX_WORKERS = max(8, 4 * (os.cpu_count() or 2))
DEFAULT_MAX_PENDING = 64
# After refusing a body (413, bad Content-Length), read and drop what the client still sends
# for this long / this much, so it sees our answer instead of a reset connection.
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 * 1024 * 1024
_IDLE_POLL_SECONDS = 0.1

ROUTE = re.compile(r"^(?i:/v1/models)/(?P<name>[^/:]+)"
                   r"(?:(?i:/versions)/(?P<version>\d+)|(?i:/labels)/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>(?i:/metadata))|:(?P<verb>predict|classify|regress))?$")
API_PREFIX = re.compile(r"^(?i:/v1)(?:/|$)")
METRICS_PATH = "/monitoring/prometheus/metrics"
MAX_VERSION = 2 ** 63 - 1  # versions are int64


def _json_dict(message, preserve_names: bool) -> Dict[str, Any]:
    """MessageToDict as TF Serving's MessageToJsonString with always_print_fields_with_no_presence:
    scalars, repeated and map fields are printed at their defaults ("name": "", "dim": [],
    "defaults": {}), int64 as strings, enums by name; unset messages and oneofs are not."""
    try:
        return json_format.MessageToDict(message, preserving_proto_field_name=preserve_names,
                                         always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5 names the option including_default_value_fields
        return json_format.MessageToDict(message, preserving_proto_field_name=preserve_names,
                                         including_default_value_fields=True)


def status_json(core: ServingCore, name: str, version: Optional[int], label: Optional[str]):
    """GetModelStatusResponse as JSON, as TF Serving prints it (its json_names are the proto
    names: model_version_status, error_code, error_message)."""
    return _json_dict(status_response(core, name, version, label), preserve_names=False)


def metadata_json(core: ServingCore, name: str, version: Optional[int], label: Optional[str]):
    """GetModelMetadataResponse as TF Serving's REST API prints it (http_rest_api_util.cc): the
    model_spec and the unpacked SignatureDefMap, each with proto field names and default
    values, as {"model_spec": ..., "metadata": {"signature_def": {"signature_def": ...}}}."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = metadata_response(core.metadata("REST", name, version, label))
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return {"model_spec": _json_dict(response.model_spec, preserve_names=True),
            "metadata": {"signature_def": _json_dict(signature_map, preserve_names=True)}}


class _SocketReader:
    """The request side of a connection, with a deadline: every wait for bytes is at most
    `timeout`, and none goes past `deadline` (the time by which the request must be in).
    Buffered like the file http.server reads, and it can say whether bytes are waiting."""

    def __init__(self, sock: socket.socket, timeout: float):
        self._sock, self.timeout = sock, timeout
        self._buffer = bytearray()
        self.deadline: Optional[float] = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _fill(self) -> bool:
        wait = self.timeout
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"request not received within {self.timeout:g} s")
        self._sock.settimeout(wait)
        chunk = self._sock.recv(256 * 1024)
        self._buffer += chunk
        return bool(chunk)

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def readline(self, limit: int = -1) -> bytes:
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                count = end + 1
                break
            searched = len(self._buffer)
            if 0 <= limit <= len(self._buffer) or not self._fill():
                count = len(self._buffer)
                break
        return self._take(count if limit < 0 else min(count, limit))

    def read(self, count: int = -1) -> bytes:
        while (count < 0 or len(self._buffer) < count) and self._fill():
            pass
        return self._take(len(self._buffer) if count < 0 else count)

    def close(self) -> None:
        self._buffer.clear()


class _SocketWriter:
    """wfile: every write is a sendall (bounded by the socket's timeout)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


def make_handler(core: ServingCore, max_body_bytes: int,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ctpipe-serving"
        timeout_seconds = timeout

        def log_message(self, *args):  # access logs off: metrics cover traffic
            pass

        # -- connection: deadlines, keep-alive that yields to waiting connections ------------
        def setup(self):
            self.connection = self.request
            # Headers and body go out as two writes on a keep-alive connection; without
            # TCP_NODELAY, Nagle + the client's delayed ACK add ~40-90 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connection.settimeout(self.timeout_seconds)
            self.rfile = _SocketReader(self.connection, self.timeout_seconds)
            self.wfile = _SocketWriter(self.connection)
            self._linger = False

        def handle(self):
            self.close_connection = True
            self._handle_in_time()
            while not self.close_connection and self._next_request_arrives():
                self._handle_in_time()

        def _handle_in_time(self):
            self.rfile.deadline = time.monotonic() + self.timeout_seconds
            try:
                self.handle_one_request()
            except OSError:  # reset or broken pipe: the client is gone
                self.close_connection = True

        def _next_request_arrives(self) -> bool:
            """Wait for the next request on a keep-alive connection: True when bytes (or the
            close) arrive; False after `timeout` idle, or at once when connections wait for a
            worker."""
            if self.rfile.buffered:
                return True
            poller = select.poll()  # not select(): a server may hold fds past FD_SETSIZE
            poller.register(self.connection, select.POLLIN | select.POLLPRI)
            deadline = time.monotonic() + self.timeout_seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if poller.poll(1000 * min(left, _IDLE_POLL_SECONDS)):
                    return True  # bytes, or the client's close (read as the end)
                if self.server.waiting():
                    return False

        def _received(self) -> None:
            """The request is in: no deadline while we work, the plain timeout for writes."""
            self.rfile.deadline = None
            self.connection.settimeout(self.timeout_seconds)

        def finish(self):
            if self._linger:
                _drain(self.connection)

        # -- responses ---------------------------------------------------------------------
        def _send(self, status: int, body: Any, content_type="application/json") -> None:
            data = body.encode() if isinstance(body, str) else \
                json.dumps(body, allow_nan=True).encode()
            self.connection.settimeout(self.timeout_seconds)
            if self.server.waiting():
                self.close_connection = True  # let a waiting connection have this worker
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, error: ServingError) -> None:
            self._send(error.http, {"error": error.message})

        def send_error(self, code, message=None, explain=None):
            """http.server's own refusals (bad request line, headers too long, unsupported
            method...) as JSON errors like ours, on a connection that then closes."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":  # no parsable request line: answer HTTP/1.1
                self.request_version = self.protocol_version
            short = self.responses.get(code, ("Error",))[0]
            try:
                self._send(code, {"error": message or short})
            except OSError:
                pass

        def handle_expect_100(self):
            """Expect: 100-continue: refuse a bad or too large body before the client sends
            it; otherwise tell it to go on."""
            if self.command == "POST":
                try:
                    self._content_length()
                except ServingError as error:
                    self._error(error)
                    return False
            return super().handle_expect_100()

        # -- requests ----------------------------------------------------------------------
        def _route(self) -> Tuple[Dict[str, Optional[str]], Optional[int]]:
            path = self.path.split("?", 1)[0]
            match = ROUTE.match(path)
            if not match:
                if API_PREFIX.match(path):
                    if self.command == "GET" and re.fullmatch(r"(?i:/v1/models)/?", path):
                        raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
                    raise ServingError("INVALID_ARGUMENT",
                                       f"Malformed request: {self.command} {self.path}")
                raise ServingError("NOT_FOUND", f"Malformed request: {self.command} {self.path}")
            parts = match.groupdict()
            for key in ("name", "label"):
                if parts[key] is not None:
                    parts[key] = urllib.parse.unquote(parts[key])
            version = int(parts["version"]) if parts["version"] is not None else None
            if version is not None and version > MAX_VERSION:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Failed to convert version: {parts['version']} to numeric.")
            return parts, version

        def do_GET(self):  # noqa: N802
            if self.headers.get("Transfer-Encoding") or \
                    self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a GET body is never read: do not parse it next
            self._received()
            try:
                if self.path.split("?", 1)[0] == METRICS_PATH:
                    self._send(200, core.metrics.render(), "text/plain; version=0.0.4")
                    return
                parts, version = self._route()
                if parts["verb"]:
                    raise ServingError("INVALID_ARGUMENT",
                                       f"Malformed request: {self.command} {self.path} "
                                       f"({parts['verb']} needs POST)")
                if parts["metadata"]:
                    self._send(200, metadata_json(core, parts["name"], version, parts["label"]))
                else:
                    self._send(200, status_json(core, parts["name"], version, parts["label"]))
            except ServingError as error:
                self._error(error)
            except OSError:
                raise
            except Exception as error:  # noqa: BLE001 - a request never kills the server
                self._error(ServingError("INTERNAL", f"{type(error).__name__}: {error}"))

        def do_POST(self):  # noqa: N802
            started = time.perf_counter()
            parts: Dict[str, Optional[str]] = {}
            try:
                try:
                    parts, version = self._route()
                    if not parts["verb"]:
                        raise ServingError("INVALID_ARGUMENT",
                                           f"Malformed request: {self.command} {self.path} "
                                           "(POST needs :predict, :classify or :regress)")
                except ServingError as error:
                    raise self._refuse_body(error)
                body = self._json_body()
                self._send(200, self._run(parts["verb"], parts["name"], version, parts["label"],
                                          body))
            except ServingError as error:
                core.record_rejected("REST", parts.get("verb") or "unknown",
                                     parts.get("name") or "", error,
                                     time.perf_counter() - started)
                self._error(error)
            except OSError:
                raise
            except Exception as error:  # noqa: BLE001 - a request never kills the server
                internal = ServingError("INTERNAL", f"{type(error).__name__}: {error}")
                core.record_rejected("REST", parts.get("verb") or "unknown",
                                     parts.get("name") or "", internal,
                                     time.perf_counter() - started)
                self._error(internal)

        def _refuse_body(self, error: ServingError) -> ServingError:
            """The body will not be read: the connection closes after the answer (lingering,
            so the client still sending sees it)."""
            self.close_connection = True
            self._linger = True
            return error

        def _content_length(self) -> int:
            if self.headers.get("Transfer-Encoding"):
                raise self._refuse_body(ServingError(
                    "INVALID_ARGUMENT", "Transfer-Encoding is not supported: send the body with "
                    "a Content-Length", http=411))
            values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
            if not values:
                raise self._refuse_body(ServingError(
                    "INVALID_ARGUMENT", "POST needs a Content-Length header", http=411))
            if len(set(values)) > 1:
                raise self._refuse_body(ServingError(
                    "INVALID_ARGUMENT", f"conflicting Content-Length headers: {values}"))
            value = values[0]
            if not re.fullmatch(r"[0-9]{1,20}", value):
                what = "negative" if re.fullmatch(r"-[0-9]+", value) else "not a number"
                raise self._refuse_body(ServingError(
                    "INVALID_ARGUMENT", f"bad Content-Length {value!r}: {what}"))
            length = int(value)
            if length > max_body_bytes:
                raise self._refuse_body(ServingError(
                    "RESOURCE_EXHAUSTED", f"request body of {length} bytes exceeds the limit of "
                    f"{max_body_bytes} bytes", http=413))
            return length

        def _json_body(self) -> Dict[str, Any]:
            length = self._content_length()
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                raise ServingError("DEADLINE_EXCEEDED",
                                   f"request body not received within "
                                   f"{self.timeout_seconds:g} s", http=408)
            self._received()
            if len(raw) < length:
                self.close_connection = True
                raise ServingError("INVALID_ARGUMENT",
                                   f"request body ended after {len(raw)} of {length} bytes")
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {error}")
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT", "JSON request must be an object")
            return body

        def _run(self, verb: str, name: str, version: Optional[int], label: Optional[str],
                 body: Dict[str, Any]) -> Dict[str, Any]:
            signature = body.get("signature_name", "")
            if not isinstance(signature, str):
                raise ServingError("INVALID_ARGUMENT",
                                   "'signature_name' key must be a string value.")
            if verb == "predict":
                def predict_json(servable):
                    aliases = list(servable.signature(signature)[0].inputs)
                    inputs, row_format = json_codec.predict_inputs(body, aliases)
                    outputs = servable.predict(signature, inputs)
                    core.log_request("predict", servable, signature, inputs, outputs)
                    return json_codec.predict_response(outputs, row_format)
                return core.run("predict", "REST", name, version, label, predict_json)[1]
            examples = json_codec.examples_from_json(body)
            if verb == "classify":
                _, results = core.classify("REST", name, version, label, signature, examples)
                return {"results": [[[label_, score] for label_, score in row]
                                    for row in results]}
            _, results = core.regress("REST", name, version, label, signature, examples)
            return {"results": results}

    return Handler


def _drain(sock: socket.socket) -> None:
    """Lingering close: stop sending, then read and drop what the client still sends (at most
    LINGER_SECONDS / LINGER_BYTES), so closing does not reset a connection whose client has not
    read our answer yet."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, dropped = time.monotonic() + LINGER_SECONDS, 0
        while dropped < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            chunk = sock.recv(256 * 1024)
            if not chunk:
                return
            dropped += len(chunk)
    except OSError:
        pass


_BUSY_BODY = json.dumps({"error": "server busy: every REST worker and waiting place is "
                                  "taken; retry later"}).encode()
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(_BUSY_BODY)).encode() +
                  b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + _BUSY_BODY)


class RestServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with a fixed pool of `max_workers` threads instead of a thread per
    connection, and at most `max_pending` accepted connections waiting for one; a connection
    beyond both is answered 503 (Retry-After: 1) by the accepting thread and closed."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog, before accept

    def __init__(self, address, handler, max_workers: int = DEFAULT_MAX_WORKERS,
                 max_pending: int = DEFAULT_MAX_PENDING,
                 on_busy: Optional[Callable[[], None]] = None):
        if max_workers < 1 or max_pending < 0:
            raise ValueError(f"REST needs max_workers >= 1 and max_pending >= 0, got "
                             f"{max_workers} and {max_pending}")
        self.max_workers, self.max_pending = max_workers, max_pending
        self.busy_refusals = 0
        self._on_busy = on_busy
        self._cond = threading.Condition()
        self._queue: "collections.deque" = collections.deque()
        self._idle = 0
        self._active: set = set()
        self._closing = False
        self._workers: list = []  # server_close runs when binding fails, before any worker
        super().__init__(address, handler)  # binds: an OSError leaves no thread behind
        self._workers = [threading.Thread(target=self._work, name=f"rest-{i}", daemon=True)
                         for i in range(max_workers)]
        for worker in self._workers:
            worker.start()

    def waiting(self) -> bool:
        """Whether accepted connections wait for a worker (read without the lock: a hint)."""
        return len(self._queue) > self._idle

    def process_request(self, request, client_address):
        with self._cond:
            if not self._closing and len(self._queue) < self._idle + self.max_pending:
                self._queue.append((request, client_address))
                self._cond.notify()
                return
            self.busy_refusals += 1
        self._refuse_busy(request)

    def _refuse_busy(self, request) -> None:
        try:
            request.settimeout(1.0)
            request.sendall(_BUSY_RESPONSE)
            try:  # drop what already arrived, so closing does not reset the answer away
                request.recv(256 * 1024, socket.MSG_DONTWAIT)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
        if self._on_busy is not None:
            try:
                self._on_busy()
            except Exception:  # noqa: BLE001 - metrics never break the accept loop
                log.exception("on_busy failed")

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue and not self._closing:
                    self._cond.wait()
                self._idle -= 1
                if self._closing:
                    return
                request, client_address = self._queue.popleft()
                self._active.add(request)
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - one connection never stops a worker
                self.handle_error(request, client_address)
            finally:
                with self._cond:
                    self._active.discard(request)
                self.shutdown_request(request)

    def handle_error(self, request, client_address):
        log.exception("REST connection from %s failed", client_address)

    def server_close(self):
        """Stop the workers: waiting connections are closed, working ones cut (a worker in a
        model call finishes it and fails to write)."""
        with self._cond:
            self._closing = True
            queued = [request for request, _ in self._queue]
            self._queue.clear()
            active = list(self._active)
            self._cond.notify_all()
        for request in queued:
            self.shutdown_request(request)
        for request in active:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().server_close()
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))


def start_rest(core: ServingCore, host: str, port: int, max_body_bytes: int,
               timeout: float = DEFAULT_TIMEOUT_SECONDS, max_workers: int = DEFAULT_MAX_WORKERS,
               max_pending: int = DEFAULT_MAX_PENDING) -> RestServer:
    """The REST server, bound (serve_forever is the caller's). See the module docstring for
    `timeout`, `max_workers` and `max_pending`."""
    if timeout <= 0:
        raise ValueError(f"REST timeout must be positive, got {timeout}")

    def busy() -> None:
        core.record_rejected("REST", "unknown", "", ServingError(
            "UNAVAILABLE", "server busy"), 0.0)
    return RestServer((host, port), make_handler(core, max_body_bytes, timeout),
                      max_workers=max_workers, max_pending=max_pending, on_busy=busy)
