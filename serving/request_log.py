"""Request logging: a sample of served requests, with their responses, as TF Serving
PredictionLog TFRecords - the format of TF Serving's own request logger and of its warmup files
(assets.extra/tf_serving_warmup_requests), so a log file can be replayed as warmup, read by
`ctpipe skew` (pipeline/observe/skew.py) or by any TF Serving tool.

Usage (the server calls it; `--request-log-dir D [--request-log-sample R]`):

    logger = RequestLogger("/var/log/ctpipe/requests", sample_rate=0.25)
    if logger.should_sample():               # cheap: decide before building any proto
        logger.log_predict(model_spec, request, response)   # never blocks, never raises
    ...
    logger.close()                           # at shutdown: the last file becomes readable

Records: one `tensorflow.serving.PredictionLog` per request - predict_log / classify_log /
regress_log / multi_inference_log {request, response}, with log_metadata {model_spec (the
servable that answered: name, version, signature), sampling_config {sampling_rate},
saved_model_tags ["serve"], timestamp_secs}.

Files (one writer per directory: give each server process its own directory; the names and the
reader are the contract in components/request_log_format.py, shared with `ctpipe skew`):
  .requests-<unix ms>-<seq>.tfrecord.tmp   the file being written: hidden and suffixed, so no
                                           reader (nor TF Serving, nor a glob of *.tfrecord)
                                           ever sees a partial record;
  requests-<unix ms>-<seq>.tfrecord        a complete file: renamed into place when closed.
<unix ms> is when the file's first record was written (13 digits, so names sort by time), <seq>
counts files within one logger. A file is closed when the next record would take it past
`max_file_bytes`, when it is `max_file_seconds` old (so a quiet server's requests become
readable too), on `flush()` and on `close()`. Once more than `max_files` complete files exist the
oldest are deleted, so the directory holds at most max_files x max_file_bytes plus the file being
written. A record larger than max_file_bytes is not written (counted as `too_large`). Hidden
`.tmp` files left by a process that died are removed when a logger starts in that directory.

Never blocking a request: log_* only puts the protos on a bounded queue; one writer thread
builds, serializes and writes the records. When the queue is full the record is dropped and
counted; write errors (disk full, ...) are counted and logged, never raised. The caller must not
change the protos after handing them over.

Sampling is deterministic: an accumulator adds R per request and logs a request each time it
reaches 1 (R as an exact fraction), so R=0.25 logs exactly every 4th request, starting with the
first; R=0 logs nothing, R=1 everything.

Counters for metrics (`stats()`, all only grow): logged (records written), dropped (queue full,
or logger closed), too_large, errors (records lost: not serializable, or in a file dropped after
a write error - such a file may hold a torn record, so it is deleted, never completed), bytes
(written, TFRecord framing included), files (completed); gauges queued, files_on_disk,
bytes_on_disk.
"""
from __future__ import annotations

import fractions
import logging
import math
import os
import queue
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ctpipe.components.request_log_format import (
    complete_log_files,
    complete_name,
    is_partial,
    partial_name,
    read_logs,
)
from ctpipe.serving.errors import ServingConfigError

__all__ = ["RequestLogger", "add_flags", "from_args", "predict_protos", "classify_protos",
           "regress_protos", "read_logs", "complete_log_files"]

MIB = 1024 * 1024
# A TFRecord frames each record with a length (8 bytes) and two CRCs (4 + 4 bytes).
RECORD_OVERHEAD = 16
LOG_KINDS = ("predict_log", "classify_log", "regress_log", "multi_inference_log")

_log = logging.getLogger(__name__)
_STOP = object()


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


def _exact_rate(sample_rate: Any) -> fractions.Fraction:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ServingConfigError(f"request log sample rate must be a number in [0, 1], "
                                 f"got {sample_rate!r}")
    if math.isnan(sample_rate) or not 0.0 <= sample_rate <= 1.0:
        raise ServingConfigError(
            f"request log sample rate must be within [0, 1], got {sample_rate}")
    return fractions.Fraction(sample_rate).limit_denominator(1_000_000)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ServingConfigError(
            f"request log {name} must be an integer >= {minimum}, got {value!r}")
    return value


