"""The SavedModel names TF Serving reads, shared by the model's writer (components/trainer.py)
and the server (serving/servables.py): signature keys, method names, the input/output aliases
of its Classify and Regress APIs, and the warmup file.

Values as TensorFlow defines them (tensorflow/python/saved_model/signature_constants.py, and
TF Serving's servables/tensorflow/util.h); kept as plain strings so that importing them costs
no TensorFlow import.
"""
from __future__ import annotations

import os

# Signature keys.
DEFAULT_SIGNATURE = "serving_default"      # what a request with no signature_name gets
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2's init op: listed in metadata, never served

# SignatureDef method names. TF Serving checks them only with
# --enable_signature_method_name_check (default off): a TF2 SavedModel writes every signature as
# PREDICT_METHOD, and still answers Classify and Regress when its inputs and outputs fit.
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# The aliases Classify and Regress look up (signature_constants CLASSIFY_INPUTS, ...).
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"

# Warmup requests TF Serving replays before a version serves (PredictionLog TFRecords), and
# the most records it accepts (servables/tensorflow/saved_model_warmup_util.h kMaxNumRecords).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
