"""What every area's subcommands share: the home and store flags (one help text each), config
loading, output printers. Each area registers its own subcommands (pipeline/commands/*.py,
serving/commands.py, kubeflow/commands.py); pipeline/commands/main.py only assembles them.
Exit codes are `ExitCode` (components/basics.py), the one table."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ctpipe.components.basics import ExitCode
from ctpipe.pipeline.observe import formatting

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = ExitCode.OK, ExitCode.INTERNAL, ExitCode.BAD_INPUT
HOME_HELP = "pipeline home (its ML Metadata, serving folder, logs and reports)"
MLMD_HOST_HELP = "ML Metadata gRPC host (Kubeflow's metadata-grpc-service), instead of --home"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with PipelineConfig keys")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")


def add_home_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--home", required=required, help=HOME_HELP)


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """--home (a local SQLite store) or --mlmd-host/--mlmd-port (Kubeflow's store)."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--home", help=HOME_HELP)
    where.add_argument("--mlmd-host", help=MLMD_HOST_HELP)
    parser.add_argument("--mlmd-port", type=int, default=8080)


def load_config(args: argparse.Namespace, **overrides: Any):
    from ctpipe.pipeline.config import PipelineConfig

    return PipelineConfig.from_sources(getattr(args, "config", None), overrides)


def open_store(args: argparse.Namespace, config):
    """The store the flags name: a home's SQLite file or Kubeflow's service over gRPC."""
    from ctpipe.pipeline.home import Home
    from ctpipe.pipeline.home.store import open_grpc

    if getattr(args, "mlmd_host", None):
        return open_grpc(args.mlmd_host, args.mlmd_port)
    return Home.of(config).open_store()


def progress_printer(to_stderr: bool):
    stream = sys.stderr if to_stderr else sys.stdout

    def emit(line: str) -> None:
        print(line, file=stream, flush=True)
    return emit


def decision_printer(as_json: bool):
    def emit(decision) -> None:
        print(json.dumps(decision.to_dict()) if as_json else formatting.format_decision(decision),
              flush=True)
    return emit
