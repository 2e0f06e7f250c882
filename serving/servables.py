"""One loaded model version and the three TF Serving APIs on it (predict, classify, regress).

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


def read_signature_defs(export_dir: str) -> Dict[str, "tf.compat.v1.SignatureDef"]:
    """Signature defs straight from saved_model.pb (method names included)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    meta_graph = saved_model.meta_graphs[0]
    return {key: value for key, value in meta_graph.signature_def.items()
            if key != INIT_OP_SIGNATURE}


def _readable(message: str) -> str:
    """TF's 'Graph execution error:' plus node dumps -> the one line that says what is wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error",
                                                             "Detected at node", "[[", "File "))]
    text = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", " ".join(useful or lines))
    return text[:500]


class Servable:
    """A loaded SavedModel version. TF functions may be called concurrently, so no lock."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = read_signature_defs(path)
        self._loaded = tf.saved_model.load(path)
        self._functions = dict(self._loaded.signatures)

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
        signature_def, function = self.signature(signature_name)
        expected = set(signature_def.inputs)
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise ServingError("INVALID_ARGUMENT",
                               f"input tensor alias not found in signature: {unknown[0]}. "
                               "Inputs expected to be in the set "
                               f"{{{','.join(sorted(expected))}}}.")
        missing = sorted(expected - set(inputs))
        if missing:
            raise ServingError("INVALID_ARGUMENT",
                               f"Request inputs do not match required inputs for model "
                               f"`{self.name}`. Send extra: {{}}. Missing but required: "
                               f"{{{','.join(missing)}}}.")
        for alias in output_filter:
            if alias not in signature_def.outputs:
                raise ServingError("INVALID_ARGUMENT",
                                   f"output tensor alias not found in signature: {alias}")
        tensors = {alias: self._to_tensor(alias, value, signature_def.inputs[alias].dtype)
                   for alias, value in inputs.items()}
        outputs = self._call(function, tensors)
        wanted = list(output_filter) or list(signature_def.outputs)
        return {alias: outputs[alias].numpy() for alias in wanted}

    @staticmethod
    def _to_tensor(alias: str, value, dtype_enum) -> tf.Tensor:
        dtype = tf.dtypes.as_dtype(dtype_enum)
        try:
            array = np.asarray(value, dtype=object if dtype == tf.string else None)
            if dtype == tf.string:
                array = np.vectorize(
                    lambda v: v if isinstance(v, bytes) else str(v).encode("utf-8"),
                    otypes=[object])(array) if array.size else array
                return tf.constant(array, dtype=tf.string)
            if array.dtype.kind in "OUS":
                raise TypeError(f"got text for a {dtype.name} input")
            if array.dtype.kind == "f" and dtype.is_integer:
                raise TypeError(f"got a fraction for an {dtype.name} input")
            return tf.constant(array.astype(dtype.as_numpy_dtype))
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT",
                               f"input '{alias}' cannot be converted to {dtype.name}: {error}")

    def _call(self, function, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        try:
            return function(**tensors)
        except tf.errors.InvalidArgumentError as error:
            raise ServingError("INVALID_ARGUMENT", _readable(error.message))
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", str(error).splitlines()[0])

    # -- classify / regress on serialized tf.Examples ----------------------------------------
    def _method_signature(self, signature_name: str, method: str, kind: str):
        signature_def, function = self.signature(signature_name)
        if signature_def.method_name != method:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expected {kind} signature method_name to be {method}. "
                               f"Was: {signature_def.method_name}")
        if len(signature_def.inputs) != 1:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expected one input Tensor in the {kind} signature.")
        return signature_def, function

    def classify(self, signature_name: str, serialized_examples: List[bytes]
                 ) -> List[List[Tuple[str, float]]]:
        signature_def, function = self._method_signature(signature_name, CLASSIFY_METHOD,
                                                         "classification")
        alias = next(iter(signature_def.inputs))
        outputs = self._call(function, {alias: tf.constant(serialized_examples, tf.string)})
        scores = outputs["scores"].numpy() if "scores" in outputs else None
        classes = outputs["classes"].numpy() if "classes" in outputs else None
        if scores is None and classes is None:
            raise ServingError("INVALID_ARGUMENT",
                               "Expected classification signature outputs classes or scores")
        rows = len(serialized_examples)
        width = (scores if scores is not None else classes).shape[1]
        return [[((classes[i][j].decode() if classes is not None else ""),
                  float(scores[i][j]) if scores is not None else 0.0)
                 for j in range(width)] for i in range(rows)]

    def regress(self, signature_name: str, serialized_examples: List[bytes]) -> List[float]:
        signature_def, function = self._method_signature(signature_name, REGRESS_METHOD,
                                                         "regression")
        alias = next(iter(signature_def.inputs))
        outputs = self._call(function, {alias: tf.constant(serialized_examples, tf.string)})
        return [float(v) for v in np.reshape(outputs["outputs"].numpy(), [-1])]

    # -- warmup -------------------------------------------------------------------------------
    def warm_up(self) -> int:
        """Replay assets.extra/tf_serving_warmup_requests (as TF Serving does before serving)."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        replayed = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                self.predict(request.model_spec.signature_name,
                             {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            elif kind == "classify_log":
                request = log.classify_log.request
                self.classify(request.model_spec.signature_name,
                              [e.SerializeToString() for e in request.input.example_list.examples])
            replayed += 1
        return replayed
