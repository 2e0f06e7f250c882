"""TF Serving's REST JSON rules: row ("instances") and columnar ("inputs") requests, {"b64": ...}
for binary strings, JSON tf.Examples for classify/regress, and the matching response shapes."""
from __future__ import annotations

import base64
import operator
from typing import Any, Dict, List, Tuple

import numpy as np

from ctpipe.pipeline.errors import ServingError

# Types json.loads gives for JSON scalars: a list made only of these needs no walk.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError):
                raise ServingError("INVALID_ARGUMENT", "Unable to base64 decode")
        raise ServingError("INVALID_ARGUMENT", f"JSON object {value} is not a {{'b64': ...}} value")
    if isinstance(value, list):
        if _SCALARS.issuperset(map(type, value)):  # C-speed scan: nothing to decode
            return value
        return [_decode_b64(v) for v in value]
    return value


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def predict_inputs(body: Dict[str, Any], input_aliases: List[str]
                   ) -> Tuple[Dict[str, Any], bool]:
    """(inputs by alias, row_format) from a :predict body."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise ServingError("INVALID_ARGUMENT",
                           "JSON Value: request must have exactly one of 'instances' or 'inputs'")
    if has_inputs:
        value = body["inputs"]
        if isinstance(value, dict) and not _is_b64(value):
            return {k: _decode_b64(v) for k, v in value.items()}, False
        if len(input_aliases) != 1:
            raise ServingError("INVALID_ARGUMENT",
                               "'inputs' must be an object keyed by input name "
                               f"({', '.join(sorted(input_aliases))})")
        return {input_aliases[0]: _decode_b64(value)}, False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
    named = all(isinstance(i, dict) and not _is_b64(i) for i in instances)
    if not named:
        if len(input_aliases) != 1:
            raise ServingError("INVALID_ARGUMENT",
                               "instances must be objects keyed by input name for a signature "
                               f"with several inputs ({', '.join(sorted(input_aliases))})")
        return {input_aliases[0]: _decode_b64(instances)}, True
    keys = instances[0].keys()
    if any(i.keys() != keys for i in instances):
        raise ServingError("INVALID_ARGUMENT",
                           "all instances must have the same keys (a missing value must be "
                           "sent explicitly)")
    return {key: _decode_b64(list(map(operator.itemgetter(key), instances)))
            for key in keys}, True


def _json_value(alias: str, value: Any) -> Any:
    """A tensor as TF Serving writes it: text as UTF-8 strings, `*_bytes` outputs and non-UTF-8
    bytes as {"b64": ...}, numbers as JSON numbers (NaN stays NaN). One tolist() per tensor;
    only string tensors are walked, for their bytes."""
    listed = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OSU":
        return listed
    as_b64 = alias.endswith("_bytes")

    def convert(item):
        if isinstance(item, bytes):
            if not as_b64:
                try:
                    return item.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(item).decode()}
        if isinstance(item, list):
            return [convert(v) for v in item]
        if isinstance(item, np.generic):
            return item.item()
        return item
    return convert(listed)


def predict_response(outputs: Dict[str, np.ndarray], row_format: bool) -> Dict[str, Any]:
    converted = {k: _json_value(k, v) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(converted.values())) if len(converted) == 1 else converted}
    rows = len(next(iter(outputs.values())))
    if len(converted) == 1:
        return {"predictions": next(iter(converted.values()))}
    return {"predictions": [{alias: values[i] for alias, values in converted.items()}
                            for i in range(rows)]}


def examples_from_json(body: Dict[str, Any]) -> List[bytes]:
    """Serialized tf.Examples from a :classify / :regress body ("examples" + optional "context")."""
    import tensorflow as tf

    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ServingError("INVALID_ARGUMENT", "'examples' must be a non-empty list")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise ServingError("INVALID_ARGUMENT", "'context' must be an object")
    serialized = []
    for example in examples:
        if not isinstance(example, dict):
            raise ServingError("INVALID_ARGUMENT", "each example must be a JSON object")
        features = {}
        for name, value in {**context, **example}.items():
            features[name] = _feature(name, value)
        serialized.append(tf.train.Example(
            features=tf.train.Features(feature=features)).SerializeToString())
    return serialized


def _feature(name: str, value: Any):
    import tensorflow as tf

    values = value if isinstance(value, list) else [value]
    values = [_decode_b64(v) for v in values]
    if all(isinstance(v, bool) for v in values) or not values:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    if all(isinstance(v, (str, bytes)) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v if isinstance(v, bytes) else v.encode("utf-8") for v in values]))
    raise ServingError("INVALID_ARGUMENT", f"feature '{name}' mixes value types: {value!r}")
