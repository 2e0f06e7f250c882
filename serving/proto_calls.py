"""A signature called on the request's serialized TensorProtos, parsed inside TensorFlow.

Why: on the gRPC path the Python around the model call, not the call, bounded the server. Per
Predict, decoding each input TensorProto to numpy and making one eager tensor per input took
15 conversions for big_tipper, each a Python round trip that drops and retakes the GIL (an
eager tensor costs 6 us alone and 13-23 us with 8 threads contending). Measured on this 2-CPU
machine at 8 client threads with the model call replaced by a constant answer: a Predict that
answers without reading its inputs ran at about 2,500 requests/s, one that decoded them at
2,000, and one that also made their tensors (Servable.predict) at 750. Here the request's input
protos go to TF as one string tensor and a traced function parses them (ParseTensor:
Tensor::FromProto, the parser TF Serving itself uses on Predict inputs), checks each against
the signature's TensorSpec (EnsureShape), and calls the signature - one call that runs without
the GIL instead of 15 conversions and a call. It runs on TF's single-threaded executor (see
ProtoCall._call).

Batching (serving/batching.py ProtoBatcher) uses the same function for k requests: their protos
are parsed and each input concatenated in the graph, one call for the batch.

A request this path cannot take (an input dtype that is not the signature's, a shape the spec
refuses, a malformed proto, a model error) raises `ProtoPathRefused`; the caller then runs the
request on the numpy path, so every error a client sees is the one that path gives."""
from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context, execute
from tensorflow.python.framework import ops

from ctpipe.serving.tensor_protos import serialized_tensor_proto

MAX_TASKS_PER_CALL = 8  # requests in one traced call; a larger batch makes several calls
SINGLE_THREADED = "SINGLE_THREADED_EXECUTOR"


class ProtoPathRefused(Exception):
    """This request (or batch) must take the numpy path; the reason is for logs and tests."""


