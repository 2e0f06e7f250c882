"""One loaded model version and TF Serving's APIs on it (predict, classify, regress,
multi-inference), and its warmup before it serves.

Why our own: there is no TF Serving binary here. This module loads any SavedModel (TF1-style
graphs and TF2 object graphs) with TensorFlow and runs its signatures with TF Serving 2.16.1's
rules: which signature a request names (default `serving_default`), the inputs and outputs a
Classify/Regress signature must have, the input aliases, and the same error codes and texts
(INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND) - so clients written for TF Serving see the
same behaviour here.

Method names: as in TF Serving, a signature's `method_name` is checked only with
`method_name_check` (TF Serving's --enable_signature_method_name_check, default false). Off, a
TF2 SavedModel - whose every signature says tensorflow/serving/predict - answers Classify and
Regress wherever the signature's inputs and outputs fit (servables/tensorflow/classifier.cc
PreProcessClassification, regressor.cc PreProcessRegression; TF Serving commit b724ceda, issue
tensorflow/serving#1657).
"""
from __future__ import annotations

import os
import re
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ctpipe.components.signatures import (
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD,
    CLASSIFY_OUTPUT_CLASSES,
    CLASSIFY_OUTPUT_SCORES,
    DEFAULT_SIGNATURE,
    INIT_OP_SIGNATURE,
    MAX_WARMUP_RECORDS,
    PREDICT_METHOD,
    REGRESS_INPUTS,
    REGRESS_METHOD,
    REGRESS_OUTPUTS,
    WARMUP_FILE,
)
from ctpipe.serving.batching import Batcher, ProtoBatcher
from ctpipe.serving.errors import ServingError
from ctpipe.serving.proto_calls import MAX_TASKS_PER_CALL, FlatCall, ProtoCall, ProtoPathRefused
from ctpipe.serving.tensor_protos import RequestInputs, bytes_array


def read_signature_defs(export_dir: str, with_init_op: bool = False
                        ) -> Dict[str, "tf.compat.v1.SignatureDef"]:
    """Signature defs straight from saved_model.pb (method names included). The TF2 init op
    (`__saved_model_init_op`) is no serving signature; TF Serving's metadata lists it anyway,
    hence `with_init_op`."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    meta_graph = saved_model.meta_graphs[0]
    return {key: value for key, value in meta_graph.signature_def.items()
            if with_init_op or key != INIT_OP_SIGNATURE}


def examples_from_input(model_input) -> List[bytes]:
    """Serialized tf.Examples of a tensorflow.serving.Input (Classify, Regress, MultiInference
    and their warmup records): each example of example_list_with_context merged over the
    context, as TF Serving concatenates the two serialized messages."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = model_input.example_list_with_context
        context = listed.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in listed.examples]
    else:
        serialized = []
    return serialized  # empty: the API says "Input is empty." after its signature checks


def _readable(message: str) -> str:
    """TF's 'Graph execution error:' plus node dumps -> the one line that says what is wrong.
    A function run as one op (FlatCall) reports its errors raw: they open with the function's
    internal name ("{{function_node __inference_...}}"), and ones TF has no Python stack for
    with "<stack traces unavailable>"; neither tells a client anything."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error",
                                                             "Detected at node", "[[", "File "))]
    text = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", " ".join(useful or lines))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|<stack traces unavailable>\s*", "", text)
    return text.strip()[:500]


def _string_tensor(value) -> tf.Tensor:
    """Lists and arrays of str/bytes go to TF in one call (str as UTF-8); only values TF refuses
    (numbers, None, ragged nesting...) take the per-element str() path of TF Serving's JSON."""
    try:
        return tf.constant(value, dtype=tf.string)
    except (TypeError, ValueError):
        pass
    array = np.asarray(value, dtype=object)
    if array.size:
        array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode("utf-8"),
                             otypes=[object])(array)
    return tf.constant(array, dtype=tf.string)


