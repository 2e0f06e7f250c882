"""The wire conversions of the local server, without a server: REST JSON as TF Serving writes and
reads it, request values -> tensors, gRPC TensorProtos -> arrays, and the signature call on a
SavedModel. Each fast path is checked against a literal expectation or TensorFlow's own
conversion."""
import base64
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from ctpipe.serving import json_codec
from ctpipe.serving.errors import ServingError
from ctpipe.serving.servables import Servable


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def as_json(value):
    """What goes on the wire (NaN literal allowed, as the server writes it), read back."""
    return json.loads(json.dumps(value, allow_nan=True))


# -- REST responses -----------------------------------------------------------------------------
def test_row_format_numbers_are_plain_json_numbers():
    outputs = {"probabilities": np.array([[0.25], [np.nan]], np.float32),
               "count": np.array([3, -1], np.int64), "flag": np.array([True, False])}
    body = json_codec.predict_response(outputs, row_format=True)
    assert body["predictions"][0] == {"probabilities": [0.25], "count": 3, "flag": True}
    second = body["predictions"][1]
    assert math.isnan(second["probabilities"][0]) and second["count"] == -1
    assert type(second["count"]) is int and type(second["flag"]) is bool
    assert type(second["probabilities"][0]) is float
    assert "NaN" in json.dumps(body, allow_nan=True)


def test_row_format_single_output_is_a_list_of_rows():
    body = json_codec.predict_response({"y": np.array([[1.5, 2.0], [3.0, 4.0]], np.float32)},
                                       row_format=True)
    assert body == {"predictions": [[1.5, 2.0], [3.0, 4.0]]}
    assert json_codec.predict_response({"y": np.zeros([0, 2], np.float32)}, True) == \
        {"predictions": []}


def test_bytes_outputs_in_row_format():
    outputs = {"label": np.array([b"cash", "caf\u00e9".encode(), b"\xff\xfe"], dtype=object),
               "raw_bytes": np.array([b"cash", b"", b"\x00\x01"], dtype=object)}
    body = json_codec.predict_response(outputs, row_format=True)
    assert body["predictions"] == [
        {"label": "cash", "raw_bytes": b64(b"cash")},
        {"label": "caf\u00e9", "raw_bytes": b64(b"")},
        {"label": b64(b"\xff\xfe"), "raw_bytes": b64(b"\x00\x01")}]
    assert as_json(body) == body


def test_nested_bytes_outputs_in_both_formats():
    classes = np.array([[b"0", b"1"], [b"\xc3", b"yes"]], dtype=object)
    rows = json_codec.predict_response({"classes": classes}, row_format=True)
    assert rows == {"predictions": [["0", "1"], [b64(b"\xc3"), "yes"]]}
    columns = json_codec.predict_response({"classes": classes, "n": np.array([1, 2])},
                                          row_format=False)
    assert columns == {"outputs": {"classes": [["0", "1"], [b64(b"\xc3"), "yes"]],
                                   "n": [1, 2]}}


def test_columnar_single_output_is_the_bare_value():
    body = json_codec.predict_response({"y_bytes": np.array([b"a"], dtype=object)}, False)
    assert body == {"outputs": [b64(b"a")]}
    body = json_codec.predict_response({"y": np.array([[1.0, np.inf]], np.float64)}, False)
    assert body["outputs"][0][0] == 1.0 and body["outputs"][0][1] == float("inf")


def test_fixed_width_numpy_bytes_are_text_or_b64():
    outputs = {"s": np.array([b"ab", b"\xff"], dtype="S2")}
    assert json_codec.predict_response(outputs, True) == {"predictions": ["ab", b64(b"\xff")]}


# -- REST requests ------------------------------------------------------------------------------
def test_row_format_named_instances_decode_b64_anywhere():
    body = {"instances": [{"x": 1.0, "s": b64(b"\xff"), "m": [[b64(b"a"), "b"]]},
                          {"x": float("nan"), "s": "text", "m": [["c", "d"]]}]}
    inputs, row_format = json_codec.predict_inputs(body, ["x", "s", "m"])
    assert row_format
    assert inputs["s"] == [b"\xff", "text"]
    assert inputs["m"] == [[[b"a", "b"]], [["c", "d"]]]
    assert inputs["x"][0] == 1.0 and math.isnan(inputs["x"][1])


def test_row_format_unnamed_instances_for_a_single_input():
    inputs, row_format = json_codec.predict_inputs(
        {"instances": [b64(b"ex1"), b64(b"")]}, ["examples"])
    assert row_format and inputs == {"examples": [b"ex1", b""]}
    inputs, _ = json_codec.predict_inputs({"instances": [[1, 2], [3, 4]]}, ["x"])
    assert inputs == {"x": [[1, 2], [3, 4]]}
    assert all(type(v) is int for row in inputs["x"] for v in row)


