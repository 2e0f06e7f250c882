"""Measuring one cycle from outside: wall seconds and peak RSS of its process, per-component
seconds from its ML Metadata, and the AUC of the model it trained on given eval files."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from ctpipe.components.basics import ExitCode, end_process


@dataclasses.dataclass
class CycleRun:
    label: str
    seconds: float
    peak_rss_mib: float
    returncode: int
    components: Dict[str, float] = dataclasses.field(default_factory=dict)
    # AUC ± Hanley-McNeil standard error on a whole span neither pipeline ever read, and on
    # every span's eval rows that neither side trained on (compare._score).
    auc_held_out_span: Optional[float] = None
    auc_held_out_span_stderr: Optional[float] = None
    auc_all_spans: Optional[float] = None
    auc_all_spans_stderr: Optional[float] = None
    log: str = ""

    def to_dict(self) -> Dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "log"}


def run_process(label: str, argv: List[str], log_path: str) -> CycleRun:
    """Run `argv` to completion; wall time includes interpreter start and imports (what a
    scheduler pays every cycle). Peak RSS is the child's own (wait4), not the bench's."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # the bench is stopped: the cycle is stopped by its PID too
            end_process(process)
            raise
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return CycleRun(label, round(seconds, 1), round(usage.ru_maxrss / 1024, 0),
                    process.returncode, log=log_path)


# A cycle that decided its span: pushed (0), blocked by the gate (3) or not blessed (4). All are
# measured cycles; only a failure (1, 2, ...) stops the bench.
DECIDED_EXIT_CODES = (int(ExitCode.OK), int(ExitCode.DATA_BLOCKED), int(ExitCode.NOT_BLESSED))


def decided(run: "CycleRun") -> bool:
    return run.returncode in DECIDED_EXIT_CODES


def python(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def component_seconds(metadata_path: str, pipeline_name: str) -> Dict[str, float]:
    """Seconds per component of the latest run of `pipeline_name` (ML Metadata times)."""
    from ctpipe.pipeline.home import outcomes
    from ctpipe.pipeline.home import store as mlmd_store
    store = mlmd_store.open_store(mlmd_store.sqlite_connection(metadata_path))
    runs = outcomes.pipeline_runs(store, pipeline_name)
    if not runs:
        return {}
    return {name: round(seconds, 1) for name, seconds in
            outcomes.component_seconds(store, runs[-1], pipeline_name).items()}


def latest_artifact_uri(metadata_path: str, type_name: str,
                        producer: Optional[str] = None) -> Optional[str]:
    """URI of the newest artifact of `type_name` (optionally made by the node `producer`)."""
    from ctpipe.pipeline.home import store as mlmd_store

    store = mlmd_store.open_store(mlmd_store.sqlite_connection(metadata_path))
    artifacts = sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)
    if producer:
        artifacts = [a for a in artifacts if f"/{producer}/" in a.uri]
    return artifacts[-1].uri if artifacts else None


def model_auc(model_uri: str, eval_files: List[str]) -> Tuple[Optional[float], Optional[float]]:
    """(AUC, its Hanley-McNeil standard error) of a Model artifact's serving_default (first
    output) on tf.Example files: on a few hundred rows the error bar matters."""
    import numpy as np

    from ctpipe.components.label_check import auc, auc_stderr, score

    labels, scores = score(model_uri, eval_files)
    value = auc(labels, scores)
    if value is None:
        return None, None
    positives = int(np.asarray(labels).astype(bool).sum())
    return round(value, 4), round(auc_stderr(value, positives, len(labels) - positives), 4)


def split_files(metadata_path: str, split: str, type_name: str = "Examples") -> List[str]:
    """Files of `split` in every `type_name` artifact of a home's ML Metadata: for "train",
    every row any model of that home (or its warm-start chain) can have trained on."""
    import glob

    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    return sorted(path for artifact in store.get_artifacts_by_type(type_name)
                  for path in glob.glob(os.path.join(artifact.uri, f"Split-{split}", "*")))


def records(files: List[str]) -> List[bytes]:
    """Serialized records of GZIP TFRecord files (what ExampleGen writes)."""
    import tensorflow as tf

    if not files:
        return []
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def row_keys(files: List[str]) -> List[bytes]:
    """components.csv_ingest.row_key() of every record: the row's normalized values."""
    import tensorflow as tf

    from ctpipe.components.csv_ingest import row_key

    return [row_key(tf.train.Example.FromString(r)) for r in records(files)]


def overlap(eval_files: List[str], train_files: List[str]) -> int:
    """How many eval rows also occur in `train_files` (0 = a fair held-out comparison).

    Rows are compared by row_key(), not by serialized bytes: two pipelines that encode one row
    differently (an empty column as Feature() or as an empty int64_list) write other bytes for
    it, and a byte comparison then reports 0 whatever the overlap."""
    train = set(row_keys(train_files))
    return sum(key in train for key in row_keys(eval_files))


def write_rows_outside(eval_files: List[str], train_files: List[str], path: str) -> Dict[str, int]:
    """Write the eval records whose row is in none of `train_files` to `path` (GZIP TFRecord):
    rows neither model can have trained on. Returns how many were kept and dropped."""
    import tensorflow as tf

    from ctpipe.components.csv_ingest import row_key

    train = set(row_keys(train_files))
    kept = dropped = 0
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in records(eval_files):
            if row_key(tf.train.Example.FromString(record)) in train:
                dropped += 1
            else:
                writer.write(record)
                kept += 1
    return {"rows": kept, "dropped_rows_seen_in_training": dropped}
