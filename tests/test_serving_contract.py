"""Client contract: the same cases over gRPC and REST, against the local server by default, or a
real TF Serving when CTPIPE_TFSERVING_GRPC (host:port) and CTPIPE_TFSERVING_REST (http://host:port)
are set, serving our pushed model as CTPIPE_TFSERVING_MODEL (default big_tipper). With
CTPIPE_TFSERVING_MODEL_DIR (the served SavedModel) scores are also checked against it in-process."""
import os

import numpy as np
import pytest

from ctpipe.serving.clients import GrpcClient, RestClient, ServingClientError

pytestmark = pytest.mark.e2e
MODEL = os.environ.get("CTPIPE_TFSERVING_MODEL", "big_tipper")

ROWS = [
    {"fare": 12.5, "trip_miles": 2.0, "trip_seconds": 600.0, "pickup_latitude": 41.9,
     "pickup_longitude": -87.6, "dropoff_latitude": 41.88, "dropoff_longitude": -87.63,
     "trip_start_hour": 19, "trip_start_day": 6, "trip_start_month": 5,
     "pickup_community_area": 8, "dropoff_community_area": 32, "dropoff_census_tract": -1,
     "payment_type": "Credit Card", "company": ""},
    {"fare": 5.25, "trip_miles": 0.0, "trip_seconds": float("nan"), "pickup_latitude": 41.88,
     "pickup_longitude": -87.63, "dropoff_latitude": float("nan"),
     "dropoff_longitude": float("nan"), "trip_start_hour": 3, "trip_start_day": 1,
     "trip_start_month": 12, "pickup_community_area": 32, "dropoff_community_area": -1,
     "dropoff_census_tract": -1, "payment_type": "Cash", "company": "Taxi Affiliation Services"},
]
COLUMNS = {key: [row[key] for row in ROWS] for key in ROWS[0]}
# tf.Examples as CsvExampleGen writes them: integer columns as int64 (trip_seconds too),
# missing values absent.
EXAMPLES = [{k: (int(v) if k == "trip_seconds" else v) for k, v in row.items()
             if v not in ("", -1) and v == v} for row in ROWS]


@pytest.fixture(scope="module")
def endpoints(long_run):
    grpc_address = os.environ.get("CTPIPE_TFSERVING_GRPC")
    rest_url = os.environ.get("CTPIPE_TFSERVING_REST")
    if grpc_address and rest_url:
        yield grpc_address, rest_url, os.environ.get("CTPIPE_TFSERVING_MODEL_DIR")
        return
    from ctpipe.serving.model_config import single_model
    from ctpipe.serving.server import start_server

    base = long_run.home / "serving" / MODEL
    server = start_server(single_model(MODEL, str(base)), grpc_port=0, rest_port=0)
    latest = max(int(name) for name in os.listdir(base) if name.isdigit())
    yield server.grpc_address, server.rest_url, str(base / str(latest))
    server.stop()


@pytest.fixture(params=["grpc", "rest"])
def client(request, endpoints):
    grpc_address, rest_url, _ = endpoints
    made = GrpcClient(grpc_address, MODEL) if request.param == "grpc" else \
        RestClient(rest_url, MODEL)
    yield made
    made.close()


def test_status_reports_the_latest_version_available(client):
    statuses = client.status()
    available = [s for s in statuses if s["state"] == "AVAILABLE"]
    assert available and max(s["version"] for s in available) >= 2


def test_metadata_lists_our_signatures(client):
    signatures = client.metadata()
    assert {"serving_default", "serving_raw", "classification"} <= set(signatures)
    assert signatures["serving_default"]["inputs"] == {"examples": "DT_STRING"}
    assert signatures["classification"]["method"] == "tensorflow/serving/classify"
    assert signatures["serving_raw"]["inputs"]["fare"] == "DT_FLOAT"


def test_predict_matches_the_saved_model_in_process(client, endpoints):
    outputs = client.predict(COLUMNS, signature_name="serving_raw")
    scores = np.asarray(outputs["probabilities"], dtype=np.float32).reshape(-1)
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))
    model_dir = endpoints[2]
    if model_dir:
        import tensorflow as tf

        from ctpipe.components.trainer import raw_feature_signature
        specs = raw_feature_signature()
        loaded = tf.saved_model.load(model_dir)
        expected = loaded.signatures["serving_raw"](**{
            k: tf.constant(v, dtype=specs[k].dtype) for k, v in COLUMNS.items()})
        np.testing.assert_allclose(scores, expected["probabilities"].numpy().reshape(-1),
                                   rtol=1e-5)


def test_serialized_examples_and_classify_agree_with_raw(client):
    from ctpipe.serving.json_codec import examples_from_json
    raw = np.asarray(client.predict(COLUMNS, "serving_raw")["probabilities"]).reshape(-1)
    serialized = examples_from_json({"examples": EXAMPLES})
    from_examples = np.asarray(client.predict({"examples": serialized}, "serving_default")
                               ["probabilities"]).reshape(-1)
    np.testing.assert_allclose(from_examples, raw, rtol=1e-5)
    classes = client.classify(EXAMPLES)
    assert [label for label, _ in classes[0]] == ["0", "1"]
    np.testing.assert_allclose([row[1][1] for row in classes], raw, rtol=1e-5)


@pytest.mark.parametrize("call, code", [
    (lambda c: c.classify(EXAMPLES, signature_name="serving_default"), "INVALID_ARGUMENT"),
    (lambda c: c.predict({"nope": [1.0]}, "serving_raw"), "INVALID_ARGUMENT"),
    (lambda c: c.predict(dict(COLUMNS, fare=["x", "y"]), "serving_raw"), "INVALID_ARGUMENT"),
    (lambda c: c.classify([dict(EXAMPLES[0], trip_seconds=1.5)]), "INVALID_ARGUMENT"),
])
def test_bad_requests_are_invalid_argument(client, call, code):
    with pytest.raises(ServingClientError) as error:
        call(client)
    assert error.value.code == code
    assert client.status()  # the server is still serving


def test_unknown_model_and_version_are_not_found(endpoints):
    grpc_address, rest_url, _ = endpoints
    for made in (GrpcClient(grpc_address, "no_such_model"), RestClient(rest_url, "no_such_model"),
                 GrpcClient(grpc_address, MODEL, version=999),
                 RestClient(rest_url, MODEL, version=999)):
        with pytest.raises(ServingClientError) as error:
            made.predict(COLUMNS, "serving_raw") if made.model_name == MODEL else made.status()
        assert error.value.code == "NOT_FOUND"
        made.close()
