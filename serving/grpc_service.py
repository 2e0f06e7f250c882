"""TF Serving's gRPC API (port 8500) over the shared core: PredictionService (Predict, Classify,
Regress, MultiInference, GetModelMetadata) and ModelService (GetModelStatus,
HandleReloadConfigRequest).

Every failure is a gRPC status with TF Serving's code and message (a ServingError's code; any
other exception is INTERNAL), counted in the metrics. Bounds: `workers` handler threads, at
most `max_concurrent_rpcs` RPCs running or queued for them (beyond: RESOURCE_EXHAUSTED, which
clients may retry), messages up to `max_message_bytes`. A slow client holds no handler thread:
gRPC hands a unary RPC to Python only once its whole request has arrived."""
from __future__ import annotations

import functools
import time
from concurrent import futures
from typing import List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
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

from ctpipe.components.signatures import CLASSIFY_METHOD, DEFAULT_SIGNATURE
from ctpipe.serving.core import ServingCore
from ctpipe.serving.cpus import schedulable_cpus
from ctpipe.serving.errors import GRPC_CODE_NUMBER, ServingConfigError, ServingError
from ctpipe.serving.model_config import from_proto
from ctpipe.serving.registry import STATE_NAMES
from ctpipe.serving.servables import examples_from_input
from ctpipe.serving.tensor_protos import RequestInputs, to_ndarray  # noqa: F401 - to_ndarray: API

ENTRYPOINT = "GRPC"
# RPCs running or waiting for a handler thread, per thread, when max_concurrent_rpcs is not set
DEFAULT_RPCS_PER_WORKER = 8


def default_grpc_workers() -> int:
    """Handler threads when --grpc_max_threads is not given: twice the schedulable CPUs.

    Why not TF Serving's 4 x the CPUs (or our former fixed 8): each handler here runs Python
    (the GIL) and its own TF call, so threads beyond what the CPUs can run only queue for the
    GIL and the cores, and every extra runnable thread slows the gRPC poll thread that feeds
    them. Measured on 2 CPUs, 8 client threads, server in its own process, alternating runs:
    4 threads did 1,252-1,292 requests/s at batch 1 and 1,191-1,272 at batch 32 where 8 did
    834-1,025 and 959-1,025; 2 and 3 threads sat between (2 could not keep both cores busy).
    The concurrency limit is per thread (DEFAULT_RPCS_PER_WORKER), so 2 CPUs still take 32
    RPCs at once, as the former 8 x 4 did."""
    return max(2, 2 * schedulable_cpus())


def _spec(request) -> Tuple[str, Optional[int], Optional[str]]:
    """(name, version, label) of a request's ModelSpec, with TF Serving's errors."""
    if not request.HasField("model_spec"):
        raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
    return _name_version_label(request.model_spec)


def _name_version_label(model_spec) -> Tuple[str, Optional[int], Optional[str]]:
    if not model_spec.name:
        raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, model_spec.version_label or None


def _model_name(request) -> str:
    if isinstance(request, inference_pb2.MultiInferenceRequest):
        return request.tasks[0].model_spec.name if request.tasks else ""
    return request.model_spec.name if hasattr(request, "model_spec") else ""


def _status_code(code: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)


