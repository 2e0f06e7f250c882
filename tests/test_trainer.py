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
    """A window profile with these payment types (other features constant)."""
    n = len(payments)
    columns = {name: np.full(n, 1.0, dtype=np.float32) for name in F.NUMERIC_FEATURES}
    columns.update({name: np.full(n, 1, dtype=np.int64) for name in F.CATEGORICAL_INT_FEATURES})
    columns.update({name: np.array([b""] * n, dtype=object)
                    for name in F.CATEGORICAL_STRING_FEATURES})
    columns["payment_type"] = np.array([p.encode() for p in payments], dtype=object)
    return trainer.add_columns(trainer.WindowProfile(), columns)


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


def test_training_steps_grow_with_the_window_and_fewer_from_a_warm_start():
    hparams = dict(trainer.DEFAULT_HPARAMS, epochs=6, warm_start_epochs=2, batch_size=64,
                   min_steps=250, max_steps=20_000, max_steps_per_epoch=0)  # batches never grow
    assert trainer.training_steps(600, hparams) == 250
    assert trainer.training_steps(4000, hparams) == 375
    assert trainer.training_steps(100_000, hparams) == 9375  # no longer capped at 32k examples
    assert trainer.training_steps(100_000, hparams, warm_start=True) == 3125
    assert trainer.training_steps(10_000_000, hparams) == 20_000


def test_large_windows_train_in_larger_batches_with_the_same_epochs():
    hparams = dict(trainer.DEFAULT_HPARAMS, epochs=6, warm_start_epochs=2, batch_size=64,
                   min_steps=200, max_steps=20_000, max_steps_per_epoch=1000)
    assert trainer.training_batch_size(13_000, hparams) == 64  # the sample's windows: as before
    assert trainer.training_batch_size(64_000, hparams) == 64
    assert trainer.training_batch_size(64_001, hparams) == 65
    assert trainer.training_batch_size(159_157, hparams) == 160
    assert trainer.training_steps(159_157, hparams, warm_start=True) == 1990  # 2 epochs x 995
    assert trainer.training_steps(159_157, hparams) == 5969
    assert trainer.training_steps(13_000, hparams) == 1219  # ceil(78,000 / 64)


def test_autograph_does_not_rewrite_tf_keras():
    """Without the rule, tracing a tf_keras train step converted every Keras internal (most of
    the Trainer's time). It must hold once the trainer module is imported."""
    import tf_keras
    from tensorflow.python.autograph.impl import conversion

    assert conversion.is_allowlisted(tf_keras.layers.Dense.call)


def test_autograph_leaves_the_trainers_own_traced_code_as_written():
    """Parsing, the layers and the signatures have no control flow on tensor values; rewriting
    them cost ~0.4 s of every Trainer run. They must trace as written."""
    from tensorflow.python.autograph.impl import conversion

    for traced in (trainer.dense_features_from_examples, trainer._first_value_or,
                   trainer.Standardize.call, trainer.CategoryIndex.call):
        assert conversion.is_allowlisted(traced), traced.__qualname__


def test_the_train_step_computes_the_loss_only():
    """No training metric nobody reads: early stopping watches the eval loss, the Evaluator
    measures AUC."""
    model = trainer.build_model(trainer.learn_preprocessing(_columns(["Cash", "Card"])),
                                trainer.DEFAULT_HPARAMS)
    trainer.compile_for_training(model, 1e-3,
                                 dict(trainer.DEFAULT_HPARAMS, steps_per_execution=1))
    rows = tf.constant([_example(fare=12.5, payment_type="Cash", tips=1.0),
                        _example(fare=3.0, payment_type="Card")])
    features = trainer.dense_features_from_examples(rows)
    model.train_on_batch(features, tf.constant([1.0, 0.0]))
    assert model.metrics_names == ["loss"]


def test_pooled_profile_matches_the_concatenated_window():
    rng = np.random.default_rng(3)
    parts = [rng.normal(10, 2, 300), rng.normal(14, 5, 120)]
    profile = trainer.WindowProfile()
    for part in parts:
        profile.numeric["fare"].merge(part.size, part.mean(), part.var())
    window = np.concatenate(parts)
    assert profile.numeric["fare"].count == window.size
    assert profile.numeric["fare"].mean == pytest.approx(window.mean())
    assert profile.numeric["fare"].variance == pytest.approx(window.var())


def _write_examples(path, rows):
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in rows:
            writer.write(_example(**row))


