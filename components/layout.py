"""Names of the files that components leave inside artifacts for each other, and TF Serving's
model layout (one place for each).

  <training_examples>/window.json      DataGate -> Trainer: window spans and warm-start choice
  <model>/ctpipe_lineage.json          Trainer -> later DataGates: training spans, warm start
  <model>/warm_start/                  Trainer -> later Trainers: weights + preprocessing state
"""
WINDOW_FILE = "window.json"
LINEAGE_FILE = "ctpipe_lineage.json"
WARM_START_DIR = "warm_start"


def version_dirs(base_path: str) -> "dict[int, str]":
    """TF Serving's model layout: every all-digit directory name under the base path is a
    version, parsed as an integer ("00000123" is version 123); other names - e.g. the Pusher's
    hidden .incoming-* copies - are ignored. {version: directory name}."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(base_path):
        return {}
    names = [name.strip("/") for name in tf.io.gfile.listdir(base_path)]
    return {int(name): name for name in sorted(names) if name.isdigit()}


def versions_on_disk(base_path: str) -> "list[int]":
    return sorted(version_dirs(base_path))
