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
import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from ctpipe.components import features as F
from ctpipe.components.layout import LINEAGE_FILE, WARM_START_DIR, WINDOW_FILE
from ctpipe.components.signatures import CLASSIFY_METHOD, WARMUP_FILE

# Modules whose code autograph leaves as written (see _autograph_leaves_alone).
AUTOGRAPH_FREE_MODULES = ("tf_keras", __name__)


def _autograph_leaves_alone() -> None:
    """TF 2.16's autograph knows `keras` as a library not to convert, but not `tf_keras` (Keras 2
    under its new name), so tracing a tf_keras train step re-writes every Keras internal it
    touches: measured here, 11 of the 12 s of a 250-step fit and half of the export were
    autograph transforming tf_keras source. Marking it do-not-convert, as TF does for `keras`,
    changes nothing else (Keras code is written to run in graph mode as it is).

    This module too: its traced code (parsing, the layers, the signatures, the dataset maps)
    has no Python control flow on tensor values, only loops over feature names and a branch
    on a static dtype, so converting it changes nothing but costs ~0.4 s of AST rewriting in
    every Trainer run (measured on the export and the first train step)."""
    from tensorflow.python.autograph.core import config

    for module in AUTOGRAPH_FREE_MODULES:
        if not any(isinstance(r, config.DoNotConvert) and r.matches(module)
                   for r in config.CONVERSION_RULES):
            config.CONVERSION_RULES = (config.DoNotConvert(module),) + tuple(
                config.CONVERSION_RULES)


_autograph_leaves_alone()

PREPROCESSING_FILE = "preprocessing.json"
WEIGHTS_PREFIX = "weights"
Z_CLIP = 5.0

DEFAULT_HPARAMS: Dict[str, Any] = {
    "epochs": 6,
    "warm_start_epochs": 2,
    "min_steps": 200,
    "max_steps": 20_000,
    "batch_size": 64,
    "max_steps_per_epoch": 1000,
    "steps_per_execution": 25,
    "evaluations": 8,
    "min_chunk_steps": 25,
    "patience": 2,
    "eval_batch_size": 512,
    "eval_batches": 20,
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
# Preprocessing state: learned from a profile of the window (counts, means, variances and value
# frequencies per feature), persisted for warm starts.
#
# The profile comes from the TFDV statistics StatisticsGen already computed for each span of the
# window (the gate lists them in window.json), so the Trainer never loads the window into memory
# to learn it; without those statistics (examples that did not come through the gate) it is
# accumulated batch by batch while streaming the files once.


@dataclasses.dataclass
class NumericProfile:
    count: float = 0.0
    mean: float = 0.0
    variance: float = 0.0

    def merge(self, count: float, mean: float, variance: float) -> None:
        """Pooled count/mean/variance of two parts (exact for population variances)."""
        total = self.count + count
        if total <= 0:
            return
        new_mean = (self.count * self.mean + count * mean) / total
        second = (self.count * (self.variance + self.mean ** 2)
                  + count * (variance + mean ** 2)) / total
        self.count, self.mean, self.variance = total, new_mean, max(second - new_mean ** 2, 0.0)


@dataclasses.dataclass
class WindowProfile:
    numeric: Dict[str, NumericProfile] = dataclasses.field(
        default_factory=lambda: {name: NumericProfile() for name in F.NUMERIC_FEATURES})
    categories: Dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: {name: collections.Counter() for name in F.categorical_features()})
    rows: int = 0


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


