"""TF Serving's REST API (port 8501) over the shared core.

GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
GET  /monitoring/prometheus/metrics
Errors: {"error": "..."} with 400 (bad request), 404 (unknown model/version/label), 413 (too big).
"""
from __future__ import annotations

import http.server
import json
import re
import socket
import time
from typing import Any, Dict, Optional, Tuple

from google.protobuf import json_format

from ctpipe.pipeline.errors import ServingError
from ctpipe.serving import json_codec
from ctpipe.serving.core import ServingCore
from ctpipe.serving.registry import STATE_NAMES

ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?$")
METRICS_PATH = "/monitoring/prometheus/metrics"


def status_json(core: ServingCore, name: str, version: Optional[int], label: Optional[str]):
    return {"model_version_status": [
        {"version": str(s.version), "state": STATE_NAMES[s.state],
         "status": {"error_code": s.error_code, "error_message": s.error_message}}
        for s in core.registry.status(name, version, label)]}


def metadata_json(core: ServingCore, name: str, version: Optional[int], label: Optional[str]):
    from tensorflow_serving.apis import get_model_metadata_pb2

    servable = core.metadata("REST", name, version, label)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
    return {"model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True)}}


def make_handler(core: ServingCore, max_body_bytes: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ctpipe-serving"

        def log_message(self, *args):  # access logs off: metrics cover traffic
            pass

        def setup(self):
            super().setup()
            # Headers and body go out as two writes on a keep-alive connection; without
            # TCP_NODELAY, Nagle + the client's delayed ACK add ~40-90 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, body: Any, content_type="application/json") -> None:
            data = body.encode() if isinstance(body, str) else \
                json.dumps(body, allow_nan=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, error: ServingError) -> None:
            self._send(error.http, {"error": error.message})

        def _route(self) -> Tuple[Dict[str, Optional[str]], Optional[int]]:
            match = ROUTE.match(self.path.split("?", 1)[0])
            if not match:
                raise ServingError("NOT_FOUND", f"Malformed request: {self.command} {self.path}")
            parts = match.groupdict()
            version = int(parts["version"]) if parts["version"] is not None else None
            return parts, version

        def do_GET(self):  # noqa: N802
            try:
                if self.path.split("?", 1)[0] == METRICS_PATH:
                    self._send(200, core.metrics.render(), "text/plain; version=0.0.4")
                    return
                parts, version = self._route()
                if parts["verb"]:
                    raise ServingError("INVALID_ARGUMENT", f"{parts['verb']} needs POST")
                if parts["metadata"]:
                    self._send(200, metadata_json(core, parts["name"], version, parts["label"]))
                else:
                    self._send(200, status_json(core, parts["name"], version, parts["label"]))
            except ServingError as error:
                self._error(error)

        def do_POST(self):  # noqa: N802
            started = time.perf_counter()
            parts: Dict[str, Optional[str]] = {}
            try:
                parts, version = self._route()
                if not parts["verb"]:
                    raise ServingError("INVALID_ARGUMENT",
                                       "POST needs :predict, :classify or :regress")
                body = self._json_body()
                self._send(200, self._run(parts["verb"], parts["name"], version, parts["label"],
                                          body))
            except ServingError as error:
                core.record_rejected("REST", parts.get("verb") or "unknown",
                                     parts.get("name") or "", error,
                                     time.perf_counter() - started)
                self._error(error)

        def _json_body(self) -> Dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                raise ServingError("INVALID_ARGUMENT", "bad Content-Length")
            if length < 0:
                self.close_connection = True
                raise ServingError("INVALID_ARGUMENT", f"negative Content-Length {length}")
            if length > max_body_bytes:
                self.close_connection = True
                raise ServingError("RESOURCE_EXHAUSTED",
                                   f"request body of {length} bytes exceeds the limit of "
                                   f"{max_body_bytes} bytes", http=413)
            raw = self.rfile.read(length)
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
                raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
            if verb == "predict":
                def predict_json(servable):
                    aliases = list(servable.signature(signature)[0].inputs)
                    inputs, row_format = json_codec.predict_inputs(body, aliases)
                    return json_codec.predict_response(servable.predict(signature, inputs),
                                                       row_format)
                return core.run("predict", "REST", name, version, label, predict_json)[1]
            examples = json_codec.examples_from_json(body)
            if verb == "classify":
                _, results = core.classify("REST", name, version, label, signature, examples)
                return {"results": [[[label_, score] for label_, score in row]
                                    for row in results]}
            _, results = core.regress("REST", name, version, label, signature, examples)
            return {"results": results}

    return Handler


class RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_rest(core: ServingCore, host: str, port: int, max_body_bytes: int) -> RestServer:
    return RestServer((host, port), make_handler(core, max_body_bytes))