def _numeric_array(value, dtype: tf.dtypes.DType) -> np.ndarray:
    """Numbers as the signature's numpy dtype: no text, no fraction for an integer input."""
    if isinstance(value, np.ndarray) and value.dtype == dtype.as_numpy_dtype:
        return value
    array = np.asarray(value)
    if array.dtype.kind in "OUS":
        raise TypeError(f"got text for a {dtype.name} input")
    if array.dtype.kind == "f" and dtype.is_integer:
        raise TypeError(f"got a fraction for an {dtype.name} input")
    return array.astype(dtype.as_numpy_dtype, copy=False)


def _value_arrays(inputs, dtypes) -> Optional[Dict[str, np.ndarray]]:
    """Request values as numpy arrays of the signature's dtypes, with the tensor path's checks;
    None when one needs that path (it converts the value or gives the error)."""
    arrays = {}
    for alias, value in inputs.items():
        dtype = dtypes[alias]
        try:
            array = bytes_array(value) if dtype == tf.string else _numeric_array(value, dtype)
        except (TypeError, ValueError):
            return None
        if array is None:
            return None
        arrays[alias] = array
    return arrays


def _not_convertible(alias: str, dtype: tf.dtypes.DType, error: Exception) -> ServingError:
    """INVALID_ARGUMENT for a request value that does not fit its input's dtype."""
    return ServingError("INVALID_ARGUMENT",
                        f"input '{alias}' cannot be converted to {dtype.name}: {error}")


def _tensors(arrays: Dict[str, np.ndarray]) -> Dict[str, tf.Tensor]:
    """A batch's merged arrays as the signature's tensors (object arrays hold bytes)."""
    return {alias: tf.constant(array, dtype=tf.string) if array.dtype == object
            else tf.constant(array) for alias, array in arrays.items()}


