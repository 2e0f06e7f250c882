"""Names of the files that components leave inside artifacts for each other (one place).

  <training_examples>/window.json      DataGate -> Trainer: window spans and warm-start choice
  <model>/ctpipe_lineage.json          Trainer -> later DataGates: training spans, warm start
  <model>/warm_start/                  Trainer -> later Trainers: weights + preprocessing state
"""
WINDOW_FILE = "window.json"
LINEAGE_FILE = "ctpipe_lineage.json"
WARM_START_DIR = "warm_start"
