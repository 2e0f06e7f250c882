"""A real ML Metadata gRPC server for tests, standing in for KFP's metadata-grpc-service.

The ml-metadata wheel ships no server binary, but its C++ extension takes the same serialized
requests the service takes. So this server is a generic gRPC handler for
`ml_metadata.MetadataStoreService`: each RPC's request bytes go, unparsed, to the extension's
method of the same name on one SQLite-backed store, and its response bytes (or its status code
and message) go back on the wire. Clients use the ordinary gRPC path of
`ml_metadata.MetadataStore(MetadataStoreClientConfig(...))`, exactly as against a cluster.

    with MlmdGrpcServer(sqlite_path) as server:   # a free 127.0.0.1 port
        store = open_grpc("127.0.0.1", server.port)
"""
from __future__ import annotations

import threading
from concurrent import futures
from typing import Callable, Optional

import grpc
from ml_metadata.metadata_store.pywrap.metadata_store_extension import (
    metadata_store as extension,
)
from ml_metadata.proto import metadata_store_pb2 as pb
from ml_metadata.proto import metadata_store_service_pb2 as service_pb2

SERVICE = service_pb2.DESCRIPTOR.services_by_name["MetadataStoreService"]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class MlmdGrpcServer:
    """Serves the SQLite store at `sqlite_path` over gRPC on 127.0.0.1 (port 0: a free one)."""

    def __init__(self, sqlite_path: str, port: int = 0):
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = sqlite_path
        config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self._store = extension.CreateMetadataStore(config.SerializeToString(),
                                                    pb.MigrationOptions().SerializeToString())
        self._lock = threading.Lock()  # one SQLite connection: one call at a time
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {method.name: grpc.unary_unary_rpc_method_handler(self._handler(method.name))
                    for method in SERVICE.methods}  # no (de)serializers: bytes pass through
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.calls = 0

    def _handler(self, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        method: Optional[Callable] = getattr(extension, name, None)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            if method is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served here")
            with self._lock:
                self.calls += 1
                response, message, code = method(self._store, request)
            if code != 0:
                context.abort(_CODES.get(code, grpc.StatusCode.UNKNOWN),
                              message.decode("utf-8", "replace"))
            return response
        return handle

    def start(self) -> "MlmdGrpcServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self) -> "MlmdGrpcServer":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
