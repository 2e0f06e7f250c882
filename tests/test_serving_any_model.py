"""`ctpipe serve` serves any TF Serving SavedModel, not only ours: a toy model with predict,
classify and regress signatures, over REST and gRPC."""
import json
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc, regression_pb2

from ctpipe.components.trainer import set_signature_method
from ctpipe.serving.errors import ServingError
from ctpipe.serving.model_config import single_model
from ctpipe.serving.servables import Servable
from ctpipe.serving.server import start_server


class Toy(tf.Module):
    """y = 2x + 1 on a float feature x; classify thresholds it at 0."""

    def _x(self, serialized):
        return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": 2.0 * x + 1.0, "y_bytes": tf.strings.as_string(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": 2.0 * self._x(inputs) + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        p = tf.sigmoid(self._x(inputs))[:, None]
        return {"scores": tf.concat([1 - p, p], 1),
                "classes": tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(inputs)[0], 1])}


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    module = Toy()
    tf.saved_model.save(module, str(base / "7"), signatures={
        "serving_default": module.predict.get_concrete_function(),
        "regress_x": module.regress.get_concrete_function(),
        "classify_x": module.classify.get_concrete_function()})
    set_signature_method(str(base / "7"), "regress_x", "tensorflow/serving/regress")
    set_signature_method(str(base / "7"), "classify_x", "tensorflow/serving/classify")
    server = start_server(single_model("toy", str(base)), grpc_port=0, rest_port=0)
    yield server
    server.stop()


def _post(server, verb, body):
    request = urllib.request.Request(f"{server.rest_url}/v1/models/toy:{verb}",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_rest_predict_row_and_columnar_shapes(toy_server):
    rows = _post(toy_server, "predict", {"instances": [1.0, 2.5]})
    assert rows["predictions"][0]["y"] == 3.0 and rows["predictions"][1]["y"] == 6.0
    assert rows["predictions"][0]["y_bytes"] == {"b64": "MS4wMDAwMDA="}  # *_bytes outputs: b64
    columns = _post(toy_server, "predict", {"inputs": {"x": [1.0, 2.5]}})
    assert columns["outputs"]["y"] == [3.0, 6.0]


def test_rest_regress_and_classify(toy_server):
    assert _post(toy_server, "regress", {"signature_name": "regress_x",
                                          "examples": [{"x": 1.0}, {"x": -0.5}]}) == \
        {"results": [3.0, 0.0]}
    classified = _post(toy_server, "classify", {"signature_name": "classify_x",
                                                 "context": {"x": 0.0}, "examples": [{}]})
    assert classified["results"][0][1][0] == "pos"
    assert classified["results"][0][1][1] == pytest.approx(0.5)


def test_grpc_regress(toy_server):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "toy"
    request.model_spec.signature_name = "regress_x"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)
    with grpc.insecure_channel(toy_server.grpc_address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(
            request, timeout=10)
    assert response.model_spec.version.value == 7
    np.testing.assert_allclose([r.value for r in response.result.regressions], [5.0])


def test_regress_on_a_signature_that_does_not_fit_is_rejected(toy_server):
    """TF Serving's default checks a Regress signature's inputs and outputs, not its method:
    serving_default has two outputs (regressor.cc PreProcessRegression)."""
    request = urllib.request.Request(f"{toy_server.rest_url}/v1/models/toy:regress",
                                     data=b'{"examples": [{"x": 1.0}]}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 400
    assert json.loads(error.value.read())["error"] == "Expected one output Tensor."


def test_with_the_method_name_check_the_method_decides(toy_server):
    """--enable_signature_method_name_check: a predict-method signature is refused before its
    inputs and outputs are looked at; the declared ones still answer."""
    path = toy_server.core.registry.resolve("toy").path
    checked = Servable("toy", 7, path, method_name_check=True)
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(1.0)
    with pytest.raises(ServingError) as error:
        checked.regress("", [example.SerializeToString()])
    assert error.value.message == ("Expected regression signature method_name to be "
                                   "tensorflow/serving/regress. Was: tensorflow/serving/predict")
    assert checked.regress("regress_x", [example.SerializeToString()]) == [3.0]
