"""The server's errors and TF Serving's status tables, shared by the server and the clients.

`ServingError` carries a gRPC status name; REST turns it into an HTTP status with
`HTTP_STATUS`, the mapping TF Serving's model server uses (model_servers/http_server.cc,
ToHTTPStatusCode), and the REST client turns HTTP statuses back with `GRPC_CODE_OF_HTTP`.
`ServingConfigError` is a usage mistake in the server's own flags or files: the CLI prints its
one line and exits with `ExitCode.BAD_INPUT` (the one exit-code table, components/basics.py).
"""
from __future__ import annotations

from typing import Dict, Optional

from ctpipe.components.basics import ExitCode


class ServingConfigError(ValueError):
    """A server flag or file is unusable (bad request-log settings, bad batching file, ...)."""

    exit_code = ExitCode.BAD_INPUT


# gRPC status name -> HTTP status, as TF Serving's REST API answers (http_server.cc).
HTTP_STATUS: Dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# gRPC status name -> its number (grpc.StatusCode, and tensorflow.error.Code in the StatusProto
# of GetModelStatus and ReloadConfigResponse: the same numbers).
GRPC_CODE_NUMBER: Dict[str, int] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
# The way back (several codes share an HTTP status: the most telling one is kept), plus the
# statuses an HTTP layer answers by itself (405/408/411/413/414/431/502 from an HTTP server or a
# proxy in front of one).
GRPC_CODE_OF_HTTP: Dict[int, str] = {
    200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
    411: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 414: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", 431: "INVALID_ARGUMENT", 499: "CANCELLED", 500: "INTERNAL",
    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def grpc_code(http: int) -> str:
    return GRPC_CODE_OF_HTTP.get(http, "UNKNOWN")



class ServingError(Exception):
    """An error with a gRPC status name; REST maps it to an HTTP status (HTTP_STATUS) unless
    the HTTP layer itself has a more exact one (413 for a body over the limit)."""

    def __init__(self, code: str, message: str, http: Optional[int] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http = http if http is not None else http_status(code)