def test_columnar_inputs_nested_lists_and_a_bare_value():
    inputs, row_format = json_codec.predict_inputs(
        {"inputs": {"a": [[b64(b"x"), "y"], [b64(b"z"), "w"]], "b": [1, 2.5], "c": "one"}},
        ["a", "b", "c"])
    assert not row_format
    assert inputs == {"a": [[b"x", "y"], [b"z", "w"]], "b": [1, 2.5], "c": "one"}
    inputs, _ = json_codec.predict_inputs({"inputs": b64(b"raw")}, ["examples"])
    assert inputs == {"examples": b"raw"}
    inputs, _ = json_codec.predict_inputs({"inputs": [b64(b"r1"), b64(b"r2")]}, ["examples"])
    assert inputs == {"examples": [b"r1", b"r2"]}


def test_an_input_named_b64_next_to_others_is_a_named_instance():
    inputs, _ = json_codec.predict_inputs({"instances": [{"b64": "YQ==", "x": 1}]}, ["b64", "x"])
    assert inputs == {"b64": ["YQ=="], "x": [1]}
    inputs, _ = json_codec.predict_inputs({"inputs": {"b64": ["YQ=="], "x": [1]}}, ["b64", "x"])
    assert inputs == {"b64": ["YQ=="], "x": [1]}


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [{"s": {"b64": "not base64!"}}]}, "base64"),
    ({"inputs": {"s": [{"b64": "@@"}]}}, "base64"),
    ({"instances": [{"s": {"text": "x"}}]}, "is not a {'b64'"),
    ({"inputs": {"s": [[{"b64": "YQ==", "more": 1}]]}}, "is not a {'b64'"),
    ({"instances": [{"a": 1}, {"b": 2}]}, "same keys"),
    ({"instances": []}, "non-empty"),
    ({"instances": [1], "inputs": [1]}, "exactly one of"),
])
def test_bad_request_values_are_invalid_argument(body, fragment):
    with pytest.raises(ServingError) as error:
        json_codec.predict_inputs(body, ["s", "a", "b"] if "instances" in body else ["s"])
    assert error.value.code == "INVALID_ARGUMENT" and fragment in error.value.message


# -- request values -> tensors --------------------------------------------------------------------
def to_tensor(value, dtype):
    return Servable._to_tensor("v", value, dtype.as_datatype_enum)


@pytest.mark.parametrize("value, expected", [
    (["Credit Card", "caf\u00e9", b"\xff"], [b"Credit Card", "caf\u00e9".encode(), b"\xff"]),
    (np.array([b"a", b"b"], dtype=object), [b"a", b"b"]),
    (np.array(["x", "y\u00e9"]), [b"x", "y\u00e9".encode()]),
    ([5, 1.5, True, None], [b"5", b"1.5", b"True", b"None"]),  # str() of anything, as before
    (["a", 1], [b"a", b"1"]),
    ([], []),
])
def test_string_inputs(value, expected):
    tensor = to_tensor(value, tf.string)
    assert tensor.dtype == tf.string and tensor.numpy().tolist() == expected


def test_string_inputs_nested_and_scalar():
    assert to_tensor([["a", b"b"], ["c", "d"]], tf.string).numpy().tolist() == \
        [[b"a", b"b"], [b"c", b"d"]]
    assert to_tensor("one", tf.string).numpy() == b"one"
    assert to_tensor([[]], tf.string).shape == (1, 0)


@pytest.mark.parametrize("value, dtype, expected", [
    ([1, 2.5], tf.float32, [1.0, 2.5]),
    (np.array([1.25, np.nan]), tf.float32, [1.25, float("nan")]),
    (np.array([3], np.int64), tf.int64, [3]),
    (np.array([3, 4], np.int32), tf.int64, [3, 4]),
    ([True, False], tf.float32, [1.0, 0.0]),
    ([[1, 2], [3, 4]], tf.int64, [[1, 2], [3, 4]]),
])
def test_numeric_inputs(value, dtype, expected):
    tensor = to_tensor(value, dtype)
    assert tensor.dtype == dtype
    np.testing.assert_array_equal(tensor.numpy(), np.array(expected, dtype.as_numpy_dtype))


@pytest.mark.parametrize("value, dtype, fragment", [
    (["x"], tf.float32, "got text"),
    ([b"x"], tf.int64, "got text"),
    ([1.5], tf.int64, "got a fraction"),
    (np.array([1.5], np.float32), tf.int64, "got a fraction"),
    ([[1, 2], [3]], tf.float32, "cannot be converted"),
])
def test_bad_numeric_inputs(value, dtype, fragment):
    with pytest.raises(ServingError) as error:
        to_tensor(value, dtype)
    assert error.value.code == "INVALID_ARGUMENT" and fragment in error.value.message


