"""The `ctpipe` command: assembles each area's subcommands and turns errors into exit codes.

Exit codes (the contract other tools build on; README "Exit codes"):
  0 pushed   3 data blocked (skew: serving data drifted)   4 not blessed   5 nothing new
  6 gave up on a span
  7 another runner holds the home   2 bad input or usage   1 internal error or failed cycle
Every decision is printed for a person; with --json, JSON goes to stdout and progress to stderr.
"""
from __future__ import annotations

import os

# Quiet TensorFlow's C++ logging before anything imports it (the cycle log keeps the details).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import List, Optional  # noqa: E402

from ctpipe.pipeline.command_line import EXIT_INTERNAL  # noqa: E402

# Each area registers its own subcommands; imports flow one way (components <- pipeline <-
# {kubeflow, serving}), so this composition root names the areas instead of importing them.
AREAS = ("ctpipe.pipeline.commands", "ctpipe.pipeline.release_ops", "ctpipe.pipeline.guard",
         "ctpipe.pipeline.lineage", "ctpipe.pipeline.skew", "ctpipe.pipeline.report",
         "ctpipe.pipeline.pipeline_metrics", "ctpipe.serving.commands", "ctpipe.kubeflow.commands")


def quiet_libraries() -> None:
    """Library warnings are for the cycle log, not the terminal."""
    import logging

    warnings.filterwarnings("ignore")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctpipe", description="Continuous training for TF Serving: run cycles, watch, "
        "quarantine spans, show status, serve models, compile for Kubeflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    for area in AREAS:
        importlib.import_module(area).register(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    from ctpipe.pipeline.errors import CtpipeError

    try:
        return args.handler(args)
    except CtpipeError as error:
        print(f"ctpipe: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("ctpipe: interrupted; production unchanged (pushes are atomic)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - the CLI promises one line, never a traceback
        first_line = str(error).splitlines()[0] if str(error) else ""
        print(f"ctpipe: internal error: {type(error).__name__}: {first_line[:300]}"
              " (details in the cycle log under <home>/logs)", file=sys.stderr)
        return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry: exit without interpreter teardown, where TensorFlow's function
    finalizers print spurious 'Exception ignored' tracebacks."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
