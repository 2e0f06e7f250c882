"""The Kubeflow area's subcommands: kubeflow compile | upload | schedule."""
from __future__ import annotations

import argparse
import json
import os

from ctpipe.pipeline.command_line import EXIT_OK, add_config_flags, load_config


def register(commands) -> None:
    kubeflow = commands.add_parser("kubeflow", help="compile, upload and schedule on Kubeflow")
    kfp_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    compile_ = kfp_commands.add_parser("compile", help="write the KFP v2 pipeline spec (JSON)")
    compile_.add_argument("--output", default="kubeflow/out/ctpipe_pipeline.json")
    add_config_flags(compile_)
    upload = kfp_commands.add_parser("upload", help="create the pipeline or add a version")
    upload.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8888")
    upload.add_argument("--package", help="compiled spec (default: compile now)")
    add_config_flags(upload)
    schedule = kfp_commands.add_parser("schedule", help="recurring retraining run")
    schedule.add_argument("--host", required=True)
    schedule.add_argument("--cron", required=True, help="'0 3 * * *' (5 or 6 fields)")
    schedule.add_argument("--experiment", default="ctpipe")
    schedule.add_argument("--data-root", help="value of the data-root runtime parameter")
    add_config_flags(schedule)

    kubeflow.set_defaults(handler=cmd_kubeflow)


def cmd_kubeflow(args: argparse.Namespace) -> int:
    import tempfile

    from ctpipe.kubeflow import client
    from ctpipe.kubeflow.runner import DATA_ROOT_PARAMETER, compile_pipeline

    config = load_config(args)
    if args.kubeflow_command == "compile":
        spec = compile_pipeline(config, args.output)
        tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
        result = {"output": os.path.abspath(args.output), "tasks": sorted(tasks),
                  "image": config.image}
    elif args.kubeflow_command == "upload":
        package = args.package
        if not package:
            package = os.path.join(tempfile.mkdtemp(prefix="ctpipe-kfp-"), "pipeline.json")
            compile_pipeline(config, package)
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
