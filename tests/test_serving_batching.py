"""Server-side batching (`ctpipe serve --enable_batching [--batching_parameters_file F]`), as TF
Serving's: concurrent Predict requests become one signature call, answers equal unbatched ones,
a full queue answers UNAVAILABLE, a bad file is one line and exit 2, and it is off by default."""
import os
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ctpipe.pipeline.commands.main import main
from ctpipe.serving.batching import (
    QUEUE_FULL,
    Batcher,
    BatchingOptions,
    parse_batching_parameters,
    read_batching_parameters,
)
from ctpipe.serving.errors import ServingConfigError, ServingError
from ctpipe.serving.model_config import single_model
from ctpipe.serving.server import start_server

from tests.support import save_model_version


class Toy(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([None, 2], tf.float32, name="pair")])
    def predict(self, x, pair):
        return {"y": 2.0 * x + 1.0, "s": tf.reduce_sum(pair, 1), "echo": pair * 1.0}


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    return save_model_version(tmp_path_factory.mktemp("batch_toy"), Toy())


def test_parses_tf_serving_text_format():
    options = parse_batching_parameters(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
        "num_batch_threads { value: 4 }\nmax_enqueued_batches { value: 100 }\n"
        'thread_pool_name { value: "t" }\npad_variable_length_inputs: true\n'
        "allowed_batch_sizes: 8\nallowed_batch_sizes: 32\n")
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads,
            options.max_enqueued_batches) == (32, 2000, 4, 100)
    assert parse_batching_parameters("").max_batch_size == BatchingOptions().max_batch_size
    for bad in ("max_batch_size: 32", "max_batch_sise { value: 32 }",
                "max_batch_size { value: 0 }", "allowed_batch_sizes: 16"):
        with pytest.raises(ServingConfigError):
            parse_batching_parameters(bad)


def test_batch_threads_default_to_the_cpus_this_process_may_run_on(monkeypatch):
    """TF Serving's default num_batch_threads is port::MaxParallelism() (BasicBatchScheduler::
    Options), the CPUs in the process's affinity mask: a server pinned to 1 CPU of a 64-CPU
    node runs 1 batch thread, not 64 - with or without a parameters file that leaves it
    unset."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert BatchingOptions().num_batch_threads == 1
    assert read_batching_parameters(None).num_batch_threads == 1
    assert parse_batching_parameters("max_batch_size { value: 8 }").num_batch_threads == 1


def test_bad_file_is_one_line_and_exit_2(tmp_path, toy_base, capsys):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: -1 }\n")
    common = ["serve", "--model-base-path", str(toy_base), "--model-name", "toy",
              "--port", "0", "--rest-api-port", "0"]
    assert main(common + ["--enable_batching", "--batching_parameters_file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max_batch_size must be positive" in err
    assert main(common + ["--batching_parameters_file", str(bad)]) == 2  # without the flag
    assert "without setting --enable_batching" in capsys.readouterr().err
    assert main(common + ["--enable_batching",
                          "--batching_parameters_file", str(tmp_path / "none")]) == 2
    assert "cannot read batching parameters file" in capsys.readouterr().err


def _blocking_runner():
    """A run function whose first call waits for `release`; records every call's rows."""
    calls, started, release = [], threading.Event(), threading.Event()

    def run(tensors):
        calls.append(int(tensors["x"].shape[0]))
        if len(calls) == 1:
            started.set()
            release.wait(10)
        return {"y": tensors["x"] * 2.0}

    return run, calls, started, release


def _submit_all(batcher, values):
    results, errors = {}, {}

    def one(i, value):
        try:
            results[i] = batcher.submit({"x": tf.constant(value, tf.float32)})
        except ServingError as error:
            errors[i] = error

    threads = [threading.Thread(target=one, args=(i, v)) for i, v in enumerate(values)]
    return threads, results, errors


def test_concurrent_tasks_become_one_call_and_split_back():
    run, calls, started, release = _blocking_runner()
    batcher = Batcher(run, BatchingOptions(max_batch_size=8, num_batch_threads=1))
    first = threading.Thread(target=batcher.submit, args=({"x": tf.constant([0.0])},))
    first.start()
    assert started.wait(10)  # the only batch thread is busy: the next tasks queue up together
    threads, results, errors = _submit_all(batcher, [[1.0], [2.0, 3.0], [4.0]])
    for thread in threads:
        thread.start()
    while sum(len(b.tasks) for b in list(batcher._queue)) < 3:
        threading.Event().wait(0.01)
    release.set()
    for thread in threads + [first]:
        thread.join(10)
    assert not errors and calls == [1, 4]  # one call for the three queued tasks
    assert [results[i]["y"].tolist() for i in range(3)] == [[2.0], [4.0, 6.0], [8.0]]


