"""Trainer module code: a tf_keras model on the raw taxi features, with preprocessing in the graph.

Why preprocessing lives inside the model: TF Serving and the Evaluator then need nothing but the
SavedModel - no Transform graph to keep in step. Normalisation constants and vocabularies are
learned from the training window (not hard-coded) and stored next to the model, so a warm start
reuses them: weights keep their meaning and shapes (vocabulary capacities are fixed per feature in
components/features.py; new values take free slots, old ones keep theirs).

Exports three signatures:
  serving_default  serialized tf.Example ("examples")  -> {"probabilities": [batch, 1]}
  serving_raw      one tensor per raw feature           -> {"probabilities": [batch, 1]}
                   (missing: NaN for numeric, -1 for integer codes, "" for strings)
  classification   serialized tf.Example ("inputs")    -> {"classes", "scores"} [batch, 2],
                   method tensorflow/serving/classify, for TF Serving's Classify API
and a TF Serving warmup file (assets.extra/tf_serving_warmup_requests).
"""
from __future__ import annotations

import collections
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from ctpipe.components import features as F
from ctpipe.components.layout import LINEAGE_FILE, WARM_START_DIR, WINDOW_FILE

PREPROCESSING_FILE = "preprocessing.json"
WEIGHTS_PREFIX = "weights"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CLASSIFY_METHOD = "tensorflow/serving/classify"
Z_CLIP = 5.0

DEFAULT_HPARAMS: Dict[str, Any] = {
    "epochs": 6,
    "min_steps": 250,
    "max_steps": 500,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "warm_start_learning_rate": 1e-3,
    "hidden_units": [64, 32],
    "warm_start": True,
    "seed": 7,
}


# ---------------------------------------------------------------------------------------------
# Parsing: serialized tf.Example -> dense raw features (the one path shared by training, the
# Evaluator's signature and TF Serving).


def _example_parse_spec() -> Dict[str, tf.io.VarLenFeature]:
    spec = {name: tf.io.VarLenFeature(tf.dtypes.as_dtype(dtype))
            for name, dtype in F.NUMERIC_FEATURES.items()}
    spec.update({name: tf.io.VarLenFeature(tf.int64) for name in F.CATEGORICAL_INT_FEATURES})
    spec.update({name: tf.io.VarLenFeature(tf.string) for name in F.CATEGORICAL_STRING_FEATURES})
    return spec


def _first_value_or(sparse: tf.sparse.SparseTensor, default, batch: tf.Tensor) -> tf.Tensor:
    """First value of each row, or `default` where the row is empty (a missing CSV cell)."""
    dense = tf.sparse.to_dense(sparse, default_value=default)
    padding = tf.fill(tf.stack([batch, 1]), tf.constant(default, dtype=dense.dtype))
    return tf.concat([dense, padding], axis=1)[:, 0]


