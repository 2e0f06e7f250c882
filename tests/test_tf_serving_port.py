"""TF Serving's own model-server tests, ported to run against `ctpipe serve`.

Sources (github.com/tensorflow/serving at 2.16.1), each test naming the case it ports:
- tensorflow_serving/model_servers/tensorflow_model_server_test.py (the end-to-end tests of
  tensorflow_model_server over gRPC and REST) and its harness,
  model_servers/test_util/tensorflow_model_server_test_base.py (RunServer, WaitForServerReady,
  VerifyPredictRequest, CallREST, SortedObject);
- tensorflow_serving/model_servers/http_rest_api_handler_test.cc (the REST handler);
- tensorflow_serving/servables/tensorflow/multi_inference_test.cc (MultiInference rules).

The models are built by TF Serving's own generator,
servables/tensorflow/testdata/saved_model_half_plus_two.py, whose code is below as it is
(HALF_PLUS_TWO_GENERATOR, run in a namespace of its own) and is called as its main() calls it:
- `half_plus_two`: its TF1 path (a tf.compat.v1 graph saved by SavedModelBuilder; the
  signatures declare tensorflow/serving/predict, classify and regress) - the model TF Serving's
  tests use as saved_model_half_plus_two_cpu (_GetSavedModelBundlePath);
- `half_plus_two_tf2`: its TF2 path (tf.saved_model.save of a tf.Module: every signature is
  tensorflow/serving/predict) - saved_model_half_plus_two_tf2_cpu (_GetSavedModelHalfPlusTwoTf2);
- `half_plus_three`: TF Serving checks in a binary that no generator in the repository makes;
  here it is the TF1 half_plus_two with its variable b set to 3 in the checkpoint (y = 0.5x + 3,
  the one fact the tests read from it).
Every server runs with TF Serving's defaults - in particular no
--enable_signature_method_name_check - so the TF2 model answers Classify, Regress and
MultiInference as it does on TF Serving.

Expected metadata is fixed JSON, transcribed from TF Serving's testdata files (see
TF1_SIGNATURES and TF2_SIGNATURES for the two differences and why).

Not ported, because they do not apply here:
- testPredictOnTfLite, testPredictWithSignatureDefOnTfLite: TF Serving serves model.tflite with
  the TFLite runtime under --prefer_tflite_model; `ctpipe serve` serves SavedModels only (and
  the generator's TFLite export needs tensorflow.lite.tools.signature, which the TensorFlow
  wheel does not ship);
- test_profiler_service_with_valid_trace_request: it traces TensorFlow's profiler gRPC service,
  which TF Serving registers on its port (--enable_profiler); we have no profiler service;
- test_tf_text: it loads a checked-in Keras model that needs the tensorflow-text ops linked into
  TF Serving's binary; there is no model to build and nothing of ours to test.
Queries use the real tensorflow_serving.apis stubs over gRPC and urllib for REST.
"""
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import types
import urllib.error
import urllib.request

import grpc
import numpy as np
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

from ctpipe.serving import model_config
from ctpipe.serving.errors import ServingConfigError, ServingError
from ctpipe.serving.grpc_service import parse_grpc_channel_arguments
from ctpipe.serving.server import start_server

from tests.support import REPO, ctpipe_command, wait_until

RPC_TIMEOUT = 20.0
VERSION = 123
PREDICT, CLASSIFY, REGRESS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                              "tensorflow/serving/regress")