def add_columns(profile: WindowProfile, columns: Dict[str, np.ndarray]) -> WindowProfile:
    """Fold one batch of dense raw features into the profile."""
    profile.rows += len(next(iter(columns.values())))
    for name in F.NUMERIC_FEATURES:
        values = np.asarray(columns[name], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size:
            profile.numeric[name].merge(values.size, float(values.mean()), float(values.var()))
    for name in F.categorical_features():
        profile.categories[name].update(_category_strings(columns[name]))
    return profile


def profile_from_dataset(dataset: tf.data.Dataset) -> WindowProfile:
    profile = WindowProfile()
    for features, _ in dataset:
        add_columns(profile, {name: tensor.numpy() for name, tensor in features.items()})
    return profile


def profile_from_statistics(statistics_files: Iterable[str]) -> WindowProfile:
    """Merge TFDV FeatureStats.pb files (one per span). Categorical values come from the rank
    histograms (StatisticsGen computes them for string features and for int features the schema
    marks categorical); a missing value counts as the empty category, as in the model."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    profile = WindowProfile()
    for path in statistics_files:
        stats_list = statistics_pb2.DatasetFeatureStatisticsList()
        with tf.io.gfile.GFile(path, "rb") as handle:
            stats_list.ParseFromString(handle.read())
        for dataset in stats_list.datasets:
            profile.rows += int(dataset.num_examples)
            for feature in dataset.features:
                _add_feature_statistics(profile, feature)
    return profile


def _add_feature_statistics(profile: WindowProfile, feature) -> None:
    name = feature.path.step[0] if feature.path.step else feature.name
    if name in profile.numeric and feature.HasField("num_stats"):
        stats = feature.num_stats
        profile.numeric[name].merge(stats.common_stats.num_non_missing, stats.mean,
                                    stats.std_dev ** 2)
    elif name in profile.categories and feature.HasField("string_stats"):
        stats = feature.string_stats
        counts = profile.categories[name]
        for bucket in stats.rank_histogram.buckets:
            counts[bucket.label] += int(bucket.sample_count)
        if stats.common_stats.num_missing:
            counts[F.MISSING_STRING] += int(stats.common_stats.num_missing)


def learn_preprocessing(profile: WindowProfile,
                        base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Means/stds and vocabularies (most frequent first) from the window's profile.

    With a `base` (warm start) the base's constants are kept and its vocabularies are extended
    with new values in free slots, so every old weight keeps its meaning.
    """
    state: Dict[str, Any] = {"numeric": {}, "vocabulary": {}}
    for name in F.NUMERIC_FEATURES:
        if base:
            state["numeric"][name] = base["numeric"][name]
            continue
        numeric = profile.numeric[name]
        std = float(np.sqrt(numeric.variance)) if numeric.count else 1.0
        state["numeric"][name] = {"mean": float(numeric.mean) if numeric.count else 0.0,
                                  "std": std if std > 1e-6 else 1.0}
    for name, capacity in F.categorical_features().items():
        vocabulary = list(base["vocabulary"][name]) if base else []
        known = set(vocabulary)
        ranked = sorted(profile.categories[name].items(), key=lambda item: (-item[1], item[0]))
        for value, _ in ranked:
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
        return standardized(values, self.mean, self.std)


def standardized(values: tf.Tensor, mean, std) -> tf.Tensor:
    """[..., 2]: (values - mean) / std clipped to +-Z_CLIP (0 where NaN) and the 0/1 missing
    flag; `mean`/`std` broadcast over the last axis (one feature's scalars, or one per column
    of a [batch, features] tensor in serving_forward)."""
    missing = tf.math.is_nan(values)
    z = tf.clip_by_value((values - mean) / std, -Z_CLIP, Z_CLIP)
    z = tf.where(missing, tf.zeros_like(z), z)
    return tf.stack([z, tf.cast(missing, tf.float32)], axis=-1)


class CategoryIndex(tf_keras.layers.Layer):
    """Raw category (int code or string) -> index; 0 is out-of-vocabulary."""

    def __init__(self, vocabulary: List[str], **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf_keras.layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1)

    def call(self, values):
        return self.lookup(values if values.dtype == tf.string else code_text(values))


def code_text(codes: tf.Tensor) -> tf.Tensor:
    """Integer category codes as the strings the vocabularies hold; MISSING_INT -> ""."""
    return tf.where(codes == F.MISSING_INT, tf.constant(F.MISSING_STRING),
                    tf.strings.as_string(codes))


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
# Data: the whole window, parsed once into memory when small, else streamed from its files,
# interleaved across spans and shuffled.

# Up to this much compressed input a window is parsed once and kept in memory as dense columns
# (_in_memory_training_dataset); larger windows stream from disk every epoch so memory stays
# bounded whatever the window holds.
IN_MEMORY_MAX_BYTES = 64 * 1024 * 1024
SHUFFLE_BUFFER = 50_000


def _files(patterns: Iterable[str]) -> List[str]:
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"no training files match {list(patterns)}")
    return files


