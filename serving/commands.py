"""The serving area's subcommands: serve (a TF-Serving-compatible server) and predict."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ctpipe.pipeline.command_line import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    add_config_flags,
    load_config,
)


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
    serve.add_argument("--canary-percent", type=float, default=0.0,
                       help="send this %% of unlabelled requests to the canary version")
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
    from ctpipe.pipeline.spans import BadInput
    from ctpipe.serving import model_config
    from ctpipe.serving.request_log import from_args as request_log_from_args
    from ctpipe.serving.servables import ServingError
    from ctpipe.serving.server import start_server

    config = load_config(args, home=args.home)
    if not 0.0 <= args.canary_percent <= 100.0:
        raise BadInput(f"--canary-percent must be within [0, 100], got {args.canary_percent}")
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
        base = os.path.abspath(config.serving_model_dir)
        models = model_config.single_model(args.model_name or config.model_name, base)
        config_file = manifest_path(os.path.dirname(base))
    poll = args.file_system_poll_wait_seconds
    if config_file and args.model_config_file_poll_wait_seconds > 0:
        poll = min(poll, args.model_config_file_poll_wait_seconds)
    try:
        server = start_server(models, host=args.host, grpc_port=args.port,
                              rest_port=args.rest_api_port, poll_seconds=poll,
                              max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                              on_event=lambda line: print(line, file=sys.stderr, flush=True),
                              config_file=config_file, canary_percent=args.canary_percent,
                              shadow_sample=args.shadow_sample if args.shadow else None,
                              request_log=request_log_from_args(args))
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
    from ctpipe.pipeline.spans import BadInput
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
