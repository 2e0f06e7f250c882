"""Predict latency of the local server, batch 1, gRPC and REST (p50/p99 over N requests).

Usage: python -m ctpipe.serving.benchmark --model-base-path HOME/serving/big_tipper [--requests 500]
       python -m ctpipe.serving.benchmark --grpc host:8500 --rest http://host:8501
       (a running server, e.g. a real TF Serving)
Prints figures only; latency goals are read here, not asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROW = {"fare": [12.5], "trip_miles": [2.0], "trip_seconds": [600.0], "pickup_latitude": [41.9],
       "pickup_longitude": [-87.6], "dropoff_latitude": [41.88], "dropoff_longitude": [-87.63],
       "trip_start_hour": [19], "trip_start_day": [6], "trip_start_month": [5],
       "pickup_community_area": [8], "dropoff_community_area": [32],
       "dropoff_census_tract": [-1], "payment_type": ["Credit Card"], "company": [""]}


def measure(call: Callable[[], object], requests: int, warmup: int = 20) -> List[float]:
    for _ in range(warmup):
        call()
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def report(name: str, timings: List[float]) -> None:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    print(f"{name:<5} batch 1: p50 {statistics.median(ordered):6.2f} ms   p99 {p99:6.2f} ms   "
          f"({len(ordered)} requests, {1000 * len(ordered) / sum(ordered):.0f} req/s serial)")


def main() -> None:
    import warnings
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path")
    parser.add_argument("--model-name", default="big_tipper")
    parser.add_argument("--grpc")
    parser.add_argument("--rest")
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    from ctpipe.serving.clients import GrpcClient, RestClient

    server = None
    if args.model_base_path:
        from ctpipe.serving.model_config import single_model
        from ctpipe.serving.server import start_server
        server = start_server(single_model(args.model_name, os.path.abspath(args.model_base_path)),
                              grpc_port=0, rest_port=0)
        args.grpc, args.rest = server.grpc_address, server.rest_url
    try:
        for name, client in (("gRPC", GrpcClient(args.grpc, args.model_name)),
                             ("REST", RestClient(args.rest, args.model_name))):
            report(name, measure(lambda c=client: c.predict(ROW, "serving_raw"), args.requests))
            client.close()
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