class RequestLogger:
    """Sampled PredictionLog records in rotated, bounded TFRecord files (module docstring)."""

    def __init__(self, directory: str, sample_rate: float = 1.0,
                 max_file_bytes: int = 16 * MIB, max_files: int = 20, queue_size: int = 1000,
                 max_file_seconds: float = 300.0):
        import tensorflow as tf

        rate = _exact_rate(sample_rate)
        self.directory = directory
        self.sample_rate = float(sample_rate)
        self.max_file_bytes = _positive_int("max_file_bytes", max_file_bytes,
                                            minimum=RECORD_OVERHEAD + 1)
        self.max_files = _positive_int("max_files", max_files)
        queue_size = _positive_int("queue_size", queue_size)
        if not max_file_seconds > 0:
            raise ServingConfigError(
                f"request log max_file_seconds must be > 0, got {max_file_seconds}")
        self.max_file_seconds = float(max_file_seconds)
        try:
            tf.io.gfile.makedirs(directory)
        except (tf.errors.OpError, OSError) as error:
            raise ServingConfigError(f"cannot create request log directory {directory}: {error}")
        self._tf = tf
        # Sampling: credit in units of 1/denominator; starts one step short of a full unit so
        # the first request is logged.
        self._numerator, self._denominator = rate.numerator, rate.denominator
        self._credit = self._denominator - self._numerator
        self._sample_lock = threading.Lock()
        self._counts = dict(logged=0, dropped=0, too_large=0, errors=0, bytes=0, files=0)
        self._count_lock = threading.Lock()
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=queue_size)
        self._closed = False
        # Writer-thread state.
        self._writer = None
        self._tmp_path = ""
        self._final_path = ""
        self._file_bytes = 0
        self._file_records = 0
        self._file_opened = 0.0
        self._seq = 0
        self._complete: List[Tuple[str, int]] = self._scan_directory()
        self._enforce_bounds()
        self._thread = threading.Thread(target=self._run, name="request-log-writer",
                                        daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------
    def should_sample(self) -> bool:
        """Whether this request is to be logged; call once per request, before log_*."""
        if self._numerator == 0:
            return False
        with self._sample_lock:
            self._credit += self._numerator
            if self._credit >= self._denominator:
                self._credit -= self._denominator
                return True
            return False

    def log_predict(self, model_spec, request, response=None) -> bool:
        """Queue a PredictLog (predict_pb2.PredictRequest/PredictResponse). True when queued,
        False when dropped (queue full or logger closed). Does not sample: call
        should_sample() first."""
        return self._enqueue("predict_log", model_spec, request, response)

    def log_classify(self, model_spec, request, response=None) -> bool:
        """classification_pb2.ClassificationRequest/ClassificationResponse."""
        return self._enqueue("classify_log", model_spec, request, response)

    def log_regress(self, model_spec, request, response=None) -> bool:
        """regression_pb2.RegressionRequest/RegressionResponse."""
        return self._enqueue("regress_log", model_spec, request, response)

    def log_multi_inference(self, model_spec, request, response=None) -> bool:
        """inference_pb2.MultiInferenceRequest/MultiInferenceResponse."""
        return self._enqueue("multi_inference_log", model_spec, request, response)

    def _enqueue(self, kind: str, model_spec, request, response) -> bool:
        if not self._closed:
            try:
                self._queue.put_nowait((kind, model_spec, request, response, time.time()))
                return True
            except queue.Full:
                pass
        self._count("dropped")
        return False

    def _count(self, name: str, amount: int = 1) -> None:
        with self._count_lock:
            self._counts[name] += amount

    # -- control --------------------------------------------------------------------------------
    def stats(self) -> Dict[str, int]:
        with self._count_lock:
            counts = dict(self._counts)
        complete = list(self._complete)
        counts["queued"] = self._queue.qsize()
        counts["files_on_disk"] = len(complete) + (1 if self._writer is not None else 0)
        counts["bytes_on_disk"] = sum(size for _, size in complete) + self._file_bytes
        return counts

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far and close the current file (it becomes readable).
        Blocks the caller up to `timeout` seconds - not for the request path. True when done."""
        if self._closed:
            return not self._thread.is_alive()
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting records, write what is queued, close the last file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            _log.warning("request log: writer did not drain its queue in %.0f s", timeout)
            return
        self._thread.join(timeout)
        leftover = 0
        while True:  # records queued after the stop marker by racing request threads
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            leftover += item is not _STOP and not isinstance(item, _Flush)
        if leftover:
            self._count("dropped", leftover)

    def __enter__(self) -> "RequestLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            timeout = None
            if self._writer is not None:
                timeout = self._file_opened + self.max_file_seconds - time.monotonic()
                if timeout <= 0:  # old enough, however busy the server is
                    self._finish_file()
                    timeout = None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._finish_file()
                continue
            if item is _STOP:
                self._finish_file()
                return
            if isinstance(item, _Flush):
                self._finish_file()
                item.done.set()
                continue
            try:
                record = self._serialize(*item)
            except Exception as error:  # noqa: BLE001 - logging never takes the server down
                self._count("errors")
                _log.warning("request log: record not serializable: %s: %s",
                             type(error).__name__, error)
                continue
            try:
                self._write(record)
            except Exception as error:  # noqa: BLE001
                self._count("errors", 1 + self._file_records)
                self._abandon_file()
                _log.warning("request log: write failed, current file dropped: %s: %s",
                             type(error).__name__, error)

    def _serialize(self, kind: str, model_spec, request, response, at: float) -> bytes:
        from tensorflow_serving.apis import prediction_log_pb2

        log = prediction_log_pb2.PredictionLog()
        metadata = log.log_metadata
        metadata.model_spec.CopyFrom(model_spec if model_spec is not None
                                     else request.model_spec)
        metadata.sampling_config.sampling_rate = self.sample_rate
        metadata.saved_model_tags.append("serve")
        metadata.timestamp_secs = int(at)
        entry = getattr(log, kind)
        entry.request.CopyFrom(request)
        if response is not None:
            entry.response.CopyFrom(response)
        return log.SerializeToString()

    def _write(self, record: bytes) -> None:
        size = len(record) + RECORD_OVERHEAD
        if size > self.max_file_bytes:
            self._count("too_large")
            return
        if self._writer is not None and self._file_bytes + size > self.max_file_bytes:
            self._finish_file()
        if self._writer is None:
            self._open_file()
        self._writer.write(record)
        self._file_bytes += size
        self._file_records += 1
        with self._count_lock:
            self._counts["logged"] += 1
            self._counts["bytes"] += size

    def _open_file(self) -> None:
        name = complete_name(int(time.time() * 1000), self._seq)
        self._seq += 1
        self._final_path = os.path.join(self.directory, name)
        self._tmp_path = os.path.join(self.directory, partial_name(name))
        self._writer = self._tf.io.TFRecordWriter(self._tmp_path)
        self._file_bytes = 0
        self._file_records = 0
        self._file_opened = time.monotonic()

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
            self._tf.io.gfile.rename(self._tmp_path, self._final_path, overwrite=False)
        except Exception as error:  # noqa: BLE001
            _log.warning("request log: could not complete %s: %s", self._final_path, error)
            self._count("errors", self._file_records)
            self._writer = None
            self._abandon_file()
            return
        self._writer = None
        self._complete.append((self._final_path, self._file_bytes))
        self._file_bytes = self._file_records = 0
        self._count("files")
        self._enforce_bounds()

    def _abandon_file(self) -> None:
        """After a write error: drop the current file (it may hold a torn record)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
            self._writer = None
        self._file_bytes = self._file_records = 0
        try:
            if self._tmp_path and self._tf.io.gfile.exists(self._tmp_path):
                self._tf.io.gfile.remove(self._tmp_path)
        except Exception:  # noqa: BLE001
            pass

    def _enforce_bounds(self) -> None:
        while len(self._complete) > self.max_files:
            path, _ = self._complete.pop(0)
            try:
                self._tf.io.gfile.remove(path)
            except Exception as error:  # noqa: BLE001
                _log.warning("request log: could not remove %s: %s", path, error)

    def _scan_directory(self) -> List[Tuple[str, int]]:
        """Complete files already there (oldest first) count towards the bound; hidden .tmp
        files are left-overs of a process that died mid-file (one writer per directory)."""
        gfile = self._tf.io.gfile
        for name in gfile.listdir(self.directory):
            if is_partial(name):
                try:
                    gfile.remove(os.path.join(self.directory, name))
                except Exception:  # noqa: BLE001
                    pass
        return [(path, gfile.stat(path).length) for path in complete_log_files(self.directory)]


# -- building the protos from what the REST path has (numpy inputs and outputs) ----------------

def _model_spec(model_name: str, version: Optional[int], signature: str):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature or "serving_default")
    if version is not None:
        spec.version.value = int(version)
    return spec


