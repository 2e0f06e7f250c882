"""Opening ML Metadata: a local home's SQLite file, or Kubeflow's metadata-grpc-service.

One way in, one error: every command that reads or writes a store opens it here, so an
unreachable gRPC service or a home without a database reads the same everywhere."""
from __future__ import annotations

import os

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb2

from ctpipe.components.basics import first_line
from ctpipe.pipeline.errors import BadInput


def open_store(connection_config) -> mlmd.MetadataStore:
    return mlmd.MetadataStore(connection_config)


def sqlite_connection(path: str) -> mlmd_pb2.ConnectionConfig:
    config = mlmd_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = mlmd_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def grpc_connection(host: str, port: int) -> mlmd_pb2.MetadataStoreClientConfig:
    """KFP's metadata-grpc-service (port 8080 in the kubeflow namespace)."""
    return mlmd_pb2.MetadataStoreClientConfig(host=host, port=port)


def open_sqlite(path: str, home: str) -> mlmd.MetadataStore:
    """A local home's store; a home that has no database yet is a usage mistake (exit 2),
    not an empty store to create behind the operator's back."""
    if not os.path.exists(path):
        raise BadInput(f"no pipeline home at {home} (no {os.path.basename(path)})")
    return open_store(sqlite_connection(path))


def open_grpc(host: str, port: int) -> mlmd.MetadataStore:
    """Kubeflow's store over gRPC. The client connects lazily, so one cheap call proves the
    service answers: an unreachable host is one clear line now, not a hang later."""
    try:
        store = open_store(grpc_connection(host, port))
        store.get_context_types()
        return store
    except (mlmd.errors.UnavailableError, mlmd.errors.DeadlineExceededError) as error:
        raise BadInput(f"ML Metadata at {host}:{port} is unreachable: "
                       f"{first_line(error, 200)}")