def _total_bytes(files: List[str]) -> int:
    return sum(tf.io.gfile.stat(path).length for path in files)


def make_dataset(patterns: Iterable[str], batch_size: int, shuffle: bool,
                 seed: int = 7) -> tf.data.Dataset:
    """Batches of (dense raw features, label).

    Training on a window up to IN_MEMORY_MAX_BYTES: _in_memory_training_dataset. A larger
    window streams: every file of the window is read at once (one reader per span file,
    records taken in turn), so each batch mixes spans instead of walking them one after
    another, then shuffled within a buffer and repeated. Parsing is vectorised per batch."""
    files = _files(patterns)
    if shuffle and _total_bytes(files) <= IN_MEMORY_MAX_BYTES:
        return _in_memory_training_dataset(files, batch_size, seed)
    if shuffle:
        dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
        dataset = dataset.interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
            cycle_length=len(files), block_length=1, deterministic=True)
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed,
                                  reshuffle_each_iteration=True).repeat()
    else:
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    dataset = dataset.batch(batch_size)
    return dataset.map(lambda s: (dense_features_from_examples(s), _label_from_examples(s)),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


PARSE_BATCH = 4096


def _in_memory_training_dataset(files: List[str], batch_size: int, seed: int) -> tf.data.Dataset:
    """A window that fits in memory is parsed once, in batches of PARSE_BATCH, into dense
    columns; each epoch is then a fresh permutation of all its rows, batches gathered from the
    columns. Streaming re-parsed every record every epoch (~60% of a 100x warm start's fit) and
    shuffled within a buffer; this shuffles the whole window, so every batch mixes spans."""
    parsed = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(PARSE_BATCH).map(
        lambda s: (dense_features_from_examples(s), _label_from_examples(s)),
        num_parallel_calls=tf.data.AUTOTUNE)
    columns: Dict[str, List[np.ndarray]] = collections.defaultdict(list)
    labels: List[np.ndarray] = []
    for features, label in parsed:
        for name, values in features.items():
            columns[name].append(values.numpy())
        labels.append(label.numpy())
    if not labels:
        raise ValueError(f"no training rows in {files}")
    features = {name: tf.constant(np.concatenate(parts)) for name, parts in columns.items()}
    label = tf.constant(np.concatenate(labels))
    rows = int(label.shape[0])
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    return order.repeat().batch(batch_size).map(
        lambda index: ({name: tf.gather(values, index) for name, values in features.items()},
                       tf.gather(label, index)),
        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _sample_serialized_examples(patterns: Iterable[str], count: int) -> List[bytes]:
    dataset = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP").take(count)
    return [record.numpy() for record in dataset]


# ---------------------------------------------------------------------------------------------
# Export.


def _serving_state(model: tf_keras.Model) -> tf.Module:
    """What the export saves besides its signatures: exactly the state they read - the model's
    weights and its vocabulary lookup tables - not the Keras model. Saving the model made
    tf.saved_model.save walk every Keras layer's SavedModel attributes and write the optimizer's
    slots (half the files); nothing revives our exports as Keras (they are served by
    signature, warm starts read the weights saved beside them). Without it (and with the
    signatures traced as written) the export takes 0.66 s instead of 1.26 s, and each load
    (the server, the gate, the Evaluator) 0.28 s instead of 0.42 s (1x sample model). A
    resource a signature reads and this misses fails the save loudly ("untracked resource")."""
    state = tf.Module()
    state.weights = list(model.weights)
    state.tables = [layer.lookup_table for layer in model.submodules
                    if hasattr(layer, "lookup_table")]
    return state


def serving_forward(model: tf_keras.Model):
    """build_model's computation over the same layers and weights, with the per-feature
    preprocessing done once for all features of a kind: what the exported signatures trace.

    Why: a served call costs about 3 us per graph op whatever the batch (measured: a 150-op
    elementwise chain on [32, 64] takes 450 us), and build_model spells the preprocessing
    feature by feature - 9 ops for each of the 7 numeric features, 3 for each of the 6 integer
    codes. Here the numeric features are standardised as one [batch, 7] tensor and the integer
    codes become strings as one [batch, 6] tensor: the same element-wise ops on the same
    float32 constants, so the outputs are the model's bit for bit when both run op by op, and
    within float32 rounding once traced (grappler rewrites each graph its own way, as it does the
    model traced alone; tests/test_trainer_forward.py), with 100 of serving_raw's 172 graph
    nodes gone. Training keeps build_model (its layers are what warm starts load); nothing
    here owns a weight."""
    numeric = list(F.NUMERIC_FEATURES)
    integer_codes = list(F.CATEGORICAL_INT_FEATURES)
    standardize = [model.get_layer(f"standardize_{name}") for name in numeric]
    means = tf.constant([layer.mean for layer in standardize], tf.float32)
    stds = tf.constant([layer.std for layer in standardize], tf.float32)
    categories = [(name, model.get_layer(f"index_{name}").lookup,
                   model.get_layer(f"embed_{name}")) for name in F.categorical_features()]
    dense_layers = [layer for layer in model.layers
                    if isinstance(layer, tf_keras.layers.Dense)]

    def forward(features: Dict[str, tf.Tensor]) -> tf.Tensor:
        values = tf.stack([features[name] for name in numeric], axis=1)
        # [z, missing] per feature, feature after feature: Standardize's columns, concatenated
        encoded = [tf.reshape(standardized(values, means, stds), [-1, 2 * len(numeric)])]
        as_text = code_text(tf.stack([features[name] for name in integer_codes], axis=1))
        text = dict(zip(integer_codes, tf.unstack(as_text, num=len(integer_codes), axis=1)))
        for name, lookup, embed in categories:
            encoded.append(embed(lookup(text[name] if name in text else features[name])))
        hidden = tf.concat(encoded, axis=1)
        for layer in dense_layers:
            hidden = layer(hidden)
        return hidden
    return forward


def serving_signatures(model: tf_keras.Model) -> Dict[str, Any]:
    """The three exported signatures (see the module docstring) as concrete functions, over
    serving_forward (the model's outputs with fewer ops)."""
    forward = serving_forward(model)

    def serve_examples(examples):
        return {"probabilities": forward(dense_features_from_examples(examples))}

    def serve_raw(features):
        return {"probabilities": forward(features)}

    def classify_examples(inputs):
        probability = forward(dense_features_from_examples(inputs))
        scores = tf.concat([1.0 - probability, probability], axis=1)
        classes = tf.tile(tf.constant([["0", "1"]]), tf.stack([tf.shape(inputs)[0], 1]))
        return {"classes": classes, "scores": scores}

    def concrete(function, signature):
        return tf.function(function, input_signature=[signature],
                           autograph=False).get_concrete_function()

    return {"serving_default": concrete(serve_examples,
                                        tf.TensorSpec([None], tf.string, name="examples")),
            "serving_raw": concrete(serve_raw, raw_feature_signature()),
            "classification": concrete(classify_examples,
                                       tf.TensorSpec([None], tf.string, name="inputs"))}


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
    """Real requests TF Serving replays before it serves a new version (no slow first request),
    for each signature: serving_default (serialized tf.Examples), serving_raw (the same rows as
    raw feature tensors) and classification (a Classify on the same tf.Examples); one row,
    then the whole sample."""
    from tensorflow_serving.apis import (
        classification_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for batch in (serialized_examples[:1], serialized_examples):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())

            raw = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name="serving_raw"))
            dense = dense_features_from_examples(tf.constant(batch, dtype=tf.string))
            for name, spec in raw_feature_signature().items():
                raw.inputs[name].CopyFrom(tf.make_tensor_proto(dense[name].numpy(), spec.dtype))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=raw)).SerializeToString())

            if batch:  # Classify refuses an empty input (and so would the load)
                classify = classification_pb2.ClassificationRequest(
                    model_spec=model_pb2.ModelSpec(signature_name="classification"))
                classify.input.example_list.examples.extend(
                    tf.train.Example.FromString(s) for s in batch)
                writer.write(prediction_log_pb2.PredictionLog(
                    classify_log=prediction_log_pb2.ClassifyLog(request=classify))
                    .SerializeToString())