def predict_protos(model_name: str, version: Optional[int], signature: str,
                   inputs: Dict[str, Any], outputs: Optional[Dict[str, Any]] = None):
    """(PredictRequest, PredictResponse) from numpy inputs/outputs; both carry the model spec
    (name, version, signature). Use the spec for log_predict's model_spec too."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    spec = _model_spec(model_name, version, signature)
    request = predict_pb2.PredictRequest(model_spec=spec)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    response = predict_pb2.PredictResponse(model_spec=spec)
    for alias, value in (outputs or {}).items():
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request, response


def _input(serialized_examples: Sequence[bytes]):
    import tensorflow as tf
    from tensorflow_serving.apis import input_pb2

    examples = input_pb2.Input()
    for serialized in serialized_examples:
        examples.example_list.examples.add().CopyFrom(tf.train.Example.FromString(serialized))
    return examples


def classify_protos(model_name: str, version: Optional[int], signature: str,
                    serialized_examples: Sequence[bytes],
                    results: Optional[Sequence[Sequence[Tuple[str, float]]]] = None):
    """(ClassificationRequest, ClassificationResponse) from serialized tf.Examples and the
    servable's classify rows [[(label, score), ...], ...]."""
    from tensorflow_serving.apis import classification_pb2

    spec = _model_spec(model_name, version, signature)
    request = classification_pb2.ClassificationRequest(model_spec=spec,
                                                       input=_input(serialized_examples))
    response = classification_pb2.ClassificationResponse(model_spec=spec)
    for row in results or ():
        classification = response.result.classifications.add()
        for label, score in row:
            classification.classes.add(label=label, score=score)
    return request, response


