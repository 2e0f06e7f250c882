"""TF Serving's own model-server tests, ported to run against `ctpipe serve` in-process.

Sources (github.com/tensorflow/serving), each test naming the case it ports:
- tensorflow_serving/model_servers/tensorflow_model_server_test.py (the end-to-end tests of
  tensorflow_model_server over gRPC and REST),
- tensorflow_serving/model_servers/http_rest_api_handler_test.cc (the REST handler),
- tensorflow_serving/servables/tensorflow/multi_inference_test.cc (MultiInference rules).

The model is half_plus_two built here with the logic of TF Serving's generator
(servables/tensorflow/testdata/saved_model_half_plus_two.py, its native TF2 variant): variables
a=0.5, b=2, c=3; y = a*x + b, y2 = a*x + c, y3 = a*x2 + c; saved as version directory
"00000123". Our differences from that generator, on purpose:
- serving_default takes `x` of any shape (TensorSpec(None)): TF Serving's tests feed the TF1
  model's x tensor with shapes [1], [3] and [2, 2], which a TF1 session allows;
- the classify/regress signatures declare tensorflow/serving/classify|regress (tf.saved_model
  .save writes every signature as predict; our server, like TF Serving with
  --enable_signature_method_name_check, requires the declared method), set in saved_model.pb as
  components/trainer.py set_signature_method does;
- x2 signatures take x2 as a [None, 1] float tensor, as in the TF1 model.
Queries use the real tensorflow_serving.apis stubs over gRPC and urllib for REST.
"""
import json
import os
import urllib.error
import urllib.request

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from ctpipe.pipeline.errors import ServingError
from ctpipe.serving import model_config
from ctpipe.serving.server import start_server

from tests.support import wait_until

RPC_TIMEOUT = 20.0
VERSION = 123
PREDICT, CLASSIFY, REGRESS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                              "tensorflow/serving/regress")


