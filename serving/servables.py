"""One loaded model version and TF Serving's APIs on it (predict, classify, regress,
multi-inference), and its warmup before it serves.

Why our own: there is no TF Serving binary here. This module loads any SavedModel with TensorFlow
and runs its signatures with TF Serving's rules: which signature a request names (default
`serving_default`), the method a Classify/Regress signature must declare, the input aliases, and
the same error codes (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND) - so clients written for TF
Serving see the same behaviour here.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ctpipe.pipeline.errors import ServingError

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INIT_OP_SIGNATURE = "__saved_model_init_op"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


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
    """TF's 'Graph execution error:' plus node dumps -> the one line that says what is wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error",
                                                             "Detected at node", "[[", "File "))]
    text = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", " ".join(useful or lines))
    return text[:500]


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
                not all(isinstance(c, tf.Tensor) for c in captured):
            return None
        return specs, captured, function._inference_function.call_preflattened

    @property
    def fast(self) -> bool:
        return self._flat is not None

    def __call__(self, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        if self._flat is None or len(tensors) != len(self._flat[0]):
            return self.function(**tensors)
        specs, captured, call = self._flat
        flat = []
        for name, dtype, dims in specs:
            tensor = tensors.get(name)
            if tensor is None or tensor.dtype != dtype or not _fits(tensor, dims):
                return self.function(**tensors)
            flat.append(tensor)
        return call(flat + captured)


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


class Servable:
    """A loaded SavedModel version. TF functions may be called concurrently, so no lock."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = read_signature_defs(path)
        self.metadata_signature_defs = read_signature_defs(path, with_init_op=True)
        # how warm_up() warmed each signature: "record", "synthetic" or "skipped: <why>"
        self.warmed_up: Dict[str, str] = {}
        self._loaded = tf.saved_model.load(path)
        self._functions = dict(self._loaded.signatures)
        self._calls = {key: _SignatureCall(function) for key, function in self._functions.items()}
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
        tensors = {alias: self._to_tensor(alias, value, spec.dtypes[alias])
                   for alias, value in inputs.items()}
        outputs = self._call(self._calls[key], tensors)
        wanted = list(output_filter) or spec.outputs
        return {alias: outputs[alias].numpy() for alias in wanted}

    @staticmethod
    def _to_tensor(alias: str, value, dtype_enum) -> tf.Tensor:
        """A request value as a tensor of the signature's dtype. Strings: bytes as they are,
        anything else as the UTF-8 of str(value); numbers: no text, no fraction for ints."""
        dtype = tf.dtypes.as_dtype(dtype_enum)
        try:
            if dtype == tf.string:
                return _string_tensor(value)
            if isinstance(value, np.ndarray) and value.dtype == dtype.as_numpy_dtype:
                return tf.constant(value)
            array = np.asarray(value)
            if array.dtype.kind in "OUS":
                raise TypeError(f"got text for a {dtype.name} input")
            if array.dtype.kind == "f" and dtype.is_integer:
                raise TypeError(f"got a fraction for an {dtype.name} input")
            return tf.constant(array.astype(dtype.as_numpy_dtype, copy=False))
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT",
                               f"input '{alias}' cannot be converted to {dtype.name}: {error}")

    def _call(self, function, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        try:
            return function(tensors)
        except tf.errors.InvalidArgumentError as error:
            raise ServingError("INVALID_ARGUMENT", _readable(error.message))
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", str(error).splitlines()[0])

    # -- classify / regress / multi-inference on serialized tf.Examples ----------------------
    def _method_signature(self, signature_name: str, method: str, kind: str):
        """TF Serving's checks on a Classify/Regress signature (classifier.cc, regressor.cc):
        it exists (INVALID_ARGUMENT here, unlike Predict's FAILED_PRECONDITION), it declares
        the method, and it takes one input tensor."""
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.signature_defs or key not in self._functions:
            raise ServingError("INVALID_ARGUMENT", f"No signature was found with the name: {key}")
        signature_def = self.signature_defs[key]
        if signature_def.method_name != method:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expected {kind} signature method_name to be {method}. "
                               f"Was: {signature_def.method_name}")
        if len(signature_def.inputs) != 1:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expected one input Tensor in the {kind} signature.")
        return signature_def

    def _run_on_examples(self, signature_name: str, signature_def, examples: tf.Tensor):
        alias = next(iter(signature_def.inputs))
        return self._call(self._calls[signature_name or DEFAULT_SIGNATURE], {alias: examples})

    @staticmethod
    def _classifications(outputs, rows: int) -> List[List[Tuple[str, float]]]:
        scores = outputs["scores"].numpy() if "scores" in outputs else None
        classes = outputs["classes"].numpy() if "classes" in outputs else None
        if scores is None and classes is None:
            raise ServingError("INVALID_ARGUMENT",
                               "Expected classification signature outputs classes or scores")
        width = (scores if scores is not None else classes).shape[1]
        return [[((classes[i][j].decode() if classes is not None else ""),
                  float(scores[i][j]) if scores is not None else 0.0)
                 for j in range(width)] for i in range(rows)]

    @staticmethod
    def _regressions(outputs) -> List[float]:
        if "outputs" not in outputs:
            raise ServingError("INVALID_ARGUMENT",
                               "No regression outputs found in SignatureDef (expected 'outputs')")
        return [float(v) for v in np.reshape(outputs["outputs"].numpy(), [-1])]

    def classify(self, signature_name: str, serialized_examples: List[bytes]
                 ) -> List[List[Tuple[str, float]]]:
        signature_def = self._method_signature(signature_name, CLASSIFY_METHOD, "classification")
        if not serialized_examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        outputs = self._run_on_examples(signature_name, signature_def,
                                        tf.constant(serialized_examples, tf.string))
        return self._classifications(outputs, len(serialized_examples))

    def regress(self, signature_name: str, serialized_examples: List[bytes]) -> List[float]:
        signature_def = self._method_signature(signature_name, REGRESS_METHOD, "regression")
        if not serialized_examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        outputs = self._run_on_examples(signature_name, signature_def,
                                        tf.constant(serialized_examples, tf.string))
        return self._regressions(outputs)

    def multi_inference(self, tasks: Sequence[Tuple[str, str]], serialized_examples: List[bytes]
                        ) -> List[Tuple[str, str, object]]:
        """MultiInference: classify/regress `tasks` ((signature_name, method_name) pairs) on the
        same examples, on this one version. TF Serving's rules (multi_inference.cc), in its
        order: no signature twice, every signature exists (INVALID_ARGUMENT), the method is
        classify or regress (else UNIMPLEMENTED), the signature fits it; then the input must
        not be empty. The examples become one tensor shared by every task.
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
            if key not in self.signature_defs or key not in self._functions:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Requested signature not found in model graph: {key}")
            if method == CLASSIFY_METHOD:
                kind = "classification"
            elif method == REGRESS_METHOD:
                kind = "regression"
            else:
                raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {method}")
            checked.append((key, method, self._method_signature(key, method, kind)))
        if not serialized_examples:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        examples = tf.constant(serialized_examples, tf.string)
        results = []
        for key, method, signature_def in checked:
            outputs = self._run_on_examples(key, signature_def, examples)
            results.append((key, method, self._classifications(outputs, len(serialized_examples))
                            if method == CLASSIFY_METHOD else self._regressions(outputs)))
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
