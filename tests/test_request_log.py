"""The request logger: exact sampling, rotated and bounded files, only complete files readable,
never blocking or failing a request, and records TF Serving's warmup reader accepts."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from ctpipe.components.request_log_format import complete_log_files, read_logs
from ctpipe.serving import request_log
from ctpipe.serving.errors import ServingConfigError
from ctpipe.serving.request_log import RequestLogger, classify_protos, predict_protos

NAME = re.compile(r"^requests-\d{13}-\d{6}\.tfrecord$")


def _protos(rows: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.random(rows).astype(np.float32),
              "tag": np.array([f"t{i}".encode() for i in range(rows)], dtype=object)}
    outputs = {"y": (inputs["x"] * 2.0).reshape(rows, 1)}
    return predict_protos("toy", 3, "serving_raw", inputs, outputs)


def _log_many(logger: RequestLogger, count: int, rows: int = 4) -> None:
    for i in range(count):
        request, response = _protos(rows, seed=i)
        assert logger.log_predict(request.model_spec, request, response)


# -- sampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,every", [(1.0, 1), (0.5, 2), (0.25, 4), (0.1, 10)])
def test_sampling_is_exact(tmp_path, rate, every):
    with RequestLogger(str(tmp_path), sample_rate=rate) as logger:
        decisions = [logger.should_sample() for _ in range(1000)]
    assert sum(decisions) == 1000 // every
    assert [i for i, d in enumerate(decisions) if d] == list(range(0, 1000, every))


def test_sampling_is_exact_across_threads(tmp_path):
    with RequestLogger(str(tmp_path), sample_rate=0.25) as logger:
        counts = []

        def worker():
            counts.append(sum(logger.should_sample() for _ in range(1000)))
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(counts) == 2000


def test_rate_zero_logs_nothing(tmp_path):
    with RequestLogger(str(tmp_path), sample_rate=0.0) as logger:
        assert not any(logger.should_sample() for _ in range(100))


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_rates_are_refused(tmp_path, rate):
    with pytest.raises(ServingConfigError):
        RequestLogger(str(tmp_path), sample_rate=rate)


@pytest.mark.parametrize("field,value", [("max_files", 0), ("queue_size", 0),
                                          ("max_file_bytes", 10), ("max_file_seconds", 0)])
def test_bad_bounds_are_refused(tmp_path, field, value):
    with pytest.raises(ServingConfigError):
        RequestLogger(str(tmp_path), **{field: value})


# -- files -------------------------------------------------------------------------------------

def test_files_rotate_and_stay_bounded(tmp_path):
    directory = str(tmp_path / "log")
    max_bytes, max_files = 2000, 3
    with RequestLogger(directory, max_file_bytes=max_bytes, max_files=max_files) as logger:
        _log_many(logger, 60)
        assert logger.flush()
        stats = logger.stats()
    names = sorted(os.listdir(directory))
    assert len(names) == max_files and all(NAME.match(name) for name in names)
    sizes = [os.path.getsize(os.path.join(directory, name)) for name in names]
    assert all(size <= max_bytes for size in sizes)
    assert stats["files"] > max_files  # older files were rotated away
    assert stats["logged"] == 60 and stats["dropped"] == stats["errors"] == 0
    assert stats["files_on_disk"] == max_files and stats["bytes_on_disk"] == sum(sizes)
    # What is left is the newest records, in order.
    kept = [log.predict_log.request for log in read_logs(directory)]
    expected = [_protos(4, seed=i)[0] for i in range(60 - len(kept), 60)]
    assert kept == expected


def test_a_restarted_logger_counts_existing_files_and_removes_stale_partials(tmp_path):
    directory = str(tmp_path)
    with RequestLogger(directory, max_file_bytes=2000, max_files=3) as logger:
        _log_many(logger, 30)
    stale = tmp_path / ".requests-0000000000001-000000.tfrecord.tmp"
    stale.write_bytes(b"\x01\x02torn")
    with RequestLogger(directory, max_file_bytes=2000, max_files=3) as logger:
        assert not stale.exists()
        assert logger.stats()["files_on_disk"] == 3
        _log_many(logger, 1)
    assert len(complete_log_files(directory)) == 3


def test_only_complete_files_are_readable(tmp_path):
    directory = str(tmp_path)
    logger = RequestLogger(directory)
    try:
        _log_many(logger, 5)
        deadline = time.monotonic() + 10
        while logger.stats()["logged"] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        names = os.listdir(directory)
        assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".tmp")
        assert complete_log_files(directory) == [] and list(read_logs(directory)) == []
        assert logger.flush()
        assert len(list(read_logs(directory))) == 5
    finally:
        logger.close()


def test_an_old_file_is_completed_without_more_traffic(tmp_path):
    with RequestLogger(str(tmp_path), max_file_seconds=0.2) as logger:
        _log_many(logger, 2)
        deadline = time.monotonic() + 10
        while not complete_log_files(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(read_logs(str(tmp_path)))) == 2


def test_old_files_are_completed_under_steady_traffic_too(tmp_path):
    with RequestLogger(str(tmp_path), max_file_seconds=0.2) as logger:
        for _ in range(20):
            _log_many(logger, 1)
            time.sleep(0.05)
        assert len(complete_log_files(str(tmp_path))) >= 3


def test_close_completes_the_last_file_and_refuses_more(tmp_path):
    logger = RequestLogger(str(tmp_path))
    _log_many(logger, 3)
    logger.close()
    logger.close()
    assert len(list(read_logs(str(tmp_path)))) == 3
    request, response = _protos()
    assert logger.log_predict(request.model_spec, request, response) is False
    assert logger.stats()["dropped"] == 1


def test_a_record_over_the_file_size_is_counted_not_written(tmp_path):
    with RequestLogger(str(tmp_path), max_file_bytes=1000) as logger:
        big_request, big_response = _protos(rows=500)
        assert logger.log_predict(big_request.model_spec, big_request, big_response)
        _log_many(logger, 1)
    assert logger.stats()["too_large"] == 1 and logger.stats()["logged"] == 1
    assert len(list(read_logs(str(tmp_path)))) == 1


# -- never blocking, never failing ---------------------------------------------------------------

class _StalledWriter(RequestLogger):
    """A writer stuck on a slow disk: it holds its first record until released."""

    def __init__(self, *args, **kwargs):
        self.took_first, self.release = threading.Event(), threading.Event()
        super().__init__(*args, **kwargs)

    def _serialize(self, *item):
        self.took_first.set()
        self.release.wait(30)
        return super()._serialize(*item)


def test_a_full_queue_drops_records_without_blocking(tmp_path):
    logger = _StalledWriter(str(tmp_path), queue_size=5)
    try:
        request, response = _protos()
        assert logger.log_predict(request.model_spec, request, response)
        assert logger.took_first.wait(10)
        accepted = [logger.log_predict(request.model_spec, request, response)
                    for _ in range(5)]
        started = time.perf_counter()
        refused = [logger.log_predict(request.model_spec, request, response)
                   for _ in range(100)]
        elapsed = time.perf_counter() - started
        assert all(accepted) and not any(refused)
        assert elapsed < 0.5  # no waiting on the writer
        assert logger.stats()["dropped"] == 100 and logger.stats()["queued"] == 5
    finally:
        logger.release.set()
        logger.close()
    assert logger.stats()["logged"] == 6
    assert len(list(read_logs(str(tmp_path)))) == 6


def test_write_errors_are_counted_not_raised(tmp_path):
    directory = tmp_path / "log"
    with RequestLogger(str(directory)) as logger:
        shutil.rmtree(directory)  # the disk goes away under the server
        _log_many(logger, 2)
        deadline = time.monotonic() + 10
        while logger.stats()["errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert logger.stats()["errors"] == 2 and logger.stats()["logged"] == 0
        directory.mkdir()  # and comes back
        _log_many(logger, 1)
    assert logger.stats()["logged"] == 1
    assert len(list(read_logs(str(directory)))) == 1


def test_a_bad_proto_is_counted_and_the_writer_lives_on(tmp_path):
    with RequestLogger(str(tmp_path)) as logger:
        request, response = _protos()
        assert logger.log_predict(request.model_spec, "not a proto", response)
        _log_many(logger, 1)
    assert logger.stats()["errors"] == 1 and logger.stats()["logged"] == 1


# -- the records ---------------------------------------------------------------------------------

def test_a_record_round_trips_as_a_prediction_log(tmp_path):
    inputs = {"x": np.array([0.5, np.nan], np.float32),
              "code": np.array([3, -1], np.int64),
              "tag": np.array([b"a", b""], dtype=object)}
    outputs = {"y": np.array([[1.0], [2.0]], np.float32)}
    request, response = predict_protos("toy", 7, "serving_raw", inputs, outputs)
    with RequestLogger(str(tmp_path), sample_rate=0.5) as logger:
        assert logger.log_predict(request.model_spec, request, response)
    [path] = complete_log_files(str(tmp_path))
    [record] = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    log = prediction_log_pb2.PredictionLog.FromString(record)
    assert log.WhichOneof("log_type") == "predict_log"
    logged = log.predict_log.request
    assert (logged.model_spec.name, logged.model_spec.version.value,
            logged.model_spec.signature_name) == ("toy", 7, "serving_raw")
    np.testing.assert_array_equal(tf.make_ndarray(logged.inputs["x"]), inputs["x"])
    np.testing.assert_array_equal(tf.make_ndarray(logged.inputs["code"]), inputs["code"])
    assert list(tf.make_ndarray(logged.inputs["tag"])) == [b"a", b""]
    np.testing.assert_array_equal(tf.make_ndarray(log.predict_log.response.outputs["y"]),
                                  outputs["y"])
    metadata = log.log_metadata
    assert metadata.model_spec.version.value == 7
    assert metadata.sampling_config.sampling_rate == 0.5
    assert list(metadata.saved_model_tags) == ["serve"]
    assert abs(metadata.timestamp_secs - time.time()) < 60


def test_classify_and_regress_records(tmp_path):
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(1.5)
    request, response = classify_protos("toy", 1, "classification",
                                        [example.SerializeToString()], [[("0", 0.3), ("1", 0.7)]])
    regress_request, regress_response = request_log.regress_protos(
        "toy", 1, "regression", [example.SerializeToString()], [0.25])
    with RequestLogger(str(tmp_path)) as logger:
        assert logger.log_classify(request.model_spec, request, response)
        assert logger.log_regress(regress_request.model_spec, regress_request, regress_response)
    classify, regress = read_logs(str(tmp_path))
    assert classify.classify_log.request.input.example_list.examples[0] == example
    assert classify.classify_log.response.result.classifications[0].classes[1].score == \
        pytest.approx(0.7)
    assert regress.regress_log.response.result.regressions[0].value == 0.25


class _Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def double(self, x):
        return {"y": x * 2.0}


def test_a_log_file_is_a_valid_warmup_file(tmp_path):
    """TF Serving replays assets.extra/tf_serving_warmup_requests before serving; a request log
    file dropped there is replayed by the server's warmup reader (serving/servables.py)."""
    from ctpipe.serving.servables import Servable

    export = tmp_path / "model" / "1"
    module = _Doubler()
    tf.saved_model.save(module, str(export),
                        signatures={"serving_default": module.double.get_concrete_function()})
    with RequestLogger(str(tmp_path / "log")) as logger:
        for rows in (1, 3):
            request, response = predict_protos(
                "toy", 1, "serving_default", {"x": np.ones(rows, np.float32)},
                {"y": np.full(rows, 2.0, np.float32)})
            logger.log_predict(request.model_spec, request, response)
    [path] = complete_log_files(str(tmp_path / "log"))
    (export / "assets.extra").mkdir()
    shutil.copyfile(path, export / "assets.extra" / "tf_serving_warmup_requests")
    assert Servable("toy", 1, str(export)).warm_up() == 2


def test_flags(tmp_path):
    parser = argparse.ArgumentParser()
    request_log.add_flags(parser)
    assert request_log.from_args(parser.parse_args([])) is None
    args = parser.parse_args(["--request-log-dir", str(tmp_path), "--request-log-sample", "0.25",
                              "--request-log-max-file-mb", "1", "--request-log-max-files", "4"])
    logger = request_log.from_args(args)
    try:
        assert (logger.sample_rate, logger.max_file_bytes, logger.max_files) == \
            (0.25, 1024 * 1024, 4)
    finally:
        logger.close()
    with pytest.raises(ServingConfigError) as raised:
        request_log.from_args(parser.parse_args(["--request-log-dir", str(tmp_path),
                                                 "--request-log-sample", "2"]))
    assert raised.value.exit_code == 2  # a usage error, as the CLI's