def export_serving_model(model: tf_keras.Model, export_dir: str,
                         warmup_examples: List[bytes]) -> None:
    """The SavedModel TF Serving, the gate and the Evaluator load: signatures (traced as
    written: autograph has nothing to convert in them) over the model's state only."""
    tf.saved_model.save(_serving_state(model), export_dir, signatures=serving_signatures(model))
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
                  warm_start_uri: Optional[str],
                  training: Optional[Dict[str, Any]] = None) -> None:
    """What trained this model, for later gates (warm-start guard) and `ctpipe lineage`."""
    with tf.io.gfile.GFile(os.path.join(model_uri, LINEAGE_FILE), "w") as handle:
        json.dump({"training_spans": (window or {}).get("spans", []),
                   "warm_start_uri": warm_start_uri,
                   "warm_start": (window or {}).get("warm_start"),
                   "training": training or {},
                   # The DataGate's fresh-span scores (components/fresh_labels.py).
                   "fresh_labels": (window or {}).get("fresh_labels")}, handle)


# ---------------------------------------------------------------------------------------------


def training_steps(rows: int, hparams: Dict[str, Any], warm_start: bool = False) -> int:
    """The step budget: epochs over the whole window, so it grows with the data. A warm start
    begins from a model that already fits the older spans and gets fewer epochs; small windows
    still get `min_steps`, and `max_steps` is only a safety cap - early stopping on the eval
    loss usually ends training well before the budget."""
    epochs = hparams["warm_start_epochs" if warm_start else "epochs"]
    wanted = -(-rows * epochs // training_batch_size(rows, hparams))
    return int(min(hparams["max_steps"], max(hparams["min_steps"], wanted)))


def training_batch_size(rows: int, hparams: Dict[str, Any]) -> int:
    """`batch_size`, grown for large windows so that an epoch takes at most
    `max_steps_per_epoch` steps: an epoch still sees every row, in fewer, larger steps. A step
    costs ~1.5 ms here whatever its size up to a few hundred rows, so at 100x the sample
    (159k rows) batches of 64 spent 5 of the Trainer's 10 s on step overhead. The sample's
    windows (up to ~13k rows) keep batches of 64."""
    cap = hparams.get("max_steps_per_epoch")
    if not cap:
        return hparams["batch_size"]
    return max(hparams["batch_size"], -(-rows // cap))


def _hparams(custom_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    hparams = dict(DEFAULT_HPARAMS)
    hparams.update((custom_config or {}).get("hparams", {}))
    return hparams


def window_profile(fn_args, window: Optional[Dict[str, Any]]) -> WindowProfile:
    """From the window's TFDV statistics when the gate listed them, else by streaming once."""
    files = [os.path.join(uri, "Split-train", "FeatureStats.pb")
             for uri in (window or {}).get("statistics_uris", [])]
    if files and all(tf.io.gfile.exists(path) for path in files):
        return profile_from_statistics(files)
    return profile_from_dataset(make_dataset(fn_args.train_files, 4096, shuffle=False))


def fit(model: tf_keras.Model, train: tf.data.Dataset, validation: tf.data.Dataset,
        steps: int, hparams: Dict[str, Any], warm_start: bool = False) -> Dict[str, Any]:
    """Train for at most `steps`, checking the eval loss `evaluations` times and stopping (with
    the best weights) once it stops improving. Several steps run inside one traced function
    (steps_per_execution), so Python and dispatch costs are paid once per chunk, not per step.

    A warm start begins from a model that already works: if no checkpoint beats its eval loss,
    its weights are kept rather than handing back a model that training made worse."""
    chunks = max(1, min(hparams["evaluations"], steps // max(1, hparams["min_chunk_steps"])))
    per_chunk = -(-steps // chunks)
    validation_steps = sum(1 for _ in validation)  # a few cached batches
    start_loss, start_weights = None, None
    if warm_start:
        start_loss = float(model.evaluate(validation, steps=validation_steps, verbose=0,
                                          return_dict=True)["loss"])
        start_weights = model.get_weights()
    stop = tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=hparams["patience"],
                                            min_delta=1e-4, restore_best_weights=True)
    history = model.fit(train, epochs=chunks, steps_per_epoch=per_chunk,
                        validation_data=validation, validation_steps=validation_steps,
                        callbacks=[stop], verbose=0)
    losses = history.history.get("val_loss", [])
    best = min(losses) if losses else None
    kept_start = start_loss is not None and best is not None and best > start_loss
    if kept_start:
        model.set_weights(start_weights)
    rounded = lambda value: None if value is None else round(float(value), 4)  # noqa: E731
    return {"steps_budget": steps, "steps_run": len(losses) * per_chunk,
            "evaluations": len(losses), "stopped_early": len(losses) < chunks,
            "start_val_loss": rounded(start_loss), "best_val_loss": rounded(best),
            "kept_warm_start_weights": kept_start}


def compile_for_training(model: tf_keras.Model, learning_rate: float,
                         hparams: Dict[str, Any]) -> None:
    """The train step computes the loss and nothing else: early stopping and the warm-start
    check read the eval loss, and the model's AUC is the Evaluator's to measure. A training AUC
    metric (200 thresholds updated every step) was read by no one and cost ~0.3 s of a 100x
    warm start's 4.8 s fit, most of it in tracing the step.

    The optimizer's variables are made here, before any step: a tf.function whose first call
    creates variables (Adam's moments, made at the first step otherwise) is traced a second
    time once they exist, so every cold start traced its train step twice more."""
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss="binary_crossentropy",
                  steps_per_execution=hparams["steps_per_execution"])
    model.optimizer.build(model.trainable_variables)
    trace_each_step_once(model)


# What a loss-only compile's train and test steps return (compile_for_training).
LOSS_ONLY_LOGS = ("loss",)


def _steps_in_one_trace(model: tf_keras.Model, step, counter: tf.Variable):
    """A tf.function running `step` model._steps_per_execution times (the variable Keras's data
    handler lowers for an epoch's last, shorter chunk), counting each step in `counter` as
    Keras does, in a while loop whose body is traced once."""
    steps = model._steps_per_execution

    def run(iterator):
        def one_step(done, _):
            logs = step(next(iterator))
            with tf.control_dependencies(tf.nest.flatten(logs)):
                counter.assign_add(1)
            return done + 1, logs

        start = (tf.constant(0, steps.dtype), {name: tf.constant(0.0) for name in LOSS_ONLY_LOGS})
        _, logs = tf.while_loop(lambda done, _: done < steps, one_step, start)
        return logs

    return tf.function(run, autograph=False, reduce_retracing=True)


def trace_each_step_once(model: tf_keras.Model) -> None:
    """tf_keras runs steps_per_execution steps in `for _ in tf.range(n): outputs = step(...)`;
    `outputs` is undefined before the loop, so autograph first traces the whole step on its
    own to learn what the loop carries, then again as the loop body: every fit and every
    evaluate traced its step twice (0.8 s of a 100x warm start's 7.8 s Trainer, measured on
    the first fit). The same loop, written with what a loss-only step returns, traces once;
    its results are Keras's to the bit (tests/test_trainer.py).

    Only for what compile_for_training builds: a loss and no metrics, one device (the default
    strategy), graph mode, no XLA, a fixed steps_per_execution above 1; anything else keeps
    Keras's functions. Like Keras's (tf_keras and this module are autograph-free), the loop
    runs the step's Python as written: a layer with Python control flow on tensor values would
    need autograph."""
    spe = getattr(model, "_steps_per_execution", None)
    metrics = getattr(model, "compiled_metrics", None)
    if spe is None or int(spe.numpy()) <= 1 or model.jit_compile or model.run_eagerly or \
            model.autotune_steps_per_execution or tf.distribute.has_strategy() or \
            getattr(model, "_distribution_strategy", None) is not None or \
            metrics is None or getattr(metrics, "_user_metrics", None) or \
            getattr(metrics, "_user_weighted_metrics", None):
        return
    # looked up when traced, as Keras does
    model.train_function = _steps_in_one_trace(model, lambda data: model.train_step(data),
                                               model._train_counter)
    model.test_function = _steps_in_one_trace(model, lambda data: model.test_step(data),
                                              model._test_counter)


def model_for_training(state: Dict[str, Any], hparams: Dict[str, Any],
                       base_weights: Optional[str]) -> tf_keras.Model:
    """The model, compiled; from a warm start's weights (and optimizer) when there is one.

    A warm start's checkpoint holds the optimizer it was trained with, and compile() restores
    it into the new one: Adam's moments and step count, which let training go on where it left
    off, but also its learning rate - so every warm start trained at the first cold start's
    rate, whatever `warm_start_learning_rate` said. compile_for_training builds the optimizer
    at once, which restores its moments (otherwise restored at the first step); its rate is
    then set to the configured one."""
    model = build_model(state, hparams)
    if not base_weights:
        compile_for_training(model, hparams["learning_rate"], hparams)
        return model
    model.load_weights(base_weights).expect_partial()
    compile_for_training(model, hparams["warm_start_learning_rate"], hparams)
    model.optimizer.learning_rate = hparams["warm_start_learning_rate"]
    return model


# TFX calls this.
def run_fn(fn_args) -> None:
    hparams = _hparams(fn_args.custom_config)
    tf_keras.utils.set_random_seed(hparams["seed"])
    window = read_window(fn_args.train_files)
    base_uri = warm_start_source(fn_args, window, hparams)
    base_state, base_weights = None, None
    if base_uri:
        base_state, base_weights = load_warm_start(base_uri)
        logging.info("warm start from %s", base_uri)
    profile = window_profile(fn_args, window)
    state = learn_preprocessing(profile, base_state)
    model = model_for_training(state, hparams, base_weights)
    steps = training_steps(profile.rows, hparams, warm_start=bool(base_weights))
    batch_size = training_batch_size(profile.rows, hparams)
    train = make_dataset(fn_args.train_files, batch_size, shuffle=True, seed=hparams["seed"])
    validation = make_dataset(fn_args.eval_files, hparams["eval_batch_size"], shuffle=False)
    validation = validation.take(hparams["eval_batches"]).cache()
    summary = fit(model, train, validation, steps, hparams, warm_start=bool(base_weights))
    summary["batch_size"] = batch_size
    logging.info("trained on %d rows (warm start: %s): %s", profile.rows, bool(base_weights),
                 summary)

    export_serving_model(model, fn_args.serving_model_dir,
                         _sample_serialized_examples(fn_args.eval_files, 8))
    model_uri = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))
    save_warm_start(model, state, os.path.join(model_uri, WARM_START_DIR))
    write_lineage(model_uri, window, base_uri, summary)
