"""Names of the files that components leave inside artifacts for each other, and TF Serving's
model layout (one place for each).

  <training_examples>/window.json      DataGate -> Trainer: window spans and warm-start choice
  <model>/ctpipe_lineage.json          Trainer -> later DataGates: training spans, warm start
  <model>/warm_start/                  Trainer -> later Trainers: weights + preprocessing state
"""
WINDOW_FILE = "window.json"
LINEAGE_FILE = "ctpipe_lineage.json"
WARM_START_DIR = "warm_start"


def versions_on_disk(base_path: str) -> "list[int]":
    """TF Serving's model layout: every all-digit directory name under the base path is a
    version (other names - e.g. the Pusher's hidden .incoming-* copies - are ignored)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(base_path):
        return []
    return sorted(int(name.strip("/")) for name in tf.io.gfile.listdir(base_path)
                  if name.strip("/").isdigit())