# -- the model ----------------------------------------------------------------------------------
class HalfPlusTwo(tf.Module):
    """TF Serving's HalfPlusTwoModel (TF2), see the module docstring for our differences."""

    def __init__(self, b: float = 2.0, c: float = 3.0, asset: str = ""):
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(b, name="b")
        self.c = tf.Variable(c, name="c")
        if asset:
            self.asset = tf.saved_model.Asset(asset)

    def compute(self, x, inc):
        return tf.add(tf.multiply(self.a, x), inc)

    @staticmethod
    def _x(serialized):
        return tf.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([1], tf.float32),
            "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})["x"]

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def predict(self, x):
        return {"y": self.compute(x, self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy(self, serialized_proto):
        return {"outputs": self.compute(self._x(serialized_proto), self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy2(self, serialized_proto):
        return {"outputs": self.compute(self._x(serialized_proto), self.c)}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="inputs")])
    def regress_x2y3(self, x2):
        return {"outputs": self.compute(x2, self.c)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_xy(self, serialized_proto):
        return {"scores": self.compute(self._x(serialized_proto), self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="inputs")])
    def classify_x2y3(self, x2):
        return {"scores": self.compute(x2, self.c)}

    def serving_signatures(self):
        return {"regress_x_to_y": self.regress_xy, "regress_x_to_y2": self.regress_xy2,
                "regress_x2_to_y3": self.regress_x2y3, "classify_x_to_y": self.classify_xy,
                "classify_x2_to_y3": self.classify_x2y3, "serving_default": self.predict}


METHODS = {"regress_x_to_y": REGRESS, "regress_x_to_y2": REGRESS, "regress_x2_to_y3": REGRESS,
           "classify_x_to_y": CLASSIFY, "classify_x2_to_y3": CLASSIFY,
           "serving_default": PREDICT}


def set_methods(export_dir: str, methods) -> None:
    """Write each signature's method_name into saved_model.pb (tf.saved_model.save writes
    predict for all)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        for key, method in methods.items():
            meta_graph.signature_def[key].method_name = method
    with open(path, "wb") as handle:
        handle.write(saved_model.SerializeToString())


def build_half_plus_two(base_path, versions=(VERSION,), b: float = 2.0) -> str:
    """<base_path>/<version as %08d>/ for each version; returns base_path."""
    os.makedirs(base_path, exist_ok=True)
    asset = os.path.join(str(base_path), "foo.txt")
    with open(asset, "w") as handle:
        handle.write("asset-file-contents")
    for version in versions:
        export_dir = os.path.join(str(base_path), f"{version:08d}")
        module = HalfPlusTwo(b=b, asset=asset)
        tf.saved_model.save(module, export_dir, signatures=module.serving_signatures())
        set_methods(export_dir, METHODS)
    os.remove(asset)
    return str(base_path)


@pytest.fixture(scope="session")
def half_plus_two(tmp_path_factory) -> str:
    return build_half_plus_two(tmp_path_factory.mktemp("tfs") / "saved_model_half_plus_two")


@pytest.fixture(scope="session")
def half_plus_three(tmp_path_factory) -> str:
    return build_half_plus_two(tmp_path_factory.mktemp("tfs") / "saved_model_half_plus_three",
                               b=3.0)


@pytest.fixture(scope="module")
def server(half_plus_two):
    """RunServer('default', model_path): --model_name=default --model_base_path=..."""
    running = start_server(model_config.single_model("default", half_plus_two),
                           grpc_port=0, rest_port=0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


# -- helpers, as tensorflow_model_server_test_base.py has them ----------------------------------
def call_rest(url, req):
    """CallREST: POST json.dumps(req), or GET when req is None; the response body."""
    data = json.dumps(req).encode("utf-8") if req is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=20) as resp:
        return resp.read()


def rest_error(url, body=None, method=None):
    """(HTTP status, error message) of a REST call that must fail."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=20)
    return raised.value.code, json.loads(raised.value.read())["error"]


def sorted_object(obj):
    """SortedObject: JSON with every list and dict sorted (metadata has no order)."""
    if isinstance(obj, dict):
        return sorted((k, sorted_object(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return sorted(sorted_object(x) for x in obj)
    return obj


def verify_predict(stub, expected_output, expected_version, model_name="default",
                   specify_output=True, batch_input=False, signature_name="serving_default"):
    """VerifyPredictRequest: x=2.0 as a [1] (or [1, 1]) float tensor in float_val."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    result = stub.Predict(request, RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected_output
    verify_model_spec(result.model_spec, model_name, signature_name, expected_version)


def verify_model_spec(actual, name, signature_name, version):
    """_VerifyModelSpec."""
    assert actual.name == name
    assert actual.signature_name == signature_name
    assert actual.version.value == version


def _example_input(request, **features):
    example = request.input.example_list.examples.add()
    for key, value in features.items():
        example.features.feature[key].float_list.value.extend([value])


def _abort(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


# == tensorflow_model_server_test.py ===========================================================
def test_get_model_status(model_stub):
    """testGetModelStatus: one version, 123, status OK."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = model_stub.GetModelStatus(request, RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == VERSION
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(stub):
    """testGetModelMetadata: model_spec name and version, one metadata entry, signature_def."""
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = stub.GetModelMetadata(request, RPC_TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == VERSION
    assert len(result.metadata) == 1
    assert "signature_def" in result.metadata


def test_classify(stub):
    """testClassify and testClassifyTf2 (_TestClassify): x=2 -> one class, score 3."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    _example_input(request, x=2.0)
    result = stub.Classify(request, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, "default", "classify_x_to_y", VERSION)


def test_regress(stub):
    """testRegress and testRegressTf2 (_TestRegress): x=2 -> 3."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    _example_input(request, x=2.0)
    result = stub.Regress(request, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", VERSION)


def test_multi_inference(stub):
    """testMultiInference and testMultiInferenceTf2 (_TestMultiInference): regress_x_to_y and
    classify_x_to_y on one example, both 3, each result with its own model_spec."""
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add().model_spec.name = "default"
    request.tasks[0].model_spec.signature_name = "regress_x_to_y"
    request.tasks[0].method_name = REGRESS
    request.tasks.add().model_spec.name = "default"
    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    request.tasks[1].method_name = CLASSIFY
    _example_input(request, x=2.0)
    result = stub.MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        verify_model_spec(result.results[i].model_spec, "default",
                          request.tasks[i].model_spec.signature_name, VERSION)


def test_predict_saved_model(stub):
    """testPredictSavedModel (_TestPredict): with and without output_filter."""
    verify_predict(stub, expected_output=3.0, expected_version=VERSION)
    verify_predict(stub, expected_output=3.0, specify_output=False, expected_version=VERSION)


def test_server_ready_probe_names_the_missing_servable(stub):
    """WaitForServerReady (tensorflow_model_server_test_base.py): a Predict for a missing model
    fails with details containing 'Servable'."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    error = _abort(lambda: stub.Predict(request, RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "Servable" in error.details()


GOOD_MODEL_CONFIG = """model_config_list: {
  config: {
    name: "half_plus_two",
    base_path: "${TEST_HALF_PLUS_TWO_DIR}",
    model_platform: "tensorflow"
  },
  config: {
    name: "half_plus_three",
    base_path: "${TEST_HALF_PLUS_THREE_DIR}",
    model_platform: "tensorflow"
  }
}"""  # testdata/good_model_config.txt


def test_good_model_config(half_plus_two, half_plus_three):
    """testGoodModelConfig: two models from a model config file, 3.0 and 4.0, with and without
    output_filter."""
    text = GOOD_MODEL_CONFIG.replace("${TEST_HALF_PLUS_TWO_DIR}", half_plus_two) \
        .replace("${TEST_HALF_PLUS_THREE_DIR}", half_plus_three)
    running = start_server(model_config.parse_models(text), grpc_port=0, rest_port=0)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for name, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
                verify_predict(stub, expected, VERSION, model_name=name)
                verify_predict(stub, expected, VERSION, model_name=name, specify_output=False)
    finally:
        running.stop()


def test_bad_model_config():
    """testBadModelConfig: testdata/bad_model_config.txt is refused as a ModelServerConfig
    that cannot be parsed (TF Serving: 'Error parsing text-format
    tensorflow.serving.ModelServerConfig' and no server)."""
    with pytest.raises(ServingError) as raised:
        model_config.parse_models("improperly formatted file")
    assert raised.value.code == "INVALID_ARGUMENT"
    assert "ModelServerConfig" in raised.value.message


def test_model_config_reload(half_plus_two, half_plus_three):
    """testModelConfigReload, through ModelService.HandleReloadConfigRequest instead of
    --model_config_file_poll_wait_seconds: serve half_plus_two, load a config with only
    half_plus_three, which then answers 4.0."""
    base_config = """model_config_list: {{ config: {{ name: "{name}", base_path: "{path}",
                     model_platform: "tensorflow" }} }}"""
    running = start_server(model_config.parse_models(
        base_config.format(name="half_plus_two", path=half_plus_two)), grpc_port=0, rest_port=0)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 3.0, VERSION, model_name="half_plus_two", specify_output=False)
            request = model_management_pb2.ReloadConfigRequest(config=text_format.Parse(
                base_config.format(name="half_plus_three", path=half_plus_three),
                model_server_config_pb2.ModelServerConfig()))
            reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, RPC_TIMEOUT)
            assert reply.status.error_code == 0, reply.status.error_message
            verify_predict(stub, 4.0, VERSION, model_name="half_plus_three",
                           specify_output=False)
    finally:
        running.stop()


def test_model_config_reload_from_the_polled_file(half_plus_two, half_plus_three, tmp_path):
    """testModelConfigReload: the server polls its model config file; rewritten to serve
    half_plus_three instead of half_plus_two, it answers 4.0 for that model (TF Serving sleeps
    10 s; we wait for it)."""
    base_config = """model_config_list: {{ config: {{ name: "{name}", base_path: "{path}",
                     model_platform: "tensorflow" }} }}"""
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(base_config.format(name="half_plus_two", path=half_plus_two))
    running = start_server(model_config.parse_models(config_path.read_text()), grpc_port=0,
                           rest_port=0, poll_seconds=0.2, config_file=str(config_path))
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 3.0, VERSION, model_name="half_plus_two", specify_output=False)
            config_path.write_text(base_config.format(name="half_plus_three",
                                                      path=half_plus_three))
            def reloaded():
                try:
                    return bool(running.core.registry.resolve("half_plus_three"))
                except ServingError:
                    return False
            assert wait_until(reloaded, 30)
            assert running.core.registry.model_names() == ["half_plus_three"]
            verify_predict(stub, 4.0, VERSION, model_name="half_plus_three",
                           specify_output=False)
    finally:
        running.stop()


def test_classify_rest(server):
    """testClassifyREST."""
    resp = call_rest(f"{server.rest_url}/v1/models/default:classify",
                     {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert json.loads(resp.decode()) == {"results": [[["", 3.0]]]}


def test_regress_rest(server):
    """testRegressREST."""
    resp = call_rest(f"{server.rest_url}/v1/models/default:regress",
                     {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert json.loads(resp.decode()) == {"results": [3.0]}


def test_predict_rest(server):
    """testPredictREST."""
    resp = call_rest(f"{server.rest_url}/v1/models/default:predict",
                     {"instances": [2.0, 3.0, 4.0]})
    assert json.loads(resp.decode()) == {"predictions": [3.0, 3.5, 4.0]}


def test_predict_columnar_rest(server):
    """testPredictColumnarREST."""
    resp = call_rest(f"{server.rest_url}/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert json.loads(resp.decode()) == {"outputs": [3.0, 3.5, 4.0]}


def test_get_status_rest(server):
    """testGetStatusREST."""
    resp = call_rest(f"{server.rest_url}/v1/models/default", None)
    assert json.loads(resp.decode()) == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def _tensor_json(dtype, dims, name):
    """A TensorInfo as TF Serving prints it: dims as strings with their empty names, unknown
    rank as "dim": [] and "unknown_rank": true."""
    shape = {"dim": [], "unknown_rank": True} if dims is None else {
        "dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def expected_metadata(export_dir, name="default", version="123"):
    """half_plus_two_model_metadata.json for our model: TF Serving's shape and field names,
    our signatures and method names; the tensor names are TF's generated ones (read from
    saved_model.pb), and TF2's __saved_model_init_op is listed as TF Serving lists it."""
    from ctpipe.serving.servables import read_signature_defs

    names = {key: ({a: i.name for a, i in value.inputs.items()},
                   {a: i.name for a, i in value.outputs.items()})
             for key, value in read_signature_defs(export_dir, with_init_op=True).items()}

    def signature(key, inputs, outputs, method):
        return {"inputs": {a: _tensor_json(d, dims, names[key][0][a])
                           for a, (d, dims) in inputs.items()},
                "outputs": {a: _tensor_json(d, dims, names[key][1][a])
                            for a, (d, dims) in outputs.items()},
                "method_name": method, "defaults": {}}
    examples = {"inputs": ("DT_STRING", [-1])}
    x2 = {"inputs": ("DT_FLOAT", [-1, 1])}
    column = ("DT_FLOAT", [-1, 1])
    signatures = {
        "serving_default": signature("serving_default", {"x": ("DT_FLOAT", None)},
                                     {"y": ("DT_FLOAT", None)}, PREDICT),
        "regress_x_to_y": signature("regress_x_to_y", examples, {"outputs": column}, REGRESS),
        "regress_x_to_y2": signature("regress_x_to_y2", examples, {"outputs": column}, REGRESS),
        "regress_x2_to_y3": signature("regress_x2_to_y3", x2, {"outputs": column}, REGRESS),
        "classify_x_to_y": signature("classify_x_to_y", examples, {"scores": column}, CLASSIFY),
        "classify_x2_to_y3": signature("classify_x2_to_y3", x2, {"scores": column}, CLASSIFY),
        "__saved_model_init_op": {
            "inputs": {}, "outputs": {"__saved_model_init_op": _tensor_json(
                "DT_INVALID", None, names["__saved_model_init_op"][1]["__saved_model_init_op"])},
            "method_name": "", "defaults": {}},
    }
    return {"model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": signatures}}}


def test_get_model_metadata_rest(server, half_plus_two):
    """testGetModelMetadataREST: the metadata JSON equals (sorted) the expected document in
    the form of testdata/half_plus_two_model_metadata.json."""
    resp = call_rest(f"{server.rest_url}/v1/models/default/metadata", None)
    expected = expected_metadata(os.path.join(half_plus_two, "00000123"))
    assert sorted_object(json.loads(resp.decode())) == sorted_object(expected)


def test_prometheus_endpoint(server):
    """testPrometheusEndpoint: metric type information at /monitoring/prometheus/metrics."""
    resp = call_rest(f"{server.rest_url}/monitoring/prometheus/metrics", None)
    assert "# TYPE" in resp.decode("utf-8")


def _serve_one_off(base_path):
    return start_server(model_config.single_model("default", str(base_path)),
                        grpc_port=0, rest_port=0)


def test_tf_saved_model_save(tmp_path):
    """test_tf_saved_model_save: a tf.train.Checkpoint root with one signature, 3*2*x."""
    export_path = tmp_path / "tf_saved_model_save" / "00000123"
    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.)
    root.v2 = tf.Variable(2.)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    to_save = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(export_path), to_save)
    running = _serve_one_off(export_path.parent)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 12.0, VERSION, specify_output=False)
    finally:
        running.stop()


def test_tf_saved_model_save_multiple_signatures(tmp_path):
    """test_tf_saved_model_save_multiple_signatures: serving_default -> 1, custom -> 2."""
    export_path = tmp_path / "tf_saved_model_save" / "00000123"
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, str(export_path), signatures={
        "serving_default": root.f, "custom_signature_key": root.g})
    running = _serve_one_off(export_path.parent)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 2.0, VERSION, signature_name="custom_signature_key")
            verify_predict(stub, 1.0, VERSION)
    finally:
        running.stop()


def test_sequential_keras_saved_model_save(tmp_path):
    """test_sequential_keras_saved_model_save: a Keras Sequential (tf_keras, the Keras 2 this
    project uses) with an identity 'y' layer; a [1, 1] input -> 2.0."""
    import tf_keras

    model = tf_keras.models.Sequential()
    model.add(tf_keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(tf_keras.layers.Lambda(lambda x: x, name="y"))
    export_path = tmp_path / "keras_sequential_saved_model_save" / "00000123"
    tf.saved_model.save(model, str(export_path))
    running = _serve_one_off(export_path.parent)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 2.0, VERSION, batch_input=True, specify_output=False)
    finally:
        running.stop()


DISTRIBUTED_KERAS = """
import sys
import tensorflow as tf
import tf_keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(devices=("/cpu:0", "/cpu:1"))
with strategy.scope():
    model = tf_keras.models.Sequential()
    model.add(tf_keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(tf_keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"))
    model.add(tf_keras.layers.Lambda(lambda x: x, name="y"))
tf.saved_model.save(model, sys.argv[1])
"""


def test_distrat_sequential_keras_saved_model_save(tmp_path):
    """test_distrat_sequential_keras_saved_model_save: a Keras model built under a
    MirroredStrategy over two virtual CPUs. The virtual devices must exist before TensorFlow
    starts, so the model is saved by a fresh interpreter; it is served here."""
    import subprocess
    import sys

    export_path = tmp_path / "keras_sequential_saved_model_save" / "00000123"
    subprocess.run([sys.executable, "-c", DISTRIBUTED_KERAS, str(export_path)], check=True,
                   capture_output=True, timeout=300,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    running = _serve_one_off(export_path.parent)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 2.0, VERSION, batch_input=True, specify_output=False)
    finally:
        running.stop()


# == http_rest_api_handler_test.cc =============================================================
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """HttpRestApiHandlerTest's server core: versions 123 and 124 on disk, the specific policy
    serving 123, label Version_Label -> 123."""
    base = build_half_plus_two(tmp_path_factory.mktemp("tfs") / TWO_VERSIONS, (123, 124))
    running = start_server([model_config.ModelSpecConfig(
        name=TWO_VERSIONS, base_path=base, policy="specific", specific_versions=(123,),
        labels={"Version_Label": 123})], grpc_port=0, rest_port=0)
    assert wait_until(lambda: [s.version for s in running.core.registry.status(TWO_VERSIONS)
                               if s.state == 30] == [123])
    yield running, base
    running.stop()


@pytest.mark.parametrize("method, path, fragment", [
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2 ** 64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_unsupported_api_calls(two_versions, method, path, fragment):
    """HttpRestApiHandlerTest.UnsupportedApiCalls: INVALID_ARGUMENT (400) for each."""
    running, _ = two_versions
    code, message = rest_error(running.rest_url + path, b"" if method == "POST" else None,
                               method)
    assert code == 400 and fragment in message


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"/v1/models/{TWO_VERSIONS}99:predict"])
def test_predict_model_name_version_errors(two_versions, path):
    """HttpRestApiHandlerTest.PredictModelNameVersionErrors: NOT_FOUND (404)."""
    running, _ = two_versions
    code, _ = rest_error(running.rest_url + path, '{ "instances": [1] }')
    assert code == 404


@pytest.mark.parametrize("body, fragment", [
    ("", "JSON Parse error"),  # TF Serving: "JSON Parse error: The document is empty"
    ("instances = [1, 2]", "JSON Parse error"),  # TF Serving: "... Invalid value"
    ('{ "instances": ["x", "y"] }', "float"),  # TF Serving: "not of expected type: float"
    ('{ "signature_name": 100 }', "'signature_name' key must be a string value."),
])
def test_predict_request_errors(two_versions, body, fragment):
    """HttpRestApiHandlerTest.PredictRequestErrors: INVALID_ARGUMENT (400); our messages start
    as TF Serving's (rapidjson's own parse texts differ from Python's)."""
    running, _ = two_versions
    code, message = rest_error(f"{running.rest_url}/v1/models/{TWO_VERSIONS}:predict", body)
    assert code == 400 and fragment in message


def test_predict_request_errors_nonexistent_label(two_versions):
    """HttpRestApiHandlerTest.PredictRequestErrors, the nonexistent version label case."""
    running, _ = two_versions
    code, message = rest_error(
        f"{running.rest_url}/v1/models/{TWO_VERSIONS}/labels/Version_Nonexistent:predict",
        '{ "instances": ["x", "y"] }')
    assert "Unrecognized servable version label" in message
    assert code == 400


@pytest.mark.parametrize("path, body, expected", [
    ("", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    ("/versions/123", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    ("/labels/Version_Label", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    ("/versions/123", {"signature_name": "serving_default", "instances": [3.0, 4.0]},
     {"predictions": [3.5, 4.0]}),
    ("/versions/123", {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
     {"outputs": [3.5, 4.0]}),
])
def test_rest_handler_predict(two_versions, path, body, expected):
    """HttpRestApiHandlerTest.Predict: latest, specific version, label, explicit signature,
    columnar; Content-Type application/json."""
    running, _ = two_versions
    url = f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}:predict"
    request = urllib.request.Request(url, data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=20) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert json.loads(resp.read()) == expected


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/Version_Label"])
def test_rest_handler_regress(two_versions, path):
    """HttpRestApiHandlerTest.Regress: x=80 -> 42."""
    running, _ = two_versions
    resp = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}:regress",
                     {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]})
    assert json.loads(resp) == {"results": [42]}


@pytest.mark.parametrize("path, x, score", [("", 20.0, 12), ("/labels/Version_Label", 10.0, 7)])
def test_rest_handler_classify(two_versions, path, x, score):
    """HttpRestApiHandlerTest.Classify."""
    running, _ = two_versions
    resp = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}:classify",
                     {"signature_name": "classify_x_to_y", "examples": [{"x": x}]})
    assert json.loads(resp) == {"results": [[["", score]]]}


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/Version_Label"])
def test_rest_handler_get_status(two_versions, path):
    """HttpRestApiHandlerTest.GetStatus: only 123, AVAILABLE, OK."""
    running, _ = two_versions
    resp = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}", None)
    assert json.loads(resp) == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_handler_get_model_metadata(two_versions):
    """HttpRestApiHandlerTest.GetModelMetadata: the document of
    saved_model_half_plus_two_tf2_2_versions_metadata.json's form, exactly (CompareJson)."""
    running, base = two_versions
    resp = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}/metadata", None)
    assert json.loads(resp) == expected_metadata(os.path.join(base, "00000123"), TWO_VERSIONS)


