"""The `ctpipe` command: run cycles, watch, quarantine, status, demo, serve, diff schemas.

Exit codes (the contract other tools build on):
  0 pushed   3 data blocked   4 not blessed   5 nothing new   6 gave up on a span
  7 another runner holds the home   2 bad input or usage   1 internal error or failed cycle
Every decision is printed for a person; with --json one JSON object goes to stdout instead and
progress goes to stderr.
"""
from __future__ import annotations

import os

# Quiet TensorFlow's C++ logging before anything imports it (the cycle log keeps the details).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import Any, Dict, List, Optional, Sequence  # noqa: E402

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def quiet_libraries() -> None:
    """Library warnings are for the cycle log, not the terminal."""
    import logging

    warnings.filterwarnings("ignore")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with PipelineConfig keys")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctpipe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one cycle on the oldest pending span")
    run.add_argument("--data-root", required=True, help="folder holding span-<N>/ folders")
    run.add_argument("--home", required=True, help="pipeline home (outputs, MLMD, serving)")
    run.add_argument("--span", type=int, help="process this span now (if it is undecided)")
    run.add_argument("--all", action="store_true",
                     help="process every pending span, oldest first (one JSON line each)")
    run.add_argument("--from-span", type=int,
                     help="on a fresh home, start at this span instead of the newest")
    _add_config_flags(run)

    watch = commands.add_parser("watch", help="poll the data root and run pending spans")
    watch.add_argument("--data-root", required=True)
    watch.add_argument("--home", required=True)
    watch.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    watch.add_argument("--max-cycles", type=int, help="stop after this many decisions")
    watch.add_argument("--from-span", type=int)
    _add_config_flags(watch)

    quarantine = commands.add_parser("quarantine", help="list, add or release quarantined spans")
    q_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_commands.add_parser("list", help="quarantined spans and why")
    q_list.add_argument("--home", required=True)
    _add_config_flags(q_list)
    for name, text in (("add", "bad data found after the fact: leave all future windows"),
                       ("release", "accept a quarantined span (e.g. a lasting change)")):
        q_action = q_commands.add_parser(name, help=text)
        q_action.add_argument("span", type=int)
        q_action.add_argument("--home", required=True)
        q_action.add_argument("--reason", required=True, help="recorded with the action")
        _add_config_flags(q_action)

    status = commands.add_parser("status", help="served model and decision history (from MLMD)")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--home", help="local pipeline home (SQLite ML Metadata)")
    where.add_argument("--mlmd-host", help="ML Metadata gRPC host (Kubeflow's metadata-grpc-service)")
    status.add_argument("--mlmd-port", type=int, default=8080)
    status.add_argument("--data-root", help="also list the pending spans under this folder")
    _add_config_flags(status)

    kubeflow = commands.add_parser("kubeflow", help="compile, upload and schedule on Kubeflow")
    kfp_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    compile_ = kfp_commands.add_parser("compile", help="write the KFP v2 pipeline spec (JSON)")
    compile_.add_argument("--output", default="kubeflow/out/ctpipe_pipeline.json")
    _add_config_flags(compile_)
    upload = kfp_commands.add_parser("upload", help="create the pipeline or add a version")
    upload.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8888")
    upload.add_argument("--package", help="compiled spec (default: compile now)")
    _add_config_flags(upload)
    schedule = kfp_commands.add_parser("schedule", help="recurring retraining run")
    schedule.add_argument("--host", required=True)
    schedule.add_argument("--cron", required=True, help="'0 3 * * *' (5 or 6 fields)")
    schedule.add_argument("--experiment", default="ctpipe")
    schedule.add_argument("--data-root", help="value of the data-root runtime parameter")
    _add_config_flags(schedule)

    demo = commands.add_parser("demo", help="bootstrap, then feed spans as arrivals (a table)")
    demo.add_argument("--home", help="home directory (default: a new temporary one)")
    demo.add_argument("--data", default=None, help="sample spans (default: data/sample)")
    _add_config_flags(demo)

    serve = commands.add_parser("serve", help="TF-Serving-compatible server (gRPC + REST)")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", help="serve what the pipeline pushed under this home")
    source.add_argument("--model-base-path", help="like TF Serving's --model_base_path")
    source.add_argument("--model-config-file", help="TF Serving ModelServerConfig (text)")
    serve.add_argument("--model-name", help="like TF Serving's --model_name")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port (TF Serving's --port)")
    serve.add_argument("--rest-api-port", type=int, default=8501)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    serve.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0)
    serve.add_argument("--max-request-mb", type=float, default=16.0)
    _add_config_flags(serve)

    predict = commands.add_parser("predict", help="query a TF Serving endpoint")
    predict.add_argument("--address", required=True, help="host:port (gRPC) or http://host:port")
    protocol = predict.add_mutually_exclusive_group()
    protocol.add_argument("--grpc", dest="protocol", action="store_const", const="grpc")
    protocol.add_argument("--rest", dest="protocol", action="store_const", const="rest")
    predict.add_argument("--input", required=True,
                         help='JSON file: {"instances": [{feature: value, ...}, ...]}')
    predict.add_argument("--model-name", default="big_tipper")
    predict.add_argument("--signature", default="serving_raw")
    predict.add_argument("--timeout", type=float, default=10.0)
    _add_config_flags(predict)

    diff = commands.add_parser("schema-diff",
                               help="how the inferred schema differs from the curated one")
    diff.add_argument("--data-root", required=True, help="infer from the newest span here")
    diff.add_argument("--span", type=int, help="span to infer from (default: newest)")
    _add_config_flags(diff)
    return parser