def test_preprocessing_from_tfdv_statistics_equals_reading_the_window(tmp_path):
    """The Trainer learns from the spans' TFDV statistics; it must learn what it would have
    learned by reading every row (int codes included, via the schema's is_categorical)."""
    import tensorflow_data_validation as tfdv

    from ctpipe.components.curated_schema import load_contract

    schema = load_contract()
    rng = np.random.default_rng(5)
    stats_files, example_files = [], []
    for span, (payments, hours) in enumerate([(["Cash", "Credit Card", "Cash"], [9, 9, 17]),
                                              (["Cash", "Mobile"], [23, 9])]):
        rows = [{"fare": float(rng.uniform(3, 40)), "trip_seconds": int(rng.integers(60, 3000)),
                 "payment_type": payments[i % len(payments)],
                 "trip_start_hour": hours[i % len(hours)]} for i in range(40 + 30 * span)]
        rows[0].pop("fare")  # a missing value
        path = str(tmp_path / f"span-{span}.gz")
        _write_examples(path, rows)
        example_files.append(path)
        stats = tfdv.generate_statistics_from_tfrecord(
            path, stats_options=tfdv.StatsOptions(schema=schema))
        stats_path = str(tmp_path / f"stats-{span}.pb")
        with open(stats_path, "wb") as handle:
            handle.write(stats.SerializeToString())
        stats_files.append(stats_path)

    from_statistics = trainer.profile_from_statistics(stats_files)
    from_rows = trainer.profile_from_dataset(trainer.make_dataset(example_files, 16, False))
    assert from_statistics.rows == from_rows.rows == 110
    learned = trainer.learn_preprocessing(from_statistics)
    expected = trainer.learn_preprocessing(from_rows)
    for name in ("fare", "trip_seconds"):
        assert learned["numeric"][name]["mean"] == pytest.approx(
            expected["numeric"][name]["mean"], rel=1e-4)
        assert learned["numeric"][name]["std"] == pytest.approx(
            expected["numeric"][name]["std"], rel=1e-3)
    for name in ("payment_type", "trip_start_hour"):
        assert learned["vocabulary"][name] == expected["vocabulary"][name]
    assert learned["vocabulary"]["trip_start_hour"] == ["9", "23", "17"]  # 62, 35, 13 rows


def test_training_batches_mix_spans_whatever_the_shuffle_buffer(tmp_path, monkeypatch):
    """Files are read in turn, not one after another (span-10 used to precede span-9 and a
    window larger than the shuffle buffer was seen span by span)."""
    files = []
    for span, payment in ((9, "Cash"), (10, "Mobile")):
        path = str(tmp_path / f"span-{span}.gz")
        _write_examples(path, [{"payment_type": payment, "fare": 1.0}] * 50)
        files.append(path)
    monkeypatch.setattr(trainer, "SHUFFLE_BUFFER", 1)
    for in_memory_max_bytes in (trainer.IN_MEMORY_MAX_BYTES, 0):  # parsed once; streamed
        monkeypatch.setattr(trainer, "IN_MEMORY_MAX_BYTES", in_memory_max_bytes)
        features, _ = next(iter(trainer.make_dataset(files, 10, shuffle=True)))
        assert set(features["payment_type"].numpy().tolist()) == {b"Cash", b"Mobile"}


def test_export_holds_the_signatures_and_the_state_they_read_only(tmp_path):
    """The export serves by signature and answers as the trained model does, without what only
    reviving it as Keras would need: no per-layer call traces, no optimizer slots (they doubled
    save and load time and the files)."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = trainer.build_model(trainer.learn_preprocessing(_columns(["Cash", "Card"])),
                                trainer.DEFAULT_HPARAMS)
    trainer.compile_for_training(model, 1e-3, trainer.DEFAULT_HPARAMS)  # Adam slots exist
    rows = [_example(fare=12.5, trip_miles=2.0, payment_type="Cash", company="A"),
            _example(fare=3.0, payment_type="Card")]
    trainer.export_serving_model(model, str(tmp_path / "1"), rows)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "1" / "saved_model.pb").read_bytes())
    functions = [f.signature.name for f in saved.meta_graphs[0].graph_def.library.function]
    assert functions and not [name for name in functions if "call_and_return" in name]
    saved_variables = tf.train.list_variables(str(tmp_path / "1" / "variables" / "variables"))
    assert not [name for name, _ in saved_variables if "optimizer" in name.lower()]
    assert sum(1 for name, _ in saved_variables if name.endswith("VARIABLE_VALUE")) == \
        len(model.weights)

    loaded = tf.saved_model.load(str(tmp_path / "1"))
    assert set(loaded.signatures) == {"serving_default", "serving_raw", "classification"}
    dense = trainer.dense_features_from_examples(tf.constant(rows))
    expected = model(dense).numpy()
    served = loaded.signatures["serving_default"](examples=tf.constant(rows))["probabilities"]
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-6)
    raw = loaded.signatures["serving_raw"](**dense)["probabilities"]
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-6)
    scores = loaded.signatures["classification"](inputs=tf.constant(rows))["scores"]
    np.testing.assert_allclose(scores.numpy()[:, 1:], expected, rtol=1e-6)


def test_a_warm_start_trains_at_the_warm_start_learning_rate(tmp_path):
    """The checkpoint a warm start reads holds the optimizer it was trained with; its learning
    rate must not override `warm_start_learning_rate` (it did: every warm start trained at the
    cold start's rate). Its Adam state carries on."""
    state = trainer.learn_preprocessing(_columns(["Cash", "Card"]))
    hparams = dict(trainer.DEFAULT_HPARAMS, steps_per_execution=1)
    features = trainer.dense_features_from_examples(tf.constant(
        [_example(fare=12.5, payment_type="Cash"), _example(fare=3.0, payment_type="Card")]))
    labels = tf.constant([1.0, 0.0])
    previous = trainer.build_model(state, hparams)
    trainer.compile_for_training(previous, 3e-3, hparams)
    previous.train_on_batch(features, labels)
    trainer.save_warm_start(previous, state, str(tmp_path / trainer.WARM_START_DIR))

    _, weights = trainer.load_warm_start(str(tmp_path))
    model = trainer.model_for_training(state, dict(hparams, warm_start_learning_rate=1e-3),
                                       weights)
    for loaded, saved in zip(model.get_weights(), previous.get_weights()):
        np.testing.assert_array_equal(loaded, saved)
    model.train_on_batch(features, labels)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert int(model.optimizer.iterations) == 2  # the previous run's step, then this one


def _tiny_training_data(rows=24, batch=4):
    """Batches of (raw features, label) from `rows` varied examples, repeated."""
    payments = ["Cash", "Credit Card", "Mobile"]
    examples = [_example(fare=2.0 + i, trip_seconds=60 * i, trip_start_hour=i % 24,
                         payment_type=payments[i % 3], tips=float(i % 2))
                for i in range(rows)]
    features = trainer.dense_features_from_examples(tf.constant(examples))
    labels = tf.constant([float(i % 2) for i in range(rows)])
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch)


