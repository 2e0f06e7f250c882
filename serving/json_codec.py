"""TF Serving's REST JSON rules: row ("instances") and columnar ("inputs") requests, {"b64": ...}
for binary strings, JSON tf.Examples for classify/regress, and the matching response shapes.
Errors in TF Serving's words (util/json_tensor.cc), rapidjson's parse errors included."""
from __future__ import annotations

import base64
import json
import operator
from typing import Any, Dict, List, Tuple

import numpy as np

from ctpipe.serving.errors import ServingError

# Types json.loads gives for JSON scalars: a list made only of these needs no walk.
_SCALARS = frozenset({str, int, float, bool, type(None)})


# rapidjson's GetParseError_En texts for what Python's json module reports (same positions).
_PARSE_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Extra data", "The document root must not be followed by other values."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
)


def _compact(value: Any) -> str:
    """A JSON value as rapidjson's Writer prints it (JsonValueToString): no spaces."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def _open_container(text: str, end: int) -> str:
    """The innermost '{' or '[' open at `end` (outside strings), "" at the top level."""
    stack, in_string, escaped = [], False, False
    for char in text[:end]:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def parse_request(raw: bytes) -> Dict[str, Any]:
    """A request body as TF Serving parses it (json_tensor.cc ParseJson): its errors are
    "JSON Parse error: <rapidjson's text> at offset: N", and the document must be an object."""
    if not raw:
        raise ServingError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ServingError("INVALID_ARGUMENT", "JSON Parse error: Invalid encoding in string. "
                           f"at offset: {error.start}")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        if not text.strip():
            reason = "The document is empty."
        elif error.msg == "Expecting ',' delimiter":
            reason = "Missing a comma or '}' after an object member." \
                if _open_container(text, error.pos) == "{" else \
                "Missing a comma or ']' after an array element."
        else:
            reason = next((theirs for ours, theirs in _PARSE_ERRORS
                           if error.msg.startswith(ours)), error.msg)
        raise ServingError("INVALID_ARGUMENT",
                           f"JSON Parse error: {reason} at offset: {error.pos}")
    if not isinstance(body, dict):
        raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_compact(body)} Is not object")
    return body


def signature_name(body: Dict[str, Any]) -> str:
    """The request's "signature_name" ("" when absent), TF Serving's FillSignature."""
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise ServingError("INVALID_ARGUMENT",
                           f"JSON Value: {_compact(body)} not formatted correctly. "
                           "'signature_name' key must be a string value.")
    return signature


def _first_text(value: Any) -> Any:
    """The first str in a (nested) JSON list, else None; flat lists are scanned at C speed."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return None
    if str not in set(map(type, value)):
        if list not in set(map(type, value)):
            return None
        return next((t for t in map(_first_text, value) if t is not None), None)
    return next(v for v in value if isinstance(v, str))


def check_numbers(inputs: Dict[str, Any], signature_inputs) -> None:
    """Text where the signature wants a number: TF Serving's json_tensor.cc TypeError, naming
    the first such value ('JSON Value: "x" Type: String is not of expected type: float')."""
    from tensorflow.core.framework import types_pb2

    for alias, value in inputs.items():
        info = signature_inputs.get(alias)
        if info is None or info.dtype in (types_pb2.DT_STRING, types_pb2.DT_INVALID):
            continue
        text = _first_text(value)
        if text is not None:
            dtype = types_pb2.DataType.Name(info.dtype)[len("DT_"):].lower()
            raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_compact(text)} Type: String "
                               f"is not of expected type: {dtype}")


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
