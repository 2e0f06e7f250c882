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
    result = {}
    for execution in store.get_executions_by_context(runs[-1].id):
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type == "node"]
        name = nodes[0][len(pipeline_name) + 1:] if nodes else str(execution.id)
        seconds = (execution.last_update_time_since_epoch
                   - execution.create_time_since_epoch) / 1000.0
        result[name] = round(seconds, 1)
    return result


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
    import tensorflow as tf

    from ctpipe.components import features as F
    from ctpipe.components.label_check import auc, auc_stderr

    signature = tf.saved_model.load(os.path.join(model_uri, "Format-Serving")).signatures[
        "serving_default"]
    input_name = list(signature.structured_input_signature[1])[0]
    labels, scores = [], []
    label_spec = {F.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    for records in tf.data.TFRecordDataset(eval_files, compression_type="GZIP").batch(1024):
        labels.append(tf.io.parse_example(records, label_spec)[F.LABEL_KEY].numpy())
        output = next(iter(signature(**{input_name: records}).values()))
        scores.append(output.numpy().reshape(-1))
    labels_all = np.concatenate(labels)
    value = auc(labels_all, np.concatenate(scores))
    if value is None:
        return None, None
    positives = int(labels_all.astype(bool).sum())
    return round(value, 4), round(auc_stderr(value, positives, len(labels_all) - positives), 4)


def overlap(eval_files: List[str], train_files: List[str]) -> int:
    """How many eval records also occur in `train_files` (0 = a fair held-out comparison)."""
    import tensorflow as tf

    def records(files):
        return {r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")}

    return len(records(eval_files) & records(train_files))