# == multi_inference_test.cc ===================================================================
def _multi(*tasks, x=2.0, name="default"):
    request = inference_pb2.MultiInferenceRequest()
    if x is not None:
        _example_input(request, x=x)
    for signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = name
        task.model_spec.signature_name = signature
    return request


@pytest.mark.parametrize("request_, code, fragment", [
    (_multi(("regress_x_to_y", REGRESS), x=None), "INVALID_ARGUMENT", "Input is empty"),
    (_multi(("ThisSignatureDoesNotExist", REGRESS)), "INVALID_ARGUMENT", "signature not found"),
    (_multi(("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)), "INVALID_ARGUMENT",
     "Duplicate evaluation of signature: regress_x_to_y"),
    (_multi(("serving_default", PREDICT)), "UNIMPLEMENTED", "Unsupported signature"),
], ids=["MissingInputTest", "UndefinedSignatureTest", "EvaluateDuplicateSignaturesTest",
        "UsupportedSignatureTypeTest"])
def test_multi_inference_errors(stub, request_, code, fragment):
    """MultiInferenceTest.{MissingInput, UndefinedSignature, EvaluateDuplicateSignatures,
    UsupportedSignatureType}Test."""
    error = _abort(lambda: stub.MultiInference(request_, RPC_TIMEOUT))
    assert error.code() == getattr(grpc.StatusCode, code) and fragment in error.details()


def test_multi_inference_inconsistent_model_specs(stub):
    """MultiInferenceTest.InconsistentModelSpecsInRequestTest."""
    request = _multi(("regress_x_to_y", REGRESS))
    task = request.tasks.add(method_name=REGRESS)
    task.model_spec.name = "ModelDoesNotExist"
    task.model_spec.signature_name = "regress_x_to_y"
    error = _abort(lambda: stub.MultiInference(request, RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must access the same model name" in error.details()


def _expected_multi(request, values):
    expected = inference_pb2.MultiInferenceResponse()
    for task, value in zip(request.tasks, values):
        result = expected.results.add()
        result.model_spec.CopyFrom(task.model_spec)
        result.model_spec.version.value = VERSION
        if task.method_name == REGRESS:
            result.regression_result.regressions.add(value=value)
        else:
            result.classification_result.classifications.add().classes.add(score=value)
    return expected


@pytest.mark.parametrize("tasks, values", [
    ([("regress_x_to_y", REGRESS)], [3.0]),
    ([("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS)], [3.0, 4.0]),
    ([("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)], [3.0, 3.0]),
], ids=["ValidSingleSignatureTest", "MultipleValidRegressSignaturesTest",
        "RegressAndClassifySignaturesTest"])
def test_multi_inference_valid(stub, tasks, values):
    """MultiInferenceTest.{ValidSingleSignature, MultipleValidRegressSignatures,
    RegressAndClassifySignatures}Test: the whole response equals TF Serving's (EqualsProto)."""
    request = _multi(*tasks)
    assert stub.MultiInference(request, RPC_TIMEOUT) == _expected_multi(request, values)
