"""Logged requests -> tf.Examples -> TFDV statistics: the serving side of `ctpipe skew`
(pipeline/observe/skew.py compares them with the training side).

Every row becomes a tf.Example in which a missing value is absent - as CsvExampleGen writes
training data - never a NaN, -1 or "" value. serving_raw requests carry one tensor per raw
feature (components/features.py; NaN / -1 / "" mean missing); serving_default ("examples"),
classification ("inputs") and Classify / Regress / MultiInference requests carry tf.Examples.
The log files themselves follow components/request_log_format.py.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ctpipe.components.basics import first_line
from ctpipe.components.request_log_format import (
    LOG_PREFIX,
    LOG_SUFFIX,
    complete_log_files,
    read_logs,
)
from ctpipe.pipeline.errors import BadInput

# Predict inputs that carry serialized tf.Examples (serving_default, classification).
SERIALIZED_INPUTS = ("examples", "inputs")


# -- requests -> tf.Examples -----------------------------------------------------------------

def _raw_kinds() -> Dict[str, str]:
    """Raw feature name -> 'float' | 'int' | 'string' | 'int_numeric' (an integer column the
    serving_raw signature takes as float32: trip_seconds)."""
    from ctpipe.components import features as F

    kinds = {name: ("int_numeric" if dtype.startswith("int") else "float")
             for name, dtype in F.NUMERIC_FEATURES.items()}
    kinds.update({name: "int" for name in F.CATEGORICAL_INT_FEATURES})
    kinds.update({name: "string" for name in F.CATEGORICAL_STRING_FEATURES})
    return kinds


def _is_missing(kind: str, value: Any) -> bool:
    from ctpipe.components import features as F

    if kind in ("float", "int_numeric"):
        return value is None or math.isnan(float(value))
    if kind == "int":
        return int(value) == F.MISSING_INT
    return value in (F.MISSING_STRING, F.MISSING_STRING.encode())


def example_from_values(values: Dict[str, Any]):
    """One raw row (feature -> scalar) as the tf.Example CsvExampleGen would have written:
    missing values absent, integer columns as int64."""
    import tensorflow as tf

    kinds = _raw_kinds()
    example = tf.train.Example()
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is None or _is_missing(kind, value):
            continue
        feature = example.features.feature[name]
        if kind == "float":
            feature.float_list.value.append(float(value))
        elif kind == "int_numeric":
            feature.int64_list.value.append(int(round(float(value))))
        elif kind == "int":
            feature.int64_list.value.append(int(value))
        else:
            feature.bytes_list.value.append(value if isinstance(value, bytes)
                                            else str(value).encode())
    return example


def clean_example(example):
    """A served tf.Example with the missing-value conventions removed (NaN, -1 codes, empty
    strings of the known features): the model reads those as missing, so statistics must too."""
    kinds = _raw_kinds()
    features = example.features.feature
    for name in [n for n in features if n in kinds]:
        feature = features[name]
        which = feature.WhichOneof("kind")
        values = list(getattr(feature, which).value) if which else []
        kept = [v for v in values if not _is_missing(kinds[name], v)]
        if not kept:
            del features[name]
        elif len(kept) != len(values):
            del getattr(feature, which).value[:]
            getattr(feature, which).value.extend(kept)
    return example


def _rows_of_raw(inputs) -> Optional[List[Dict[str, Any]]]:
    import tensorflow as tf

    kinds = _raw_kinds()
    arrays = {name: tf.make_ndarray(proto) for name, proto in inputs.items() if name in kinds}
    if not arrays:
        return None
    columns = {name: array.reshape(array.shape[0] if array.ndim else 1, -1)
               for name, array in arrays.items()}
    sizes = {column.shape[0] for column in columns.values()}
    if len(sizes) != 1:
        return None  # inconsistent batch: the server rejected it too
    rows = sizes.pop()
    return [{name: column[i][0] for name, column in columns.items() if column.shape[1]}
            for i in range(rows)]


def _examples_of_input(request_input) -> List[Any]:
    """tensorflow.serving.Input: example_list, or example_list_with_context (context merged
    into every example, as the server does)."""
    import tensorflow as tf

    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        copies = []
        for example in request_input.example_list.examples:
            copy = tf.train.Example()
            copy.CopyFrom(example)
            copies.append(clean_example(copy))
        return copies
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        merged = []
        for example in listed.examples:
            combined = tf.train.Example()
            combined.CopyFrom(listed.context)
            combined.MergeFrom(example)
            merged.append(clean_example(combined))
        return merged
    return []


def examples_of_log(log) -> Tuple[str, Optional[List[Any]]]:
    """(signature name, its rows as tf.Examples); rows None for a record of no known form."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    kind = log.WhichOneof("log_type")
    if kind not in ("predict_log", "classify_log", "regress_log", "multi_inference_log"):
        return kind or "unknown", None
    request = getattr(log, kind).request
    if kind == "multi_inference_log":
        tasks = request.tasks
        signature = tasks[0].model_spec.signature_name if tasks else ""
    else:
        signature = request.model_spec.signature_name
    signature = signature or log.log_metadata.model_spec.signature_name or "serving_default"
    if kind != "predict_log":
        return signature, _examples_of_input(request.input) or None
    for alias in SERIALIZED_INPUTS:
        proto = request.inputs.get(alias)
        if proto is not None and proto.dtype == types_pb2.DT_STRING:
            serialized = tf.make_ndarray(proto).reshape(-1)
            try:
                return signature, [clean_example(tf.train.Example.FromString(bytes(s)))
                                   for s in serialized]
            except Exception:  # noqa: BLE001 - not tf.Examples after all (DecodeError)
                return signature, None
    rows = _rows_of_raw(request.inputs)
    if rows is None:
        return signature, None
    return signature, [example_from_values(row) for row in rows]


