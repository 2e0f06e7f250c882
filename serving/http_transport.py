"""The REST API's transport: an HTTP/1.1 server that no client can hold, whatever the routes.
serving/rest.py puts TF Serving's routes on it (a BoundedHandler subclass).

Bounds:
- `timeout` (DEFAULT_TIMEOUT_SECONDS): a request - line, headers and body - must arrive within
  it of its first byte (the first request of a connection: of a worker taking it), and an idle
  keep-alive connection is closed after it; every socket write has it too.
- `max_workers` threads (default_rest_workers(): TF Serving's 4 per schedulable CPU) serve
  connections, one connection each at a time; up to `max_pending`
  more accepted connections wait for a worker (in arrival order); beyond that a connection is
  answered 503 with Retry-After at once - a short queue absorbs a burst, a flood is refused
  rather than queued without bound. While connections wait, a worker closes its keep-alive
  connection after the response it is writing, and idle keep-alive connections are closed, so
  waiting connections get a worker within about one request time.
- `max_body_bytes`: a larger Content-Length is answered 413 without reading the body; a POST
  without Content-Length 411 (no chunked bodies), a body that does not arrive in time 408.

Every answer the transport makes itself is a JSON error body like the routes' ({"error": ...},
TF Serving's shape), with the HTTP status a ServingError carries.
"""
from __future__ import annotations

import collections
import http.server
import json
import logging
import re
import select
import socket
import threading
import time
from typing import Any, Callable, Optional