class ProtoCall:
    """Signature `function` (a ConcreteFunction of dense keyword-only TensorSpecs, `specs`
    as (alias, dtype, dims)) called on serialized TensorProtos, for 1 to MAX_TASKS_PER_CALL
    requests at a time; one traced function per request count, traced on first use."""

    def __init__(self, function, specs: Sequence[Tuple[str, tf.dtypes.DType, Optional[list]]]):
        self.function = function
        self.aliases = [alias for alias, _, _ in specs]
        self.dtype_enums = [dtype.as_datatype_enum for _, dtype, _ in specs]
        self._specs = list(specs)
        self._open_inner = [dims is None or None in dims[1:] for _, _, dims in specs]
        self._traced: Dict[int, "FlatCall"] = {}
        self._lock = threading.Lock()
        self.executor = SINGLE_THREADED  # "" after a call only the default executor runs

    @classmethod
    def for_signature(cls, signature_call) -> Optional["ProtoCall"]:
        """The ProtoCall of a servables._SignatureCall whose flat plan exists, else None."""
        plan = getattr(signature_call, "_flat", None)
        if plan is None:
            return None
        return cls(signature_call.function, plan[0])

    def batchable(self) -> bool:
        """Concatenating requests needs a first dimension on every input."""
        return all(dims is not None and len(dims) >= 1 for _, _, dims in self._specs)

    def prepare(self, protos) -> Optional[Tuple[List[bytes], Optional[int], tuple]]:
        """A request's inputs (alias -> TensorProto, every alias of the signature) as
        (serialized protos in `aliases` order, rows, batch key), or None when an input's dtype
        is not the signature's (the numpy path converts or refuses it)."""
        serialized, shapes = [], []
        for alias, dtype_enum, open_inner in zip(self.aliases, self.dtype_enums,
                                                 self._open_inner):
            proto = protos[alias]
            if proto.dtype != dtype_enum:
                return None
            serialized.append(proto.SerializeToString())
            dims = proto.tensor_shape.dim  # the inner sizes only where the key needs them
            shapes.append(tuple(d.size for d in dims) if open_inner or not dims
                          else (dims[0].size,))
        return self._prepared(serialized, shapes)

    def prepare_arrays(self, arrays) -> Optional[Tuple[List[bytes], Optional[int], tuple]]:
        """`prepare` for a request that came as values (REST), already numpy arrays of the
        signature's dtypes (strings: object arrays of bytes); None if one is not."""
        serialized = [serialized_tensor_proto(arrays[alias], dtype_enum)
                      for alias, dtype_enum in zip(self.aliases, self.dtype_enums)]
        if None in serialized:
            return None
        return self._prepared(serialized, [arrays[alias].shape for alias in self.aliases])

    def _prepared(self, serialized: List[bytes], shapes: List[tuple]
                  ) -> Tuple[List[bytes], Optional[int], tuple]:
        """rows: the first dimension every input has, None when they differ or one has none
        (not batchable); the key holds the inner dimensions of inputs whose spec leaves one
        open, so only requests that concatenate are batched together."""
        firsts = {shape[0] if shape else -1 for shape in shapes}
        rows = firsts.pop() if len(firsts) == 1 else None
        key = tuple(shape[1:] for shape, open_inner in zip(shapes, self._open_inner)
                    if open_inner)
        return serialized, (rows if rows is not None and rows > 0 else None), key

    def run(self, requests: Sequence[List[bytes]]) -> Dict[str, np.ndarray]:
        """The signature's outputs, as numpy, for the requests' rows in order (each request:
        its serialized protos in `aliases` order)."""
        outputs: List[Dict[str, np.ndarray]] = []
        for start in range(0, len(requests), MAX_TASKS_PER_CALL):
            chunk = requests[start:start + MAX_TASKS_PER_CALL]
            try:
                protos = _protos_tensor([proto for request in chunk for proto in request])
                answer = self._call(self._function(len(chunk)), protos)
                outputs.append({alias: value.numpy() for alias, value in answer.items()})
            except (tf.errors.OpError, TypeError, ValueError) as error:
                raise ProtoPathRefused(f"{type(error).__name__}: {error}") from None
        if len(outputs) == 1:
            return outputs[0]
        return {alias: np.concatenate([part[alias] for part in outputs])
                for alias in outputs[0]}

    def _call(self, function: "FlatCall", protos: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The call on TF's single-threaded executor: requests already run in parallel, and
        on big_tipper it costs 25-35% less CPU than the default executor (which hands ops to
        its inter-op threads). A function that fails there and runs on the default executor
        stays on the default executor from then on."""
        executor = self.executor
        if not executor:
            return function([protos])
        try:
            return function([protos], executor)
        except tf.errors.OpError:
            answer = function([protos])  # raises again if the request is what failed
            self.executor = ""
            return answer

    def warm(self, counts: Sequence[int]) -> None:
        """Trace the functions for these request counts and call each once on a synthetic
        request (zeros or empty strings, one row), so that no client request pays for a trace
        or TF's first-call graph optimization (0.1-0.15 s each on big_tipper). A signature
        that refuses the synthetic request (serialized tf.Examples, say) is traced only."""
        synthetic = self._synthetic_request()
        for count in counts:
            self._function(count)
            if synthetic is not None:
                try:
                    self.run([synthetic] * count)
                except ProtoPathRefused:
                    synthetic = None

    def _synthetic_request(self) -> Optional[List[bytes]]:
        request = []
        for _, dtype, dims in self._specs:
            if dims is None or not dtype.is_numpy_compatible:
                return None
            shape = [1 if d is None else d for d in dims]
            value = np.full(shape, b"", dtype=object) if dtype == tf.string else \
                np.zeros(shape, dtype.as_numpy_dtype)
            request.append(tf.make_tensor_proto(value, dtype).SerializeToString())
        return request

    def _function(self, count: int) -> "FlatCall":
        traced = self._traced.get(count)
        if traced is None:
            with self._lock:
                traced = self._traced.get(count)
                if traced is None:
                    traced = self._trace(count)
                    self._traced[count] = traced
        return traced

    def _trace(self, count: int) -> "FlatCall":
        specs, signature = self._specs, self.function
        per_request = len(specs)

        def parse_and_call(protos):
            flat = tf.unstack(protos, num=count * per_request)
            columns = []
            for j, (_, dtype, dims) in enumerate(specs):
                parts = [tf.io.parse_tensor(flat[t * per_request + j], dtype)
                         for t in range(count)]
                column = parts[0] if count == 1 else tf.concat(parts, 0)
                columns.append(tf.ensure_shape(column, dims))
            return signature(**{alias: column for (alias, _, _), column in
                                zip(specs, columns)})

        traced = tf.function(parse_and_call, autograph=False).get_concrete_function(
            tf.TensorSpec([count * per_request], tf.string))
        return FlatCall(traced)


class FlatCall:
    """A ConcreteFunction whose outputs are a flat dict of tensors (a signature, or the proto
    path's parse-and-call), run as one eager op, its name, outputs and config read once.

    Why: calling the ConcreteFunction goes through TF's Python call layers on every request
    (argument binding, three context managers, the executor-type scope, the attribute
    tuple, output packing), a fifth of the gRPC handler's CPU on big_tipper; this issues the
    same op - the function by name, its captured variables appended, the same `executor_type`
    and `config_proto` attributes that layer would pass - through TF's `quick_execute`,
    which raises the same tf.errors (their text is raw: servables._readable cleans it).
    Outputs: the dict, whose flat order is its sorted keys (tf.nest's order for a dict).
    `FlatCall.fits(function)` says whether a function is one. What the layers also do and this
    does not, none of which the server uses: a thread's `function_executor_type` scope (the
    executor is an argument), cancellation contexts, op callbacks, GradientTape recording; the
    `config_proto` is read once, when the FlatCall is made."""

    def __init__(self, function):
        # Held: when the ConcreteFunction is collected, TF removes its function from the
        # runtime (AtomicFunction.__del__) and a call by name would find nothing.
        self._function = function
        atomic = function._inference_function
        name = atomic.name
        self._name = name.decode() if isinstance(name, bytes) else name
        self._captured = list(function.captured_inputs)
        self._keys = sorted(function.structured_outputs)
        self._count = len(atomic.function_type.flat_outputs)
        self._config = context.context().function_call_options.as_attrs()["config_proto"]

    @staticmethod
    def fits(function) -> bool:
        """A dict of dense tensors out (as every signature returns; a loaded one describes
        them as TensorSpecs), one flat output each."""
        outputs = function.structured_outputs
        return isinstance(outputs, dict) and \
            all(isinstance(value, (tf.Tensor, tf.TensorSpec)) for value in outputs.values()) and \
            len(function._inference_function.function_type.flat_outputs) == len(outputs)

    def __call__(self, inputs: List[tf.Tensor], executor: str = "") -> Dict[str, tf.Tensor]:
        attrs = ("executor_type", executor, "config_proto", self._config)
        flat = execute.quick_execute(self._name, self._count, inputs + self._captured,
                                     attrs, context.context())
        return dict(zip(self._keys, flat))


def _protos_tensor(values: List[bytes]) -> tf.Tensor:
    """One string tensor on the calling thread's device, as tf.constant makes it, without
    tf.constant's Python dispatch."""
    return ops.EagerTensor(values, context.context().device_name, tf.string.as_datatype_enum)
