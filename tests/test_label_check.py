"""The poisoned-label rule and its AUC (components/label_check.py)."""
import numpy as np
import pytest

from ctpipe.components.label_check import LabelCheck, auc, auc_stderr


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + labels * 0.3, 1)  # many ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    pairs = (positives[:, None] > negatives[None, :]).mean() + \
        0.5 * (positives[:, None] == negatives[None, :]).mean()
    assert auc(labels, scores) == pytest.approx(pairs)


def test_auc_edges():
    assert auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert auc(np.array([1, 1]), np.array([0.1, 0.9])) is None


def test_shuffled_labels_fail_and_normal_noise_passes():
    shuffled = LabelCheck(span_auc=0.49, expected_auc=0.93, span_rows=300,
                          reference_spans=[17, 18], max_drop=0.15)
    assert shuffled.failed
    assert shuffled.reason(19).startswith(
        "labels disagree with the production model: AUC 0.49 on span 19 vs 0.93 expected")
    noisy = LabelCheck(span_auc=0.85, expected_auc=0.93, span_rows=300, reference_spans=[18],
                       max_drop=0.15)
    assert not noisy.failed
    assert not LabelCheck(None, 0.9, 0, [], 0.15).failed


def test_small_spans_get_a_noise_allowance_that_shuffled_labels_still_exceed():
    # ~67 eval rows (17 positives): AUC 0.61 vs 0.80 is within noise ...
    stderr = auc_stderr(0.61, 17, 50)
    small = LabelCheck(0.61, 0.80, 67, [13, 14, 15], 0.15, stderr)
    assert 0.06 < stderr < 0.1 and small.allowed_drop > 0.19 and not small.failed
    # ... labels with no signal at all are not.
    assert LabelCheck(0.45, 0.80, 67, [13], 0.15, auc_stderr(0.45, 17, 50)).failed
    # A large span keeps the configured bound.
    assert LabelCheck(0.70, 0.93, 1300, [1], 0.15, auc_stderr(0.7, 300, 1000)).allowed_drop \
        == 0.15


def test_a_loaded_signature_is_reused_until_the_cycle_releases_memory(tmp_path):
    """The gate and the Evaluator score stable in the same cycle: one load. Between cycles
    release_after_cycle() forgets every loaded model (a long watch holds none)."""
    import gc

    import tensorflow as tf

    from ctpipe.components import label_check
    from ctpipe.pipeline.run.memory import release_after_cycle

    class Doubler(tf.Module):
        def __init__(self):
            super().__init__()
            self.factor = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"y": self.factor * x}

    module = Doubler()
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    release_after_cycle()  # whatever earlier tests' cycles left loaded in this process
    first = label_check.serving_signature(str(tmp_path))
    gc.collect()  # a cached signature must still reach its variable (held only weakly by it)
    assert float(first(x=tf.constant([1.0]))["y"][0]) == 2.0
    assert label_check.serving_signature(str(tmp_path)) is not None
    assert len(label_check._LOADED) == 1  # noqa: SLF001 - loaded once
    release_after_cycle()
    assert not label_check._LOADED  # noqa: SLF001
    again = label_check.serving_signature(str(tmp_path))
    assert float(again(x=tf.constant([1.5]))["y"][0]) == 3.0