def regress_protos(model_name: str, version: Optional[int], signature: str,
                   serialized_examples: Sequence[bytes],
                   values: Optional[Sequence[float]] = None):
    """(RegressionRequest, RegressionResponse) from serialized tf.Examples and the values."""
    from tensorflow_serving.apis import regression_pb2

    spec = _model_spec(model_name, version, signature)
    request = regression_pb2.RegressionRequest(model_spec=spec,
                                               input=_input(serialized_examples))
    response = regression_pb2.RegressionResponse(model_spec=spec)
    for value in values or ():
        response.result.regressions.add(value=float(value))
    return request, response


# -- command-line flags for the server ----------------------------------------------------------

def add_flags(parser) -> None:
    """--request-log-dir D [--request-log-sample R] [--request-log-max-file-mb M]
    [--request-log-max-files N] for `ctpipe serve`."""
    parser.add_argument("--request-log-dir",
                        help="log sampled requests and responses here (PredictionLog TFRecords)")
    parser.add_argument("--request-log-sample", type=float, default=1.0,
                        help="fraction of requests logged, in [0, 1] (0.25 = every 4th)")
    parser.add_argument("--request-log-max-file-mb", type=float, default=16.0,
                        help="a log file is closed when it would grow past this size")
    parser.add_argument("--request-log-max-files", type=int, default=20,
                        help="complete log files kept (the oldest are deleted)")


def from_args(args) -> Optional[RequestLogger]:
    """The logger the flags of add_flags ask for, or None without --request-log-dir.
    Raises ServingConfigError (exit 2) for a bad rate, size or count."""
    directory = getattr(args, "request_log_dir", None)
    if not directory:
        return None
    megabytes = args.request_log_max_file_mb
    if not megabytes > 0:
        raise ServingConfigError(f"--request-log-max-file-mb must be > 0, got {megabytes}")
    return RequestLogger(directory, sample_rate=args.request_log_sample,
                         max_file_bytes=max(int(megabytes * MIB), RECORD_OVERHEAD + 1),
                         max_files=args.request_log_max_files)

