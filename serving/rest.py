"""TF Serving's REST API (port 8501) over the shared core: its routes, on the bounded HTTP
transport of serving/http_transport.py.

GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
GET  /monitoring/prometheus/metrics

As TF Serving's model_servers/http_rest_api_handler.cc answers them: the same URL grammar and
errors ("Malformed request", "Missing model name in request.", "Failed to convert version"),
JSON bodies with Content-Type application/json, errors as {"error": "..."} with the HTTP status
of the gRPC code (serving/errors.py HTTP_STATUS, TF Serving's ToHTTPStatusCode): 400 bad request,
404 unknown model/version/label, 500 internal. The statuses the HTTP layer answers by itself
(408, 411, 413, 501, 503) and the bounds no client can get past are the transport's.
"""
from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any, Dict, Optional, Tuple

from google.protobuf import json_format

from ctpipe.components.serving_metric_names import METRICS_PATH
from ctpipe.serving import json_codec
from ctpipe.serving.core import ServingCore
from ctpipe.serving.errors import ServingError
from ctpipe.serving.grpc_service import metadata_response, status_response
from ctpipe.serving.http_transport import (
    DEFAULT_MAX_PENDING,
    DEFAULT_TIMEOUT_SECONDS,
    BoundedHandler,
    BoundedHTTPServer,
)

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "TFServingHandler", "metadata_json", "start_rest",
           "status_json"]

ROUTE = re.compile(r"^(?i:/v1/models)/(?P<name>[^/:]+)"
                   r"(?:(?i:/versions)/(?P<version>\d+)|(?i:/labels)/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>(?i:/metadata))|:(?P<verb>predict|classify|regress))?$")
API_PREFIX = re.compile(r"^(?i:/v1)(?:/|$)")
MAX_VERSION = 2 ** 63 - 1  # versions are int64
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"


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


def parse_path(command: str, raw_path: str) -> Tuple[Dict[str, Optional[str]], Optional[int]]:
    """The route of a request path (HttpRestApiHandler's kPathRegex and ProcessRequest): the
    model name, version or label, and metadata or the verb; TF Serving's errors otherwise."""
    path = raw_path.split("?", 1)[0]
    match = ROUTE.match(path)
    if not match:
        if API_PREFIX.match(path):
            if command == "GET" and re.fullmatch(r"(?i:/v1/models)/?", path):
                raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: {command} {raw_path}")
        raise ServingError("NOT_FOUND", f"Malformed request: {command} {raw_path}")
    parts = match.groupdict()
    for key in ("name", "label"):
        if parts[key] is not None:
            parts[key] = urllib.parse.unquote(parts[key])
    version = int(parts["version"]) if parts["version"] is not None else None
    if version is not None and version > MAX_VERSION:
        raise ServingError("INVALID_ARGUMENT",
                           f"Failed to convert version: {parts['version']} to numeric.")
    return parts, version


def _json_unit(core: ServingCore, headers, body: Dict[str, Any]) -> Optional[str]:
    """--control-key from a header, else the first row's value of that feature ("instances"
    rows, columnar "inputs", or classify/regress "examples")."""
    key = core.control_key
    first = None
    rows = body.get("instances") or body.get("examples")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict) and key in rows[0]:
        first = rows[0][key]
    elif isinstance(body.get("inputs"), dict) and key in body["inputs"]:
        first = body["inputs"][key]
    while isinstance(first, list) and first:
        first = first[0]
    inputs = {key: [first]} if first is not None and not isinstance(first, (list, dict)) \
        else None
    return core.unit_of(headers.items() if headers is not None else None, inputs)