@pytest.mark.parametrize("value, dtype", [
    ([5, 1.5], tf.string), (np.array([1, 2]), tf.string), (np.array([2.5], np.float32), tf.string),
])
def test_numbers_sent_to_a_string_input_become_their_text(value, dtype):
    expected = [str(v).encode() for v in np.asarray(value, dtype=object).tolist()]
    assert to_tensor(value, dtype).numpy().tolist() == expected


# -- the signature call --------------------------------------------------------------------------
class Scorer(tf.Module):
    """Captured state (a variable, a lookup table) and a fixed inner dimension."""

    def __init__(self):
        self.weight = tf.Variable(2.0)
        self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(["cash", "card"]), tf.constant([1.0, 2.0])), default_value=-1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.string, name="kind")])
    def score(self, x, kind):
        return {"score": self.weight * tf.reduce_sum(x, axis=1) + self.table.lookup(kind),
                "kind_bytes": kind}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scorer") / "1")
    module = Scorer()
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.score.get_concrete_function()})
    return Servable("scorer", 1, path)


def test_the_signature_call_matches_tensorflows_public_call(scorer):
    call = scorer._calls["serving_default"]
    assert call.fast  # plain dense keyword-only signature: the flat call is used
    tensors = {"x": tf.constant([[1.0, 2.0], [0.5, 0.5]]),
               "kind": tf.constant(["card", "bus"])}
    fast, public = call(tensors), call.function(**tensors)
    assert set(fast) == set(public) == {"score", "kind_bytes"}
    for alias in fast:
        np.testing.assert_array_equal(fast[alias].numpy(), public[alias].numpy())
    outputs = scorer.predict("", {"x": [[1.0, 2.0]], "kind": ["cash"]})
    assert outputs["score"].tolist() == [7.0] and outputs["kind_bytes"].tolist() == [b"cash"]


def test_a_tensor_that_does_not_fit_the_traced_shapes_goes_to_tensorflow(scorer):
    with pytest.raises(ServingError) as error:  # rank 1 for a [None, 2] input
        scorer.predict("serving_default", {"x": [1.0, 2.0], "kind": ["cash", "card"]})
    assert error.value.code == "INVALID_ARGUMENT"
    # inner dimension 3, not 2: TF's own call decides (a loaded signature accepts it)
    tensors = {"x": tf.constant([[1.0, 2.0, 3.0]]), "kind": tf.constant(["cash"])}
    expected = scorer._calls["serving_default"].function(**tensors)["score"].numpy()
    assert scorer.predict("", {"x": [[1.0, 2.0, 3.0]], "kind": ["cash"]})["score"] == expected


def test_unknown_and_missing_inputs_are_named(scorer):
    with pytest.raises(ServingError) as error:
        scorer.predict("", {"x": [[1.0, 2.0]], "kind": ["a"], "extra": [1]})
    assert "input tensor alias not found in signature: extra" in error.value.message
    with pytest.raises(ServingError) as error:
        scorer.predict("", {"x": [[1.0, 2.0]]})
    assert "Missing but required: {kind}" in error.value.message


# -- gRPC TensorProtos -> arrays ------------------------------------------------------------------
def _protos():
    from tensorflow.core.framework import tensor_pb2, types_pb2

    made = [tf.make_tensor_proto(value, dtype=dtype) for value, dtype in [
        ([1.5], tf.float32), (np.arange(40, dtype=np.float32), None),
        (np.arange(12, dtype=np.int64).reshape(3, 4), None), ([7], tf.int64),
        ([[1, 2], [3, 4]], tf.int32), (np.array([1.0, np.nan]), tf.float64),
        ([True, False, True], tf.bool), (np.ones([2, 40], bool), None),
        ([b"Credit Card", b"\xff", b""], tf.string), ([[b"a", b"b"]], tf.string),
        (np.zeros([0], np.float32), None), (np.zeros([0, 3], np.int64), None),
        ([], tf.string), (3.5, tf.float32), (b"scalar", tf.string),
        (np.array([1, 2], np.float16), None), (np.array([1, 2], np.uint8), None)]]
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0])
    short.tensor_shape.dim.add(size=3)  # TF repeats the last value: [2, 2, 2]
    by_hand = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[4, 5, 6])
    by_hand.tensor_shape.dim.add(size=3)
    return made + [short, by_hand]


@pytest.mark.parametrize("proto", _protos(), ids=lambda p: f"{p.dtype}-{len(p.tensor_content)}")
def test_grpc_tensor_protos_decode_as_tensorflow_does(proto):
    from ctpipe.serving.grpc_service import to_ndarray

    expected, got = tf.make_ndarray(proto), to_ndarray(proto)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_grpc_tensor_content_of_the_wrong_size_is_an_error():
    from ctpipe.serving.grpc_service import to_ndarray

    proto = tf.make_tensor_proto(np.arange(40, dtype=np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(ValueError):
        to_ndarray(proto)
