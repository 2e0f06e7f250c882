"""serving/benchmark.py's gRPC floor: a server that answers at once, measured as ours is."""
import argparse
import os
import signal
import socket
import subprocess
import sys
import types

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving")

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from ctpipe.serving import benchmark  # noqa: E402


def test_the_floor_server_answers_every_predict_empty_and_stops_by_its_pid():
    floor = benchmark.FloorServer()
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "no_such_model"  # no model behind it: nothing is checked
        request.inputs["x"].float_val.append(1.0)
        with grpc.insecure_channel(floor.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(request, timeout=30) == predict_pb2.PredictResponse()
    finally:
        floor.stop()
    assert floor.process.returncode is not None
    host, port = floor.address.split(":")
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0  # nothing listens any more


def test_the_floor_is_measured_on_the_raw_signature_only():
    args = types.SimpleNamespace(batches=[1, 32], example_batches=[32], concurrency=[8])
    floors = [(signature, batch) for signature, batch, _, target in
              benchmark.cells(args, ["grpc", "floor"]) if target == "floor"]
    assert floors == [(benchmark.RAW, 1), (benchmark.RAW, 32)]


def _children_of_a_fake_interpreter(tmp_path, monkeypatch, script: str) -> list:
    """The benchmark's children run `script` (sh) instead of Python; returns the list that
    collects each child the benchmark starts, to check it was ended."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    monkeypatch.setattr(benchmark.sys, "executable", str(fake))
    started = []
    real_popen = benchmark.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]
    monkeypatch.setattr(benchmark.subprocess, "Popen", popen)
    return started


def test_a_floor_server_that_fails_to_start_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    started = _children_of_a_fake_interpreter(
        tmp_path, monkeypatch, "echo 'ImportError: No module named grpc' >&2\nexit 3\n")
    with pytest.raises(SystemExit) as stopped:
        benchmark.FloorServer(seconds=30)
    assert str(stopped.value) == ("the gRPC floor server did not start: "
                                  "ImportError: No module named grpc")
    assert started and started[0].returncode == 3


def test_a_server_that_never_says_it_listens_is_stopped_at_the_deadline(tmp_path, monkeypatch):
    started = _children_of_a_fake_interpreter(
        tmp_path, monkeypatch, "echo 'loading big_tipper' >&2\nexec sleep 600\n")
    args = argparse.Namespace(model_base_path=str(tmp_path), model_name="big_tipper",
                              enable_batching=False, batching_parameters_file=None)
    with pytest.raises(SystemExit) as stopped:
        benchmark.ServerProcess(args, version=1, seconds=2)
    assert str(stopped.value) == "the server process did not start: no ready line after 2 s"
    assert started and started[0].poll() is not None  # ended by its PID, not left running


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_terminated_benchmark_ends_the_server_it_started(tmp_path):
    """SIGTERM while the server child loads: the benchmark stops that child by its PID and
    exits 143. Before, Python's default SIGTERM ended the benchmark alone and its `ctpipe
    serve` child went on running (and listening, once loaded)."""
    import tensorflow as tf

    from tests.support import save_model_version, wait_until

    class Half(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def predict(self, x):
            return {"y": x / 2.0}

    base = save_model_version(tmp_path / "model", Half())
    pid_file = tmp_path / "server.pid"
    fake = tmp_path / "python"  # the server child: says nothing, records its PID, sleeps
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    fake.chmod(0o755)
    driver = (f"import sys; from ctpipe.serving import benchmark; "
              f"benchmark.sys.executable = {str(fake)!r}; "
              f"benchmark.main(['--model-base-path', {str(base)!r}, '--targets', 'grpc'])")
    bench = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    server = None
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 120)
        server = int(pid_file.read_text())
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(60) == 128 + signal.SIGTERM
        assert not _alive(server)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


def test_a_stopped_pipeline_bench_stops_the_cycle_it_runs(tmp_path, monkeypatch):
    """The pipeline bench's cycle child (measure.run_process) is stopped by its PID when the
    bench is interrupted while it waits (SIGTERM arrives as SystemExit, exit_on_sigterm)."""
    from ctpipe.pipeline.bench import measure

    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def stopped_while_waiting(pid, options):
        raise SystemExit(143)
    monkeypatch.setattr(measure.subprocess, "Popen", popen)
    monkeypatch.setattr(measure.os, "wait4", stopped_while_waiting)
    with pytest.raises(SystemExit):
        measure.run_process("cycle", ["sleep", "600"], str(tmp_path / "cycle.log"))
    assert started and started[0].poll() is not None


def test_the_target_rounds_alternate_in_process_and_grpc_at_8_threads():
    args = types.SimpleNamespace(batches=[1, 32], example_batches=[32], concurrency=[1, 8])
    assert benchmark.round_cells(args, ["inproc", "grpc", "rest"]) == [
        (benchmark.RAW, 32, 8, "inproc"), (benchmark.RAW, 32, 8, "grpc"),
        (benchmark.RAW, 1, 8, "grpc")]
    # a given server (no in-process rows): the p99 still comes from rounds
    assert benchmark.round_cells(args, ["grpc", "rest"]) == [(benchmark.RAW, 1, 8, "grpc")]
    assert benchmark.round_cells(types.SimpleNamespace(batches=[32], concurrency=[1]),
                                 ["inproc", "grpc"]) == []
    assert benchmark.median([1.0, 3.0]) == 2.0 and benchmark.median([5.0, 1.0, 3.0]) == 3.0


def test_a_round_or_cell_without_requests_is_a_usage_error_before_anything_runs(capsys):
    for bad in (["--round-requests", "0"], ["--requests", "0"], ["--rounds", "-1"]):
        with pytest.raises(SystemExit) as stopped:
            benchmark.main(["--model-base-path", "/nonexistent"] + bad)
        assert stopped.value.code == 2
        assert "--round-requests >= 1" in capsys.readouterr().err


def _cell(target, batch, qps, p99=5.0, number=None):
    cell = {"target": target, "signature": benchmark.RAW, "batch": batch, "concurrency": 8,
            "qps": qps, "p50_ms": 1.0, "p99_ms": p99}
    if number is not None:
        cell["round"] = number
    return cell


def test_the_8_thread_targets_are_the_median_of_the_rounds_not_one_short_cell():
    """One lucky grid cell (1,960 / 2,000 = 0.98, p99 20 ms) must not decide the targets: the
    rounds read 0.70, 0.65 and 0.90 (median 0.70, not met) and p99 12, 8 and 9 ms (median 9,
    met)."""
    args = types.SimpleNamespace(batches=[1, 32], example_batches=[], concurrency=[8])
    grid = [_cell("inproc", 32, 2000.0), _cell("grpc", 32, 1960.0), _cell("grpc", 1, 900.0, 20.0)]
    rounds = [_cell("inproc", 32, 2000.0, number=1), _cell("grpc", 32, 1400.0, number=1),
              _cell("grpc", 1, 900.0, 12.0, number=1),
              _cell("inproc", 32, 2000.0, number=2), _cell("grpc", 32, 1300.0, number=2),
              _cell("grpc", 1, 900.0, 8.0, number=2),
              _cell("inproc", 32, 1000.0, number=3), _cell("grpc", 32, 900.0, number=3),
              _cell("grpc", 1, 900.0, 9.0, number=3)]
    figures = {f["name"]: f for f in benchmark.ratios(grid, args, rounds)}
    rate = figures["gRPC / in-process rate, serving_raw batch 32, c8"]
    assert rate["value"] == pytest.approx(0.70) and rate["met"] is False
    assert rate["rounds"] == pytest.approx([0.70, 0.65, 0.90])
    assert rate["single_cell"] == pytest.approx(0.98)
    p99 = figures["gRPC p99 ms, serving_raw batch 1, c8"]
    assert (p99["value"], p99["met"], p99["rounds"], p99["single_cell"]) == \
        (9.0, True, [12.0, 8.0, 9.0], 20.0)
    without = {f["name"]: f for f in benchmark.ratios(grid, args)}
    assert without["gRPC / in-process rate, serving_raw batch 32, c8"]["value"] == \
        pytest.approx(0.98)  # no rounds: the grid's cell, as before