def dense_features_from_examples(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Parse serialized tf.Examples into the dense raw-feature dict the model takes."""
    parsed = tf.io.parse_example(serialized, _example_parse_spec())
    batch = tf.shape(serialized)[0]
    dense: Dict[str, tf.Tensor] = {}
    for name in F.NUMERIC_FEATURES:
        as_float = tf.sparse.SparseTensor(parsed[name].indices,
                                          tf.cast(parsed[name].values, tf.float32),
                                          parsed[name].dense_shape)
        dense[name] = _first_value_or(as_float, F.MISSING_FLOAT, batch)
    for name in F.CATEGORICAL_INT_FEATURES:
        dense[name] = _first_value_or(parsed[name], np.int64(F.MISSING_INT), batch)
    for name in F.CATEGORICAL_STRING_FEATURES:
        dense[name] = _first_value_or(parsed[name], F.MISSING_STRING, batch)
    return dense


def raw_feature_signature() -> Dict[str, tf.TensorSpec]:
    specs = {name: tf.TensorSpec([None], tf.float32, name=name) for name in F.NUMERIC_FEATURES}
    specs.update({name: tf.TensorSpec([None], tf.int64, name=name)
                  for name in F.CATEGORICAL_INT_FEATURES})
    specs.update({name: tf.TensorSpec([None], tf.string, name=name)
                  for name in F.CATEGORICAL_STRING_FEATURES})
    return specs


def _label_from_examples(serialized: tf.Tensor) -> tf.Tensor:
    parsed = tf.io.parse_example(serialized, {F.LABEL_KEY: tf.io.VarLenFeature(tf.int64)})
    return tf.cast(_first_value_or(parsed[F.LABEL_KEY], np.int64(0), tf.shape(serialized)[0]),
                   tf.float32)


# ---------------------------------------------------------------------------------------------
# Preprocessing state: learned from data, persisted for warm starts.


def _category_strings(values: np.ndarray) -> List[str]:
    out = []
    for value in values:
        if isinstance(value, bytes):
            out.append(value.decode("utf-8", "replace"))
        elif int(value) == F.MISSING_INT:
            out.append(F.MISSING_STRING)
        else:
            out.append(str(int(value)))
    return out


def _column_arrays(dataset: tf.data.Dataset) -> Dict[str, np.ndarray]:
    columns: Dict[str, List[np.ndarray]] = collections.defaultdict(list)
    for features, _ in dataset:
        for name, tensor in features.items():
            columns[name].append(tensor.numpy())
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def learn_preprocessing(columns: Dict[str, np.ndarray],
                        base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Means/stds and vocabularies from the training window.

    With a `base` (warm start) the base's constants are kept and its vocabularies are extended
    with new values in free slots, so every old weight keeps its meaning.
    """
    state: Dict[str, Any] = {"numeric": {}, "vocabulary": {}}
    for name in F.NUMERIC_FEATURES:
        if base:
            state["numeric"][name] = base["numeric"][name]
            continue
        values = columns[name][~np.isnan(columns[name])]
        mean = float(values.mean()) if values.size else 0.0
        std = float(values.std()) if values.size else 1.0
        state["numeric"][name] = {"mean": mean, "std": std if std > 1e-6 else 1.0}
    for name, capacity in F.categorical_features().items():
        counts = collections.Counter(_category_strings(columns[name]))
        vocabulary = list(base["vocabulary"][name]) if base else []
        known = set(vocabulary)
        for value, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            if len(vocabulary) >= capacity:
                break
            if value not in known:
                vocabulary.append(value)
                known.add(value)
        state["vocabulary"][name] = vocabulary or [F.MISSING_STRING]
    return state


# ---------------------------------------------------------------------------------------------
# The model.


class Standardize(tf_keras.layers.Layer):
    """(x - mean) / std clipped to +-5, with a 0/1 'missing' column for NaN inputs."""

    def __init__(self, mean: float, std: float, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = mean, std

    def call(self, values):
        missing = tf.math.is_nan(values)
        z = tf.clip_by_value((values - self.mean) / self.std, -Z_CLIP, Z_CLIP)
        z = tf.where(missing, tf.zeros_like(z), z)
        return tf.stack([z, tf.cast(missing, tf.float32)], axis=1)


class CategoryIndex(tf_keras.layers.Layer):
    """Raw category (int code or string) -> index; 0 is out-of-vocabulary."""

    def __init__(self, vocabulary: List[str], **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf_keras.layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1)

    def call(self, values):
        if values.dtype != tf.string:
            values = tf.where(values == F.MISSING_INT, tf.constant(F.MISSING_STRING),
                              tf.strings.as_string(values))
        return self.lookup(values)


def build_model(state: Dict[str, Any], hparams: Dict[str, Any]) -> tf_keras.Model:
    inputs = {name: tf_keras.Input(shape=(), dtype=spec.dtype, name=name)
              for name, spec in raw_feature_signature().items()}
    encoded = []
    for name in F.NUMERIC_FEATURES:
        constants = state["numeric"][name]
        encoded.append(Standardize(constants["mean"], constants["std"],
                                   name=f"standardize_{name}")(inputs[name]))
    for name, capacity in F.categorical_features().items():
        index = CategoryIndex(state["vocabulary"][name], name=f"index_{name}")(inputs[name])
        embedding = tf_keras.layers.Embedding(capacity + 1, 4 if capacity <= 32 else 8,
                                              name=f"embed_{name}")(index)
        encoded.append(embedding)
    hidden = tf_keras.layers.Concatenate()(encoded)
    for units in hparams["hidden_units"]:
        hidden = tf_keras.layers.Dense(units, activation="relu")(hidden)
    output = tf_keras.layers.Dense(1, activation="sigmoid", name="probability")(hidden)
    return tf_keras.Model(inputs=inputs, outputs=output)


# ---------------------------------------------------------------------------------------------
# Data.


def _files(patterns: Iterable[str]) -> List[str]:
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"no training files match {list(patterns)}")
    return files


def make_dataset(patterns: Iterable[str], batch_size: int, shuffle: bool,
                 seed: int = 7) -> tf.data.Dataset:
    dataset = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP")
    if shuffle:
        dataset = dataset.shuffle(20_000, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size)
    return dataset.map(lambda s: (dense_features_from_examples(s), _label_from_examples(s)),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _sample_serialized_examples(patterns: Iterable[str], count: int) -> List[bytes]:
    dataset = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP").take(count)
    return [record.numpy() for record in dataset]


# ---------------------------------------------------------------------------------------------
# Export.


class _ServingModule(tf.Module):
    def __init__(self, model: tf_keras.Model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return {"probabilities": self.model(dense_features_from_examples(examples))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_examples(self, inputs):
        probability = self.model(dense_features_from_examples(inputs))
        scores = tf.concat([1.0 - probability, probability], axis=1)
        classes = tf.tile(tf.constant([["0", "1"]]), tf.stack([tf.shape(inputs)[0], 1]))
        return {"classes": classes, "scores": scores}


def set_signature_method(export_dir: str, signature: str, method: str) -> None:
    """tf.saved_model.save writes every signature as 'predict'; TF Serving's Classify/Regress need
    method_name tensorflow/serving/classify|regress, so the saved_model.pb is edited in place."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[signature].method_name = method
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(saved_model.SerializeToString())


def write_warmup_requests(export_dir: str, serialized_examples: List[bytes]) -> None:
    """A few real requests TF Serving replays before it serves a new version (no cold spike)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for batch in (serialized_examples[:1], serialized_examples):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_serving_model(model: tf_keras.Model, export_dir: str,
                         warmup_examples: List[bytes]) -> None:
    module = _ServingModule(model)
    raw_signature = tf.function(lambda features: {"probabilities": model(features)},
                                input_signature=[raw_feature_signature()])
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve_examples.get_concrete_function(),
        "serving_raw": raw_signature.get_concrete_function(),
        "classification": module.classify_examples.get_concrete_function(),
    })
    set_signature_method(export_dir, "classification", CLASSIFY_METHOD)
    write_warmup_requests(export_dir, warmup_examples)


def save_warm_start(model: tf_keras.Model, state: Dict[str, Any], directory: str) -> None:
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, PREPROCESSING_FILE), "w") as handle:
        json.dump(state, handle)
    model.save_weights(os.path.join(directory, WEIGHTS_PREFIX))


