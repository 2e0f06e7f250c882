"""Trainer module of the stock reference pipeline (bench only): written the way the official
TFX penguin example writes one, so the comparison measures what a TFX user gets by default.

It reads through `fn_args.data_accessor` with the SchemaGen schema, learns preprocessing with
Keras' own adapt() over the training data, trains `train_args.num_steps` steps of batch 64 with
`model.fit`, and exports a serving signature that parses tf.Examples. No early stopping, no
caching - and none of ctpipe's fixes (components/trainer.py). Warm start only where the pipeline
wires the Trainer's `base_model` (the expert anchor): the documented way, the previous Keras
model loaded whole (its adapted vocabularies and normalization included) and trained on.
"""
from __future__ import annotations

from typing import Dict, List

import tensorflow as tf
import tf_keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from ctpipe.components import features as F

BATCH_SIZE = 64


def _dense(value: tf.Tensor, default) -> tf.Tensor:
    """A feature with missing values comes as a SparseTensor: its first value or `default`."""
    if isinstance(value, tf.SparseTensor):
        default = tf.constant(default) if isinstance(default, str) else tf.cast(default,
                                                                                 value.dtype)
        value = tf.sparse.to_dense(value, default_value=default)
        padding = tf.fill(tf.stack([tf.shape(value)[0], 1]), default)
        value = tf.concat([value, padding], axis=1)[:, :1]
    return tf.reshape(value, [-1])


def _defaults() -> Dict[str, object]:
    defaults: Dict[str, object] = {name: 0.0 for name in F.NUMERIC_FEATURES}
    defaults.update({name: -1 for name in F.CATEGORICAL_INT_FEATURES})
    defaults.update({name: "" for name in F.CATEGORICAL_STRING_FEATURES})
    return defaults


def _densify(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    defaults = _defaults()
    out = {}
    for name in F.model_feature_names():
        value = _dense(features[name], defaults[name])
        if name in F.NUMERIC_FEATURES:
            value = tf.cast(value, tf.float32)
        out[name] = value
    return out


def _input_fn(files: List[str], data_accessor, schema, batch_size: int) -> tf.data.Dataset:
    dataset = data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=F.LABEL_KEY),
        schema)
    return dataset.map(lambda x, y: (_densify(x), tf.cast(_dense(y, 0), tf.float32))).repeat()


def _build_model(train: tf.data.Dataset) -> tf_keras.Model:
    sample = train.take(50)
    inputs, encoded = {}, []
    for name in F.NUMERIC_FEATURES:
        inputs[name] = tf_keras.Input(shape=(), name=name, dtype=tf.float32)
        norm = tf_keras.layers.Normalization(axis=None)
        norm.adapt(sample.map(lambda x, y, n=name: x[n]))
        encoded.append(tf_keras.layers.Reshape((1,))(norm(inputs[name])))
    for name in F.categorical_features():
        is_string = name in F.CATEGORICAL_STRING_FEATURES
        inputs[name] = tf_keras.Input(shape=(), name=name,
                                      dtype=tf.string if is_string else tf.int64)
        lookup = (tf_keras.layers.StringLookup() if is_string
                  else tf_keras.layers.IntegerLookup())
        lookup.adapt(sample.map(lambda x, y, n=name: x[n]))
        embedded = tf_keras.layers.Embedding(lookup.vocabulary_size(), 8)(lookup(inputs[name]))
        encoded.append(embedded)
    hidden = tf_keras.layers.Concatenate()(encoded)
    for units in (64, 32):
        hidden = tf_keras.layers.Dense(units, activation="relu")(hidden)
    output = tf_keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tf_keras.Model(inputs, output)
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3), loss="binary_crossentropy",
                  metrics=[tf_keras.metrics.AUC(name="auc")])
    return model


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    schema = tfx.utils.parse_pbtxt_file(fn_args.schema_path, _schema_proto())
    train = _input_fn(fn_args.train_files, fn_args.data_accessor, schema, BATCH_SIZE)
    evaluation = _input_fn(fn_args.eval_files, fn_args.data_accessor, schema, BATCH_SIZE)
    model = _warm_start(fn_args.base_model) if fn_args.base_model else _build_model(train)
    model.fit(train, steps_per_epoch=fn_args.train_steps, validation_data=evaluation,
              validation_steps=fn_args.eval_steps, verbose=0)

    feature_spec = _feature_spec(schema)
    feature_spec.pop(F.LABEL_KEY, None)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        parsed = tf.io.parse_example(examples, feature_spec)
        return {"outputs": model(_densify(parsed))}

    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures={"serving_default": serve.get_concrete_function()})


def _warm_start(base_model: str) -> tf_keras.Model:
    """The blessed model as saved by run_fn (SavedModel with Keras metadata), recompiled."""
    model = tf_keras.models.load_model(base_model, compile=False)
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3), loss="binary_crossentropy",
                  metrics=[tf_keras.metrics.AUC(name="auc")])
    return model


def _schema_proto():
    from tensorflow_metadata.proto.v0 import schema_pb2

    return schema_pb2.Schema()


def _feature_spec(schema) -> Dict[str, object]:
    from tensorflow_transform.tf_metadata import schema_utils

    return schema_utils.schema_as_feature_spec(schema).feature_spec
