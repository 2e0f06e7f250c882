"""The pipeline metrics over HTTP (`watch --metrics-port`): a small threaded server that
recomputes the exposition (pipeline/observe/metrics.py) at each scrape of /metrics."""
from __future__ import annotations

import http.server
import logging
import threading
from typing import Optional

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput
from ctpipe.pipeline.observe.metrics import registry

LOG = logging.getLogger(__name__)
METRICS_PATH = "/metrics"


class MetricsServer(http.server.ThreadingHTTPServer):
    """GET /metrics; one scrape reads the home at a time (others wait for it)."""

    daemon_threads = True

    def __init__(self, address, registry):
        super().__init__(address, _Handler)
        self.registry = registry
        self.scrape_lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, name="ctpipe-metrics",
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{host if ':' not in host else f'[{host}]'}:{self.port}{METRICS_PATH}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        # The classic text format (every Prometheus 2.x and 3.x, and other scrapers, read it;
        # our names need none of 1.0.0's UTF-8 escaping).
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._send(404, "text/plain; charset=utf-8",
                       f"not found: metrics are at {METRICS_PATH}\n".encode(), body)
            return
        try:
            with self.server.scrape_lock:
                payload = generate_latest(self.server.registry)
        except Exception as error:  # noqa: BLE001 - answer 500, keep serving
            LOG.exception("pipeline metrics: scrape failed")
            self._send(500, "text/plain; charset=utf-8",
                       f"{type(error).__name__}: {error}\n".encode(), body)
            return
        self._send(200, CONTENT_TYPE_PLAIN_0_0_4, payload, body)

    def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        LOG.debug("pipeline metrics: " + format, *args)


def serve_metrics(config: PipelineConfig, port: int, host: str = "127.0.0.1",
                  data_root: Optional[str] = None) -> MetricsServer:
    """Serve the exposition at http://host:port/metrics from a background thread (port 0: any
    free port, see `.port`). `close()` stops it."""
    try:
        server = MetricsServer((host, port), registry(config, data_root))
    except OSError as error:
        raise BadInput(f"cannot serve metrics on {host}:{port}: {error.strerror or error}")
    server.thread.start()
    return server