# -- the models -----------------------------------------------------------------------------------
# TF Serving 2.16.1's servables/tensorflow/testdata/saved_model_half_plus_two.py, as it is, less
# two parts: its `from tensorflow.lite.tools.signature import signature_def_utils` (a module the
# TensorFlow wheel does not ship; only its TFLite-with-SignatureDef branch uses it) and its
# command-line main(). It writes its asset to /tmp/original/export/assets/foo.txt, as it does
# (build_half_plus_two removes it again).
HALF_PLUS_TWO_GENERATOR = r'''## Copyright 2015 The TensorFlow Authors. All Rights Reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
r"""Exports an example linear regression inference graph.

Exports a TensorFlow graph to `/tmp/saved_model/half_plus_two/` based on the
`SavedModel` format.

This graph calculates,

\\(
  y = a*x + b
\\)

and/or, independently,

\\(
  y2 = a*x2 + c
\\)

where `a`, `b` and `c` are variables with `a=0.5` and `b=2` and `c=3`.

Output from this program is typically used to exercise SavedModel load and
execution code.

To create a CPU model:
  bazel run -c opt saved_model_half_plus_two -- --device=cpu

To create a CPU model with Intel MKL-DNN optimizations:
  bazel run -c opt saved_model_half_plus_two -- --device=mkl

To create GPU model:
  bazel run --config=cuda -c opt saved_model_half_plus_two -- \
  --device=gpu
"""

from __future__ import absolute_import
from __future__ import division
from __future__ import print_function

import argparse
import os
import sys

# This is a placeholder for a Google-internal import.
import tensorflow.compat.v1 as tf

from tensorflow.python.lib.io import file_io

FLAGS = None


def _get_feature_spec():
  """Returns feature spec for parsing tensorflow.Example."""
  # tensorflow.Example contains two features "x" and "x2".
  return {
      "x": tf.FixedLenFeature([1], dtype=tf.float32),
      "x2": tf.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0])
  }


def _write_assets(assets_directory, assets_filename):
  """Writes asset files to be used with SavedModel for half plus two.

  Args:
    assets_directory: The directory to which the assets should be written.
    assets_filename: Name of the file to which the asset contents should be
        written.

  Returns:
    The path to which the assets file was written.
  """
  if not file_io.file_exists(assets_directory):
    file_io.recursive_create_dir(assets_directory)

  path = os.path.join(
      tf.compat.as_bytes(assets_directory), tf.compat.as_bytes(assets_filename))
  file_io.write_string_to_file(path, "asset-file-contents")
  return path


def _build_predict_signature(input_tensor, output_tensor):
  """Helper function for building a predict SignatureDef."""
  input_tensor_info = tf.saved_model.utils.build_tensor_info(input_tensor)
  signature_inputs = {"x": input_tensor_info}

  output_tensor_info = tf.saved_model.utils.build_tensor_info(output_tensor)
  signature_outputs = {"y": output_tensor_info}
  return tf.saved_model.signature_def_utils.build_signature_def(
      signature_inputs, signature_outputs,
      tf.saved_model.signature_constants.PREDICT_METHOD_NAME)


def _build_regression_signature(input_tensor, output_tensor):
  """Helper function for building a regression SignatureDef."""
  input_tensor_info = tf.saved_model.utils.build_tensor_info(input_tensor)
  signature_inputs = {
      tf.saved_model.signature_constants.REGRESS_INPUTS: input_tensor_info
  }
  output_tensor_info = tf.saved_model.utils.build_tensor_info(output_tensor)
  signature_outputs = {
      tf.saved_model.signature_constants.REGRESS_OUTPUTS: output_tensor_info
  }
  return tf.saved_model.signature_def_utils.build_signature_def(
      signature_inputs, signature_outputs,
      tf.saved_model.signature_constants.REGRESS_METHOD_NAME)


# Possibly extend this to allow passing in 'classes', but for now this is
# sufficient for testing purposes.
def _build_classification_signature(input_tensor, scores_tensor):
  """Helper function for building a classification SignatureDef."""
  input_tensor_info = tf.saved_model.utils.build_tensor_info(input_tensor)
  signature_inputs = {
      tf.saved_model.signature_constants.CLASSIFY_INPUTS: input_tensor_info
  }
  output_tensor_info = tf.saved_model.utils.build_tensor_info(scores_tensor)
  signature_outputs = {
      tf.saved_model.signature_constants.CLASSIFY_OUTPUT_SCORES:
          output_tensor_info
  }
  return tf.saved_model.signature_def_utils.build_signature_def(
      signature_inputs, signature_outputs,
      tf.saved_model.signature_constants.CLASSIFY_METHOD_NAME)


def _create_asset_file(tf2=False):
  """Helper to create assets file. Returns a tensor for the filename."""
  # Create an assets file that can be saved and restored as part of the
  # SavedModel.
  original_assets_directory = "/tmp/original/export/assets"
  original_assets_filename = "foo.txt"
  original_assets_filepath = _write_assets(original_assets_directory,
                                           original_assets_filename)

  if tf2:
    return tf.saved_model.Asset(original_assets_filepath)

  # Set up the assets collection.
  assets_filepath = tf.constant(original_assets_filepath)
  tf.add_to_collection(tf.GraphKeys.ASSET_FILEPATHS, assets_filepath)
  filename_tensor = tf.Variable(
      original_assets_filename,
      name="filename_tensor",
      trainable=False,
      collections=[])
  return filename_tensor.assign(original_assets_filename)


def _write_mlmd(export_dir, mlmd_uuid):
  """Writes an ML Metadata UUID into the assets.extra directory.

  Args:
    export_dir: The export directory for the SavedModel.
    mlmd_uuid: The string to write as the ML Metadata UUID.

  Returns:
    The path to which the MLMD UUID was written.
  """
  assets_extra_directory = os.path.join(export_dir, "assets.extra")
  if not file_io.file_exists(assets_extra_directory):
    file_io.recursive_create_dir(assets_extra_directory)
  path = os.path.join(assets_extra_directory, "mlmd_uuid")
  file_io.write_string_to_file(path, mlmd_uuid)
  return path


class HalfPlusTwoModel(tf.Module):
  """Native TF2 half-plus-two model."""

  def __init__(self):
    self.a = tf.Variable(0.5, name="a")
    self.b = tf.Variable(2.0, name="b")
    self.c = tf.Variable(3.0, name="c")
    self.asset = _create_asset_file(tf2=True)

  def compute(self, x, inc):
    return tf.add(tf.multiply(self.a, x), inc)

  def get_serving_signatures(self):
    return {
        "regress_x_to_y": self.regress_xy,
        "regress_x_to_y2": self.regress_xy2,
        "regress_x2_to_y3": self.regress_x2y3,
        "classify_x_to_y": self.classify_xy,
        "classify_x2_to_y3": self.classify_x2y3,
        tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY: self.predict,
    }

  @tf.function(input_signature=[tf.TensorSpec(shape=[1], dtype=tf.float32)])
  def predict(self, x=tf.constant([0], shape=[1], dtype=tf.float32)):
    return {"y": self.compute(x, self.b)}

  @tf.function(
      input_signature=[
          tf.TensorSpec(
              [None], dtype=tf.string, name=tf.saved_model.REGRESS_INPUTS
          )
      ]
  )
  def regress_xy(self, serialized_proto):
    x = tf.parse_example(serialized_proto, _get_feature_spec())["x"]
    return {tf.saved_model.REGRESS_OUTPUTS: self.compute(x, self.b)}

  @tf.function(
      input_signature=[
          tf.TensorSpec(
              [None], dtype=tf.string, name=tf.saved_model.REGRESS_INPUTS
          )
      ]
  )
  def regress_xy2(self, serialized_proto):
    x = tf.parse_example(serialized_proto, _get_feature_spec())["x"]
    return {tf.saved_model.REGRESS_OUTPUTS: self.compute(x, self.c)}

  @tf.function(
      input_signature=[
          tf.TensorSpec(
              shape=[1], dtype=tf.float32, name=tf.saved_model.REGRESS_INPUTS
          )
      ]
  )
  def regress_x2y3(self, x2):
    return {tf.saved_model.REGRESS_OUTPUTS: self.compute(x2, self.c)}

  @tf.function(
      input_signature=[
          tf.TensorSpec(
              [None], dtype=tf.string, name=tf.saved_model.CLASSIFY_INPUTS
          )
      ]
  )
  def classify_xy(self, serialized_proto):
    x = tf.parse_example(serialized_proto, _get_feature_spec())["x"]
    return {tf.saved_model.CLASSIFY_OUTPUT_SCORES: self.compute(x, self.b)}

  @tf.function(
      input_signature=[
          tf.TensorSpec(
              shape=[1], dtype=tf.float32, name=tf.saved_model.CLASSIFY_INPUTS
          )
      ]
  )
  def classify_x2y3(self, x2):
    return {tf.saved_model.CLASSIFY_OUTPUT_SCORES: self.compute(x2, self.c)}


def _generate_saved_model_for_half_plus_two(
    export_dir,
    tf2=False,
    as_text=False,
    as_tflite=False,
    as_tflite_with_sigdef=False,
    use_main_op=False,
    include_mlmd=False,
    device_type="cpu",
):
  """Generates SavedModel for half plus two.

  Args:
    export_dir: The directory to which the SavedModel should be written.
    tf2: If True generates a SavedModel using native (non compat) TF2 APIs.
    as_text: Writes the SavedModel protocol buffer in text format to disk.
    as_tflite: Writes the Model in Tensorflow Lite format to disk.
    as_tflite_with_sigdef: Writes the Model with SignatureDefs in Tensorflow
      Lite format to disk.
    use_main_op: Whether to supply a main op during SavedModel build time.
    include_mlmd: Whether to include an MLMD key in the SavedModel.
    device_type: Device to force ops to run on.
  """
  if tf2:
    hp = HalfPlusTwoModel()
    tf.saved_model.save(hp, export_dir, signatures=hp.get_serving_signatures())
    return

  builder = tf.saved_model.builder.SavedModelBuilder(export_dir)

  device_name = "/cpu:0"
  if device_type == "gpu":
    device_name = "/gpu:0"

  with tf.Session(
      graph=tf.Graph(),
      config=tf.ConfigProto(log_device_placement=True)) as sess:
    with tf.device(device_name):
      # Set up the model parameters as variables to exercise variable loading
      # functionality upon restore.
      a = tf.Variable(0.5, name="a")
      b = tf.Variable(2.0, name="b")
      c = tf.Variable(3.0, name="c")

      # Create a placeholder for serialized tensorflow.Example messages to be
      # fed.
      serialized_tf_example = tf.placeholder(
          tf.string, name="tf_example", shape=[None])

      # parse_example only works on CPU
      with tf.device("/cpu:0"):
        tf_example = tf.parse_example(serialized_tf_example,
                                      _get_feature_spec())

      if as_tflite:
        # TFLite v1 converter does not support unknown shape.
        x = tf.ensure_shape(tf_example["x"], (1, 1), name="x")
      else:
        # Use tf.identity() to assign name
        x = tf.identity(tf_example["x"], name="x")

      if as_tflite_with_sigdef:
        # Resulting TFLite model will have input named "tflite_input".
        x = tf.ensure_shape(tf_example["x"], (1, 1), name="tflite_input")

      if device_type == "mkl":
        # Create a small convolution op to trigger MKL
        # The op will return 0s so this won't affect the
        # resulting calculation.
        o1 = tf.keras.layers.Conv2D(1, [1, 1])(tf.zeros((1, 16, 16, 1)))
        y = o1[0, 0, 0, 0] + tf.add(tf.multiply(a, x), b)
      else:
        y = tf.add(tf.multiply(a, x), b)

      y = tf.identity(y, name="y")

      if device_type == "mkl":
        # Create a small convolution op to trigger MKL
        # The op will return 0s so this won't affect the
        # resulting calculation.
        o2 = tf.keras.layers.Conv2D(1, [1, 1])(tf.zeros((1, 16, 16, 1)))
        y2 = o2[0, 0, 0, 0] + tf.add(tf.multiply(a, x), c)
      else:
        y2 = tf.add(tf.multiply(a, x), c)

      y2 = tf.identity(y2, name="y2")

      x2 = tf.identity(tf_example["x2"], name="x2")

      if device_type == "mkl":
        # Create a small convolution op to trigger MKL
        # The op will return 0s so this won't affect the
        # resulting calculation.
        o3 = tf.keras.layers.Conv2D(1, [1, 1])(tf.zeros((1, 16, 16, 1)))
        y3 = o3[0, 0, 0, 0] + tf.add(tf.multiply(a, x2), c)
      else:
        # Add separate constants for x2, to prevent optimizers like TF-TRT from
        # fusing the paths to compute y/y2 and y3 together.
        a2 = tf.Variable(0.5, name="a2")
        c2 = tf.Variable(3.0, name="c2")
        y3 = tf.add(tf.multiply(a2, x2), c2)

      y3 = tf.identity(y3, name="y3")

    assign_filename_op = _create_asset_file()

    predict_signature_def = _build_predict_signature(x, y)

    signature_def_map = {
        "regress_x_to_y":
            _build_regression_signature(serialized_tf_example, y),
        "regress_x_to_y2":
            _build_regression_signature(serialized_tf_example, y2),
        "regress_x2_to_y3":
            _build_regression_signature(x2, y3),
        "classify_x_to_y":
            _build_classification_signature(serialized_tf_example, y),
        tf.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY:
            _build_predict_signature(x, y)
    }
    # Initialize all variables and then save the SavedModel.
    sess.run(tf.global_variables_initializer())

    if as_tflite or as_tflite_with_sigdef:
      converter = tf.lite.TFLiteConverter.from_session(sess, [x], [y])
      tflite_model = converter.convert()
      if as_tflite_with_sigdef:
        k = tf.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        tflite_model = signature_def_utils.set_signature_defs(
            tflite_model, {k: predict_signature_def})
      open(export_dir + "/model.tflite", "wb").write(tflite_model)
    else:
      if use_main_op:
        builder.add_meta_graph_and_variables(
            sess, [tf.saved_model.tag_constants.SERVING],
            signature_def_map=signature_def_map,
            assets_collection=tf.get_collection(tf.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(tf.saved_model.main_op.main_op(),
                             assign_filename_op))
      else:
        builder.add_meta_graph_and_variables(
            sess, [tf.saved_model.tag_constants.SERVING],
            signature_def_map=signature_def_map,
            assets_collection=tf.get_collection(tf.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(assign_filename_op))

  if not as_tflite:
    builder.save(as_text)

  if include_mlmd:
    _write_mlmd(export_dir, "test_mlmd_uuid")
'''


