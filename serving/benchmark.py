"""Serving speed: the in-process SavedModel signature call (the limit) against our gRPC and REST
endpoints, at batch 1 and 32, 1 and 8 concurrent clients, on loopback.

Usage: python -m ctpipe.serving.benchmark --model-base-path HOME/serving/big_tipper
           [--requests 400] [--quick] [--json-out FILE]
       python -m ctpipe.serving.benchmark --grpc host:8500 --rest http://host:8501
           [--model-base-path DIR]   (a running server, e.g. a real TF Serving; the in-process
                                      rows need the model's files)

By default the server runs as `ctpipe serve` in its own process (as it is deployed: clients
never share the server's interpreter); --in-process-server starts it inside the benchmark's
process instead, where its threads and the client threads share one GIL. The process is
stopped by its PID when the benchmark ends.

Each cell sends a fixed number of requests (--requests, split over the cell's threads; each
thread has its own channel / HTTP connection) after a short warm-up, and reports requests/s,
rows/s, p50 and p99 latency. Targets: gRPC >= 0.8x the in-process rate at batch 32, gRPC p99 <=
10 ms at batch 1, REST within 1.5x of gRPC. It prints figures only and asserts nothing.

The two 8-thread targets are then measured again in --rounds alternating rounds of
--round-requests each (in-process batch 32, gRPC batch 32, gRPC batch 1, in that order, every
round), and their figures are the median over the rounds, each round's value kept beside it.
Why: one 400-request cell lasts a fraction of a second, and on this shared 2-CPU host such a
cell read 0.98 where sustained runs minutes apart read 0.65-0.70; a ratio of two cells measured
moments apart, repeated, is what the host's drift cannot fake.

Rows (--targets):
  inproc   the signature's ConcreteFunction on ready tf.constant tensors: the limit
  flat     the server's own call of that signature (Servable's flat call, TF's Python-side
           argument binding skipped) on the same tensors: the floor under our endpoints
  servable Servable.predict on Python lists (the server's input conversion + the call)
  grpc     PredictionService/Predict with a ready PredictRequest; the reply decoded to numpy
  rest     POST :predict with a ready JSON body (row "instances" by default); reply parsed
  floor    the grpc row's requests to a server process that answers every Predict with an
           empty PredictResponse, built as ours is (same handler threads and options): what
           Python gRPC alone costs on this machine, the floor under the grpc row (its client
           decodes no outputs, so the floor is a little lower than any real reply allows)
With --clients the grpc/rest rows use ctpipe's GrpcClient/RestClient instead (request encoding
in the loop, as an application would pay it).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from statistics import median
from typing import Any, Callable, Dict, List, Optional

from ctpipe.components.basics import end_process, exit_on_sigterm
from ctpipe.serving.cpus import schedulable_cpus

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROW = {"fare": [12.5], "trip_miles": [2.0], "trip_seconds": [600.0], "pickup_latitude": [41.9],
       "pickup_longitude": [-87.6], "dropoff_latitude": [41.88], "dropoff_longitude": [-87.63],
       "trip_start_hour": [19], "trip_start_day": [6], "trip_start_month": [5],
       "pickup_community_area": [8], "dropoff_community_area": [32],
       "dropoff_census_tract": [-1], "payment_type": ["Credit Card"], "company": [""]}
RAW = "serving_raw"
EXAMPLES = "serving_default"
TARGETS = ("inproc", "flat", "servable", "grpc", "rest", "floor")


# -- request payloads ---------------------------------------------------------------------------
def raw_columns(batch: int) -> Dict[str, List[Any]]:
    """`batch` rows of raw features, columnar; rows differ a little (fare, hour)."""
    columns = {key: value * batch for key, value in ROW.items()}
    columns["fare"] = [5.0 + 0.5 * i for i in range(batch)]
    columns["trip_start_hour"] = [i % 24 for i in range(batch)]
    return columns


def serialized_examples(batch: int) -> List[bytes]:
    """The same rows as tf.Examples the way CsvExampleGen writes them (missing values absent)."""
    from ctpipe.serving.json_codec import examples_from_json

    columns = raw_columns(batch)
    rows = [{key: (int(values[i]) if key == "trip_seconds" else values[i])
             for key, values in columns.items() if values[i] not in ("", -1)}
            for i in range(batch)]
    return examples_from_json({"examples": rows})


def payload(signature: str, batch: int) -> Dict[str, List[Any]]:
    return raw_columns(batch) if signature == RAW else \
        {"examples": serialized_examples(batch)}


# -- one call per target -------------------------------------------------------------------------
class Setup:
    """What the calls need: the servable (in-process rows) and the endpoints."""

    def __init__(self, args):
        self.args = args
        self.servable = None
        self.floor_address = ""  # set when a FloorServer runs
        if args.model_base_path:
            from ctpipe.serving.servables import Servable

            base = os.path.abspath(args.model_base_path)
            version = max(int(n) for n in os.listdir(base) if n.isdigit())
            self.servable = Servable(args.model_name, version, os.path.join(base, str(version)))

    def caller(self, target: str, signature: str, batch: int) -> Callable[[], Callable[[], Any]]:
        """A factory: each thread calls it once for its own client, then loops on the call."""
        inputs = payload(signature, batch)
        if target in ("inproc", "flat"):
            import tensorflow as tf

            signature_def, function = self.servable.signature(signature)
            tensors = {alias: tf.constant(values, dtype=tf.dtypes.as_dtype(
                signature_def.inputs[alias].dtype)) for alias, values in
                {k: [v.encode() if isinstance(v, str) else v for v in vs]
                 for k, vs in inputs.items()}.items()}
            if target == "flat":
                call = self.servable._calls[signature]
                return lambda: (lambda: {k: v.numpy() for k, v in call(tensors).items()})
            return lambda: (lambda: {k: v.numpy() for k, v in function(**tensors).items()})
        if target == "servable":
            return lambda: (lambda: self.servable.predict(signature, inputs))
        if self.args.clients:
            return self._client_caller(target, signature, inputs)
        if target in ("grpc", "floor"):
            return self._grpc_caller(signature, inputs,
                                     self.args.grpc if target == "grpc" else self.floor_address)
        return self._rest_caller(signature, inputs, batch)

    def _client_caller(self, target, signature, inputs):
        from ctpipe.serving.clients import GrpcClient, RestClient

        def make():
            client = GrpcClient(self.args.grpc, self.args.model_name) if target == "grpc" else \
                RestClient(self.args.rest, self.args.model_name)
            client.predict(inputs, signature)  # metadata lookups out of the timed loop
            return lambda: client.predict(inputs, signature)
        return make

    def _grpc_caller(self, signature, inputs, address):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.args.model_name
        request.model_spec.signature_name = signature
        dtypes = self._input_dtypes(signature)
        for alias, values in inputs.items():
            values = [v.encode() if isinstance(v, str) else v for v in values]
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(values, dtype=dtypes.get(alias)))

        def make():
            channel = grpc.insecure_channel(address)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            return lambda: {k: tf.make_ndarray(v) for k, v in
                            stub.Predict(request, timeout=30).outputs.items()}
        return make

    def _input_dtypes(self, signature) -> Dict[str, Any]:
        import tensorflow as tf

        if self.servable is not None:
            return {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in
                    self.servable.signature(signature)[0].inputs.items()}
        from tensorflow.core.framework import types_pb2

        from ctpipe.serving.clients import GrpcClient

        client = GrpcClient(self.args.grpc, self.args.model_name)
        described = client.metadata()[signature]["inputs"]
        client.close()
        return {alias: tf.dtypes.as_dtype(types_pb2.DataType.Value(name))
                for alias, name in described.items()}

    def _rest_caller(self, signature, inputs, batch):
        import base64
        import http.client
        from urllib.parse import urlsplit

        def encode(value):
            return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) \
                else value
        if self.args.rest_format == "row":
            body = {"signature_name": signature, "instances": [
                {alias: encode(values[i]) for alias, values in inputs.items()}
                for i in range(batch)]}
        else:
            body = {"signature_name": signature,
                    "inputs": {alias: [encode(v) for v in values]
                               for alias, values in inputs.items()}}
        data = json.dumps(body).encode()
        url = urlsplit(self.args.rest)
        path = f"/v1/models/{self.args.model_name}:predict"
        headers = {"Content-Type": "application/json"}

        def make():
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)

            def call():
                connection.request("POST", path, body=data, headers=headers)
                response = connection.getresponse()
                reply = response.read()
                if response.status != 200:
                    raise RuntimeError(f"REST {response.status}: {reply[:200]!r}")
                return json.loads(reply)
            return call
        return make


# -- measuring ------------------------------------------------------------------------------------
def measure(setup: "Setup", planned_cell: tuple, requests: int, warmup: int,
            label: str) -> Dict[str, Any]:
    """One cell (signature, batch, concurrency, target) of the grid or of a round, measured,
    described and printed as a progress line tagged `label`."""
    signature, batch, concurrency, target = planned_cell
    cell = run_cell(setup.caller(target, signature, batch), requests, concurrency, warmup)
    cell.update(signature=signature, batch=batch, concurrency=concurrency, target=target,
                rows_per_s=cell["qps"] * batch)
    print(f"[{label}] {signature:<15} batch {batch:>2}  threads {concurrency}  {target:<8} "
          f"{cell['qps']:7.0f} req/s {cell['rows_per_s']:8.0f} rows/s  p50 "
          f"{cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms", file=sys.stderr, flush=True)
    return cell


def run_cell(make_call: Callable[[], Callable[[], Any]], requests: int, concurrency: int,
             warmup: int) -> Dict[str, float]:
    """`requests` calls split over `concurrency` threads, each with its own client."""
    per_thread = [requests // concurrency + (1 if i < requests % concurrency else 0)
                  for i in range(concurrency)]
    timings: List[List[float]] = [[] for _ in range(concurrency)]
    errors: List[BaseException] = []
    ready = threading.Barrier(concurrency + 1)
    calls = [make_call() for _ in range(concurrency)]

    def worker(index: int) -> None:
        call, own = calls[index], timings[index]
        try:
            for _ in range(warmup):
                call()
        except BaseException as error:  # noqa: BLE001 - reported after the cell
            errors.append(error)
        ready.wait()
        if errors:
            return
        try:
            for _ in range(per_thread[index]):
                started = time.perf_counter()
                call()
                own.append((time.perf_counter() - started) * 1000)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{type(errors[0]).__name__}: {errors[0]}")
    ordered = sorted(t for own in timings for t in own)
    return {"requests": len(ordered), "seconds": wall, "qps": len(ordered) / wall,
            "p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99)}


def percentile(ordered: List[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cells(args, targets: List[str]):
    for signature, batches in ((RAW, args.batches), (EXAMPLES, args.example_batches)):
        for batch in batches:
            for concurrency in args.concurrency:
                for target in targets:
                    if signature == EXAMPLES and target in ("servable", "flat", "floor"):
                        continue
                    yield signature, batch, concurrency, target


ROUND_CONCURRENCY = 8  # the targets' client threads


def round_cells(args, targets: List[str]) -> List[tuple]:
    """One round of the 8-thread target cells, in the order they alternate: in-process batch
    32 and gRPC batch 32 (the rate ratio; only with an in-process row and batch 32), gRPC
    batch 1 (the p99; only with batch 1). Empty without gRPC or 8 threads."""
    if "grpc" not in targets or ROUND_CONCURRENCY not in args.concurrency:
        return []
    planned = []
    if "inproc" in targets and 32 in args.batches:
        planned += [(RAW, 32, ROUND_CONCURRENCY, "inproc"), (RAW, 32, ROUND_CONCURRENCY, "grpc")]
    if 1 in args.batches:
        planned.append((RAW, 1, ROUND_CONCURRENCY, "grpc"))
    return planned


def _rate_name(signature: str, concurrency: int) -> str:
    return f"gRPC / in-process rate, {signature} batch 32, c{concurrency}"


def _p99_name(concurrency: int) -> str:
    return f"gRPC p99 ms, {RAW} batch 1, c{concurrency}"


def _from_rounds(rounds: List[Dict[str, Any]]) -> Dict[str, List[float]]:
    """The two 8-thread target figures of each round, by figure name: the gRPC / in-process
    rate at batch 32 and the gRPC p99 at batch 1."""
    figures: Dict[str, List[float]] = {_rate_name(RAW, ROUND_CONCURRENCY): [],
                                       _p99_name(ROUND_CONCURRENCY): []}
    for number in sorted({cell["round"] for cell in rounds}):
        of_round = [cell for cell in rounds if cell["round"] == number]
        grpc, inproc, grpc_1 = (find(of_round, target, RAW, batch, ROUND_CONCURRENCY)
                                for target, batch in (("grpc", 32), ("inproc", 32), ("grpc", 1)))
        if grpc and inproc:
            figures[_rate_name(RAW, ROUND_CONCURRENCY)].append(grpc["qps"] / inproc["qps"])
        if grpc_1:
            figures[_p99_name(ROUND_CONCURRENCY)].append(grpc_1["p99_ms"])
    return figures


# -- report ---------------------------------------------------------------------------------------
def find(results, target, signature, batch, concurrency) -> Optional[Dict[str, Any]]:
    for cell in results:
        if (cell["target"], cell["signature"], cell["batch"], cell["concurrency"]) == \
                (target, signature, batch, concurrency):
            return cell
    return None


def ratios(results, args, rounds: Optional[List[Dict[str, Any]]] = None
           ) -> List[Dict[str, Any]]:
    """The figures the targets talk about, one entry per (signature, batch, concurrency). The
    two 8-thread targets come from the alternating rounds when there are any: the median over
    the rounds, with each round's value ("rounds") and the grid's single cell ("single_cell")."""
    out = []
    from_rounds = _from_rounds(rounds or [])

    def add(name, value, target, comparison):
        if value is None:
            return
        figure: Dict[str, Any] = {"name": name, "value": value}
        if from_rounds.get(name):
            figure.update(value=median(from_rounds[name]), rounds=from_rounds[name],
                          single_cell=value)
        met = figure["value"] >= target if comparison == ">=" else figure["value"] <= target
        figure.update(target=f"{comparison} {target}", met=met)
        out.append(figure)
    for signature in (RAW, EXAMPLES):
        for concurrency in args.concurrency:
            if 32 in (args.batches if signature == RAW else args.example_batches):
                grpc, inproc, flat = (find(results, t, signature, 32, concurrency)
                                      for t in ("grpc", "inproc", "flat"))
                if grpc and inproc:
                    add(_rate_name(signature, concurrency), grpc["qps"] / inproc["qps"], 0.8,
                        ">=")
                if grpc and flat:
                    add(f"gRPC / flat in-process rate, {signature} batch 32, c{concurrency}",
                        grpc["qps"] / flat["qps"], 0.8, ">=")
        if signature == RAW and 1 in args.batches:
            for concurrency in args.concurrency:
                grpc = find(results, "grpc", RAW, 1, concurrency)
                if grpc:
                    add(_p99_name(concurrency), grpc["p99_ms"], 10.0, "<=")
    for batch in args.batches:
        for concurrency in args.concurrency:
            grpc, rest = (find(results, t, RAW, batch, concurrency) for t in ("grpc", "rest"))
            if grpc and rest:
                add(f"REST / gRPC p50 latency, batch {batch}, c{concurrency}",
                    rest["p50_ms"] / grpc["p50_ms"], 1.5, "<=")
                add(f"gRPC / REST rate, batch {batch}, c{concurrency}",
                    grpc["qps"] / rest["qps"], 1.5, "<=")
    return out


def table(results) -> str:
    lines = ["| signature | batch | threads | path | req/s | rows/s | p50 ms | p99 ms |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for c in results:
        lines.append(f"| {c['signature']} | {c['batch']} | {c['concurrency']} | {c['target']} | "
                     f"{c['qps']:.0f} | {c['rows_per_s']:.0f} | {c['p50_ms']:.2f} | "
                     f"{c['p99_ms']:.2f} |")
    return "\n".join(lines)


def _ints(text: str) -> List[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Optional[List[str]] = None) -> None:
    import warnings
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model-base-path",
                        help="TF Serving base path (<dir>/<integer version>/saved_model.pb)")
    parser.add_argument("--model-name", default="big_tipper")
    parser.add_argument("--grpc", help="host:port of a running server (default: start one)")
    parser.add_argument("--rest", help="http://host:port of a running server")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per cell")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per thread")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of the 8-thread target cells (0: none)")
    parser.add_argument("--round-requests", type=int, default=2000,
                        help="timed requests per cell in each round")
    parser.add_argument("--quick", action="store_true",
                        help="100 requests per cell, 3 warm-up per thread, one round of at "
                             "most 400")
    parser.add_argument("--batches", type=_ints, default=[1, 32])
    parser.add_argument("--example-batches", type=_ints, default=[32],
                        help="batches for the serialized tf.Example serving_default signature "
                             "(empty: skip it)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rest-format", choices=("row", "columnar"), default="row")
    parser.add_argument("--clients", action="store_true",
                        help="grpc/rest through ctpipe's GrpcClient/RestClient")
    parser.add_argument("--enable-batching", "--enable_batching", action="store_true",
                        help="the started server batches (TF Serving's --enable_batching)")
    parser.add_argument("--batching-parameters-file", "--batching_parameters_file",
                        help="BatchingParameters text proto for --enable-batching")
    parser.add_argument("--in-process-server", action="store_true",
                        help="start the server inside this process (default: `ctpipe serve` "
                             "in its own process)")
    parser.add_argument("--json-out", help="also write the cells and ratios as JSON here")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 0 or args.round_requests < 1 or args.requests < 1:
        parser.error("--rounds must be >= 0, --requests and --round-requests >= 1")
    if args.serve_floor:
        serve_floor()
        return
    exit_on_sigterm()
    if args.quick:
        args.requests, args.warmup = min(args.requests, 100), min(args.warmup, 3)
        args.rounds, args.round_requests = min(args.rounds, 1), min(args.round_requests, 400)
    if not args.model_base_path and not (args.grpc and args.rest):
        parser.error("give --model-base-path, or --grpc and --rest (a running server)")

    targets = [t for t in args.targets.split(",") if t]
    if not args.model_base_path:
        targets = [t for t in targets if t not in ("inproc", "flat", "servable")]
    setup = Setup(args)
    server, where = None, "given"
    if not (args.grpc and args.rest) and not args.in_process_server:
        server, where = ServerProcess(args, setup.servable.version), "own process"
        args.grpc, args.rest = server.grpc_address, server.rest_url
    elif not (args.grpc and args.rest):
        where = "in-process"
        from ctpipe.serving.model_config import single_model
        from ctpipe.serving.server import start_server
        batching = None
        if args.enable_batching:
            from ctpipe.serving.batching import read_batching_parameters
            batching = read_batching_parameters(args.batching_parameters_file)
        server = start_server(single_model(args.model_name,
                                           os.path.abspath(args.model_base_path)),
                              grpc_port=0, rest_port=0, batching=batching)
        if not _wait_available(server, args.model_name):
            server.stop()
            sys.exit("the server did not make a version AVAILABLE within 120 s")
        args.grpc, args.rest = server.grpc_address, server.rest_url

    if args.clients:
        targets = [t for t in targets if t != "floor"]
    floor = None
    results: List[Dict[str, Any]] = []
    rounds: List[Dict[str, Any]] = []
    planned = list(cells(args, targets))
    try:
        if "floor" in targets:
            floor = FloorServer()
            setup.floor_address = floor.address
        for number, planned_cell in enumerate(planned, 1):
            results.append(measure(setup, planned_cell, args.requests, args.warmup,
                                   f"{number}/{len(planned)}"))
        planned_rounds = round_cells(args, targets)
        for number in range(1, args.rounds + 1):
            for planned_cell in planned_rounds:
                cell = measure(setup, planned_cell, args.round_requests, args.warmup,
                               f"round {number}/{args.rounds}")
                cell["round"] = number
                rounds.append(cell)
    finally:
        if server:
            server.stop()
        if floor is not None:
            floor.stop()

    figures = ratios(results, args, rounds)
    print(table(results))
    print()
    for figure in figures:
        repeated = (f"; rounds (median): "
                    f"{', '.join(f'{v:.2f}' for v in figure['rounds'])}; single cell "
                    f"{figure['single_cell']:.2f}" if figure.get("rounds") else "")
        print(f"- {figure['name']}: {figure['value']:.2f} (target {figure['target']}: "
              f"{'met' if figure['met'] else 'NOT met'}{repeated})")
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"config": {"requests": args.requests, "warmup": args.warmup,
                                  "rounds": len({cell["round"] for cell in rounds}),
                                  "round_requests": args.round_requests,
                                  "rest_format": args.rest_format, "clients": args.clients,
                                  "cpus": os.cpu_count(),
                                  "schedulable_cpus": schedulable_cpus(),
                                  "model_name": args.model_name,
                                  "server": where,
                                  "grpc": None if server else args.grpc,
                                  "rest": None if server else args.rest},
                       "cells": results, "rounds": rounds, "ratios": figures}, handle,
                      indent=2)


class ServerProcess:
    """`ctpipe serve` on free ports in a child process; `stop()` ends it by its PID."""

    READY = re.compile(r"gRPC (\S+?),? .*REST (http://\S+)")

    def __init__(self, args, version: int, seconds: float = 120.0):
        argv = [sys.executable, "-m", "ctpipe.pipeline.commands.main", "serve",
                "--model-base-path", os.path.abspath(args.model_base_path),
                "--model-name", args.model_name, "--port", "0", "--rest-api-port", "0"]
        if args.enable_batching:
            argv.append("--enable-batching")
            if args.batching_parameters_file:
                argv += ["--batching-parameters-file", args.batching_parameters_file]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.grpc_address = self.rest_url = ""
        self._listening = False  # set at the ready line: later lines are read and dropped
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        try:  # whatever ends the wait (its deadline, SIGTERM, Ctrl-C) ends the child too
            self._wait_until_serving(args, version, lines, seconds)
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self, args, version: int, lines: "queue.Queue[Optional[str]]",
                            seconds: float) -> None:
        deadline, seen = time.monotonic() + seconds, []
        while not self.grpc_address:  # the server's "serving ...: gRPC .., REST .." line
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
                seen.append(f"no ready line after {seconds:.0f} s")
            if line is None:
                break
            seen.append(line.strip())
            found = self.READY.search(line) if line.startswith("serving ") else None
            if found:
                self.grpc_address, self.rest_url = found.group(1), found.group(2)
                self._listening = True
        if not self.grpc_address:
            code = self.process.poll()
            why = seen[-1] if seen else ("closed its stderr without a ready line" if code is None
                                         else f"exited with code {code}")
            sys.exit(f"the server process did not start: {why}")
        from ctpipe.components.release import ReleaseError, rest_waiter

        try:
            rest_waiter(self.rest_url, seconds)(args.model_name, version)
        except ReleaseError as error:
            sys.exit(f"the server process never served: {error}")

    def _drain(self, lines: "queue.Queue[Optional[str]]") -> None:
        """Stderr read to its end, so the child never blocks on a full pipe; until the ready
        line each line goes into `lines` (None at the end), so the start-up wait has a
        deadline."""
        for line in self.process.stderr:
            if not self._listening:
                lines.put(line)
        lines.put(None)

    def stop(self) -> None:
        end_process(self.process)


def serve_floor() -> None:
    """The floor server (--serve-floor): Predict answers an empty PredictResponse at once, on
    the gRPC server ours runs on (grpc_service.new_grpc_server, `ctpipe serve`'s defaults);
    prints "floor PORT" once listening, runs until terminated."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from ctpipe.serving.grpc_service import bind, new_grpc_server
    from ctpipe.serving.server import DEFAULT_MAX_REQUEST_BYTES

    class EmptyAnswers(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            return predict_pb2.PredictResponse()

    server = new_grpc_server(DEFAULT_MAX_REQUEST_BYTES)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(EmptyAnswers(), server)
    port = bind(server, "127.0.0.1:0")
    server.start()
    print(f"floor {port}", flush=True)
    server.wait_for_termination()


class FloorServer:
    """serve_floor() in a child process; `stop()` ends it by its PID. A child that does not
    listen within `seconds` is stopped, and the benchmark exits with its last error line."""

    def __init__(self, seconds: float = 120.0):
        import select
        import tempfile

        self._errors = tempfile.TemporaryFile("w+")  # unlinked at once: nothing left behind
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ctpipe.serving.benchmark", "--serve-floor"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors, text=True)
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], seconds)
            line = self.process.stdout.readline() if ready else ""
            if not line.startswith("floor "):
                end_process(self.process)
                self._errors.seek(0)
                lines = [text.strip() for text in self._errors if text.strip()]
                why = lines[-1] if lines else (
                    f"exited with code {self.process.returncode}"
                    if self.process.returncode is not None
                    else f"nothing listening after {seconds:.0f} s")
                sys.exit(f"the gRPC floor server did not start: {why}")
        except BaseException:
            self.stop()
            raise
        self.address = f"127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> None:
        end_process(self.process)
        self.process.stdout.close()
        self._errors.close()


def _wait_available(server, model_name: str, seconds: float = 120.0) -> bool:
    """start_server loads synchronously; this only guards a version that failed its load."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            server.core.registry.resolve(model_name)
            return True
        except Exception:  # noqa: BLE001 - not loaded (yet)
            time.sleep(0.2)
    return False

if __name__ == "__main__":
    main()
