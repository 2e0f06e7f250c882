"""The request-log file contract, shared by its writer (serving/request_log.py) and its readers
(`ctpipe skew`): which files a log directory holds, which of them are complete, and how to read
their records.

  .requests-<unix ms>-<seq>.tfrecord.tmp   being written: hidden and suffixed, so no reader (nor
                                           TF Serving, nor a glob of *.tfrecord) ever sees a
                                           partial record;
  requests-<unix ms>-<seq>.tfrecord        complete: renamed into place when the writer closed it.

Records are `tensorflow.serving.PredictionLog` protos in TFRecord framing - the format of TF
Serving's own request logger and of its warmup files (assets.extra/tf_serving_warmup_requests),
so a complete log file is also a valid warmup file. <unix ms> is 13 digits, so names sort by
time; <seq> counts files within one writer.

Why here: the writer lives in serving/, the reader in pipeline/; components/ is the one layer
both import, so the contract has exactly one home.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, List

LOG_PREFIX = "requests-"
LOG_SUFFIX = ".tfrecord"
# A file being written: hidden (TMP_PREFIX) and suffixed (TMP_SUFFIX).
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def complete_name(unix_ms: int, seq: int) -> str:
    """The name a log file has once complete (and, with partial_name, while written)."""
    return f"{LOG_PREFIX}{unix_ms:013d}-{seq:06d}{LOG_SUFFIX}"


def partial_name(name: str) -> str:
    """The hidden name a writer gives the file `name` until it is complete."""
    return TMP_PREFIX + name + TMP_SUFFIX


def is_partial(name: str) -> bool:
    """A file some writer left unfinished (or is still writing)."""
    return name.startswith(TMP_PREFIX + LOG_PREFIX) and name.endswith(TMP_SUFFIX)


def complete_log_files(directory: str) -> List[str]:
    """The complete request log files in `directory`, oldest first."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(directory):
        return []
    names = [name.strip("/") for name in tf.io.gfile.listdir(directory)]
    return [os.path.join(directory, name) for name in sorted(names)
            if name.startswith(LOG_PREFIX) and name.endswith(LOG_SUFFIX)]


def read_logs(directory: str) -> Iterator[Any]:
    """Every PredictionLog of the complete files in `directory`, oldest file first. A file the
    writer's rotation deletes between listing and reading is skipped."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    for path in complete_log_files(directory):
        try:
            for record in tf.data.TFRecordDataset(path):
                yield prediction_log_pb2.PredictionLog.FromString(record.numpy())
        except tf.errors.NotFoundError:
            continue