GENERATOR_ASSETS = "/tmp/original"  # where _create_asset_file writes foo.txt


@functools.lru_cache(maxsize=None)
def _generator() -> types.ModuleType:
    module = types.ModuleType("saved_model_half_plus_two")
    exec(compile(HALF_PLUS_TWO_GENERATOR,  # noqa: S102 - TF Serving's generator, verbatim
                 "tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two.py",
                 "exec"), module.__dict__)
    return module


def build_half_plus_two(base_path, versions=(VERSION,), tf2: bool = False) -> str:
    """<base_path>/<version as %08d>/ for each version, made by TF Serving's generator
    (_generate_saved_model_for_half_plus_two: its TF1 path, or with tf2 its TF2 path);
    returns base_path. The generator's asset source (GENERATOR_ASSETS) is removed afterwards
    unless it was there before: the SavedModels hold their own copy."""
    left_before = os.path.exists(GENERATOR_ASSETS)
    try:
        for version in versions:
            _generator()._generate_saved_model_for_half_plus_two(
                os.path.join(str(base_path), f"{version:08d}"), tf2=tf2)
    finally:
        if not left_before:
            shutil.rmtree(GENERATOR_ASSETS, ignore_errors=True)
    return str(base_path)


def build_half_plus_three(base_path) -> str:
    """The TF1 half_plus_two with b = 3 in its checkpoint (see the module docstring)."""
    build_half_plus_two(base_path)
    prefix = os.path.join(str(base_path), f"{VERSION:08d}", "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_shape_map())
    values = [np.float32(3.0) if name == "b" else reader.get_tensor(name) for name in names]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=values)
    return str(base_path)


