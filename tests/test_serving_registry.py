"""The server's version manager under bad versions and concurrency (toy SavedModels, a real
server, a real client): a corrupt newest version never takes serving down, its load is retried,
all-digit directory names are versions, and the version map is safe for concurrent readers."""
import shutil
import threading
import time

import pytest
import tensorflow as tf

from ctpipe.serving.clients import GrpcClient
from ctpipe.serving.model_config import single_model
from ctpipe.serving.registry import AVAILABLE, END, ManagedModel, VersionStatus
from ctpipe.serving.server import start_server

from tests.support import RequestLoad, wait_until
from tests.test_serving_any_model import Toy


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy-model") / "model"
    module = Toy()
    tf.saved_model.save(module, str(path),
                        signatures={"serving_default": module.predict.get_concrete_function()})
    return path


def _states(client):
    return {s["version"]: s["state"] for s in client.status()}


def test_a_corrupt_newest_version_never_takes_serving_down(toy_model, tmp_path):
    base = tmp_path / "toy"
    shutil.copytree(toy_model, base / "7")
    server = start_server(single_model("toy", str(base)), grpc_port=0, rest_port=0,
                          poll_seconds=0.2)
    client = GrpcClient(server.grpc_address, "toy", retries=0)
    try:
        with RequestLoad(lambda: client.predict({"x": [1.0]})) as load:
            (base / "8").mkdir()  # a half-copied or corrupt version appears
            (base / "8" / "saved_model.pb").write_bytes(b"not a SavedModel")
            assert wait_until(lambda: _states(client).get(8) == "END")
            time.sleep(1.0)  # several polls with the broken version present
            assert _states(client)[7] == "AVAILABLE"
            shutil.rmtree(base / "8")  # repaired: the retry loads it, then 7 unloads
            shutil.copytree(toy_model, base / "8")
            assert wait_until(lambda: _states(client).get(8) == "AVAILABLE", 60)
            assert wait_until(lambda: _states(client).get(7) == "END")
    finally:
        client.close()
        server.stop()
    assert load.failures == [] and load.served > 10


def test_all_digit_directory_names_are_versions(toy_model, tmp_path):
    base = tmp_path / "toy"
    shutil.copytree(toy_model, base / "00000123")
    server = start_server(single_model("toy", str(base)), grpc_port=0, rest_port=0)
    client = GrpcClient(server.grpc_address, "toy")
    try:
        assert _states(client) == {123: "AVAILABLE"}
        assert client.predict({"x": [1.0]})["y"].tolist() == [3.0]
    finally:
        client.close()
        server.stop()


def test_the_version_map_is_safe_for_concurrent_readers():
    model = ManagedModel(single_model("toy", "/nonexistent")[0])
    errors, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                model.available()
                model.statuses()
            except RuntimeError as error:  # "dictionary changed size during iteration"
                errors.append(error)
    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for version in range(20000):
        model.put(VersionStatus(version=version, state=AVAILABLE if version % 2 else END))
    stop.set()
    for reader in readers:
        reader.join()
    assert errors == [] and len(model.statuses()) == 20000
