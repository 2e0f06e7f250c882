"""The Kubeflow area's subcommands: kubeflow compile | lint | upload | schedule."""
from __future__ import annotations

import argparse
import json
import os

from ctpipe.kubeflow.runner import TARGETS
from ctpipe.pipeline.commands.common import EXIT_BAD_INPUT, EXIT_OK, add_config_flags, load_config


def register(commands) -> None:
    kubeflow = commands.add_parser("kubeflow", help="compile, upload and schedule on Kubeflow")
    kfp_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    compile_ = kfp_commands.add_parser(
        "compile", help="write the pipeline for open-source KFP (YAML) or Vertex AI (JSON)")
    compile_.add_argument("--output", help="default: kubeflow/out/ctpipe.yaml (kfp) or "
                          "kubeflow/out/ctpipe.json (vertex)")
    add_target_flag(compile_)
    add_config_flags(compile_)
    lint = kfp_commands.add_parser(
        "lint", help="check a compiled spec against the backend's rules (exit 2 on problems)")
    lint.add_argument("spec", help="compiled spec: .yaml (kfp) or .json (vertex)")
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    upload = kfp_commands.add_parser("upload", help="create the pipeline or add a version")
    upload.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8888")
    upload.add_argument("--package", help="compiled spec (default: compile now)")
    add_target_flag(upload)
    add_config_flags(upload)
    schedule = kfp_commands.add_parser("schedule", help="recurring retraining run")
    schedule.add_argument("--host", required=True)
    schedule.add_argument("--cron", required=True, help="'0 3 * * *' (5 or 6 fields)")
    schedule.add_argument("--experiment", default="ctpipe")
    schedule.add_argument("--data-root", help="value of the data-root runtime parameter")
    add_config_flags(schedule)

    kubeflow.set_defaults(handler=cmd_kubeflow)


def add_target_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=TARGETS, default="kfp",
                        help="kfp: open-source Kubeflow Pipelines 2.x (default); vertex: Vertex AI")


def default_output(target: str) -> str:
    return os.path.join("kubeflow", "out", "ctpipe." + ("yaml" if target == "kfp" else "json"))


def cmd_kubeflow(args: argparse.Namespace) -> int:
    import tempfile

    from ctpipe.kubeflow import client
    from ctpipe.kubeflow.adapt import executor_kinds
    from ctpipe.kubeflow.runner import DATA_ROOT_PARAMETER, compile_pipeline

    if args.kubeflow_command == "lint":
        return cmd_lint(args)
    from ctpipe.kubeflow.lint import LintFailed

    config = load_config(args)
    if args.kubeflow_command == "compile":
        output = args.output or default_output(args.target)
        try:
            compiled = compile_pipeline(config, output, args.target)
        except LintFailed as failed:
            print_problems(failed.problems, f"not written {output}")
            return EXIT_BAD_INPUT
        spec = compiled[0] if args.target == "kfp" else compiled["pipelineSpec"]
        result = {"output": os.path.abspath(output), "target": args.target,
                  "schema_version": spec["schemaVersion"],
                  "tasks": sorted(spec["root"]["dag"]["tasks"]),
                  "executor_kinds": executor_kinds(spec), "image": config.image}
    elif args.kubeflow_command == "upload":
        package = args.package
        if not package:
            package = os.path.join(tempfile.mkdtemp(prefix="ctpipe-kfp-"),
                                   os.path.basename(default_output(args.target)))
            compile_pipeline(config, package, args.target)
        result = client.upload(args.host, package, config.pipeline_name)
    else:
        parameters = {DATA_ROOT_PARAMETER: args.data_root} if args.data_root else {}
        result = client.schedule(args.host, config.pipeline_name, args.cron, args.experiment,
                                 parameters)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


def print_problems(problems, headline: str) -> None:
    """One line per problem on stderr, each prefixed with what it is about."""
    import sys

    for problem in problems:
        print(f"{headline}: {problem}", file=sys.stderr)


def cmd_lint(args: argparse.Namespace) -> int:
    from ctpipe.kubeflow.lint import lint_file

    problems = lint_file(args.spec)
    if args.json:
        print(json.dumps({"spec": os.path.abspath(args.spec), "problems": problems}))
    elif not problems:
        print(f"{args.spec}: ok")
    if problems and not args.json:
        print_problems(problems, args.spec)  # stdout stays empty: nothing passed
    return EXIT_BAD_INPUT if problems else EXIT_OK