@pytest.fixture(scope="session")
def half_plus_two(tmp_path_factory) -> str:
    return build_half_plus_two(tmp_path_factory.mktemp("tfs") / "saved_model_half_plus_two_cpu")


@pytest.fixture(scope="session")
def half_plus_two_tf2(tmp_path_factory) -> str:
    return build_half_plus_two(
        tmp_path_factory.mktemp("tfs") / "saved_model_half_plus_two_tf2_cpu", tf2=True)


@pytest.fixture(scope="session")
def half_plus_three(tmp_path_factory) -> str:
    return build_half_plus_three(tmp_path_factory.mktemp("tfs") / "saved_model_half_plus_three")


@pytest.fixture(scope="module")
def socket_dir():
    """A short folder for Unix sockets (their paths are limited to ~107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tfs-") as folder:
        yield folder


def _serve(base_path, socket_path=None, **options):
    """RunServer('default', model_path) in-process; gRPC also on a Unix socket, as RunServer
    always passes --grpc_socket_path."""
    return start_server(model_config.single_model("default", str(base_path)), grpc_port=0,
                        rest_port=0, grpc_socket_path=socket_path, **options)


@pytest.fixture(scope="module")
def server(half_plus_two, socket_dir):
    running = _serve(half_plus_two, os.path.join(socket_dir, "tf-serving.sock"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server_tf2(half_plus_two_tf2):
    running = _serve(half_plus_two_tf2)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def stub_tf2(server_tf2):
    with grpc.insecure_channel(server_tf2.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


# -- helpers, as tensorflow_model_server_test_base.py has them ----------------------------------
def pick_unused_port() -> int:
    """PickUnusedPort."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server_ready(address: str, process: subprocess.Popen, log_path,
                          timeout: float = 180.0) -> None:
    """WaitForServerReady: Predict for a missing model until the answer is NOT_FOUND."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ctpipe serve exited {process.returncode}: "
                        f"{open(log_path).read()[-2000:]}")
        try:
            with grpc.insecure_channel(address) as channel:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 1.0)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return
        time.sleep(0.2)
    pytest.fail(f"ctpipe serve not ready in {timeout:g} s: {open(log_path).read()[-2000:]}")


@contextlib.contextmanager
def run_server(tmp_path, *flags: str, wait_for_server_ready_: bool = True):
    """RunServer: the real `ctpipe serve` in its own process, on unused ports, with gRPC also
    on a Unix socket (RunServer always passes --grpc_socket_path, spelled here as TF Serving
    spells it); yields (process, gRPC host:port, REST host:port, socket path, log path)."""
    port, rest_api_port = pick_unused_port(), pick_unused_port()
    socket_dir = tempfile.mkdtemp(prefix="tfs-")  # short: Unix socket paths are limited
    socket_path = os.path.join(socket_dir, "tf-serving.sock")
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ctpipe_command("serve", f"--port={port}", f"--rest-api-port={rest_api_port}",
                           f"--grpc_socket_path={socket_path}", *flags),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        address = f"127.0.0.1:{port}"
        if wait_for_server_ready_:
            wait_for_server_ready(address, process, log_path)
        yield process, address, f"127.0.0.1:{rest_api_port}", socket_path, log_path
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)


def call_rest(url, req):
    """CallREST: POST json.dumps(req), or GET when req is None; (body, Content-Type)."""
    data = json.dumps(req).encode("utf-8") if req is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=20) as resp:
        return resp.read(), resp.headers["Content-Type"]


def rest_error(url, body=None, method=None):
    """(HTTP status, error message) of a REST call that must fail; errors are JSON too."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=20)
    assert raised.value.headers["Content-Type"] == "application/json"
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