def load_config(args: argparse.Namespace, **overrides: Any):
    from pipeline.config import PipelineConfig

    return PipelineConfig.from_sources(getattr(args, "config", None), overrides)


# ---------------------------------------------------------------------------------------------


def _metric_text(metrics: Dict[str, Dict[str, float]]) -> str:
    parts = []
    for model in ("candidate", "baseline"):
        values = metrics.get(model)
        if values:
            shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
            parts.append(f"{model}: {shown}")
    return " | ".join(parts) or "none (nothing was evaluated)"


def format_decision(decision) -> str:
    headline = {
        "pushed": f"PUSHED model version {decision.model_version}",
        "data_blocked": "DATA BLOCKED - span quarantined, nothing trained, production unchanged",
        "not_blessed": "NOT BLESSED - candidate rejected, production unchanged",
        "no_new_data": "NOTHING NEW - no span to process, production unchanged",
        "failed": "FAILED - the span stays pending and is retried, production unchanged",
        "gave_up": "GAVE UP - span quarantined after repeated failures, production unchanged",
    }[decision.outcome.value]
    attempt = f" (attempt {decision.attempt})" if (decision.attempt or 1) > 1 else ""
    lines = [f"span {decision.span}: {headline}{attempt}"]
    lines += [f"  why: {reason}" for reason in decision.reasons]
    labels = decision.checks.get("labels")
    if labels and labels.get("production_auc_on_span") is not None:
        lines.append(f"  labels: production model AUC {labels['production_auc_on_span']} on "
                     f"this span vs {labels['production_auc_expected']} on spans "
                     f"{', '.join(map(str, labels['reference_spans']))}")
    if decision.outcome.value in ("pushed", "not_blessed"):
        lines.append(f"  metrics: {_metric_text(decision.metrics)}")
        lines.append(f"  trained on spans: {', '.join(map(str, decision.training_spans))}")
        warm = decision.checks.get("warm_start")
        if warm:
            lines.append(f"  {warm['reason']}")
    if decision.seconds is not None:
        lines.append(f"  took {decision.seconds:.1f} s")
    return "\n".join(lines)


def _progress_printer(to_stderr: bool):
    stream = sys.stderr if to_stderr else sys.stdout

    def emit(line: str) -> None:
        print(line, file=stream, flush=True)
    return emit