def _aborts_with_status(api: str):
    """Every failure becomes the gRPC status TF Serving would send, never a crash or gRPC's
    UNKNOWN "Exception calling application": a ServingError keeps its code, anything else is
    INTERNAL. Failures before the core (a bad ModelSpec, say) are counted as the REST ones."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            started = time.perf_counter()
            try:
                return method(self, request, context)
            except ServingError as error:
                failure = error
            except Exception as error:  # noqa: BLE001 - a request never kills the server
                failure = ServingError("INTERNAL", f"{type(error).__name__}: {error}")
            self.core.record_rejected(ENTRYPOINT, api, _model_name(request), failure,
                                      time.perf_counter() - started)
            context.abort(_status_code(failure.code), failure.message)
        return wrapper
    return decorate


def fill_model_spec(model_spec, name: str, version: int, signature_name: Optional[str]) -> None:
    """TF Serving's MakeModelSpec: the signature as the request named it ("" ->
    serving_default), or none at all (GetModelMetadata)."""
    model_spec.name = name
    model_spec.version.value = version
    if signature_name is not None:
        model_spec.signature_name = signature_name or DEFAULT_SIGNATURE


def metadata_response(servable, name: Optional[str] = None
                      ) -> "get_model_metadata_pb2.GetModelMetadataResponse":
    """GetModelMetadataResponse as TF Serving builds it (get_model_metadata_impl.cc): every
    signature def of the meta graph (the TF2 init op included) packed in metadata
    ["signature_def"], a model_spec with name and version and no signature name."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in servable.metadata_signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    fill_model_spec(response.model_spec, name or servable.name, servable.version, None)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def status_response(core: ServingCore, name: str, version: Optional[int],
                    label: Optional[str]) -> "get_model_status_pb2.GetModelStatusResponse":
    """GetModelStatusResponse for gRPC and (as JSON) REST: state and the version's status,
    its error code as the tensorflow.error.Code number of the registry's status name."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in core.registry.status(name, version, label):
        state = status.state if status.state in STATE_NAMES else 0
        entry = response.model_version_status.add(version=status.version, state=state)
        entry.status.error_code = GRPC_CODE_NUMBER.get(status.error_code,
                                                       GRPC_CODE_NUMBER["UNKNOWN"])
        entry.status.error_message = status.error_message
    return response


_FIELD_OF_NUMPY = {np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
                   np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
                   np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
                   np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
                   np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val")}


def to_tensor_proto(array) -> "tensor_pb2.TensorProto":
    """An output as TF Serving writes it by default (Tensor::AsProtoField): values in the
    typed field (float_val, int64_val, string_val...), never tensor_content - clients that
    read `outputs[...].float_val` get the values at any batch size. Other dtypes go through
    tf.make_tensor_proto."""
    array = np.asarray(array)
    typed = _FIELD_OF_NUMPY.get(array.dtype)
    if typed is None and array.dtype.kind not in "OS":
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if typed is None:  # bytes (object arrays from string tensors, or fixed-width)
        proto.dtype = types_pb2.DT_STRING
        values = array.ravel().tolist()
        if not all(isinstance(v, bytes) for v in values):
            return tf.make_tensor_proto(array)
        proto.string_val.extend(values)
        return proto
    proto.dtype, field = typed
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_aborts_with_status("predict")
    def Predict(self, request, context):  # noqa: N802
        name, version, label = _spec(request)
        inputs = RequestInputs(request.inputs)  # decoded when read, if ever (proto path)
        unit = self.core.unit_of(context.invocation_metadata(), inputs) \
            if self.core.control_key and not label and version is None else None
        servable, outputs = self.core.predict(
            ENTRYPOINT, name, version, label, request.model_spec.signature_name, inputs,
            list(request.output_filter), unit=unit)
        response = predict_pb2.PredictResponse()
        fill_model_spec(response.model_spec, servable.name, servable.version,
                        request.model_spec.signature_name)
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(to_tensor_proto(array))
        return response

    @_aborts_with_status("classify")
    def Classify(self, request, context):  # noqa: N802
        name, version, label = _spec(request)
        servable, results = self.core.classify(ENTRYPOINT, name, version, label,
                                               request.model_spec.signature_name,
                                               examples_from_input(request.input))
        response = classification_pb2.ClassificationResponse()
        fill_model_spec(response.model_spec, servable.name, servable.version,
                        request.model_spec.signature_name)
        _fill_classifications(response.result, results)
        return response

    @_aborts_with_status("regress")
    def Regress(self, request, context):  # noqa: N802
        name, version, label = _spec(request)
        servable, values = self.core.regress(ENTRYPOINT, name, version, label,
                                             request.model_spec.signature_name,
                                             examples_from_input(request.input))
        response = regression_pb2.RegressionResponse()
        fill_model_spec(response.model_spec, servable.name, servable.version,
                        request.model_spec.signature_name)
        _fill_regressions(response.result, values)
        return response

    @_aborts_with_status("multi_inference")
    def MultiInference(self, request, context):  # noqa: N802
        """Classify/regress tasks on the same examples, all on the one version the first task
        resolves (TF Serving: multi_inference_helper.cc, multi_inference.cc). Every task must
        name the same model; a task that names a version or label must name the first task's
        (TF Serving ignores the later ones; here a conflicting one is INVALID_ARGUMENT rather
        than silently answered from another version). The signature checks are the
        servable's, on the version that answers."""
        if not request.tasks:
            raise ServingError("INVALID_ARGUMENT",
                               "MultiInferenceRequest has no tasks (ModelSpec has no name "
                               "specified).")
        first = request.tasks[0].model_spec
        for task in request.tasks:
            spec = task.model_spec
            if not spec.name:
                raise ServingError("INVALID_ARGUMENT", "Found ModelSpec with an empty model name.")
            if spec.name != first.name:
                raise ServingError("INVALID_ARGUMENT",
                                   "All ModelSpecs in a MultiInferenceRequest must access the "
                                   "same model name.")
            if (spec.HasField("version") or spec.version_label) and \
                    (spec.HasField("version") != first.HasField("version")
                     or spec.version.value != first.version.value
                     or spec.version_label != first.version_label):
                raise ServingError("INVALID_ARGUMENT",
                                   "All ModelSpecs in a MultiInferenceRequest must access the "
                                   "same model version.")
        name, version, label = _name_version_label(first)
        tasks = [(task.model_spec.signature_name, task.method_name) for task in request.tasks]
        examples = examples_from_input(request.input)
        servable, results = self.core.run(
            "multi_inference", ENTRYPOINT, name, version, label,
            lambda s: s.multi_inference(tasks, examples))
        response = inference_pb2.MultiInferenceResponse()
        for task, (_, method, result) in zip(request.tasks, results):
            inference = response.results.add()
            fill_model_spec(inference.model_spec, task.model_spec.name, servable.version,
                            task.model_spec.signature_name)
            if method == CLASSIFY_METHOD:
                _fill_classifications(inference.classification_result, result)
            else:
                _fill_regressions(inference.regression_result, result)
        return response

    @_aborts_with_status("metadata")
    def GetModelMetadata(self, request, context):  # noqa: N802
        """TF Serving's checks in its order (get_model_metadata_impl.cc): a ModelSpec, at
        least one metadata_field, only "signature_def"; then the servable."""
        name, version, label = _spec(request)
        if not request.metadata_field:
            raise ServingError("INVALID_ARGUMENT",
                               "GetModelMetadataRequest must specify at least one "
                               "metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
        servable = self.core.metadata(ENTRYPOINT, name, version, label)
        return metadata_response(servable)


def _fill_classifications(result, rows) -> None:
    for row in rows:
        classification = result.classifications.add()
        for class_label, score in row:
            classification.classes.add(label=class_label, score=score)


def _fill_regressions(result, values) -> None:
    for value in values:
        result.regressions.add(value=value)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_aborts_with_status("model_status")
    def GetModelStatus(self, request, context):  # noqa: N802
        name, version, label = _spec(request)
        return status_response(self.core, name, version, label)

    @_aborts_with_status("reload_config")
    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        """A config that cannot be applied is an error status in the response (an OK RPC), as
        TF Serving answers it."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.core.registry.reload_config(from_proto(request.config))
        except ServingError as error:
            response.status.error_code = GRPC_CODE_NUMBER.get(error.code,
                                                              GRPC_CODE_NUMBER["UNKNOWN"])
            response.status.error_message = error.message
        return response


def bind(server: grpc.Server, address: str) -> int:
    """add_insecure_port, failing as OSError (grpc answers 0 or raises RuntimeError)."""
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise OSError(f"cannot bind gRPC to {address}: {error}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return bound


ChannelArguments = Sequence[Tuple[str, Union[int, str]]]
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def parse_grpc_channel_arguments(text: str) -> List[Tuple[str, Union[int, str]]]:
    """TF Serving's --grpc_channel_arguments ("grpc.max_connection_age_ms=2000,grpc.lb_policy_
    name=grpclb"), read as model_servers/server.cc parseGrpcChannelArgs and BuildAndStart read
    it: entries split on ",", each on "="; a value that is an int32 (safe_strto32) is passed
    as an int, any other as a string. gRPC ignores the keys it does not know. TF Serving
    indexes past the end of an entry without "="; here it is a ServingConfigError."""
    arguments: List[Tuple[str, Union[int, str]]] = []
    for entry in text.split(",") if text else []:
        parts = entry.split("=")
        if len(parts) < 2 or not parts[0]:
            raise ServingConfigError(f"--grpc_channel_arguments: {entry!r} is not key=value")
        key, value = parts[0], parts[1]
        try:
            number = int(value.strip())
        except ValueError:
            arguments.append((key, value))
            continue
        arguments.append((key, number) if INT32_MIN <= number <= INT32_MAX else (key, value))
    return arguments


def new_grpc_server(max_message_bytes: int, workers: Optional[int] = None,
                    max_concurrent_rpcs: Optional[int] = None,
                    channel_arguments: ChannelArguments = ()) -> grpc.Server:
    """The gRPC server our services run on (start_grpc), and the serving benchmark's floor
    server with them, so the floor is measured on the same handler threads and options.
    `workers`: handler threads, default_grpc_workers() when None."""
    workers = default_grpc_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"gRPC workers must be at least 1, got {workers}")
    limit = max_concurrent_rpcs if max_concurrent_rpcs is not None \
        else DEFAULT_RPCS_PER_WORKER * workers
    if limit < 1:
        raise ValueError(f"max_concurrent_rpcs must be at least 1, got {limit}")
    options = dict([("grpc.max_receive_message_length", max_message_bytes),
                    ("grpc.max_send_message_length", max_message_bytes)])
    options.update(channel_arguments)
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=list(options.items()), maximum_concurrent_rpcs=limit)


def start_grpc(core: ServingCore, host: str, port: int, max_message_bytes: int,
               workers: Optional[int] = None, max_concurrent_rpcs: Optional[int] = None,
               socket_path: Optional[str] = None, channel_arguments: ChannelArguments = ()
               ) -> Tuple[grpc.Server, int]:
    """`workers` handler threads (TF Serving's --grpc_max_threads; default
    default_grpc_workers()); `max_concurrent_rpcs` RPCs at most in the server at once,
    running or waiting for a thread (default DEFAULT_RPCS_PER_WORKER x workers); one more is
    answered RESOURCE_EXHAUSTED at once instead of queueing without bound.

    `socket_path`: also listen on this Unix socket (TF Serving's --grpc_socket_path, which
    server.cc adds as the listening port "unix:<path>"; clients dial "unix:<path>").
    `channel_arguments`: gRPC server options, e.g. from parse_grpc_channel_arguments; one
    that names a key we set (the message size limits) replaces ours."""
    server = new_grpc_server(max_message_bytes, workers, max_concurrent_rpcs,
                             channel_arguments)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = bind(server, f"{host}:{port}")
    if socket_path:
        bind(server, f"unix:{socket_path}")
    server.start()
    return server, bound
