"""Trainer module pieces: missing values, learned vocabularies, warm-start stability."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ctpipe.components import features as F  # noqa: E402
from ctpipe.components import trainer  # noqa: E402


def _example(**values) -> bytes:
    feature = {}
    for name, value in values.items():
        if isinstance(value, float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        elif isinstance(value, int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        elif isinstance(value, str):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        else:  # present with no values, as CsvExampleGen writes an empty cell
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_missing_values_become_nan_minus_one_and_empty():
    full = _example(fare=12.5, trip_seconds=300, trip_start_hour=9, payment_type="Cash")
    sparse = _example(fare=None)  # everything else absent
    dense = trainer.dense_features_from_examples(tf.constant([full, sparse]))
    assert dense["fare"].numpy()[0] == pytest.approx(12.5)
    assert np.isnan(dense["fare"].numpy()[1])
    assert dense["trip_seconds"].numpy()[0] == pytest.approx(300.0)
    assert dense["trip_start_hour"].numpy().tolist() == [9, F.MISSING_INT]
    assert dense["payment_type"].numpy().tolist() == [b"Cash", b""]


def _columns(payments):
    n = len(payments)
    columns = {name: np.full(n, 1.0, dtype=np.float32) for name in F.NUMERIC_FEATURES}
    columns.update({name: np.full(n, 1, dtype=np.int64) for name in F.CATEGORICAL_INT_FEATURES})
    columns.update({name: np.array([b""] * n, dtype=object)
                    for name in F.CATEGORICAL_STRING_FEATURES})
    columns["payment_type"] = np.array([p.encode() for p in payments], dtype=object)
    return columns


def test_vocabulary_is_learned_by_frequency():
    state = trainer.learn_preprocessing(_columns(["Cash", "Card", "Cash", "Dispute", "Cash",
                                                  "Card"]))
    assert state["vocabulary"]["payment_type"] == ["Cash", "Card", "Dispute"]


def test_warm_start_keeps_old_indices_and_constants():
    base = trainer.learn_preprocessing(_columns(["Cash", "Card"]))
    base["numeric"]["fare"] = {"mean": 42.0, "std": 3.0}
    extended = trainer.learn_preprocessing(_columns(["Pcard", "Pcard", "Card"]), base=base)
    assert extended["vocabulary"]["payment_type"][:2] == base["vocabulary"]["payment_type"]
    assert extended["vocabulary"]["payment_type"][2] == "Pcard"
    assert extended["numeric"]["fare"] == {"mean": 42.0, "std": 3.0}


def test_model_shapes_do_not_depend_on_vocabulary_size():
    small = trainer.build_model(trainer.learn_preprocessing(_columns(["Cash"])),
                                trainer.DEFAULT_HPARAMS)
    large = trainer.build_model(trainer.learn_preprocessing(_columns(["Cash", "Card", "Pcard"])),
                                trainer.DEFAULT_HPARAMS)
    assert [w.shape for w in small.weights] == [w.shape for w in large.weights]


def test_training_steps_are_bounded():
    hparams = dict(trainer.DEFAULT_HPARAMS, epochs=6, batch_size=64, min_steps=250,
                   max_steps=500)
    assert trainer.training_steps(600, hparams) == 250
    assert trainer.training_steps(4000, hparams) == 375
    assert trainer.training_steps(100_000, hparams) == 500
