"""`ctpipe flink up|down|status`: the local Flink cluster for
kubeflow/environments/flink-local.toml (pipeline/run/flink_local.py). Ports come from
CTPIPE_FLINK_{REST,RPC,JOB,ARTIFACT,EXPANSION,WORKER_POOL}_PORT, folders from
CTPIPE_FLINK_STATE / CTPIPE_FLINK_CACHE, so `make flink-up` and a test agree on them."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

from ctpipe.pipeline.commands.common import EXIT_OK


def register(commands) -> None:
    flink = commands.add_parser("flink", help="a local Flink cluster for Beam (up/down/status)")
    actions = flink.add_subparsers(dest="flink_command", required=True)
    actions.add_parser("up", help="fetch once, then start JobManager, TaskManager, Beam job "
                       "server and worker pool (idempotent)")
    down = actions.add_parser("down", help="stop exactly what `up` started (by PID files)")
    down.add_argument("--keep-logs", action="store_true",
                      default=bool(os.environ.get("CTPIPE_FLINK_KEEP_LOGS")))
    actions.add_parser("status", help="processes, ports and Flink's overview, as JSON")
    flink.set_defaults(handler=cmd_flink)


def cmd_flink(args: argparse.Namespace) -> int:
    from ctpipe.pipeline.run import flink_local as flink

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.flink_command == "status":
        print(json.dumps(flink.status(), indent=1))
        return EXIT_OK
    if args.flink_command == "down":
        stopped = flink.down(keep_logs=args.keep_logs)
        print(f"Flink cluster stopped: {', '.join(stopped)}" if stopped
              else "Flink cluster: nothing was running")
        return EXIT_OK
    started = time.monotonic()
    cluster = flink.up(ports=flink.Ports.from_env())
    verb = "started" if cluster.started else "already running"
    print(f"Flink {flink.FLINK_VERSION} cluster {verb} in {time.monotonic() - started:.1f}s "
          f"(state: {cluster.state_dir})")
    print(f"  web UI:       {cluster.web_ui}")
    print(f"  job endpoint: {cluster.job_endpoint}   worker pool: "
          f"localhost:{cluster.ports.worker_pool}")
    print(f"  config:       ctpipe run --config {flink.CONFIG_FILE}")
    if cluster.ports != flink.Ports():
        print(f"  beam args (ports differ from {flink.CONFIG_FILE}): "
              f"{' '.join(cluster.beam_args())}")
    print("  stop with:    make flink-down")
    return EXIT_OK