@dataclasses.dataclass
class ServingData:
    examples: List[Any]
    requests: int  # log records whose rows were used
    signatures: Dict[str, int]  # records per signature
    skipped: int  # records of no known form
    files: int


def serving_data(requests_dir: str) -> ServingData:
    """The rows of every usable logged request. BadInput when there is nothing to compare."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(requests_dir):
        raise BadInput(f"no request log directory {requests_dir}")
    files = complete_log_files(requests_dir)
    if not files:
        raise BadInput(f"no complete request log file ({LOG_PREFIX}*{LOG_SUFFIX}) "
                       f"in {requests_dir}")
    examples: List[Any] = []
    signatures: Dict[str, int] = collections.Counter()
    skipped = used = 0
    try:
        for log in read_logs(requests_dir):
            signature, rows = examples_of_log(log)
            if not rows:
                skipped += 1
                continue
            used += 1
            signatures[signature] += 1
            examples.extend(rows)
    except tf.errors.OpError as error:
        raise BadInput(f"request log in {requests_dir} is unreadable: "
                       f"{first_line(error, 200)}")
    except Exception as error:  # noqa: BLE001 - a record that is not a PredictionLog
        raise BadInput(f"request log in {requests_dir} holds a record that is not a "
                       f"PredictionLog: {type(error).__name__}")
    if not examples:
        raise BadInput(f"no request of a known signature in {requests_dir} "
                       f"({skipped} record(s) of none: expected serving_raw features or "
                       "serialized tf.Examples)")
    return ServingData(examples=examples, requests=used, signatures=dict(signatures),
                       skipped=skipped, files=len(files))


def statistics_of_examples(examples: Iterable[Any]):
    """TFDV statistics of tf.Examples (in a scratch TFRecord file that is removed after)."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "requests.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for example in examples:
                writer.write(example.SerializeToString())
        return tfdv.generate_statistics_from_tfrecord(
            path, output_path=os.path.join(scratch, "stats.tfrecord"))


def statistics_of_tfrecords(pattern: str):
    """TFDV statistics of TFRecord files of tf.Examples (.gz ones are decompressed)."""
    import tensorflow_data_validation as tfdv

    with tempfile.TemporaryDirectory() as scratch:
        return tfdv.generate_statistics_from_tfrecord(
            pattern, output_path=os.path.join(scratch, "stats.tfrecord"))