def run_api(core: ServingCore, verb: str, name: str, version: Optional[int],
            label: Optional[str], body: Dict[str, Any], headers=None) -> Dict[str, Any]:
    """:predict, :classify or :regress on the core, JSON in and out (json_codec)."""
    signature = json_codec.signature_name(body)
    unit = _json_unit(core, headers, body) \
        if core.control_key and not label and version is None else None
    if verb == "predict":
        def predict_json(servable):
            signature_inputs = servable.signature(signature)[0].inputs
            inputs, row_format = json_codec.predict_inputs(body, list(signature_inputs))
            json_codec.check_numbers(inputs, signature_inputs)
            outputs = servable.predict(signature, inputs)
            core.log_request("predict", servable, signature, inputs, outputs)
            return json_codec.predict_response(outputs, row_format)
        return core.run("predict", "REST", name, version, label, predict_json, unit)[1]
    examples = json_codec.examples_from_json(body)
    if verb == "classify":
        _, results = core.classify("REST", name, version, label, signature, examples, unit)
        return {"results": [[[label_, score] for label_, score in row] for row in results]}
    _, results = core.regress("REST", name, version, label, signature, examples, unit)
    return {"results": results}


class TFServingHandler(BoundedHandler):
    """TF Serving's REST routes on one connection; the core is the server's `app`."""

    @property
    def core(self) -> ServingCore:
        return self.server.app

    def do_GET(self):  # noqa: N802
        self.ignore_get_body()
        self.received()
        try:
            if self.path.split("?", 1)[0] == METRICS_PATH:
                self.send_body(200, self.core.metrics.render(), PROMETHEUS_CONTENT_TYPE)
                return
            parts, version = parse_path(self.command, self.path)
            if parts["verb"]:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Malformed request: {self.command} {self.path} "
                                   f"({parts['verb']} needs POST)")
            if parts["metadata"]:
                self.send_body(200, metadata_json(self.core, parts["name"], version,
                                                  parts["label"]))
            else:
                self.send_body(200, status_json(self.core, parts["name"], version,
                                                parts["label"]))
        except ServingError as error:
            self.send_serving_error(error)
        except OSError:
            raise
        except Exception as error:  # noqa: BLE001 - a request never kills the server
            self.send_serving_error(ServingError("INTERNAL", f"{type(error).__name__}: {error}"))

    def do_POST(self):  # noqa: N802
        started = time.perf_counter()
        parts: Dict[str, Optional[str]] = {}
        try:
            try:
                parts, version = parse_path(self.command, self.path)
                if not parts["verb"]:
                    raise ServingError("INVALID_ARGUMENT",
                                       f"Malformed request: {self.command} {self.path} "
                                       "(POST needs :predict, :classify or :regress)")
            except ServingError as error:
                raise self.refuse_body(error)
            body = json_codec.parse_request(self.read_body())
            self.send_body(200, run_api(self.core, parts["verb"], parts["name"], version,
                                        parts["label"], body, self.headers))
        except ServingError as error:
            self._rejected(parts, error, started)
        except OSError:
            raise
        except Exception as error:  # noqa: BLE001 - a request never kills the server
            self._rejected(parts, ServingError("INTERNAL", f"{type(error).__name__}: {error}"),
                           started)

    def _rejected(self, parts: Dict[str, Optional[str]], error: ServingError,
                  started: float) -> None:
        self.core.record_rejected("REST", parts.get("verb") or "unknown", parts.get("name") or "",
                                  error, time.perf_counter() - started)
        self.send_serving_error(error)


def start_rest(core: ServingCore, host: str, port: int, max_body_bytes: int,
               timeout: float = DEFAULT_TIMEOUT_SECONDS, max_workers: Optional[int] = None,
               max_pending: int = DEFAULT_MAX_PENDING) -> BoundedHTTPServer:
    """The REST server, bound (serve_forever is the caller's). `timeout`, `max_workers` (None:
    default_rest_workers()) and `max_pending`: serving/http_transport.py."""
    def busy() -> None:
        core.record_rejected("REST", "unknown", "", ServingError(
            "UNAVAILABLE", "server busy"), 0.0)
    return BoundedHTTPServer((host, port), TFServingHandler, app=core,
                             max_body_bytes=max_body_bytes, timeout=timeout,
                             max_workers=max_workers, max_pending=max_pending, on_busy=busy)
