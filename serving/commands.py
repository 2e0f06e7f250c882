"""The serving area's subcommands: serve (a TF-Serving-compatible server) and predict.

`ctpipe serve` takes TF Serving's flags where it has the feature, spelled with dashes (the
underscore spelling of TF Serving's newer flags is accepted too); the defaults are TF Serving
2.16.1's (model_servers/main.cc), e.g. no signature method-name check."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ctpipe.pipeline.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    add_config_flags,
    load_config,
)
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.home import Home


def _flag_bool(text: str) -> bool:
    """A TF Serving boolean flag's value: --flag, --flag=true, --flag=false."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def register(commands) -> None:
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
    serve.add_argument("--model-config-file-poll-wait-seconds", type=float, default=0.25,
                       help="re-read --model-config-file (or --home's release manifest) this "
                       "often; 0 = read once")
    serve.add_argument("--max-request-mb", type=float, default=16.0)
    serve.add_argument("--enable-signature-method-name-check",
                       "--enable_signature_method_name_check", dest="method_name_check",
                       type=_flag_bool, nargs="?", const=True, default=False,
                       metavar="true|false",
                       help="Classify/Regress/MultiInference/Predict check each signature's "
                       "method_name, as TF Serving's flag of this name; off by default (as in "
                       "TF Serving), so TF2 SavedModels (all signatures 'predict') answer "
                       "Classify and Regress when their inputs and outputs fit")
    serve.add_argument("--grpc-socket-path", "--grpc_socket_path", dest="grpc_socket_path",
                       help="also serve gRPC on this Unix socket (clients dial unix:<path>)")
    serve.add_argument("--grpc-channel-arguments", "--grpc_channel_arguments",
                       dest="grpc_channel_arguments", default="",
                       help="gRPC server arguments, as TF Serving's flag: "
                       "key=value[,key=value...], e.g. grpc.max_connection_age_ms=2000")
    serve.add_argument("--grpc-max-threads", "--grpc_max_threads", dest="grpc_max_threads",
                       type=int, default=None, metavar="N",
                       help="gRPC handler threads (TF Serving's flag; default: 2 x the CPUs)")
    serve.add_argument("--enable-batching", "--enable_batching", dest="enable_batching",
                       type=_flag_bool, nargs="?", const=True, default=False,
                       metavar="true|false",
                       help="batch concurrent Predict requests into one signature call, as TF "
                       "Serving's flag of this name; off by default (as in TF Serving)")
    serve.add_argument("--batching-parameters-file", "--batching_parameters_file",
                       dest="batching_parameters_file",
                       help="TF Serving's BatchingParameters text proto (max_batch_size, "
                       "batch_timeout_micros, num_batch_threads, max_enqueued_batches); "
                       "with --enable_batching")
    serve.add_argument("--canary-percent", type=float, default=0.0,
                       help="send this %% of unlabelled requests to the canary version")
    serve.add_argument("--control-percent", type=float, default=0.0,
                       help="send this %% of units (by --control-key) of unlabelled requests "
                       "to the version labelled control; sticky: sha256 of the unit key")
    serve.add_argument("--control-key",
                       help="the unit key: a request header (gRPC metadata / HTTP header) or, "
                       "without one, the first value of the input feature of this name")
    serve.add_argument("--shadow", action="store_true",
                       help="score canary on stable's requests (not returned); metrics only")
    serve.add_argument("--shadow-sample", type=float, default=1.0,
                       help="fraction of stable's requests shadowed (default 1.0)")
    from ctpipe.serving.request_log import add_flags as add_request_log_flags

    add_request_log_flags(serve)
    add_config_flags(serve)

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
    add_config_flags(predict)

    commands.choices["serve"].set_defaults(handler=cmd_serve)
    commands.choices["predict"].set_defaults(handler=cmd_predict)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ctpipe.components.release import manifest_path
    from ctpipe.serving import model_config
    from ctpipe.serving.errors import ServingConfigError, ServingError
    from ctpipe.serving.grpc_service import parse_grpc_channel_arguments
    from ctpipe.serving.request_log import from_args as request_log_from_args
    from ctpipe.serving.server import start_server

    config = load_config(args, home=args.home)
    if not 0.0 <= args.canary_percent <= 100.0:
        raise BadInput(f"--canary-percent must be within [0, 100], got {args.canary_percent}")
    if not 0.0 <= args.control_percent <= 100.0:
        raise BadInput(f"--control-percent must be within [0, 100], got {args.control_percent}")
    if args.control_percent > 0 and not args.control_key:
        raise BadInput("--control-percent needs --control-key (a header or feature name)")
    if args.grpc_max_threads is not None and args.grpc_max_threads < 1:
        raise BadInput(f"--grpc_max_threads must be at least 1, got {args.grpc_max_threads}")
    if args.shadow and not 0.0 < args.shadow_sample <= 1.0:
        raise BadInput(f"--shadow-sample must be within (0, 1], got {args.shadow_sample}")
    config_file = None
    if args.model_config_file:
        try:
            with open(args.model_config_file) as handle:
                models = model_config.parse_models(handle.read())
        except OSError as error:
            raise BadInput(f"cannot read model config {args.model_config_file}: {error.strerror}")
        except ServingError as error:
            raise BadInput(f"{args.model_config_file}: {error.message}")
        if args.model_config_file_poll_wait_seconds > 0:
            config_file = os.path.abspath(args.model_config_file)
    elif args.model_base_path:
        if not args.model_name:
            raise BadInput("--model-base-path needs --model-name")
        models = model_config.single_model(args.model_name, os.path.abspath(args.model_base_path))
    else:
        # The release manifest decides what serves; until the first push writes it, the latest
        # version under the base path (there is none yet on a fresh home).
        base = Home.of(config).model_dir
        models = model_config.single_model(args.model_name or config.model_name, base)
        config_file = manifest_path(os.path.dirname(base))
    poll = args.file_system_poll_wait_seconds
    if config_file and args.model_config_file_poll_wait_seconds > 0:
        poll = min(poll, args.model_config_file_poll_wait_seconds)
    try:  # the server's own usage errors exit as the CLI's (2)
        request_log = request_log_from_args(args)
        channel_arguments = parse_grpc_channel_arguments(args.grpc_channel_arguments)
        batching = None
        if args.batching_parameters_file and not args.enable_batching:
            raise ServingConfigError("--batching_parameters_file is set without setting "
                                     "--enable_batching to true")  # as TF Serving's server.cc
        if args.enable_batching:
            from ctpipe.serving.batching import read_batching_parameters

            batching = read_batching_parameters(args.batching_parameters_file)
    except ServingConfigError as error:
        raise BadInput(str(error))
    try:
        server = start_server(models, host=args.host, grpc_port=args.port,
                              rest_port=args.rest_api_port, poll_seconds=poll,
                              max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                              on_event=lambda line: print(line, file=sys.stderr, flush=True),
                              config_file=config_file, canary_percent=args.canary_percent,
                              shadow_sample=args.shadow_sample if args.shadow else None,
                              request_log=request_log, method_name_check=args.method_name_check,
                              grpc_socket_path=args.grpc_socket_path,
                              grpc_channel_arguments=channel_arguments,
                              batching=batching, control_percent=args.control_percent,
                              control_key=args.control_key,
                              grpc_workers=args.grpc_max_threads)
    except OSError as error:
        where = f"{args.host}:{args.port}/{args.rest_api_port}" + \
            (f" or unix:{args.grpc_socket_path}" if args.grpc_socket_path else "")
        raise BadInput(f"cannot listen on {where}: {error.strerror or error}")
    unix = f", gRPC unix:{server.grpc_socket_path}" if server.grpc_socket_path else ""
    print(f"serving {', '.join(m.name for m in models)}: gRPC {server.grpc_address}{unix}, "
          f"REST {server.rest_url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from ctpipe.serving.clients import ServingClientError, make_client

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
