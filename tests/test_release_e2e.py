"""Release end to end with real processes: `ctpipe serve --home` follows the release manifest;
`ctpipe promote` / `rollback` move stable under continuous load with zero failed requests, in
under a second; `ctpipe guard` takes an erroring canary out of traffic; every action is in ML
Metadata and in `status --json`."""
import json
import shutil
import subprocess
import time

import pytest

from ctpipe.components import release
from ctpipe.components.atomic_pusher import publish_atomically
from ctpipe.pipeline import cycles
from ctpipe.pipeline.outcomes import open_store, sqlite_connection

from tests.support import ctpipe, ctpipe_command, wait_for_line, wait_until

pytestmark = pytest.mark.e2e
MODEL = "big_tipper"


class VersionedLoad:
    """Unlabelled gRPC Predict requests in a loop, remembering which version answered each."""

    def __init__(self, address):
        import threading

        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = MODEL
        self.request.model_spec.signature_name = "serving_default"
        import tensorflow as tf

        self.request.inputs["examples"].CopyFrom(tf.make_tensor_proto([b""], dtype=tf.string))
        self.answers, self.failures = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import grpc

        while not self._stop.is_set():
            try:
                response = self.stub.Predict(self.request, timeout=10)
                self.answers.append((time.monotonic(), response.model_spec.version.value))
            except grpc.RpcError as error:
                self.failures.append((time.monotonic(), error.code().name, error.details()))

    def last_version(self):
        return self.answers[-1][1] if self.answers else None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)
        self.channel.close()


def _failing_model(directory):
    """A SavedModel that loads but fails every predict: a broken canary."""
    import tensorflow as tf

    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            tf.debugging.assert_equal(tf.size(examples), -1, message="this canary is broken")
            return {"probabilities": tf.zeros([tf.size(examples), 1])}

    module = Broken()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


@pytest.fixture()
def release_home(long_run, tmp_path):
    """A home with three served versions (copies of the long run's), stable 1, canary 2."""
    home = tmp_path / "home"
    base = home / "serving" / MODEL
    for version in (1, 2):
        publish_atomically(str(long_run.home / "serving" / MODEL / str(version)), str(base))
    shutil.copy(long_run.home / "metadata.sqlite", home / "metadata.sqlite")
    release.write(release.manifest_path(str(home / "serving")),
                  [release.Release(MODEL, str(base), {"stable": 1, "canary": 2})])
    return home


@pytest.fixture()
def server(release_home):
    process = subprocess.Popen(
        ctpipe_command("serve", "--home", str(release_home), "--port", "0", "--rest-api-port",
                       "0", "--canary-percent", "0"),
        stderr=subprocess.PIPE, text=True)
    seen = []
    assert wait_for_line(process.stderr, "serving big_tipper", 120, seen), "".join(seen)
    line = seen[-1]
    grpc_address = line.split("gRPC ")[1].split(",")[0]
    rest = line.split("REST ")[1].split(" ")[0]
    yield {"grpc": grpc_address, "rest": rest, "process": process, "seen": seen}
    process.terminate()
    process.wait(timeout=30)