class _SignatureCall:
    """One signature, called on a dict of tensors.

    The public call (`function(**tensors)`) spends half its time on a small model binding the
    keyword arguments to the function type and re-checking each tensor against its spec in
    Python (~250 us of ~500 us for big_tipper's 15 inputs on 2 CPUs). Our inputs are already
    tensors of exactly the signature's dtypes, so when the function is a plain keyword-only
    signature of dense TensorSpecs we flatten in the function's own parameter order, check
    shapes here, and run the traced function with its captured inputs - what TF does after its
    checks. Anything else (composite inputs, a TF without these internals, a shape that does
    not fit) goes through the public call, so TF's own errors come back unchanged."""

    def __init__(self, function):
        self.function = function
        self._flat = None
        try:
            self._flat = self._plan(function)
        except Exception:  # noqa: BLE001 - TF internals moved: keep the public call
            self._flat = None

    @staticmethod
    def _plan(function):
        import inspect

        parameters = list(function.function_type.parameters.values())
        specs = []
        for parameter in parameters:
            spec = parameter.type_constraint
            if parameter.kind != inspect.Parameter.KEYWORD_ONLY or \
                    type(spec) is not tf.TensorSpec:
                return None
            dims = spec.shape.as_list() if spec.shape.rank is not None else None
            specs.append((parameter.name, spec.dtype, dims))
        if any(callable(c) for c in function._captured_inputs):
            return None  # a capture resolved at call time: cannot be taken once
        captured = list(function.captured_inputs)
        if len(function.inputs) != len(specs) + len(captured) or \
                not all(isinstance(c, tf.Tensor) for c in captured) or \
                not FlatCall.fits(function):
            return None
        return specs, FlatCall(function)

    @property
    def fast(self) -> bool:
        return self._flat is not None

    def __call__(self, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        if self._flat is None or len(tensors) != len(self._flat[0]):
            return self.function(**tensors)
        specs, call = self._flat
        flat = []
        for name, dtype, dims in specs:
            tensor = tensors.get(name)
            if tensor is None or tensor.dtype != dtype or not _fits(tensor, dims):
                return self.function(**tensors)
            flat.append(tensor)
        return call(flat)


def _fits(tensor: tf.Tensor, dims) -> bool:
    if dims is None:
        return True
    shape = tensor.shape
    return len(shape) == len(dims) and all(
        d is None or d == s for d, s in zip(dims, shape.as_list()))


class _Inputs:
    """A signature's input aliases and their dtypes, read once from the SignatureDef."""

    def __init__(self, signature_def):
        self.dtypes = {alias: tf.dtypes.as_dtype(info.dtype)
                       for alias, info in signature_def.inputs.items()}
        self.aliases = frozenset(self.dtypes)
        self.outputs = list(signature_def.outputs)


def _debug_string(message) -> str:
    """A proto as C++ DebugString() prints it (text format), as TF Serving's errors quote it."""
    return str(message)


def _shape_string(tensor: tf.Tensor) -> str:
    """TensorShape::DebugString: "[2,1]"."""
    return "[" + ",".join(str(d) for d in tensor.shape.as_list()) + "]"


def _dtype_name(tensor: tf.Tensor) -> str:
    """DataType_Name: "DT_FLOAT"."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(tensor.dtype.as_datatype_enum)


class Servable:
    """A loaded SavedModel version. TF functions may be called concurrently, so no lock.

    `method_name_check`: TF Serving's --enable_signature_method_name_check (default off).
    `batching`: serving/batching.py BatchingOptions (TF Serving's --enable_batching); Predict
    then goes through one Batcher per signature of this version. None: no batching."""

    def __init__(self, name: str, version: int, path: str, method_name_check: bool = False,
                 batching=None):
        self.name, self.version, self.path = name, version, path
        self.method_name_check = method_name_check
        self.batching = batching
        self._batchers: Dict[object, object] = {}  # signature key, ("proto", key)
        self._batchers_lock = threading.Lock()
        self.signature_defs = read_signature_defs(path)
        self.metadata_signature_defs = read_signature_defs(path, with_init_op=True)
        # how warm_up() warmed each signature: "record", "synthetic" or "skipped: <why>"
        self.warmed_up: Dict[str, str] = {}
        self._loaded = tf.saved_model.load(path)
        self._functions = dict(self._loaded.signatures)
        self._calls = {key: _SignatureCall(function) for key, function in self._functions.items()}
        self._proto_calls = {key: proto_call for key, proto_call in (
            (key, ProtoCall.for_signature(call)) for key, call in self._calls.items())
            if proto_call is not None}
        self._inputs = {key: _Inputs(value) for key, value in self.signature_defs.items()}

    # -- signatures ------------------------------------------------------------------------
    def signature(self, name: str) -> Tuple[object, object]:
        key = name or DEFAULT_SIGNATURE
        if key not in self.signature_defs or key not in self._functions:
            raise ServingError("FAILED_PRECONDITION",
                               f'Serving signature key "{key}" not found.')
        return self.signature_defs[key], self._functions[key]

    # -- predict ---------------------------------------------------------------------------
    def predict(self, signature_name: str, inputs: Dict[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        signature_def, _ = self.signature(signature_name)
        key = signature_name or DEFAULT_SIGNATURE
        if self.method_name_check and signature_def.method_name not in (
                PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            # predict_util.cc VerifySignature: INTERNAL, only with the check on
            raise ServingError("INTERNAL",
                               "Expected prediction signature method_name to be one of "
                               f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                               f"Was: {signature_def.method_name}")
        spec = self._inputs[key]
        if inputs.keys() != spec.aliases:
            unknown = sorted(set(inputs) - spec.aliases)
            if unknown:
                raise ServingError("INVALID_ARGUMENT",
                                   f"input tensor alias not found in signature: {unknown[0]}. "
                                   "Inputs expected to be in the set "
                                   f"{{{','.join(sorted(spec.aliases))}}}.")
            missing = sorted(spec.aliases - set(inputs))
            raise ServingError("INVALID_ARGUMENT",
                               f"Request inputs do not match required inputs for model "
                               f"`{self.name}`. Send extra: {{}}. Missing but required: "
                               f"{{{','.join(missing)}}}.")
        for alias in output_filter:
            if alias not in signature_def.outputs:
                raise ServingError("INVALID_ARGUMENT",
                                   f"output tensor alias not found in signature: {alias}")
        wanted = list(output_filter) or spec.outputs
        proto_call = self._proto_calls.get(key)
        if proto_call is not None:
            if isinstance(inputs, RequestInputs):  # gRPC: the request's own TensorProtos
                prepared = proto_call.prepare(inputs.protos)
            else:  # values (REST, warmup records) that convert to the signature's dtypes
                arrays = _value_arrays(inputs, spec.dtypes)
                prepared = None if arrays is None else proto_call.prepare_arrays(arrays)
            outputs = None if prepared is None else self._proto_outputs(key, *prepared)
            if outputs is not None:
                return {alias: outputs[alias] for alias in wanted}
        if self.batching is not None:
            # numpy until the batch is formed: one concatenate and one tensor per input per
            # batch, not one tensor per input per request plus a tf.concat per batch
            arrays = {alias: self._to_array(alias, value, spec.dtypes[alias])
                      for alias, value in inputs.items()}
            outputs = self.batcher(key).submit(arrays)
            return {alias: outputs[alias] for alias in wanted}
        tensors = {alias: self._to_tensor(alias, value, spec.dtypes[alias])
                   for alias, value in inputs.items()}
        outputs = self._call(self._calls[key], tensors)
        return {alias: outputs[alias].numpy() for alias in wanted}

    def _proto_outputs(self, key: str, serialized: List[bytes], rows: Optional[int],
                       batch_key: tuple) -> Optional[Dict[str, np.ndarray]]:
        """The proto path (serving/proto_calls.py) for one request's serialized inputs:
        batched with batching on, else one call. None when the proto path refused it: the
        tensor path then answers it, with the error a client should see if there is one."""
        proto_call = self._proto_calls[key]
        try:
            if self.batching is not None and rows is not None and proto_call.batchable():
                return self.proto_batcher(key).submit_protos(serialized, batch_key, rows)
            return proto_call.run([serialized])
        except ProtoPathRefused:
            return None

    def proto_batcher(self, key: str):
        """The ProtoBatcher of signature `key` (made on first use)."""
        return self._batcher(("proto", key), lambda: ProtoBatcher(
            self._proto_calls[key], self.batching, f"{self.name}-{self.version}-{key}-proto"))

    def batcher(self, key: str):
        """The Batcher of signature `key` (made on first use)."""
        call = self._calls[key]
        return self._batcher(key, lambda: Batcher(
            lambda arrays: self._call(call, _tensors(arrays)), self.batching,
            f"{self.name}-{self.version}-{key}"))

    def _batcher(self, key, make):
        batcher = self._batchers.get(key)
        if batcher is None:
            with self._batchers_lock:
                batcher = self._batchers.get(key)
                if batcher is None:
                    batcher = self._batchers[key] = make()
        return batcher

    @staticmethod
    def _to_tensor(alias: str, value, dtype_enum) -> tf.Tensor:
        """A request value as a tensor of the signature's dtype. Strings: bytes as they are,
        anything else as the UTF-8 of str(value); numbers: no text, no fraction for ints."""
        dtype = tf.dtypes.as_dtype(dtype_enum)
        try:
            if dtype == tf.string:
                return _string_tensor(value)
            return tf.constant(_numeric_array(value, dtype))
        except (TypeError, ValueError) as error:
            raise _not_convertible(alias, dtype, error)

    @staticmethod
    def _to_array(alias: str, value, dtype_enum) -> np.ndarray:
        """A request value as a numpy array of the signature's dtype (strings: an object array
        of bytes), with _to_tensor's checks and errors; no tensor is made for numbers."""
        dtype = tf.dtypes.as_dtype(dtype_enum)
        if dtype == tf.string:
            if isinstance(value, np.ndarray) and value.dtype == object and \
                    all(isinstance(v, bytes) for v in value.flat):
                return value
            return Servable._to_tensor(alias, value, dtype_enum).numpy()
        try:
            return _numeric_array(value, dtype)
        except (TypeError, ValueError) as error:
            raise _not_convertible(alias, dtype, error)

    def _call(self, function, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        try:
            return function(tensors)
        except tf.errors.InvalidArgumentError as error:
            raise ServingError("INVALID_ARGUMENT", _readable(error.message))
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", str(error).splitlines()[0])

    # -- classify / regress / multi-inference on serialized tf.Examples ----------------------
    # TF Serving 2.16.1, servables/tensorflow/classifier.cc and regressor.cc: the signature
    # must exist, then PreProcessClassification / PreProcessRegression check its method name
    # (only with the check on) and its inputs and outputs; an empty Input fails after them
    # (util.cc InputToSerializedExampleTensor); after the run PostProcess*Result checks the
    # output tensors. The texts are TF Serving's.
    def _find(self, signature_name: str, not_found: str):
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.signature_defs or key not in self._functions:
            raise ServingError("INVALID_ARGUMENT", f"{not_found}{key}")
        return key, self.signature_defs[key]

    def _check_method(self, signature_def, method: str, kind: str) -> None:
        if self.method_name_check and signature_def.method_name != method:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expected {kind} signature method_name to be {method}. "
                               f"Was: {signature_def.method_name}")

    def _classification_signature(self, signature_def) -> None:
        """classifier.cc PreProcessClassification."""
        self._check_method(signature_def, CLASSIFY_METHOD, "classification")
        if len(signature_def.inputs) != 1:
            raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
        if len(signature_def.outputs) not in (1, 2):
            raise ServingError("INVALID_ARGUMENT", "Expected one or two output Tensors, found "
                               f"{len(signature_def.outputs)}")
        if CLASSIFY_INPUTS not in signature_def.inputs:
            raise ServingError("INVALID_ARGUMENT", "No classification inputs found in "
                               f"SignatureDef: {_debug_string(signature_def)}")
        if CLASSIFY_OUTPUT_CLASSES not in signature_def.outputs and \
                CLASSIFY_OUTPUT_SCORES not in signature_def.outputs:
            raise ServingError("INVALID_ARGUMENT",
                               "Expected classification signature outputs to contain at least "
                               f'one of "{CLASSIFY_OUTPUT_CLASSES}" or '
                               f'"{CLASSIFY_OUTPUT_SCORES}". Signature was: '
                               f"{_debug_string(signature_def)}")

    def _regression_signature(self, signature_def) -> None:
        """regressor.cc PreProcessRegression."""
        self._check_method(signature_def, REGRESS_METHOD, "regression")
        if len(signature_def.inputs) != 1:
            raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
        if len(signature_def.outputs) != 1:
            raise ServingError("INVALID_ARGUMENT", "Expected one output Tensor.")
        if REGRESS_INPUTS not in signature_def.inputs:
            raise ServingError("INVALID_ARGUMENT", "No regression inputs found in "
                               f"SignatureDef: {_debug_string(signature_def)}")
        if REGRESS_OUTPUTS not in signature_def.outputs:
            raise ServingError("INVALID_ARGUMENT", "No regression outputs found in "
                               f"SignatureDef: {_debug_string(signature_def)}")

    def _run_on_examples(self, key: str, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        # the "inputs" alias gets the serialized examples (PerformOneShotTensorComputation)
        return self._call(self._calls[key], {CLASSIFY_INPUTS: examples})

    @staticmethod
    def _classifications(outputs, rows: int) -> List[List[Tuple[str, float]]]:
        """classifier.cc PostProcessClassificationResult."""
        classes = outputs.get(CLASSIFY_OUTPUT_CLASSES)
        scores = outputs.get(CLASSIFY_OUTPUT_SCORES)
        for name, tensor, dtype in (("classes", classes, tf.string),
                                    ("scores", scores, tf.float32)):
            if tensor is None:
                continue
            if tensor.shape.rank != 2:
                raise ServingError("INVALID_ARGUMENT",
                                   "Expected Tensor shape: [batch_size num_classes] but got "
                                   f"{_shape_string(tensor)}")
            if tensor.dtype != dtype:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Expected {name} Tensor of "
                                   f"{'DT_STRING' if dtype == tf.string else 'DT_FLOAT'}. "
                                   f"Got: {_dtype_name(tensor)}")
            if tensor.shape[0] != rows:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Expected {name} output batch size of {rows}. "
                                   f"Got: {tensor.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise ServingError("INVALID_ARGUMENT",
                               "Tensors class and score should match in dim_size(1). Got "
                               f"{classes.shape[1]} vs. {scores.shape[1]}")
        width = (classes if classes is not None else scores).shape[1]
        labels = classes.numpy() if classes is not None else None
        values = scores.numpy() if scores is not None else None
        return [[((labels[i][j].decode("utf-8", "replace") if labels is not None else ""),
                  float(values[i][j]) if values is not None else 0.0)
                 for j in range(width)] for i in range(rows)]

    @staticmethod
    def _regressions(outputs, rows: int) -> List[float]:
        """regressor.cc PostProcessRegressionResult."""
        tensor = outputs[REGRESS_OUTPUTS]
        shape = tensor.shape.as_list()
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ServingError("INVALID_ARGUMENT",
                               "Expected output Tensor shape to be either [batch_size] or "
                               f"[batch_size, 1] but got {_shape_string(tensor)}")
        if rows != shape[0]:
            raise ServingError("INVALID_ARGUMENT",
                               "Input batch size did not match output batch size: "
                               f"{rows} vs. {shape[0]}")
        if tensor.dtype != tf.float32:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(tensor)}")
        return [float(v) for v in np.reshape(tensor.numpy(), [-1])]

    def classify(self, signature_name: str, serialized_examples: List[bytes]
                 ) -> List[List[Tuple[str, float]]]:
        """Classify (classifier.cc RunClassify / GetClassificationSignatureDef)."""
        key, signature_def = self._find(signature_name, "No signature was found with the name: ")
        self._classification_signature(signature_def)
        if not serialized_examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        outputs = self._run_on_examples(key, tf.constant(serialized_examples, tf.string))
        return self._classifications(outputs, len(serialized_examples))

    def regress(self, signature_name: str, serialized_examples: List[bytes]) -> List[float]:
        """Regress (regressor.cc RunRegress / GetRegressionSignatureDef)."""
        key, signature_def = self._find(signature_name, "No signature was found with the name: ")
        self._regression_signature(signature_def)
        if not serialized_examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        outputs = self._run_on_examples(key, tf.constant(serialized_examples, tf.string))
        return self._regressions(outputs, len(serialized_examples))

    def multi_inference(self, tasks: Sequence[Tuple[str, str]], serialized_examples: List[bytes]
                        ) -> List[Tuple[str, str, object]]:
        """MultiInference: classify/regress `tasks` ((signature_name, method_name) pairs) on the
        same examples, on this one version. TF Serving's rules (multi_inference.cc
        TensorFlowMultiInferenceRunner::Infer), in its order: no signature twice, every
        signature exists (INVALID_ARGUMENT), the task's method is classify or regress (else
        UNIMPLEMENTED: the task's method_name picks the API, whatever the signature declares),
        the signature fits it; then the input must not be empty. The examples become one
        tensor shared by every task.
        Returns [(signature key, method, classifications | regressions)] in task order."""
        if not tasks:
            raise ServingError("INVALID_ARGUMENT", "MultiInferenceRequest has no tasks.")
        seen, checked = set(), []
        for signature_name, method in tasks:
            key = signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            key, signature_def = self._find(key, "Requested signature not found in model graph: ")
            if method == CLASSIFY_METHOD:
                self._classification_signature(signature_def)
            elif method == REGRESS_METHOD:
                self._regression_signature(signature_def)
            else:
                raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {method}")
            checked.append((key, method))
        if not serialized_examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        examples = tf.constant(serialized_examples, tf.string)
        rows = len(serialized_examples)
        results = []
        for key, method in checked:
            outputs = self._run_on_examples(key, examples)
            results.append((key, method, self._classifications(outputs, rows)
                            if method == CLASSIFY_METHOD else self._regressions(outputs, rows)))
        return results

    # -- warmup -------------------------------------------------------------------------------
    def warm_up(self) -> int:
        """Warm every signature before the version serves (no slow first request on any).

        1. Replay assets.extra/tf_serving_warmup_requests as TF Serving does: each PredictionLog
           (predict, classify, regress, multi_inference) against its own signature; a record
           that fails, an unsupported log type or more than MAX_WARMUP_RECORDS records fail
           the load, as they do in TF Serving.
        2. Each signature no record covered (no file, or a file for serving_default only) is
           called once on a synthetic batch of 1 built from its TensorSpecs: zeros, False or
           empty strings, unknown dimensions as 1. A signature that refuses it (an empty string
           is not a parseable tf.Example with required features, say) is skipped: synthetic
           warmup never fails a load.
        3. The proto path's functions (serving/proto_calls.py) are traced and run once: for
           one request, and with batching for each request count one call takes.
        Returns how many warmup calls succeeded; `warmed_up` says how each signature was."""
        replayed, covered = self._replay_warmup_file()
        self.warmed_up = {key: "record" for key in covered}
        synthetic = 0
        for key in self.signature_defs:
            if key in covered or key not in self._functions:
                continue
            reason = self._synthetic_call(key)
            self.warmed_up[key] = reason or "synthetic"
            synthetic += not reason
        for proto_call in self._proto_calls.values():
            batched = self.batching is not None and proto_call.batchable()
            proto_call.warm(range(1, MAX_TASKS_PER_CALL + 1) if batched else (1,))
        return replayed + synthetic

    def _replay_warmup_file(self) -> Tuple[int, set]:
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0, set()
        replayed, covered = 0, set()
        for record in tf.data.TFRecordDataset(path):
            if replayed >= MAX_WARMUP_RECORDS:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                self.predict(request.model_spec.signature_name,
                             {k: tf.make_ndarray(v) for k, v in request.inputs.items()},
                             list(request.output_filter))
                signatures = [request.model_spec.signature_name]
            elif kind == "classify_log":
                request = log.classify_log.request
                self.classify(request.model_spec.signature_name,
                              examples_from_input(request.input))
                signatures = [request.model_spec.signature_name]
            elif kind == "regress_log":
                request = log.regress_log.request
                self.regress(request.model_spec.signature_name,
                             examples_from_input(request.input))
                signatures = [request.model_spec.signature_name]
            elif kind == "multi_inference_log":
                request = log.multi_inference_log.request
                tasks = [(t.model_spec.signature_name, t.method_name) for t in request.tasks]
                self.multi_inference(tasks, examples_from_input(request.input))
                signatures = [name for name, _ in tasks]
            elif kind is None:
                continue  # an empty record: TF Serving skips it too
            else:
                raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")
            covered.update(name or DEFAULT_SIGNATURE for name in signatures)
            replayed += 1
        return replayed, covered

    def _synthetic_call(self, key: str) -> str:
        """Call signature `key` once on a batch of 1 from its TensorSpecs; "" when it ran,
        else "skipped: <why>"."""
        try:
            _, specs = self._functions[key].structured_input_signature
            tensors = {}
            for alias, spec in specs.items():
                if type(spec) is not tf.TensorSpec:
                    return f"skipped: input '{alias}' is a {type(spec).__name__}"
                shape = [1] if spec.shape.rank is None else \
                    [1 if d is None else d for d in spec.shape.as_list()]
                if spec.dtype == tf.string:
                    tensors[alias] = tf.fill(shape, "")
                elif spec.dtype.is_numpy_compatible:
                    tensors[alias] = tf.zeros(shape, spec.dtype)
                else:
                    return f"skipped: input '{alias}' has dtype {spec.dtype.name}"
            self._call(self._calls[key], tensors)
        except ServingError as error:
            return f"skipped: {error.message}"
        except Exception as error:  # noqa: BLE001 - synthetic warmup never fails a load
            first_line = (str(error).splitlines() or [""])[0]
            return f"skipped: {type(error).__name__}: {first_line}"
        return ""
