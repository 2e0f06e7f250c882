"""`ctpipe serve`: the local TF-Serving-compatible server (gRPC 8500, REST 8501, 127.0.0.1).

Serves any TF Serving model layout (<base_path>/<integer version>/saved_model.pb): the pipeline's
pushes, or any SavedModel with predict/classify/regress signatures.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ctpipe.components.serving_metric_names import REQUEST_LOG_PREFIX
from ctpipe.serving.core import ServingCore
from ctpipe.serving.grpc_service import start_grpc
from ctpipe.serving.model_config import ModelSpecConfig
from ctpipe.serving.registry import ModelRegistry
from ctpipe.serving.rest import start_rest

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclasses.dataclass
class RunningServer:
    core: ServingCore
    grpc_server: object
    rest_server: object
    host: str
    grpc_port: int
    rest_port: int
    grpc_socket_path: Optional[str] = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def stop(self) -> None:
        self.rest_server.shutdown()
        self.rest_server.server_close()
        self.grpc_server.stop(grace=2).wait()
        self.core.registry.stop()
        if self.core.shadow is not None:
            self.core.shadow.close()
        if self.core.request_log is not None:
            self.core.request_log.close()


def start_server(models: List[ModelSpecConfig], host: str = "127.0.0.1", grpc_port: int = 8500,
                 rest_port: int = 8501, poll_seconds: float = 1.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 on_event: Optional[Callable[[str], None]] = None,
                 config_file: Optional[str] = None, canary_percent: float = 0.0,
                 shadow_sample: Optional[float] = None,
                 request_log=None, method_name_check: bool = False,
                 grpc_socket_path: Optional[str] = None,
                 grpc_channel_arguments: Sequence[Tuple[str, Union[int, str]]] = (),
                 batching=None, control_percent: float = 0.0,
                 control_key: Optional[str] = None,
                 grpc_workers: Optional[int] = None) -> RunningServer:
    """`config_file`: a ModelServerConfig re-read every poll (the release manifest); `models`
    serve until it exists. `shadow_sample`: score canary on this fraction of stable's requests.
    `request_log`: a serving/request_log.py RequestLogger. As TF Serving's flags:
    `method_name_check` --enable_signature_method_name_check (default off),
    `grpc_socket_path` --grpc_socket_path (gRPC on a Unix socket too),
    `grpc_channel_arguments` --grpc_channel_arguments (parse_grpc_channel_arguments),
    `batching` --enable_batching with a serving/batching.py BatchingOptions (None: off),
    `grpc_workers` --grpc_max_threads (gRPC handler threads; None: default_grpc_workers()).
    `control_percent`/`control_key`: a sticky share of unlabelled requests, by the sha256 of
    the request's unit key (a header or an input feature), goes to the `control` label."""
    from ctpipe.serving.core import Shadow
    from ctpipe.serving.metrics import Metrics

    metrics = Metrics()
    shadow = Shadow(metrics, shadow_sample) if shadow_sample else None
    registry = ModelRegistry(models, poll_seconds=poll_seconds, on_event=on_event,
                             config_file=config_file, canary_percent=canary_percent,
                             method_name_check=method_name_check,
                             batching=batching, control_percent=control_percent).start()
    core = ServingCore(registry, metrics, shadow)
    core.request_log = request_log
    core.control_key = control_key if control_percent > 0 else None
    if request_log is not None:
        metrics.add_gauges(lambda: _request_log_lines(request_log))
    try:
        grpc_server, bound_grpc = start_grpc(core, host, grpc_port, max_request_bytes,
                                             workers=grpc_workers, socket_path=grpc_socket_path,
                                             channel_arguments=grpc_channel_arguments)
    except (OSError, ValueError):
        registry.stop()
        raise
    try:
        rest_server = start_rest(core, host, rest_port, max_request_bytes)
    except OSError:
        grpc_server.stop(grace=0)
        registry.stop()
        raise
    threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    return RunningServer(core, grpc_server, rest_server, host, bound_grpc,
                         rest_server.server_address[1], grpc_socket_path)


def _request_log_lines(request_log) -> List[str]:
    lines = []
    for key, value in sorted(request_log.stats().items()):
        lines.append(f"# TYPE {REQUEST_LOG_PREFIX}_{key} gauge")
        lines.append(f"{REQUEST_LOG_PREFIX}_{key} {value}")
    return lines