def _status(home):
    result = ctpipe("status", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _switch_seconds(load, started, finished, version):
    """Seconds from the command's return to the first answer from `version` after the command
    started (0 when the server switched before the CLI process had even exited)."""
    for answered_at, answered in load.answers:
        if answered_at >= started and answered == version:
            return max(0.0, answered_at - finished)
    return None


def test_promote_and_rollback_under_load_with_zero_failures(release_home, server):
    with VersionedLoad(server["grpc"]) as load:
        assert wait_until(lambda: load.last_version() == 1, 60)
        started = time.monotonic()
        promoted = ctpipe("promote", "--home", str(release_home), "--reason", "canary is good",
                          "--json")
        finished = time.monotonic()
        assert promoted.returncode == 0, promoted.stderr
        assert json.loads(promoted.stdout)["after"] == {"stable": 2, "previous": 1}
        assert wait_until(lambda: load.last_version() == 2, 10)
        promote_seconds = _switch_seconds(load, started, finished, 2)

        started_rollback = time.monotonic()
        rolled = ctpipe("rollback", "--home", str(release_home), "--reason", "bad tips",
                        "--json")
        finished_rollback = time.monotonic()
        assert rolled.returncode == 0, rolled.stderr
        assert json.loads(rolled.stdout)["after"] == {"stable": 1}
        assert wait_until(lambda: load.last_version() == 1, 10)
        rollback_seconds = _switch_seconds(load, started_rollback, finished_rollback, 1)
        assert wait_until(lambda: load.answers[-1][0] > finished_rollback + 1.5, 30)
    assert load.failures == []
    # Under a second from the command's return to the first answer by the new stable.
    assert promote_seconds is not None and promote_seconds < 1.0
    assert rollback_seconds is not None and rollback_seconds < 1.0
    after_rollback = [v for t, v in load.answers if t > finished_rollback + 1.0]
    assert set(after_rollback) == {1}

    status = _status(release_home)
    assert (status["stable_version"], status["canary_version"]) == (1, None)
    store = open_store(sqlite_connection(str(release_home / "metadata.sqlite")))
    actions = [a for a in cycles.operator_actions(store, "ctpipe")
               if a.action in ("promote", "rollback")]
    assert [(a.action, a.reason, a.details["after"]) for a in actions] == [
        ("promote", "canary is good", {"stable": 2, "previous": 1}),
        ("rollback", "bad tips", {"stable": 1})]


def test_impossible_release_commands_fail_clearly(release_home):
    result = ctpipe("rollback", "--home", str(release_home))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "nothing to roll back to: no previous stable version (give --to)")
    result = ctpipe("promote", "--home", str(release_home), "--version", "9")
    assert result.returncode == 2 and "version(s) 9 of big_tipper are not under" in result.stderr
    assert release.read(release.manifest_path(str(release_home / "serving")))[0].labels == {
        "stable": 1, "canary": 2}


def test_guard_takes_an_erroring_canary_out_of_traffic(release_home, tmp_path):
    base = release_home / "serving" / MODEL
    _failing_model(tmp_path / "broken")
    broken = publish_atomically(str(tmp_path / "broken"), str(base))
    release.apply(release.manifest_path(str(release_home / "serving")), MODEL, str(base),
                  lambda r: release.after_push(r, broken))
    process = subprocess.Popen(
        ctpipe_command("serve", "--home", str(release_home), "--port", "0", "--rest-api-port",
                       "0", "--canary-percent", "50"), stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert wait_for_line(process.stderr, "serving big_tipper", 120, seen), "".join(seen)
        grpc_address = seen[-1].split("gRPC ")[1].split(",")[0]
        rest = seen[-1].split("REST ")[1].split(" ")[0]
        with VersionedLoad(grpc_address) as load:
            assert wait_until(lambda: len(load.failures) > 5, 60)
            guard = ctpipe("guard", "--home", str(release_home), "--server", rest, "--window",
                           "2", "--windows", "1", "--min-requests", "5", "--json", timeout=120)
            assert guard.returncode == 0, guard.stderr
            report = json.loads(guard.stdout.strip().splitlines()[-1])
            assert report["action"]["action"] == "remove_canary"
            assert report["canary"]["version"] == broken
            assert report["canary"]["error_rate"] > 0.4
            removed_at = time.monotonic()
            assert wait_until(lambda: load.answers[-1][0] > removed_at + 2.0, 30)
        late_failures = [f for f in load.failures if f[0] > removed_at + 1.0]
        assert late_failures == []
        assert {v for t, v in load.answers if t > removed_at + 1.0} == {1}
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert release.read(release.manifest_path(str(release_home / "serving")))[0].labels == {
        "stable": 1}
    store = open_store(sqlite_connection(str(release_home / "metadata.sqlite")))
    [action] = [a for a in cycles.operator_actions(store, "ctpipe")
                if a.action == "remove_canary"]
    assert action.details["by"] == "guard" and "error rate" in action.reason
