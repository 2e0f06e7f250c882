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
from ctpipe.pipeline.home import cycles
from ctpipe.pipeline.home.store import open_store, sqlite_connection

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
    from ctpipe.components.layout import versions_on_disk

    home = tmp_path / "home"
    base = home / "serving" / MODEL
    pushed = long_run.home / "serving" / MODEL
    on_disk = versions_on_disk(str(pushed))  # retention keeps the oldest (stable) and newest
    for version in (on_disk[0], on_disk[-1]):  # become versions 1 and 2 here
        publish_atomically(str(pushed / str(version)), str(base))
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
    actions = [a for a in cycles.operator_actions(store, "ctpipe")  # the long run's own
               if a.action in ("promote", "rollback")  # fresh-label moves came with its store
               and a.details.get("by") != "fresh_labels"]
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


def _raw_columns(rows, scale_fare=1.0, payment=None):
    """CSV rows as the serving_raw signature's columns (missing: NaN, -1, "")."""
    from ctpipe.components import features as F

    columns = {}
    for name in F.NUMERIC_FEATURES:
        columns[name] = [float(r[name]) * (scale_fare if name == "fare" else 1.0)
                         if r[name] != "" else float("nan") for r in rows]
    for name in F.CATEGORICAL_INT_FEATURES:
        columns[name] = [int(float(r[name])) if r[name] != "" else -1 for r in rows]
    for name in F.CATEGORICAL_STRING_FEATURES:
        columns[name] = [payment if payment and name == "payment_type" else r[name]
                         for r in rows]
    return columns


@pytest.fixture()
def production_home(long_run, tmp_path):
    """A home whose stable version is the long run's newest push (its training data is kept by
    retention, as the production model's always is)."""
    from ctpipe.components.layout import versions_on_disk

    home = tmp_path / "production"
    source = long_run.home / "serving" / MODEL
    newest = versions_on_disk(str(source))[-1]
    base = home / "serving" / MODEL
    base.mkdir(parents=True)
    shutil.copytree(source / str(newest), base / str(newest))
    shutil.copy(long_run.home / "metadata.sqlite", home / "metadata.sqlite")
    release.write(release.manifest_path(str(home / "serving")),
                  [release.Release(MODEL, str(base), {"stable": newest})])
    return home


def test_logged_requests_reveal_serving_skew(production_home, long_run, tmp_path):
    """serve --request-log-dir writes PredictionLogs; `ctpipe skew` finds no skew in requests
    like the training data and exits 3 on drifted ones."""
    import csv

    release_home = production_home
    from ctpipe.pipeline.run.corruptions import CORRUPTIONS
    from ctpipe.serving.clients import RestClient

    from tests.scenario import LASTING_CHANGE
    from tests.support import SAMPLE

    # Requests like the production model's training data: the long run's later spans carry a
    # lasting change (payments shifted) that its operator accepted, so clean traffic has it too.
    like_training = tmp_path / "like-training.csv"
    CORRUPTIONS[LASTING_CHANGE](str(SAMPLE / "span-5" / "data.csv"), str(like_training))
    with open(like_training, newline="") as handle:
        rows = list(csv.DictReader(handle))[:300]
    results = {}
    for kind, columns in (("clean", _raw_columns(rows)),
                          ("drifted", _raw_columns(rows, scale_fare=5.0, payment="Cash"))):
        logs = tmp_path / f"logs-{kind}"
        process = subprocess.Popen(
            ctpipe_command("serve", "--home", str(release_home), "--port", "0",
                           "--rest-api-port", "0", "--request-log-dir", str(logs)),
            stderr=subprocess.PIPE, text=True)
        seen = []
        try:
            assert wait_for_line(process.stderr, "serving big_tipper", 120, seen), "".join(seen)
            client = RestClient(seen[-1].split("REST ")[1].split(" ")[0], MODEL)
            for start in range(0, len(rows), 50):
                client.predict({k: v[start:start + 50] for k, v in columns.items()},
                               "serving_raw")
        finally:
            process.terminate()  # closing the server closes the last log file
            process.wait(timeout=30)
        assert list(logs.glob("requests-*.tfrecord")), "no complete request log file"
        results[kind] = ctpipe("skew", "--home", str(release_home), "--requests", str(logs),
                               "--json")
    clean, drifted = results["clean"], results["drifted"]
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["drifted"] is False
    assert drifted.returncode == 3, drifted.stdout + drifted.stderr
    report = json.loads(drifted.stdout)
    assert report["drifted"] is True and (report["requests"], report["examples"]) == (6, 300)
    assert {a["feature"] for a in report["anomalies"]} >= {"fare", "payment_type"}
    # recorded for the pipeline metrics (ctpipe_skew_drifted, ctpipe_skew_alarms_total)
    latest = json.loads((release_home / "skew" / "latest.json").read_text())
    assert latest["drifted"] is True
    assert len((release_home / "skew" / "history.jsonl").read_text().splitlines()) == 2
    metrics = ctpipe("metrics", "--home", str(release_home))
    assert metrics.returncode == 0, metrics.stderr
    assert any(line.startswith("ctpipe_skew_drifted{") and line.endswith(" 1.0")
               for line in metrics.stdout.splitlines()), metrics.stdout

    # ctpipe watch runs the same check between polls and records it
    (release_home / "skew" / "latest.json").unlink()
    process = subprocess.Popen(
        ctpipe_command("watch", "--home", str(release_home), "--data-root",
                       str(long_run.data_root), "--interval", "1", "--skew-requests",
                       str(tmp_path / "logs-drifted")), stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert wait_for_line(process.stderr, "watch: serving skew: DRIFTED", 180, seen), \
            "".join(seen)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert json.loads((release_home / "skew" / "latest.json").read_text())["drifted"] is True
