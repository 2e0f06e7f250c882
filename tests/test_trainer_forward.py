"""components/trainer.py serving_forward: the exported signatures' computation is build_model's
on every kind of value a request can carry (missing, out of vocabulary, clipped): bit for bit
when both run op by op; traced, within float32 rounding, as grappler rewrites each graph in its
own way (the model traced alone differs from the model run eagerly by as much)."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ctpipe.components import features as F  # noqa: E402
from ctpipe.components import trainer  # noqa: E402


def _state():
    numeric = {name: {"mean": 1.5 + i, "std": 0.75 + 0.5 * i}
               for i, name in enumerate(F.NUMERIC_FEATURES)}
    vocabulary = {name: [str(v) for v in range(0, min(capacity, 12), 2)]
                  for name, capacity in F.CATEGORICAL_INT_FEATURES.items()}
    vocabulary.update({"payment_type": ["Cash", "Credit Card", ""],
                       "company": ["Flash Cab", "Sun Taxi"]})
    return {"numeric": numeric, "vocabulary": vocabulary}


def _rows(count: int):
    """`count` rows: numbers around the means, NaN (missing) and far outliers (clipped), codes
    in and out of vocabulary and -1 (missing), strings known, unknown and empty."""
    rng = np.random.default_rng(3)
    features = {}
    for i, name in enumerate(F.NUMERIC_FEATURES):
        values = rng.normal(1.5 + i, 2.0, count).astype(np.float32)
        values[::5] = np.nan
        values[1::7] = 1e6
        values[2::7] = -1e6
        features[name] = values
    for name in F.CATEGORICAL_INT_FEATURES:
        codes = rng.integers(0, 20, count)
        codes[::4] = F.MISSING_INT
        features[name] = codes.astype(np.int64)
    features["payment_type"] = np.array(
        [["Cash", "Credit Card", "", "Mobile"][i % 4].encode() for i in range(count)], object)
    features["company"] = np.array(
        [["Flash Cab", "Unknown Cab", ""][i % 3].encode() for i in range(count)], object)
    return {name: tf.constant(values, dtype=spec.dtype)
            for (name, spec), values in zip(trainer.raw_feature_signature().items(),
                                            (features[n] for n in trainer.raw_feature_signature()))}


def _model():
    import tf_keras

    tf_keras.utils.set_random_seed(11)
    return trainer.build_model(_state(), dict(trainer.DEFAULT_HPARAMS, hidden_units=[16, 8]))


def test_serving_forward_is_the_model_bit_for_bit_op_by_op():
    model = _model()
    forward = trainer.serving_forward(model)
    for count in (1, 37):
        rows = _rows(count)
        expected = model(rows).numpy()
        got = forward(rows).numpy()
        assert got.shape == expected.shape == (count, 1)
        assert np.array_equal(got, expected)


def test_exported_raw_signature_answers_as_the_model(tmp_path):
    """The exported serving_raw (the traced forward over the saved state) against the model
    traced as the former export traced it."""
    model = _model()
    tf.saved_model.save(trainer._serving_state(model), str(tmp_path),
                        signatures=trainer.serving_signatures(model))
    loaded = tf.saved_model.load(str(tmp_path))
    traced_model = tf.function(lambda rows: model(rows), autograph=False)
    for count in (1, 23):
        rows = _rows(count)
        got = loaded.signatures["serving_raw"](**rows)["probabilities"].numpy()
        np.testing.assert_allclose(got, traced_model(rows).numpy(), rtol=2e-6, atol=0)
