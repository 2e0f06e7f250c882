"""The data contract as a pipeline step: writes schema/schema.pbtxt (package data) into a Schema
artifact.

Why not ImportSchemaGen: it reads a *path* baked into the compiled spec at compile time - the
compiling machine's checkout, which no Kubeflow pod has. This step reads the contract from the
installed `ctpipe.schema` package at run time (or from `schema_file` when a config names one),
so the same spec works on any machine that has the wheel.
"""

import os

from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

SCHEMA_FILE = "schema.pbtxt"


def contract_text(schema_file: str = "") -> str:
    """The curated schema: `schema_file` if given (any tf.io.gfile path), else the packaged one."""
    if schema_file:
        import tensorflow as tf

        with tf.io.gfile.GFile(schema_file) as handle:
            return handle.read()
    from importlib import resources

    return resources.files("ctpipe.schema").joinpath(SCHEMA_FILE).read_text()


def load_contract(schema_file: str = ""):
    """The contract as a tensorflow_metadata Schema proto."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(contract_text(schema_file), schema_pb2.Schema())


@component
def CuratedSchema(  # noqa: N802 - TFX component names are classes by convention
    schema: OutputArtifact[standard_artifacts.Schema],
    schema_file: Parameter[str] = "",
) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(schema.uri)
    with tf.io.gfile.GFile(os.path.join(schema.uri, SCHEMA_FILE), "w") as handle:
        handle.write(contract_text(schema_file))
