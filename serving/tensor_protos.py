"""A Predict request's input TensorProtos: decoded to numpy when read, kept as protos for the
proto path (serving/proto_calls.py), so a request the proto path answers is never decoded in
Python at all."""
from __future__ import annotations

import math
import sys
from typing import Iterator, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from ctpipe.serving.errors import ServingError

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



def serialized_tensor_proto(array: np.ndarray, dtype_enum: int) -> Optional[bytes]:
    """`array` as a serialized TensorProto of `dtype_enum` (numbers as tensor_content, strings
    as string_val), or None when it is not exactly that dtype (bytes objects for strings)."""
    proto = tensor_pb2.TensorProto(dtype=dtype_enum)
    if dtype_enum == types_pb2.DT_STRING:
        if array.dtype != object:
            return None
        values = array.ravel().tolist()
        if not all(type(v) is bytes for v in values):
            return None
        proto.string_val.extend(values)
    else:
        numpy_dtype = _NUMPY_DTYPES.get(dtype_enum)
        if numpy_dtype is None or array.dtype != numpy_dtype or sys.byteorder != "little":
            return None
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto.SerializeToString()


def bytes_array(value) -> Optional[np.ndarray]:
    """A request's string input as an object array of bytes (str as UTF-8), as TF would make
    it; None for anything else (numbers, None, ragged nesting): the tensor path handles it."""
    array = np.asarray(value, dtype=object)
    flat = array.ravel().tolist()
    if not all(type(v) is bytes or type(v) is str for v in flat):
        return None
    if any(type(v) is str for v in flat):
        array = np.array([v.encode("utf-8") if type(v) is str else v for v in flat],
                         dtype=object).reshape(array.shape)
    return array


class RequestInputs(Mapping):
    """request.inputs as a mapping of alias -> numpy array, each decoded (to_ndarray) on first
    read and kept. A proto that does not decode is INVALID_ARGUMENT "malformed input tensor",
    as when the handler decoded every input up front; decoding when read means a request for
    a model that does not exist is NOT_FOUND first, as in TF Serving (the servable is looked
    up before its inputs are parsed, predict_impl.cc)."""

    def __init__(self, protos):
        self.protos = protos  # alias -> TensorProto (the request's map field)
        self._arrays = {}

    def __getitem__(self, alias: str) -> np.ndarray:
        array = self._arrays.get(alias)
        if array is None:
            try:
                array = to_ndarray(self.protos[alias])
            except (TypeError, ValueError) as error:
                raise ServingError("INVALID_ARGUMENT", f"malformed input tensor: {error}")
            self._arrays[alias] = array
        return array

    def keys(self):  # a set, so comparing with a signature's aliases is one set comparison
        return frozenset(self.protos)

    def __contains__(self, alias) -> bool:
        return alias in self.protos

    def __iter__(self) -> Iterator[str]:
        return iter(self.protos)

    def __len__(self) -> int:
        return len(self.protos)