def verify_predict_at(address, *args, **kwargs):
    with grpc.insecure_channel(address) as channel:
        verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), *args,
                       **kwargs)


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


# -- the expected metadata: fixed JSON ----------------------------------------------------------
def _tensor(name, dtype, dims):
    """One TensorInfo as TF Serving prints it: dims as strings with their empty names; None
    is an unknown rank ("dim": [], "unknown_rank": true)."""
    return {"dtype": dtype, "name": name, "tensor_shape": {
        "dim": [] if dims is None else [{"size": str(d), "name": ""} for d in dims],
        "unknown_rank": dims is None}}


def _signature(method, inputs, outputs, defaults=None):
    return {"inputs": {alias: _tensor(*info) for alias, info in inputs.items()},
            "outputs": {alias: _tensor(*info) for alias, info in outputs.items()},
            "method_name": method, "defaults": defaults or {}}


# testdata/half_plus_two_model_metadata.json (saved_model_half_plus_two_cpu): the TF1 model's
# signatures. One difference: the generator has declared the tf_example placeholder with
# shape=[None] since TF Serving commit 4f8d3b78 (2020), after the checked-in model was made, so
# the examples input is a [-1] string tensor instead of an unknown rank.
# (http_rest_api_handler_test's saved_model_half_plus_two_2_versions_metadata.json describes
# TensorFlow's older cc/saved_model/testdata/half_plus_two, with a classify_x2_to_y3 the
# generator's TF1 path does not make; its handler tests here check this same document.)
TF1_SIGNATURES = {
    "regress_x2_to_y3": _signature(REGRESS, {"inputs": ("x2:0", "DT_FLOAT", [-1, 1])},
                                   {"outputs": ("y3:0", "DT_FLOAT", [-1, 1])}),
    "serving_default": _signature(PREDICT, {"x": ("x:0", "DT_FLOAT", [-1, 1])},
                                  {"y": ("y:0", "DT_FLOAT", [-1, 1])}),
    "classify_x_to_y": _signature(CLASSIFY, {"inputs": ("tf_example:0", "DT_STRING", [-1])},
                                  {"scores": ("y:0", "DT_FLOAT", [-1, 1])}),
    "regress_x_to_y2": _signature(REGRESS, {"inputs": ("tf_example:0", "DT_STRING", [-1])},
                                  {"outputs": ("y2:0", "DT_FLOAT", [-1, 1])}),
    "regress_x_to_y": _signature(REGRESS, {"inputs": ("tf_example:0", "DT_STRING", [-1])},
                                 {"outputs": ("y:0", "DT_FLOAT", [-1, 1])}),
}
# testdata/saved_model_half_plus_two_tf2_2_versions_metadata.json: the TF2 model, every
# signature tensorflow/serving/predict, and TF2's init op listed. Two differences, both in
# "defaults" (SignatureDef.defaults, which that file got as {} by hand in TF Serving commit
# 65b13b76, 2023; no OSS test reads it):
# - serving_default has one: the generator's predict(self, x=tf.constant([0], shape=[1], ...))
#   declares a default, and the TensorFlow 2.16 that saves it here records it (the checked-in
#   model was saved by a TensorFlow that did not). TF Serving prints it as every proto it
#   prints, with always_print_primitive_fields (http_rest_api_util.cc ToJsonString), so every
#   TensorProto field is there;
# - the init op's "defaults": {} is printed, as for every signature (the file leaves it out).
X_DEFAULT = {"x": {
    "dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "1", "name": ""}],
                                          "unknown_rank": False},
    "float_val": [0.0], "version_number": 0, "tensor_content": "", "half_val": [],
    "double_val": [], "int_val": [], "string_val": [], "scomplex_val": [], "int64_val": [],
    "bool_val": [], "dcomplex_val": [], "resource_handle_val": [], "variant_val": [],
    "uint32_val": [], "uint64_val": [], "float8_val": ""}}
TF2_SIGNATURES = {
    "regress_x_to_y": _signature(
        PREDICT, {"inputs": ("regress_x_to_y_inputs:0", "DT_STRING", [-1])},
        {"outputs": ("StatefulPartitionedCall_3:0", "DT_FLOAT", [-1, 1])}),
    "regress_x_to_y2": _signature(
        PREDICT, {"inputs": ("regress_x_to_y2_inputs:0", "DT_STRING", [-1])},
        {"outputs": ("StatefulPartitionedCall_4:0", "DT_FLOAT", [-1, 1])}),
    "classify_x_to_y": _signature(
        PREDICT, {"inputs": ("classify_x_to_y_inputs:0", "DT_STRING", [-1])},
        {"scores": ("StatefulPartitionedCall_1:0", "DT_FLOAT", [-1, 1])}),
    "serving_default": _signature(
        PREDICT, {"x": ("serving_default_x:0", "DT_FLOAT", [1])},
        {"y": ("StatefulPartitionedCall_5:0", "DT_FLOAT", [1])}, X_DEFAULT),
    "regress_x2_to_y3": _signature(
        PREDICT, {"inputs": ("regress_x2_to_y3_inputs:0", "DT_FLOAT", [1])},
        {"outputs": ("StatefulPartitionedCall_2:0", "DT_FLOAT", [1])}),
    "classify_x2_to_y3": _signature(
        PREDICT, {"inputs": ("classify_x2_to_y3_inputs:0", "DT_FLOAT", [1])},
        {"scores": ("StatefulPartitionedCall:0", "DT_FLOAT", [1])}),
    "__saved_model_init_op": _signature(
        "", {}, {"__saved_model_init_op": ("NoOp", "DT_INVALID", None)}),
}


def expected_metadata(signatures, name="default", version="123"):
    return {"model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": signatures}}}


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


TF1_AND_TF2 = pytest.mark.parametrize("model_stub_name", ["stub", "stub_tf2"],
                                      ids=["tf1", "tf2"])


