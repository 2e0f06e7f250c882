"""`ctpipe serve`: the local TF-Serving-compatible server (gRPC 8500, REST 8501, 127.0.0.1).

Serves any TF Serving model layout (<base_path>/<integer version>/saved_model.pb): the pipeline's
pushes, or any SavedModel with predict/classify/regress signatures.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable, List, Optional

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
                 request_log=None) -> RunningServer:
    """`config_file`: a ModelServerConfig re-read every poll (the release manifest); `models`
    serve until it exists. `shadow_sample`: score canary on this fraction of stable's requests.
    `request_log`: a serving/request_log.py RequestLogger."""
    from ctpipe.serving.core import Shadow
    from ctpipe.serving.metrics import Metrics

    metrics = Metrics()
    shadow = Shadow(metrics, shadow_sample) if shadow_sample else None
    registry = ModelRegistry(models, poll_seconds=poll_seconds, on_event=on_event,
                             config_file=config_file, canary_percent=canary_percent).start()
    core = ServingCore(registry, metrics, shadow)
    core.request_log = request_log
    if request_log is not None:
        metrics.add_gauges(lambda: _request_log_lines(request_log))
    grpc_server, bound_grpc = start_grpc(core, host, grpc_port, max_request_bytes)
    try:
        rest_server = start_rest(core, host, rest_port, max_request_bytes)
    except OSError:
        grpc_server.stop(grace=0)
        registry.stop()
        raise
    threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    return RunningServer(core, grpc_server, rest_server, host, bound_grpc,
                         rest_server.server_address[1])


def _request_log_lines(request_log) -> List[str]:
    lines = []
    for key, value in sorted(request_log.stats().items()):
        lines.append(f"# TYPE ctpipe_request_log_{key} gauge")
        lines.append(f"ctpipe_request_log_{key} {value}")
    return lines