from ctpipe.serving.cpus import schedulable_cpus
from ctpipe.serving.errors import ServingError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
REST_THREADS_PER_CPU = 4  # TF Serving's --rest_api_num_threads: 4 x NumSchedulableCPUs()
DEFAULT_MAX_PENDING = 64
# After refusing a body (413, bad Content-Length), read and drop what the client still sends
# for this long / this much, so it sees our answer instead of a reset connection.
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 * 1024 * 1024
_IDLE_POLL_SECONDS = 0.1
JSON = "application/json"


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
    """wfile: writes collect until flush(), which sends them as one sendall (bounded by the
    socket's timeout). Why: a response went out as two sends, headers then body, and each send
    drops and retakes the GIL - with 8 connections' threads contending for it, every retake
    can wait. send_body and the 100 Continue flush; http.server flushes after each request."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._pending: list = []

    def write(self, data: bytes) -> int:
        self._pending.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._sock.sendall(data)


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


class BoundedHandler(http.server.BaseHTTPRequestHandler):
    """One connection within the server's bounds: deadlines on every read and write,
    keep-alive that yields to waiting connections, Content-Length rules, JSON errors.
    Subclasses add do_GET/do_POST and read bodies with `read_body()`; the limits are the
    server's (`timeout_seconds`, `max_body_bytes`)."""

    protocol_version = "HTTP/1.1"
    server_version = "ctpipe-serving"

    def log_message(self, *args):  # access logs off: metrics cover traffic
        pass

    @property
    def timeout_seconds(self) -> float:
        return self.server.timeout_seconds

    # -- connection: deadlines, keep-alive that yields to waiting connections ----------------
    def setup(self):
        self.connection = self.request
        # A 100 Continue and then the response are two writes on one connection (and were,
        # before _SocketWriter, every response's headers and body); without TCP_NODELAY,
        # Nagle + the client's delayed ACK add ~40-90 ms to the second.
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

    def received(self) -> None:
        """The request is in: no deadline while we work, the plain timeout for writes."""
        self.rfile.deadline = None
        self.connection.settimeout(self.timeout_seconds)

    def finish(self):
        if self._linger:
            _drain(self.connection)

    # -- responses -------------------------------------------------------------------------
    def send_body(self, status: int, body: Any, content_type: str = JSON) -> None:
        """One response: `body` as JSON (str: as it is), with Content-Type and -Length."""
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
        self.wfile.flush()  # headers and body in one send

    def send_serving_error(self, error: ServingError) -> None:
        self.send_body(error.http, {"error": error.message})

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (bad request line, headers too long, unsupported
        method...) as JSON errors like ours, on a connection that then closes."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # no parsable request line: answer HTTP/1.1
            self.request_version = self.protocol_version
        short = self.responses.get(code, ("Error",))[0]
        try:
            self.send_body(code, {"error": message or short})
        except OSError:
            pass

    def handle_expect_100(self):
        """Expect: 100-continue: refuse a bad or too large body before the client sends it;
        otherwise tell it to go on."""
        if self.command == "POST":
            try:
                self.content_length()
            except ServingError as error:
                self.send_serving_error(error)
                return False
        go_on = super().handle_expect_100()
        self.wfile.flush()  # the client waits for the 100 before it sends the body
        return go_on

    # -- request bodies --------------------------------------------------------------------
    def refuse_body(self, error: ServingError) -> ServingError:
        """The body will not be read: the connection closes after the answer (lingering, so
        the client still sending sees it). Returns `error`, to raise."""
        self.close_connection = True
        self._linger = True
        return error

    def content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise self.refuse_body(ServingError(
                "INVALID_ARGUMENT", "Transfer-Encoding is not supported: send the body with "
                "a Content-Length", http=411))
        values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if not values:
            raise self.refuse_body(ServingError(
                "INVALID_ARGUMENT", "POST needs a Content-Length header", http=411))
        if len(set(values)) > 1:
            raise self.refuse_body(ServingError(
                "INVALID_ARGUMENT", f"conflicting Content-Length headers: {values}"))
        value = values[0]
        if not re.fullmatch(r"[0-9]{1,20}", value):
            what = "negative" if re.fullmatch(r"-[0-9]+", value) else "not a number"
            raise self.refuse_body(ServingError(
                "INVALID_ARGUMENT", f"bad Content-Length {value!r}: {what}"))
        length = int(value)
        limit = self.server.max_body_bytes
        if length > limit:
            raise self.refuse_body(ServingError(
                "RESOURCE_EXHAUSTED", f"request body of {length} bytes exceeds the limit of "
                f"{limit} bytes", http=413))
        return length

    def read_body(self) -> bytes:
        """The whole body of a POST, within the deadline and the size limit."""
        length = self.content_length()
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise ServingError("DEADLINE_EXCEEDED",
                               f"request body not received within {self.timeout_seconds:g} s",
                               http=408)
        self.received()
        if len(raw) < length:
            self.close_connection = True
            raise ServingError("INVALID_ARGUMENT",
                               f"request body ended after {len(raw)} of {length} bytes")
        return raw

    def ignore_get_body(self) -> None:
        """A GET body is never read: do not parse it as the next request."""
        if self.headers.get("Transfer-Encoding") or \
                self.headers.get("Content-Length", "0").strip() not in ("", "0"):
            self.close_connection = True


_BUSY_BODY = json.dumps({"error": "server busy: every REST worker and waiting place is "
                                  "taken; retry later"}).encode()
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(_BUSY_BODY)).encode() +
                  b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + _BUSY_BODY)


def default_rest_workers() -> int:
    """REST threads without a setting: TF Serving's 4 per CPU this process may run on."""
    return REST_THREADS_PER_CPU * schedulable_cpus()


class BoundedHTTPServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with a fixed pool of `max_workers` threads instead of a thread per
    connection, and at most `max_pending` accepted connections waiting for one; a connection
    beyond both is answered 503 (Retry-After: 1) by the accepting thread and closed.
    `app` is what the handler serves (its routes read it as `self.server.app`)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog, before accept

    def __init__(self, address, handler, app: Any = None, max_body_bytes: int = 0,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 max_workers: Optional[int] = None, max_pending: int = DEFAULT_MAX_PENDING,
                 on_busy: Optional[Callable[[], None]] = None):
        if max_workers is None:
            max_workers = default_rest_workers()
        if max_workers < 1 or max_pending < 0:
            raise ValueError(f"REST needs max_workers >= 1 and max_pending >= 0, got "
                             f"{max_workers} and {max_pending}")
        if timeout <= 0:
            raise ValueError(f"REST timeout must be positive, got {timeout}")
        self.app, self.max_body_bytes, self.timeout_seconds = app, max_body_bytes, timeout
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
