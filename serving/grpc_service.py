"""TF Serving's gRPC API (port 8500) over the shared core: PredictionService (Predict, Classify,
Regress, GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest)."""
from __future__ import annotations

import functools
import math
import sys
from concurrent import futures
from typing import List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from ctpipe.pipeline.errors import ServingError
from ctpipe.serving.core import ServingCore
from ctpipe.serving.model_config import from_proto

ENTRYPOINT = "GRPC"


def _spec(model_spec) -> Tuple[str, Optional[int], Optional[str]]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    if not model_spec.name:
        raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec name")
    return model_spec.name, version, label


def _aborts_with_status(method):
    """A ServingError becomes the gRPC status TF Serving would send (never a crash)."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL),
                          error.message)
    return wrapper


def _examples(model_input) -> List[bytes]:
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in model_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = model_input.example_list_with_context
        merged = []
        for example in listed.examples:
            combined = tf.train.Example()
            combined.CopyFrom(listed.context)
            combined.MergeFrom(example)
            merged.append(combined.SerializeToString())
        return merged
    raise ServingError("INVALID_ARGUMENT", "Input is empty")


# dtype -> the repeated field make_tensor_proto fills for short tensors (others: tensor_content)
_VALUE_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                 types_pb2.DT_INT64: "int64_val", types_pb2.DT_INT32: "int_val",
                 types_pb2.DT_BOOL: "bool_val"}
_NUMPY_DTYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
                 types_pb2.DT_INT64: np.int64, types_pb2.DT_INT32: np.int32,
                 types_pb2.DT_BOOL: np.bool_}


def to_ndarray(proto) -> np.ndarray:
    """tf.make_ndarray for the TensorProtos clients send (float/double/int/bool as
    tensor_content or a full value list, strings as string_val), without its per-call Python
    overhead (~10 us a tensor); anything else - a short list TF broadcasts, other dtypes,
    unknown rank - is left to tf.make_ndarray."""
    if proto.tensor_shape.unknown_rank:
        return tf.make_ndarray(proto)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) == count:
            array = np.empty(count, dtype=object)
            array[:] = list(values)
            return array.reshape(shape)
        return tf.make_ndarray(proto)
    numpy_dtype = _NUMPY_DTYPES.get(proto.dtype)
    if numpy_dtype is None:
        return tf.make_ndarray(proto)
    if proto.tensor_content:
        if sys.byteorder != "little":
            return tf.make_ndarray(proto)
        return np.frombuffer(proto.tensor_content, dtype=numpy_dtype).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[proto.dtype])
    if len(values) == count:
        return np.asarray(values, dtype=numpy_dtype).reshape(shape)
    return tf.make_ndarray(proto)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_aborts_with_status
    def Predict(self, request, context):  # noqa: N802
        name, version, label = _spec(request.model_spec)
        try:
            inputs = {k: to_ndarray(v) for k, v in request.inputs.items()}
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", f"malformed input tensor: {error}")
        servable, outputs = self.core.predict(
            ENTRYPOINT, name, version, label, request.model_spec.signature_name, inputs,
            list(request.output_filter))
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(array))
        return response

    @_aborts_with_status
    def Classify(self, request, context):  # noqa: N802
        name, version, label = _spec(request.model_spec)
        servable, results = self.core.classify(ENTRYPOINT, name, version, label,
                                               request.model_spec.signature_name,
                                               _examples(request.input))
        response = classification_pb2.ClassificationResponse()
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        for row in results:
            classification = response.result.classifications.add()
            for class_label, score in row:
                classification.classes.add(label=class_label, score=score)
        return response

    @_aborts_with_status
    def Regress(self, request, context):  # noqa: N802
        name, version, label = _spec(request.model_spec)
        servable, values = self.core.regress(ENTRYPOINT, name, version, label,
                                             request.model_spec.signature_name,
                                             _examples(request.input))
        response = regression_pb2.RegressionResponse()
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        for value in values:
            response.result.regressions.add(value=value)
        return response

    @_aborts_with_status
    def GetModelMetadata(self, request, context):  # noqa: N802
        name, version, label = _spec(request.model_spec)
        unsupported = [f for f in request.metadata_field if f != "signature_def"]
        if unsupported or not request.metadata_field:
            raise ServingError("INVALID_ARGUMENT",
                               f"Metadata field {unsupported[0] if unsupported else '(none)'}"
                               " is not supported")
        servable = self.core.metadata(ENTRYPOINT, name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, servable, "")
        response.metadata["signature_def"].Pack(signature_map)
        return response

    @staticmethod
    def _fill_spec(model_spec, servable, signature_name: str) -> None:
        model_spec.name = servable.name
        model_spec.version.value = servable.version
        model_spec.signature_name = signature_name or "serving_default"


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_aborts_with_status
    def GetModelStatus(self, request, context):  # noqa: N802
        name, version, label = _spec(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.core.registry.status(name, version, label):
            entry = response.model_version_status.add(version=status.version,
                                                      state=status.state)
            entry.status.error_code = 0 if status.error_code == "OK" else 2
            entry.status.error_message = status.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.core.registry.reload_config(from_proto(request.config))
        except ServingError as error:
            response.status.error_code = getattr(grpc.StatusCode, error.code).value[0]
            response.status.error_message = error.message
        return response


def start_grpc(core: ServingCore, host: str, port: int, max_message_bytes: int,
               workers: int = 8) -> Tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.start()
    return server, bound
