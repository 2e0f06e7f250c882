"""What every area's subcommands share: config flags, config loading, output printers,
exit codes. Each area registers its own subcommands (pipeline/commands.py,
serving/commands.py, kubeflow/commands.py); pipeline/cli.py only assembles them."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ctpipe.pipeline import formatting

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with PipelineConfig keys")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")


def load_config(args: argparse.Namespace, **overrides: Any):
    from ctpipe.pipeline.config import PipelineConfig

    return PipelineConfig.from_sources(getattr(args, "config", None), overrides)


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