def load_warm_start(model_uri: str) -> Tuple[Dict[str, Any], str]:
    """Preprocessing state and weights prefix saved beside a Model artifact's Format-Serving."""
    directory = os.path.join(model_uri, WARM_START_DIR)
    with tf.io.gfile.GFile(os.path.join(directory, PREPROCESSING_FILE)) as handle:
        return json.load(handle), os.path.join(directory, WEIGHTS_PREFIX)


def read_window(train_files: Iterable[str]) -> Optional[Dict[str, Any]]:
    """The data gate's window.json (spans, warm-start choice) at the root of the training
    examples artifact; None for examples that did not come through the gate."""
    for pattern in train_files:
        path = os.path.join(os.path.dirname(os.path.dirname(pattern)), WINDOW_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as handle:
                return json.load(handle)
    return None


def warm_start_source(fn_args, window: Optional[Dict[str, Any]],
                      hparams: Dict[str, Any]) -> Optional[str]:
    """The Model artifact to warm-start from: the gate's choice (it skips models trained on
    quarantined spans), else TFX's base_model, else none."""
    if not hparams["warm_start"]:
        return None
    if window is not None:
        return window["warm_start"]["uri"]
    base_model = getattr(fn_args, "base_model", None)
    return os.path.dirname(base_model.rstrip("/")) if base_model else None


def write_lineage(model_uri: str, window: Optional[Dict[str, Any]],
                  warm_start_uri: Optional[str]) -> None:
    """What trained this model, for later gates (warm-start guard) and `ctpipe lineage`."""
    with tf.io.gfile.GFile(os.path.join(model_uri, LINEAGE_FILE), "w") as handle:
        json.dump({"training_spans": (window or {}).get("spans", []),
                   "warm_start_uri": warm_start_uri,
                   "warm_start": (window or {}).get("warm_start")}, handle)


# ---------------------------------------------------------------------------------------------


def training_steps(rows: int, hparams: Dict[str, Any]) -> int:
    """Epochs over the window, bounded: small windows still get enough steps to learn, and a
    large window cannot blow the cycle's time budget (fewer steps also overfit less here)."""
    wanted = -(-rows * hparams["epochs"] // hparams["batch_size"])
    return int(min(hparams["max_steps"], max(hparams["min_steps"], wanted)))


def _hparams(custom_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    hparams = dict(DEFAULT_HPARAMS)
    hparams.update((custom_config or {}).get("hparams", {}))
    return hparams


# TFX calls this.
def run_fn(fn_args) -> None:
    hparams = _hparams(fn_args.custom_config)
    tf_keras.utils.set_random_seed(hparams["seed"])
    train = make_dataset(fn_args.train_files, hparams["batch_size"], shuffle=True,
                         seed=hparams["seed"])
    evaluation = make_dataset(fn_args.eval_files, hparams["batch_size"], shuffle=False)
    columns = _column_arrays(make_dataset(fn_args.train_files, 4096, shuffle=False))

    window = read_window(fn_args.train_files)
    base_uri = warm_start_source(fn_args, window, hparams)
    base_state, base_weights = None, None
    if base_uri:
        base_state, base_weights = load_warm_start(base_uri)
        logging.info("warm start from %s", base_uri)
    state = learn_preprocessing(columns, base_state)
    model = build_model(state, hparams)
    if base_weights:
        model.load_weights(base_weights).expect_partial()
    learning_rate = hparams["warm_start_learning_rate" if base_weights else "learning_rate"]
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss="binary_crossentropy",
                  metrics=[tf_keras.metrics.AUC(name="auc")])
    rows = len(next(iter(columns.values())))
    steps = training_steps(rows, hparams)
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    logging.info("trained on %d rows, %d steps of %d (warm start: %s); eval: %s", rows, steps,
                 hparams["batch_size"], bool(base_weights),
                 model.evaluate(evaluation, verbose=0, return_dict=True))

    export_serving_model(model, fn_args.serving_model_dir,
                         _sample_serialized_examples(fn_args.eval_files, 8))
    model_uri = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))
    save_warm_start(model, state, os.path.join(model_uri, WARM_START_DIR))
    write_lineage(model_uri, window, base_uri)