@TF1_AND_TF2
def test_classify(request, model_stub_name):
    """testClassify (TF1 model) and testClassifyTf2 (_TestClassify): x=2 -> one class, score
    3. The TF2 model's classify_x_to_y says method tensorflow/serving/predict."""
    stub = request.getfixturevalue(model_stub_name)
    classification = classification_pb2.ClassificationRequest()
    classification.model_spec.name = "default"
    classification.model_spec.signature_name = "classify_x_to_y"
    _example_input(classification, x=2.0)
    result = stub.Classify(classification, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, "default", "classify_x_to_y", VERSION)


@TF1_AND_TF2
def test_regress(request, model_stub_name):
    """testRegress and testRegressTf2 (_TestRegress): x=2 -> 3."""
    stub = request.getfixturevalue(model_stub_name)
    regression = regression_pb2.RegressionRequest()
    regression.model_spec.name = "default"
    regression.model_spec.signature_name = "regress_x_to_y"
    _example_input(regression, x=2.0)
    result = stub.Regress(regression, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", VERSION)


@TF1_AND_TF2
def test_multi_inference(request, model_stub_name):
    """testMultiInference and testMultiInferenceTf2 (_TestMultiInference): regress_x_to_y and
    classify_x_to_y on one example, both 3, each result with its own model_spec."""
    stub = request.getfixturevalue(model_stub_name)
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add().model_spec.name = "default"
    multi.tasks[0].model_spec.signature_name = "regress_x_to_y"
    multi.tasks[0].method_name = REGRESS
    multi.tasks.add().model_spec.name = "default"
    multi.tasks[1].model_spec.signature_name = "classify_x_to_y"
    multi.tasks[1].method_name = CLASSIFY
    _example_input(multi, x=2.0)
    result = stub.MultiInference(multi, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        verify_model_spec(result.results[i].model_spec, "default",
                          multi.tasks[i].model_spec.signature_name, VERSION)


def test_tf2_model_with_the_method_name_check_on(half_plus_two_tf2):
    """With --enable_signature_method_name_check (off by default) TF Serving refuses the TF2
    model's predict-method signatures for Classify and Regress (classifier.cc / regressor.cc
    GetClassificationSignatureDef, GetRegressionSignatureDef), and Predict still answers."""
    running = _serve(half_plus_two_tf2, method_name_check=True)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for call, api, signature, kind, method in (
                    (stub.Classify, classification_pb2.ClassificationRequest, "classify_x_to_y",
                     "classification", CLASSIFY),
                    (stub.Regress, regression_pb2.RegressionRequest, "regress_x_to_y",
                     "regression", REGRESS)):
                request = api()
                request.model_spec.name = "default"
                request.model_spec.signature_name = signature
                _example_input(request, x=2.0)
                error = _abort(functools.partial(call, request, RPC_TIMEOUT))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert error.details() == (f"Expected {kind} signature method_name to be "
                                           f"{method}. Was: {PREDICT}")
            verify_predict(stub, 3.0, VERSION, specify_output=False)
    finally:
        running.stop()


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
BAD_MODEL_CONFIG = "improperly formatted file\n"  # testdata/bad_model_config.txt
BASE_CONFIG_PROTO = """
    model_config_list: {{
      config: {{
        name: "{name}",
        base_path: "{model_path}",
        model_platform: "tensorflow"
      }}
    }}
    """  # testModelConfigReload's base_config_proto


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


def test_bad_model_config(tmp_path):
    """testBadModelConfig: the real server started on testdata/bad_model_config.txt says
    'Error parsing text-format tensorflow.serving.ModelServerConfig' on stderr and does not
    serve (it exits: 2, a usage error)."""
    config = tmp_path / "bad_model_config.txt"
    config.write_text(BAD_MODEL_CONFIG)
    with run_server(tmp_path, f"--model-config-file={config}",
                    wait_for_server_ready_=False) as (process, _, _, _, log_path):
        assert process.wait(120) == 2
        assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in \
            log_path.read_text()


def test_model_config_reload(half_plus_two, half_plus_three):
    """testModelConfigReload, through ModelService.HandleReloadConfigRequest instead of
    --model_config_file_poll_wait_seconds: serve half_plus_two, load a config with only
    half_plus_three, which then answers 4.0."""
    running = start_server(model_config.parse_models(BASE_CONFIG_PROTO.format(
        name="half_plus_two", model_path=half_plus_two)), grpc_port=0, rest_port=0)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 3.0, VERSION, model_name="half_plus_two", specify_output=False)
            request = model_management_pb2.ReloadConfigRequest(config=text_format.Parse(
                BASE_CONFIG_PROTO.format(name="half_plus_three", model_path=half_plus_three),
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
    poll period + 1 s; we wait for it)."""
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(BASE_CONFIG_PROTO.format(name="half_plus_two",
                                                    model_path=half_plus_two))
    running = start_server(model_config.parse_models(config_path.read_text()), grpc_port=0,
                           rest_port=0, poll_seconds=0.2, config_file=str(config_path))
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            verify_predict(stub, 3.0, VERSION, model_name="half_plus_two", specify_output=False)
            config_path.write_text(BASE_CONFIG_PROTO.format(name="half_plus_three",
                                                            model_path=half_plus_three))

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


def test_model_config_reload_with_zero_poll_period(half_plus_two, half_plus_three, tmp_path):
    """testModelConfigReloadWithZeroPollPeriod: the real server with
    --model_config_file_poll_wait_seconds=0 reads its config file once; rewritten to
    half_plus_three, it still serves half_plus_two after poll period + 1 s (and after our
    file-system poll, every 1 s by default, has run)."""
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(BASE_CONFIG_PROTO.format(name="half_plus_two",
                                                    model_path=half_plus_two))
    poll_period = 0
    with run_server(tmp_path, f"--model-config-file={config_path}",
                    f"--model-config-file-poll-wait-seconds={poll_period}") as (_, address, *_):
        verify_predict_at(address, 3.0, VERSION, model_name="half_plus_two",
                          specify_output=False)
        config_path.write_text(BASE_CONFIG_PROTO.format(name="half_plus_three",
                                                        model_path=half_plus_three))
        time.sleep(poll_period + 1 + 1)
        verify_predict_at(address, 3.0, VERSION, model_name="half_plus_two",
                          specify_output=False)
        with grpc.insecure_channel(address) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "half_plus_three"
            error = _abort(lambda: prediction_service_pb2_grpc.PredictionServiceStub(
                channel).Predict(request, RPC_TIMEOUT))
            assert error.code() == grpc.StatusCode.NOT_FOUND


CHANNEL_ARGUMENTS = "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"


@pytest.fixture(scope="module")
def cli_server(half_plus_two, tmp_path_factory):
    """RunServer('default', model_path, grpc_channel_arguments=...): the real server, which
    testGoodGrpcChannelArgs and testPredictUDS (on its --grpc_socket_path) both query."""
    with run_server(tmp_path_factory.mktemp("cli"), "--model-name=default",
                    f"--model-base-path={half_plus_two}",
                    f"--grpc_channel_arguments={CHANNEL_ARGUMENTS}") as started:
        yield started


def test_good_grpc_channel_args(cli_server):
    """testGoodGrpcChannelArgs: the real server starts with --grpc_channel_arguments and
    answers Predict."""
    _, address, *_ = cli_server
    verify_predict_at(address, 3.0, VERSION, specify_output=False)


def test_grpc_channel_arguments_are_read_as_tf_serving_reads_them():
    """server.cc parseGrpcChannelArgs: split on "," and "="; int32 values as ints."""
    assert parse_grpc_channel_arguments(CHANNEL_ARGUMENTS) == [
        ("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb")]
    assert parse_grpc_channel_arguments("") == []
    assert parse_grpc_channel_arguments("a=2147483648,b=-5") == [("a", "2147483648"), ("b", -5)]
    with pytest.raises(ServingConfigError):  # TF Serving reads past the end of the entry
        parse_grpc_channel_arguments("grpc.max_connection_age_ms")


def test_classify_rest(server):
    """testClassifyREST."""
    resp, content_type = call_rest(f"{server.rest_url}/v1/models/default:classify",
                                   {"signature_name": "classify_x_to_y",
                                    "examples": [{"x": 2.0}]})
    assert json.loads(resp.decode()) == {"results": [[["", 3.0]]]}
    assert content_type == "application/json"


def test_regress_rest(server):
    """testRegressREST."""
    resp, content_type = call_rest(f"{server.rest_url}/v1/models/default:regress",
                                   {"signature_name": "regress_x_to_y",
                                    "examples": [{"x": 2.0}]})
    assert json.loads(resp.decode()) == {"results": [3.0]}
    assert content_type == "application/json"


def test_predict_rest(server):
    """testPredictREST."""
    resp, content_type = call_rest(f"{server.rest_url}/v1/models/default:predict",
                                   {"instances": [2.0, 3.0, 4.0]})
    assert json.loads(resp.decode()) == {"predictions": [3.0, 3.5, 4.0]}
    assert content_type == "application/json"


def test_predict_columnar_rest(server):
    """testPredictColumnarREST."""
    resp, content_type = call_rest(f"{server.rest_url}/v1/models/default:predict",
                                   {"inputs": [2.0, 3.0, 4.0]})
    assert json.loads(resp.decode()) == {"outputs": [3.0, 3.5, 4.0]}
    assert content_type == "application/json"


def test_get_status_rest(server):
    """testGetStatusREST."""
    resp, content_type = call_rest(f"{server.rest_url}/v1/models/default", None)
    assert json.loads(resp.decode()) == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}
    assert content_type == "application/json"


def test_get_model_metadata_rest(server):
    """testGetModelMetadataREST: the metadata JSON equals (sorted) the fixed document of
    testdata/half_plus_two_model_metadata.json (TF1_SIGNATURES)."""
    resp, content_type = call_rest(f"{server.rest_url}/v1/models/default/metadata", None)
    assert sorted_object(json.loads(resp.decode())) == \
        sorted_object(expected_metadata(TF1_SIGNATURES))
    assert content_type == "application/json"


def test_get_model_metadata_rest_tf2(server_tf2):
    """testGetModelMetadataREST on the TF2 model: the fixed document of
    testdata/saved_model_half_plus_two_tf2_2_versions_metadata.json (TF2_SIGNATURES)."""
    resp, _ = call_rest(f"{server_tf2.rest_url}/v1/models/default/metadata", None)
    assert sorted_object(json.loads(resp.decode())) == \
        sorted_object(expected_metadata(TF2_SIGNATURES))


def test_prometheus_endpoint(server):
    """testPrometheusEndpoint: metric type information at /monitoring/prometheus/metrics."""
    resp, content_type = call_rest(f"{server.rest_url}/monitoring/prometheus/metrics", None)
    assert "# TYPE" in resp.decode("utf-8")
    assert content_type.startswith("text/plain")


def test_predict_uds(server):
    """testPredictUDS: Predict over the Unix socket RunServer asks for (--grpc_socket_path)."""
    verify_predict_at(f"unix:{server.grpc_socket_path}", expected_output=3.0,
                      specify_output=False, expected_version=VERSION)


def test_predict_uds_on_the_real_server(cli_server):
    """testPredictUDS against `ctpipe serve --grpc_socket_path`, the flag RunServer passes."""
    _, _, _, socket_path, _ = cli_server
    verify_predict_at(f"unix:{socket_path}", expected_output=3.0, specify_output=False,
                      expected_version=VERSION)


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


@pytest.fixture(scope="module", params=["tf1", "tf2"])
def two_versions(request, tmp_path_factory):
    """HttpRestApiHandlerTest's server core: versions 123 and 124 on disk, the specific policy
    serving 123, label Version_Label -> 123. TF Serving runs it on the TF1 model; it runs here
    on the generator's TF1 and TF2 models (the TF2 one with its own fixed metadata)."""
    base = build_half_plus_two(tmp_path_factory.mktemp("tfs") / TWO_VERSIONS, (123, 124),
                               tf2=request.param == "tf2")
    running = start_server([model_config.ModelSpecConfig(
        name=TWO_VERSIONS, base_path=base, policy="specific", specific_versions=(123,),
        labels={"Version_Label": 123})], grpc_port=0, rest_port=0)
    assert wait_until(lambda: [s.version for s in running.core.registry.status(TWO_VERSIONS)
                               if s.state == 30] == [123])
    yield running, request.param
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
    """HttpRestApiHandlerTest.UnsupportedApiCalls: INVALID_ARGUMENT (400) for each, with
    TF Serving's HasSubstr fragments."""
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


@pytest.mark.parametrize("body, text", [
    ("", "JSON Parse error: The document is empty"),
    ("instances = [1, 2]", "JSON Parse error: Invalid value"),
    ('{ "instances": ["x", "y"] }', "not of expected type: float"),
    ('{ "signature_name": 100 }', "'signature_name' key must be a string value."),
], ids=["empty", "bad-json", "incorrect-type", "signature-name-type"])
def test_predict_request_errors(two_versions, body, text):
    """HttpRestApiHandlerTest.PredictRequestErrors: INVALID_ARGUMENT (400) with TF Serving's
    texts, which are those of its JSON parser (rapidjson) and json_tensor.cc."""
    running, _ = two_versions
    code, message = rest_error(f"{running.rest_url}/v1/models/{TWO_VERSIONS}:predict", body)
    assert code == 400 and text in message


def test_predict_request_errors_whole_texts(two_versions):
    """The same errors, whole: rapidjson's offset, json_tensor.cc's TypeError and
    FormatSignatureError."""
    running, _ = two_versions
    url = f"{running.rest_url}/v1/models/{TWO_VERSIONS}:predict"
    assert rest_error(url, "") == (400, "JSON Parse error: The document is empty")
    assert rest_error(url, "instances = [1, 2]") == \
        (400, "JSON Parse error: Invalid value. at offset: 0")
    assert rest_error(url, '{ "instances": ["x", "y"] }') == \
        (400, 'JSON Value: "x" Type: String is not of expected type: float')
    assert rest_error(url, '{ "signature_name": 100 }') == \
        (400, 'JSON Value: {"signature_name":100} not formatted correctly. '
              "'signature_name' key must be a string value.")


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
    columnar; headers exactly Content-Type application/json."""
    running, _ = two_versions
    resp, content_type = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}:predict",
                                   body)
    assert json.loads(resp) == expected
    assert content_type == "application/json"


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/Version_Label"])
def test_rest_handler_regress(two_versions, path):
    """HttpRestApiHandlerTest.Regress: x=80 -> 42; Content-Type application/json."""
    running, _ = two_versions
    resp, content_type = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}:regress",
                                   {"signature_name": "regress_x_to_y",
                                    "examples": [{"x": 80.0}]})
    assert json.loads(resp) == {"results": [42]}
    assert content_type == "application/json"


@pytest.mark.parametrize("path, x, score", [("", 20.0, 12), ("/labels/Version_Label", 10.0, 7)])
def test_rest_handler_classify(two_versions, path, x, score):
    """HttpRestApiHandlerTest.Classify; Content-Type application/json."""
    running, _ = two_versions
    resp, content_type = call_rest(
        f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": x}]})
    assert json.loads(resp) == {"results": [[["", score]]]}
    assert content_type == "application/json"


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/Version_Label"])
def test_rest_handler_get_status(two_versions, path):
    """HttpRestApiHandlerTest.GetStatus: only 123, AVAILABLE, OK; Content-Type
    application/json."""
    running, _ = two_versions
    resp, content_type = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}{path}", None)
    assert json.loads(resp) == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}
    assert content_type == "application/json"


def test_rest_handler_get_model_metadata(two_versions):
    """HttpRestApiHandlerTest.GetModelMetadata: the fixed document, exactly (CompareJson);
    Content-Type application/json."""
    running, model = two_versions
    resp, content_type = call_rest(f"{running.rest_url}/v1/models/{TWO_VERSIONS}/metadata",
                                   None)
    signatures = TF1_SIGNATURES if model == "tf1" else TF2_SIGNATURES
    assert json.loads(resp) == expected_metadata(signatures, TWO_VERSIONS)
    assert content_type == "application/json"


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


@pytest.mark.parametrize("request_, code, text", [
    (_multi(("regress_x_to_y", REGRESS), x=None), "INVALID_ARGUMENT", "Input is empty."),
    (_multi(("ThisSignatureDoesNotExist", REGRESS)), "INVALID_ARGUMENT",
     "Requested signature not found in model graph: ThisSignatureDoesNotExist"),
    (_multi(("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)), "INVALID_ARGUMENT",
     "Duplicate evaluation of signature: regress_x_to_y"),
    (_multi(("serving_default", PREDICT)), "UNIMPLEMENTED",
     f"Unsupported signature method_name: {PREDICT}"),
], ids=["MissingInputTest", "UndefinedSignatureTest", "EvaluateDuplicateSignaturesTest",
        "UsupportedSignatureTypeTest"])
def test_multi_inference_errors(stub, request_, code, text):
    """MultiInferenceTest.{MissingInput, UndefinedSignature, EvaluateDuplicateSignatures,
    UsupportedSignatureType}Test: the test's fragments are parts of these whole texts
    (multi_inference.cc TensorFlowMultiInferenceRunner::Infer, util.cc)."""
    error = _abort(lambda: stub.MultiInference(request_, RPC_TIMEOUT))
    assert error.code() == getattr(grpc.StatusCode, code) and error.details() == text


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