def _decision_printer(as_json: bool):
    def emit(decision) -> None:
        print(json.dumps(decision.to_dict()) if as_json else format_decision(decision),
              flush=True)
    return emit


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.local_runner import run_all, run_cycle
    from pipeline.outcomes import FAILED, NO_NEW_DATA

    config = load_config(args, data_root=args.data_root, home=args.home, span=args.span,
                         from_span=args.from_span)
    emit = _decision_printer(args.json)
    progress = _progress_printer(to_stderr=True)
    if not args.all:
        decision = run_cycle(config, progress=progress)
        emit(decision)
        return decision.exit_code
    decisions = run_all(config, progress=progress, on_decision=emit)
    if any(d.outcome == FAILED for d in decisions):
        return EXIT_INTERNAL
    if all(d.outcome == NO_NEW_DATA for d in decisions):
        return NO_NEW_DATA.exit_code
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from pipeline.watch import watch

    config = load_config(args, data_root=args.data_root, home=args.home,
                         from_span=args.from_span)
    say = _progress_printer(to_stderr=True)
    return watch(config, args.interval, args.max_cycles, _decision_printer(args.json), say,
                 progress=say)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from pipeline import operator

    config = load_config(args, home=args.home)
    say = _progress_printer(to_stderr=True)
    if args.quarantine_command == "list":
        entries = operator.quarantine_list(config)
        if args.json:
            print(json.dumps(entries))
            return EXIT_OK
        if not entries:
            print("no quarantined spans")
        for entry in entries:
            print(f"span {entry['span']} (by {entry['by']}): "
                  f"{entry['reasons'][0] if entry['reasons'] else ''}")
            for reason in entry["reasons"][1:]:
                print(f"  {reason}")
        return EXIT_OK
    if args.quarantine_command == "add":
        result = operator.quarantine_add(config, args.span, args.reason, say)
        text = (f"span {args.span} quarantined: it leaves all future training windows"
                + (f"; {len(result['no_longer_warm_start_sources'])} model(s) trained on it "
                   "are no longer warm-start sources"
                   if result["no_longer_warm_start_sources"] else ""))
    else:
        result = operator.quarantine_release(config, args.span, args.reason, say)
        text = (f"span {args.span} released: "
                + ("it is pending again and the next cycle processes it" if result["reopened"]
                   else "eligible for training windows"
                   + (" and now the drift baseline" if result["drift_baseline"] else "")))
    print(json.dumps(result) if args.json else f"{text} (reason: {args.reason})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline import cycles, outcomes
    from pipeline.spans import BadInput

    config = load_config(args, home=args.home)
    extra: Dict[str, Any] = {}
    if args.mlmd_host:
        decisions = _history_over_grpc(config, args.mlmd_host, args.mlmd_port)
    else:
        if not os.path.exists(config.metadata_path):
            raise BadInput(f"no pipeline home at {args.home} "
                           f"(no {os.path.basename(config.metadata_path)})")
        store = outcomes.open_store(outcomes.sqlite_connection(config.metadata_path))
        decisions = cycles.history(store, config.pipeline_name)
        extra = _local_status(store, config, args.data_root)
    report = {
        "model_name": config.model_name,
        "model_base_path": os.path.abspath(config.serving_model_dir),
        "serving_version": outcomes.serving_version(decisions),
        **extra,
        "history": [d.to_dict() for d in decisions],
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(f"model {report['model_name']} at {report['model_base_path']}")
    print(f"serving version: {report['serving_version']}")
    if extra:
        print(f"pending spans: {_list_text(extra['pending_spans'])}   quarantined spans: "
              f"{_list_text(extra['quarantined_spans'])}   running: "
              f"{_list_text(extra['running_spans'])}")
    print(history_table(decisions))
    for action in extra.get("operator_actions", []):
        print(f"operator: {action['action']} span {action['span']} by {action['user']} at "
              f"{_time_text(action['at'])}: {action['reason']}")
    return EXIT_OK


def _local_status(store, config, data_root: Optional[str]) -> Dict[str, Any]:
    from pipeline import cycles, ledger_store
    from pipeline.spans import discover_spans

    ledger, _ = ledger_store.latest_ledger(store, config.pipeline_name)
    records = cycles.cycle_records(store, config.pipeline_name)
    actions = cycles.operator_actions(store, config.pipeline_name)
    available: List[int] = []
    if data_root:
        available = sorted(discover_spans(data_root))
    plan = cycles.plan_spans(available, records, actions)
    return {"pending_spans": plan.pending if available else None,
            "quarantined_spans": ledger.quarantined_spans(),
            "accepted_spans": ledger.accepted_spans(),
            "running_spans": [r.span for r in records if r.running],
            "attempts": {str(k): v for k, v in plan.attempts.items() if k not in plan.decided},
            "operator_actions": [a.to_dict() for a in actions]}


def _list_text(values) -> str:
    if values is None:
        return "? (pass --data-root)"
    return ", ".join(map(str, values)) or "none"


def _time_text(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%SZ")


def _history_over_grpc(config, host: str, port: int):
    import ml_metadata as mlmd

    from pipeline import outcomes
    from pipeline.spans import BadInput

    try:
        store = outcomes.open_store(outcomes.grpc_connection(host, port))
        return outcomes.history(store, config.pipeline_name)
    except (mlmd.errors.UnavailableError, mlmd.errors.DeadlineExceededError) as error:
        raise BadInput(f"ML Metadata at {host}:{port} is unreachable: "
                       f"{str(error).splitlines()[0][:200]}")


def history_table(decisions: Sequence) -> str:
    header = f"{'span':>4}  {'outcome':<12} {'AUC':>7} {'baseline':>8} {'served':>6} " \
             f"{'window':<10} {'secs':>6}  reason"
    rows = [header, "-" * len(header)]
    served: Optional[int] = None
    for d in decisions:
        if d.outcome == "no_new_data":
            continue
        if d.outcome == "pushed":
            served = d.model_version
        auc = d.metrics.get("candidate", {}).get("auc")
        base = d.metrics.get("baseline", {}).get("auc")
        window = ",".join(map(str, d.training_spans)) or "-"
        rows.append(f"{str(d.span):>4}  {d.outcome:<12} {_num(auc):>7} {_num(base):>8} "
                    f"{str(served if served is not None else '-'):>6} {window:<10} "
                    f"{_num(d.seconds, '.1f'):>6}  {_headline_reason(d)[:90]}")
    return "\n".join(rows)


def _headline_reason(decision) -> str:
    """The most specific reason: blocked and not-blessed decisions start with a summary line
    ("span N quarantined", "candidate not blessed"); the first detail after it says why."""
    reasons = decision.reasons
    if decision.outcome in ("data_blocked", "not_blessed") and len(reasons) > 1:
        return reasons[1]
    return reasons[0] if reasons else ""


def _num(value: Optional[float], fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    config = load_config(args)
    return run_demo(config, home=args.home, sample_root=args.data, as_json=args.json,
                    progress=_progress_printer(to_stderr=args.json))


def cmd_schema_diff(args: argparse.Namespace) -> int:
    from pipeline.schema_review import schema_diff

    config = load_config(args, data_root=args.data_root)
    differences = schema_diff(config, args.span)
    if args.json:
        print(json.dumps(differences))
    else:
        print("\n".join(differences) if differences else "inferred schema matches the contract")
    return EXIT_OK


def cmd_kubeflow(args: argparse.Namespace) -> int:
    import tempfile

    from kubeflow import client
    from kubeflow.runner import DATA_ROOT_PARAMETER, compile_pipeline

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


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from serving import model_config
    from serving.server import start_server
    from serving.servables import ServingError
    from pipeline.spans import BadInput

    config = load_config(args, home=args.home)
    if args.model_config_file:
        try:
            with open(args.model_config_file) as handle:
                models = model_config.parse_models(handle.read())
        except OSError as error:
            raise BadInput(f"cannot read model config {args.model_config_file}: {error.strerror}")
        except ServingError as error:
            raise BadInput(f"{args.model_config_file}: {error.message}")
    elif args.model_base_path:
        if not args.model_name:
            raise BadInput("--model-base-path needs --model-name")
        models = model_config.single_model(args.model_name, os.path.abspath(args.model_base_path))
    else:
        models = model_config.single_model(args.model_name or config.model_name,
                                           os.path.abspath(config.serving_model_dir))
    try:
        server = start_server(models, host=args.host, grpc_port=args.port,
                              rest_port=args.rest_api_port,
                              poll_seconds=args.file_system_poll_wait_seconds,
                              max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                              on_event=lambda line: print(line, file=sys.stderr, flush=True))
    except OSError as error:
        raise BadInput(f"cannot listen on {args.host}:{args.port}/{args.rest_api_port}: "
                       f"{error.strerror or error}")
    print(f"serving {', '.join(m.name for m in models)}: gRPC {server.grpc_address}, "
          f"REST {server.rest_url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.spans import BadInput
    from serving.clients import ServingClientError, make_client

    try:
        with open(args.input) as handle:
            body = json.load(handle)
    except OSError as error:
        raise BadInput(f"cannot read {args.input}: {error.strerror}")
    except json.JSONDecodeError as error:
        raise BadInput(f"{args.input} is not JSON: {error}")
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances or \
            not all(isinstance(i, dict) for i in instances):
        raise BadInput(f'{args.input} must hold {{"instances": [{{feature: value, ...}}, ...]}}')
    columns = {key: [row.get(key) for row in instances] for key in instances[0]}
    client = make_client(args.address, args.model_name, args.protocol or "grpc",
                         timeout=args.timeout)
    try:
        outputs = client.predict(columns, signature_name=args.signature)
    except ServingClientError as error:
        print(f"ctpipe: error: {error.code}: {error.message}", file=sys.stderr)
        return EXIT_BAD_INPUT if error.code in ("INVALID_ARGUMENT", "NOT_FOUND",
                                                 "FAILED_PRECONDITION") else EXIT_INTERNAL
    finally:
        client.close()
    print(json.dumps({alias: value.tolist() for alias, value in outputs.items()}))
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "predict": cmd_predict, "run": cmd_run, "status": cmd_status,
            "demo": cmd_demo, "schema-diff": cmd_schema_diff, "kubeflow": cmd_kubeflow,
            "watch": cmd_watch, "quarantine": cmd_quarantine}


def main(argv: Optional[List[str]] = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    from kubeflow.client import KubeflowError
    from pipeline.config import ConfigError
    from pipeline.errors import CtpipeError

    try:
        return COMMANDS[args.command](args)
    except CtpipeError as error:
        print(f"ctpipe: error: {error}", file=sys.stderr)
        return error.exit_code
    except (ConfigError, KubeflowError) as error:
        print(f"ctpipe: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
