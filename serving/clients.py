"""Clients for TF Serving (or `ctpipe serve`): one interface over gRPC and REST.

    client = GrpcClient("127.0.0.1:8500", "big_tipper")  # or RestClient("http://127.0.0.1:8501")
    client.predict({"fare": [12.5], ...}, signature_name="serving_raw")
        -> {"probabilities": array}
    client.classify([{"fare": 12.5, "payment_type": "Credit Card", ...}])
        -> [[("0", .87), ("1", .13)]]
    client.metadata()  -> {signature: {"inputs": {alias: dtype}, "outputs": {...}, "method": ...}}
    client.status()    -> [{"version": 5, "state": "AVAILABLE"}]

Every call has a timeout; transient failures (UNAVAILABLE, connection errors, HTTP 503) are
retried with backoff; every other error raises ServingClientError with TF Serving's code.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ctpipe.serving.errors import grpc_code

Classification = List[List[Tuple[str, float]]]


class ServingClientError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _retry(call: Callable[[], Any], retries: int, transient: Callable[[Exception], bool],
           backoff: float = 0.2) -> Any:
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - classified by `transient`
            if attempt == retries or not transient(error):
                raise
            time.sleep(backoff * (2 ** attempt))


class GrpcClient:
    """PredictionService/ModelService stubs from tensorflow-serving-api."""

    def __init__(self, address: str, model_name: str, timeout: float = 10.0, retries: int = 2,
                 version: Optional[int] = None, version_label: Optional[str] = None):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc = grpc
        self.model_name, self.timeout, self.retries = model_name, timeout, retries
        self.version, self.version_label = version, version_label
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._dtypes: Dict[str, Dict[str, Any]] = {}

    def close(self) -> None:
        self._channel.close()

    def _spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if signature_name:
            spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label

    def _call(self, method, request):
        grpc = self._grpc

        def transient(error):
            return isinstance(error, grpc.RpcError) and \
                error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        try:
            return _retry(lambda: method(request, timeout=self.timeout), self.retries, transient)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details() or "")

    def _input_dtypes(self, signature_name: str) -> Dict[str, Any]:
        if signature_name not in self._dtypes:
            self._dtypes[signature_name] = self.metadata()[signature_name]["inputs"]
        return self._dtypes[signature_name]

    def predict(self, inputs: Dict[str, Sequence[Any]], signature_name: str = "serving_default"
                ) -> Dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2

        dtypes = self._input_dtypes(signature_name)
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for alias, values in inputs.items():
            dtype = tf.dtypes.as_dtype(types_pb2.DataType.Value(dtypes[alias])) \
                if alias in dtypes else None
            if dtype == tf.string:
                values = [v.encode() if isinstance(v, str) else v for v in values]
            try:
                request.inputs[alias].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
            except (TypeError, ValueError) as error:
                raise ServingClientError("INVALID_ARGUMENT",
                                         f"input '{alias}' is not {dtype.name if dtype else ''}: "
                                         f"{str(error).splitlines()[0]}")
        response = self._call(self._predictions.Predict, request)
        return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}

    def classify(self, examples: List[Dict[str, Any]], signature_name: str = "classification"
                 ) -> Classification:
        import tensorflow as tf
        from tensorflow_serving.apis import classification_pb2

        from ctpipe.serving.json_codec import examples_from_json

        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, signature_name)
        for serialized in examples_from_json({"examples": examples}):
            request.input.example_list.examples.add().CopyFrom(
                tf.train.Example.FromString(serialized))
        response = self._call(self._predictions.Classify, request)
        return [[(c.label, c.score) for c in row.classes]
                for row in response.result.classifications]

    def metadata(self) -> Dict[str, Dict[str, Any]]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self._predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return _describe_signatures(
            {k: (v.method_name, {a: i.dtype for a, i in v.inputs.items()},
                 {a: i.dtype for a, i in v.outputs.items()})
             for k, v in signature_map.signature_def.items()})

    def status(self) -> List[Dict[str, Any]]:
        from tensorflow_serving.apis import get_model_status_pb2

        from ctpipe.serving.registry import STATE_NAMES

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        return [{"version": s.version, "state": STATE_NAMES.get(s.state, str(s.state))}
                for s in response.model_version_status]


class RestClient:
    """TF Serving's REST API with `requests` (timeouts, retries, raise_for_status)."""

    def __init__(self, base_url: str, model_name: str, timeout: float = 10.0, retries: int = 2,
                 version: Optional[int] = None, version_label: Optional[str] = None):
        import requests

        self._requests = requests
        self._session = requests.Session()
        self.base_url, self.model_name = base_url.rstrip("/"), model_name
        self.timeout, self.retries = timeout, retries
        self.version, self.version_label = version, version_label

    def close(self) -> None:
        self._session.close()

    @property
    def _model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if self.version is not None:
            return f"{url}/versions/{self.version}"
        if self.version_label:
            return f"{url}/labels/{self.version_label}"
        return url

    def _send(self, method: str, url: str, body: Optional[Dict[str, Any]] = None) -> Any:
        requests = self._requests

        # NaN marks a missing numeric value; TF Serving's JSON parser accepts the literal.
        data = None if body is None else json.dumps(body, allow_nan=True).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}

        def once():
            response = self._session.request(method, url, data=data, headers=headers,
                                             timeout=self.timeout)
            if response.status_code == 503:
                response.raise_for_status()
            return response

        def transient(error):
            return isinstance(error, (requests.ConnectionError, requests.Timeout)) or (
                isinstance(error, requests.HTTPError) and error.response is not None
                and error.response.status_code == 503)
        try:
            response = _retry(once, self.retries, transient)
            response.raise_for_status()
            return response.json()
        except requests.HTTPError as error:
            try:
                message = error.response.json().get("error", error.response.text)
            except ValueError:
                message = error.response.text
            code = grpc_code(error.response.status_code)
            raise ServingClientError(code, message)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ServingClientError("UNAVAILABLE", str(error).splitlines()[0])

    def predict(self, inputs: Dict[str, Sequence[Any]], signature_name: str = "serving_default"
                ) -> Dict[str, np.ndarray]:
        encoded = {alias: [_b64_if_bytes(v) for v in values] for alias, values in inputs.items()}
        body = self._send("POST", f"{self._model_url}:predict",
                          {"signature_name": signature_name, "inputs": encoded})
        outputs = body["outputs"]
        if not isinstance(outputs, dict):
            outputs = {self._single_output(signature_name): outputs}
        return {alias: np.asarray(value) for alias, value in outputs.items()}

    def _single_output(self, signature_name: str) -> str:
        return next(iter(self.metadata()[signature_name]["outputs"]))

    def classify(self, examples: List[Dict[str, Any]], signature_name: str = "classification"
                 ) -> Classification:
        body = self._send("POST", f"{self._model_url}:classify",
                          {"signature_name": signature_name, "examples": examples})
        return [[(label, float(score)) for label, score in row] for row in body["results"]]

    def metadata(self) -> Dict[str, Dict[str, Any]]:
        from tensorflow.core.framework import types_pb2

        body = self._send("GET", f"{self._model_url}/metadata")
        signatures = body["metadata"]["signature_def"]["signature_def"]
        return _describe_signatures(
            {name: (sig.get("method_name", ""),
                    {a: types_pb2.DataType.Value(i["dtype"]) for a, i in sig["inputs"].items()},
                    {a: types_pb2.DataType.Value(i["dtype"]) for a, i in sig["outputs"].items()})
             for name, sig in signatures.items()})

    def status(self) -> List[Dict[str, Any]]:
        body = self._send("GET", self._model_url)
        return [{"version": int(s["version"]), "state": s["state"]}
                for s in body["model_version_status"]]


def _b64_if_bytes(value: Any) -> Any:
    return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def _describe_signatures(raw: Dict[str, Tuple[str, Dict[str, int], Dict[str, int]]]
                         ) -> Dict[str, Dict[str, Any]]:
    from tensorflow.core.framework import types_pb2

    def names(dtypes):
        return {alias: types_pb2.DataType.Name(d) for alias, d in sorted(dtypes.items())}
    return {name: {"method": method, "inputs": names(inputs), "outputs": names(outputs)}
            for name, (method, inputs, outputs) in sorted(raw.items())}


def make_client(address: str, model_name: str, protocol: str, **kwargs):
    if protocol == "rest":
        url = address if address.startswith("http") else f"http://{address}"
        return RestClient(url, model_name, **kwargs)
    return GrpcClient(address.split("://", 1)[-1], model_name, **kwargs)