def _model_counting_step_traces(hparams):
    """A compiled model whose train_step / test_step count the times they are traced."""
    state = trainer.learn_preprocessing(_columns(["Cash", "Credit Card", "Mobile"]))
    model = trainer.build_model(state, hparams)
    traces = {"train": 0, "test": 0}
    for kind in traces:
        step = getattr(model, f"{kind}_step")

        def counted(data, step=step, kind=kind):
            traces[kind] += 1  # Python runs only while TF traces the step
            return step(data)
        setattr(model, f"{kind}_step", counted)
    trainer.compile_for_training(model, 3e-3, hparams)
    return model, traces


def test_fit_and_evaluate_trace_each_step_once():
    """tf_keras's steps_per_execution loop traced the whole step twice (an autograph probe of
    the loop body, then the body itself) in every fit and evaluate; and a cold start's first
    step, creating Adam's variables, had its function traced again once they existed."""
    hparams = dict(trainer.DEFAULT_HPARAMS, steps_per_execution=4)
    model, traces = _model_counting_step_traces(hparams)
    data = _tiny_training_data()
    model.fit(data.repeat(), epochs=2, steps_per_epoch=10, validation_data=data,
              validation_steps=6, verbose=0)
    model.evaluate(data, steps=6, verbose=0)
    assert traces == {"train": 1, "test": 1}


def test_the_one_trace_loop_trains_exactly_as_keras_loop(monkeypatch):
    """Same seed, same batches, an epoch that ends on a shorter chunk (10 steps in chunks of
    4): the weights, the losses and Keras's step counters come out identical."""
    hparams = dict(trainer.DEFAULT_HPARAMS, steps_per_execution=4)
    data = _tiny_training_data()

    def train():
        import tf_keras

        tf_keras.utils.set_random_seed(11)
        model, _ = _model_counting_step_traces(hparams)
        history = model.fit(data.repeat(), epochs=2, steps_per_epoch=10, validation_data=data,
                            validation_steps=6, verbose=0)
        evaluated = model.evaluate(data, steps=5, verbose=0, return_dict=True)
        return model, (history.history, evaluated)

    ours, our_history = train()
    with monkeypatch.context() as patched:
        patched.setattr(trainer, "trace_each_step_once", lambda model: None)
        keras, keras_history = train()
    assert our_history == keras_history
    assert int(ours._train_counter.numpy()) == int(keras._train_counter.numpy()) == 20
    assert int(ours._test_counter.numpy()) == int(keras._test_counter.numpy()) == 5
    assert int(ours.optimizer.iterations.numpy()) == 20
    for mine, theirs in zip(ours.get_weights(), keras.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_a_compile_with_metrics_keeps_keras_own_loop():
    """The one-trace loop carries a loss-only step's logs; any other compile (metrics here)
    must keep Keras's functions rather than fail at the first fit."""
    import tf_keras

    model = trainer.build_model(trainer.learn_preprocessing(_columns(["Cash", "Card"])),
                                trainer.DEFAULT_HPARAMS)
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  metrics=[tf_keras.metrics.AUC()], steps_per_execution=4)
    trainer.trace_each_step_once(model)
    assert model.train_function is None and model.test_function is None  # Keras makes its own
    trainer.compile_for_training(model, 1e-3, dict(trainer.DEFAULT_HPARAMS,
                                                   steps_per_execution=4))
    assert model.train_function is not None and model.test_function is not None
