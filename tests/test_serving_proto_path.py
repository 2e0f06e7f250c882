"""The proto path (serving/proto_calls.py): a gRPC Predict's input TensorProtos go to TensorFlow
as they came and are parsed there, not decoded in Python; a request the path refuses gets the
numpy path's answer or error; a request that breaks its batch costs the others nothing but
time; and a function TF's single-threaded executor cannot run moves to the default executor."""
import re
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ctpipe.serving import grpc_service, tensor_protos
from ctpipe.serving.batching import BatchingOptions
from ctpipe.serving.errors import ServingError
from ctpipe.serving.model_config import single_model
from ctpipe.serving.proto_calls import ProtoCall
from ctpipe.serving.servables import Servable
from ctpipe.serving.server import start_server
from ctpipe.serving.tensor_protos import RequestInputs

from tests.support import save_model_version


class Mixed(tf.Module):
    """Every dtype kind a client sends: floats (tensor_content), int64, strings, a 2-D input."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.int64, name="n"),
                                  tf.TensorSpec([None], tf.string, name="word"),
                                  tf.TensorSpec([None, 2], tf.float32, name="pair")])
    def predict(self, x, n, word, pair):
        return {"y": 2.0 * x + tf.cast(n, tf.float32), "s": tf.reduce_sum(pair, 1),
                "length": tf.strings.length(word)}


@pytest.fixture(scope="module")
def mixed_base(tmp_path_factory):
    return save_model_version(tmp_path_factory.mktemp("proto_path"), Mixed())


def _request(x, n, words, pair, x_dtype=np.float32, model="mixed"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, x_dtype)))
    request.inputs["n"].CopyFrom(tf.make_tensor_proto(np.asarray(n, np.int64)))
    request.inputs["word"].CopyFrom(tf.make_tensor_proto([w.encode() for w in words]))
    request.inputs["pair"].CopyFrom(tf.make_tensor_proto(np.asarray(pair, np.float32)))
    return request


GOOD = ([1.5, -2.0], [3, 4], ["taxi", "é"], [[1.0, 2.0], [0.5, 0.25]])
GOOD_ANSWER = {"y": [6.0, 0.0], "s": [3.0, 0.75], "length": [4, 2]}  # "é" is 2 UTF-8 bytes


def _answer(response):
    return {alias: tf.make_ndarray(proto).tolist() for alias, proto in response.outputs.items()}


@pytest.fixture(scope="module")
def stub(mixed_base):
    server = start_server(single_model("mixed", str(mixed_base)), grpc_port=0, rest_port=0)
    channel = grpc.insecure_channel(server.grpc_address)
    try:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    finally:
        channel.close()
        server.stop()


def test_grpc_inputs_are_parsed_by_tensorflow_not_decoded_in_python(stub, monkeypatch):
    def no_decoding(proto):
        raise AssertionError("an input was decoded to numpy in Python")

    monkeypatch.setattr(grpc_service, "to_ndarray", no_decoding)
    monkeypatch.setattr(tensor_protos, "to_ndarray", no_decoding)
    assert _answer(stub.Predict(_request(*GOOD), timeout=20)) == GOOD_ANSWER


def test_refused_requests_get_the_numpy_paths_answer_or_error(stub, mixed_base):
    # x as float64: not the signature's dtype, so the numpy path converts it, as before
    assert _answer(stub.Predict(_request(*GOOD, x_dtype=np.float64), timeout=20)) == GOOD_ANSWER

    # pair of rank 1: the proto path refuses it (EnsureShape); the numpy path hands it to the
    # model, which fails as it would in TF Serving (no feed shape check there): that error
    wrong_rank = _request(GOOD[0], GOOD[1], GOOD[2], [1.0, 2.0])
    numpy_path = Servable("mixed", 1, str(mixed_base / "1"))
    with pytest.raises(ServingError) as expected:
        numpy_path.predict("serving_default", {alias: tf.make_ndarray(proto) for alias, proto
                                               in wrong_rank.inputs.items()})
    with pytest.raises(grpc.RpcError) as got:
        stub.Predict(wrong_rank, timeout=20)
    assert got.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected.value.code == "INVALID_ARGUMENT"
    assert "Invalid reduction dimension" in expected.value.message
    assert got.value.details() == expected.value.message

    # float bytes that do not fill the declared shape
    malformed = _request(*GOOD)
    malformed.inputs["x"].tensor_content = b"\x00\x00"
    with pytest.raises(grpc.RpcError) as got:
        stub.Predict(malformed, timeout=20)
    assert got.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert got.value.details().startswith("malformed input tensor")


def test_an_unknown_model_is_not_found_before_its_inputs_are_parsed(stub):
    malformed = _request(*GOOD, model="absent")
    malformed.inputs["x"].tensor_content = b"\x00\x00"
    with pytest.raises(grpc.RpcError) as got:  # TF Serving looks the servable up first
        stub.Predict(malformed, timeout=20)
    assert got.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_request_that_breaks_its_batch_costs_the_others_nothing_but_time(mixed_base):
    servable = Servable("mixed", 1, str(mixed_base / "1"),
                        batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=300000,
                                                 num_batch_threads=1))
    good = [_request([float(i)], [i], ["ab" * i], [[i, 1.0]]) for i in range(3)]
    # same dtypes and rows, so it joins the batch; its pair has 3 columns where the spec says
    # 2, so the batch's concatenation fails. The numpy path, like TF Serving, does not check a
    # feed's shape and answers it.
    odd = _request([9.0], [9], ["x"], [[1.0, 2.0, 3.0]])
    answers, errors = {}, {}

    def one(name, request):
        try:
            answers[name] = servable.predict("serving_default", RequestInputs(request.inputs))
        except ServingError as error:
            errors[name] = error

    threads = [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(good)]
    threads.append(threading.Thread(target=one, args=("odd", odd)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    batcher = servable.proto_batcher("serving_default")
    assert (batcher.batches_run, batcher.tasks_run) == (1, 4)  # one batch, refused by TF
    assert not errors
    for i in range(3):
        assert answers[i]["y"].tolist() == [3.0 * i]
        assert answers[i]["s"].tolist() == [i + 1.0]
        assert answers[i]["length"].tolist() == [2 * i]
    assert answers["odd"]["s"].tolist() == [6.0]


def test_a_function_the_single_threaded_executor_refuses_moves_to_the_default(mixed_base):
    servable = Servable("mixed", 1, str(mixed_base / "1"))
    proto_call = ProtoCall.for_signature(servable._calls["serving_default"])
    proto_call.executor = "NO_SUCH_EXECUTOR"  # TF: no executor factory of that type
    request = _request(*GOOD)
    serialized, rows, _ = proto_call.prepare(request.inputs)
    answer = proto_call.run([serialized])
    assert {alias: value.tolist() for alias, value in answer.items()} == GOOD_ANSWER
    assert proto_call.executor == "" and rows == 2


def test_values_take_the_proto_path_and_what_it_cannot_take_keeps_the_tensor_path(
        mixed_base, monkeypatch):
    servable = Servable("mixed", 1, str(mixed_base / "1"))
    servable.warm_up()
    values = {"x": GOOD[0], "n": GOOD[1], "word": GOOD[2], "pair": GOOD[3]}
    with monkeypatch.context() as patch:  # REST-style values: one call, no tensor per input
        patch.setattr(tf, "constant", lambda *a, **k: pytest.fail("a tensor per input"))
        answer = servable.predict("serving_default", values)
    assert {alias: value.tolist() for alias, value in answer.items()} == GOOD_ANSWER
    # numbers for a string input: TF Serving's JSON takes their text, on the tensor path
    answer = servable.predict("serving_default", dict(values, word=[7, 42]))
    assert answer["length"].tolist() == [1, 2]


def test_a_model_error_reads_as_what_is_wrong_not_as_tf_internals(mixed_base):
    """Inputs of different lengths fail inside the model: the client reads TF's reason, without
    the function's internal name that a function run as one op reports
    ("{{function_node __inference_...}}") or "<stack traces unavailable>"."""
    servable = Servable("mixed", 1, str(mixed_base / "1"))
    with pytest.raises(ServingError) as raised:
        servable.predict("serving_default", {
            "x": np.array([1.0, 2.0], np.float32), "n": np.array([1, 2, 3], np.int64),
            "word": np.array([b"a", b"b"], dtype=object),
            "pair": np.zeros((2, 2), np.float32)})
    assert raised.value.code == "INVALID_ARGUMENT"
    assert re.fullmatch(r"Incompatible shapes: \[[23]\] vs\. \[[23]\]", raised.value.message)
