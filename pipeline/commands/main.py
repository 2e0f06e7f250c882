"""The `ctpipe` command: assembles each area's subcommands and turns errors into exit codes.

Exit codes: `ExitCode` (components/basics.py), the one table; README "Exit codes".
Every decision is printed for a person; with --json, JSON goes to stdout and progress to stderr.
"""
from __future__ import annotations

import os

# Quiet TensorFlow's C++ logging before anything imports it (the cycle log keeps the details).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional  # noqa: E402

from ctpipe.components.basics import first_line  # noqa: E402
from ctpipe.pipeline.commands.common import EXIT_INTERNAL  # noqa: E402
from ctpipe.pipeline.run.progress import quiet_libraries  # noqa: E402

# Each area registers its own subcommands; imports flow one way (components <- pipeline <-
# {kubeflow, serving}), so this composition root names the areas instead of importing them.
AREAS = ("ctpipe.pipeline.commands.cycles", "ctpipe.pipeline.commands.status",
         "ctpipe.pipeline.commands.operate", "ctpipe.pipeline.commands.observe",
         "ctpipe.pipeline.commands.flink",
         "ctpipe.serving.commands", "ctpipe.kubeflow.commands")


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
        if isinstance(getattr(error, "exit_code", None), int):  # another area's own error
            print(f"ctpipe: error: {first_line(error)}", file=sys.stderr)
            return error.exit_code
        print(f"ctpipe: internal error: {first_line(error, with_type=True)}"
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