def test_full_queue_is_unavailable_as_tf_serving():
    run, calls, started, release = _blocking_runner()
    batcher = Batcher(run, BatchingOptions(max_batch_size=2, num_batch_threads=1,
                                           max_enqueued_batches=1))
    first = threading.Thread(target=batcher.submit, args=({"x": tf.constant([0.0])},))
    first.start()
    assert started.wait(10)
    threads, results, errors = _submit_all(batcher, [[1.0, 2.0]])  # fills the one batch
    threads[0].start()
    while not batcher._queue:
        threading.Event().wait(0.01)
    with pytest.raises(ServingError) as error:
        batcher.submit({"x": tf.constant([3.0])})
    assert (error.value.code, error.value.message) == ("UNAVAILABLE", QUEUE_FULL)
    with pytest.raises(ServingError) as error:  # larger than a batch: TF Serving's refusal
        batcher.submit({"x": tf.constant([1.0, 2.0, 3.0])})
    assert error.value.code == "INVALID_ARGUMENT" and "Task size 3" in error.value.message
    release.set()
    threads[0].join(10)
    first.join(10)
    assert results[0]["y"].tolist() == [2.0, 4.0]


def _grpc_predict(stub, x, pair):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    request.inputs["pair"].CopyFrom(tf.make_tensor_proto(np.asarray(pair, np.float32)))
    response = stub.Predict(request, timeout=20)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_server_batches_concurrent_predicts_with_the_same_answers(toy_base):
    off = start_server(single_model("toy", str(toy_base)), grpc_port=0, rest_port=0)
    on = start_server(single_model("toy", str(toy_base)), grpc_port=0, rest_port=0,
                      batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=20000,
                                               num_batch_threads=1))
    try:
        assert off.core.registry.resolve("toy").batching is None  # off by default
        requests = [([float(i)] * (1 + i % 3), [[i, 1.0]] * (1 + i % 3)) for i in range(16)]
        answers = {}
        for name, server in (("off", off), ("on", on)):
            with grpc.insecure_channel(server.grpc_address) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                got = [None] * len(requests)

                def one(i, got=got, stub=stub):
                    got[i] = _grpc_predict(stub, *requests[i])

                threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
                answers[name] = got
        for unbatched, batched in zip(answers["off"], answers["on"]):
            assert unbatched.keys() == batched.keys()
            for key in unbatched:
                np.testing.assert_array_equal(unbatched[key], batched[key])
        servable = on.core.registry.resolve("toy")
        assert off.core.registry.resolve("toy")._batchers == {}
        batcher = servable._batchers[("proto", "serving_default")]  # gRPC: the proto path
        assert batcher.tasks_run == len(requests) and batcher.batches_run < len(requests)
    finally:
        off.stop()
        on.stop()


def _queue_three_value_requests(servable):
    answers = {}

    def one(i):
        answers[i] = servable.predict("serving_default",
                                      {"x": [float(i)] * (i + 1), "pair": [[i, 1.0]] * (i + 1)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for i in range(3):
        assert answers[i]["y"].tolist() == [2.0 * i + 1.0] * (i + 1)
        assert answers[i]["s"].tolist() == [i + 1.0] * (i + 1)


def _batching_toy(toy_base):
    from ctpipe.serving.servables import Servable

    servable = Servable("toy", 1, str(toy_base / "1"),
                        batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=300000,
                                                 num_batch_threads=1))
    servable.warm_up()  # as the registry does before a version serves (traces the proto path)
    return servable


def test_value_requests_batch_on_the_proto_path_without_a_tensor_each(toy_base, monkeypatch):
    """REST-style values that convert to the signature's dtypes become serialized TensorProtos
    and share one proto-path call: no eager tensor per input per request, no tf.concat."""
    servable = _batching_toy(toy_base)
    monkeypatch.setattr(tf, "constant", lambda *a, **k: pytest.fail("a tensor per input"))
    monkeypatch.setattr(tf, "concat", lambda *a, **k: pytest.fail("a batch used tf.concat"))
    _queue_three_value_requests(servable)
    batcher = servable.proto_batcher("serving_default")
    assert (batcher.batches_run, batcher.tasks_run) == (1, 3)
    assert servable.batcher("serving_default").tasks_run == 0


def test_a_batch_makes_one_tensor_per_input(toy_base, monkeypatch):
    """Without the proto path (a signature it cannot take, or values it refuses), requests stay
    numpy until their batch is formed: three queued requests cost one tensor per input and no
    tf.concat (per-request tensors and a concat per batch were most of a batch's time under
    load), and each still gets its own rows back."""
    servable = _batching_toy(toy_base)
    servable._proto_calls.clear()
    made = []
    real_constant = tf.constant
    monkeypatch.setattr(tf, "constant", lambda *a, **k: made.append(1) or real_constant(*a, **k))
    monkeypatch.setattr(tf, "concat", lambda *a, **k: pytest.fail("a batch used tf.concat"))
    _queue_three_value_requests(servable)
    batcher = servable.batcher("serving_default")
    assert (batcher.batches_run, batcher.tasks_run) == (1, 3)
    assert len(made) == 2  # x and pair, once for the batch
