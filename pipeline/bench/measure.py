"""Measuring one cycle from outside: wall seconds and peak RSS of its process, per-component
seconds from its ML Metadata, and the AUC of the model it trained on given eval files."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple


@dataclasses.dataclass
class CycleRun:
    label: str
    seconds: float
    peak_rss_mib: float
    returncode: int
    components: Dict[str, float] = dataclasses.field(default_factory=dict)
    auc: Optional[float] = None
    auc_stderr: Optional[float] = None
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
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return CycleRun(label, round(seconds, 1), round(usage.ru_maxrss / 1024, 0),
                    process.returncode, log=log_path)


def python(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def component_seconds(metadata_path: str, pipeline_name: str) -> Dict[str, float]:
    """Seconds per component of the latest run of `pipeline_name` (ML Metadata times)."""
    from ctpipe.pipeline import outcomes

    store = outcomes.open_store(outcomes.sqlite_connection(metadata_path))
    runs = outcomes.pipeline_runs(store, pipeline_name)
    if not runs:
        return {}
    return {name: round(seconds, 1) for name, seconds in
            outcomes.component_seconds(store, runs[-1], pipeline_name).items()}


def latest_artifact_uri(metadata_path: str, type_name: str,
                        producer: Optional[str] = None) -> Optional[str]:
    """URI of the newest artifact of `type_name` (optionally made by the node `producer`)."""
    from ctpipe.pipeline import outcomes

    store = outcomes.open_store(outcomes.sqlite_connection(metadata_path))
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


def overlap(eval_files: List[str], train_files: List[str]) -> int:
    """How many eval records also occur in `train_files` (0 = a fair held-out comparison)."""
    import tensorflow as tf

    def records(files):
        return {r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")}

    return len(records(eval_files) & records(train_files))
