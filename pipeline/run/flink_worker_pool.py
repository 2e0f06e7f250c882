"""Beam's Python worker pool for Flink's EXTERNAL environment, listening on loopback only.

Flink's TaskManagers ask this pool (Beam's BeamFnExternalWorkerPoolServicer) to start one Python
SDK harness per job and slot; the pool starts each with the first `python` on PATH, so it must run
with the venv's bin first on PATH (flink_local.up does that). Beam's own entry point
(`python -m apache_beam.runners.worker.worker_pool_main`) binds `[::]:PORT`, every interface of
the host; this one serves the same servicer on `127.0.0.1:PORT` only.

Usage (flink_local.up starts it; the port is the only argument):
    python -m ctpipe.pipeline.run.flink_worker_pool 50000
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

_LOGGER = logging.getLogger("ctpipe.flink_worker_pool")


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve the worker pool on host:port until SIGTERM/SIGINT, then stop the harnesses it
    started (Beam registers that clean-up with atexit, which a bare SIGTERM would skip)."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import (
        BeamFnExternalWorkerPoolServicer,
        kill_process_gracefully,
    )
    from apache_beam.utils import thread_pool_executor

    # The options Beam's own start() uses: harnesses ping rarely while a stage waits for data.
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound != port:
        raise SystemExit(f"worker pool: cannot bind {host}:{port}")
    pool = BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    _LOGGER.info("Beam worker pool listening on %s:%d (python: first on PATH)", host, port)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    for process in list(pool._worker_processes.values()):
        kill_process_gracefully(process)
    _LOGGER.info("Beam worker pool stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(int(sys.argv[1]))
