"""The request core both protocols share: resolve the servable, run the API, record metrics.
REST (serving/rest.py) and gRPC (serving/grpc_service.py) only translate wire formats."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ctpipe.pipeline.errors import ServingError
from ctpipe.serving.metrics import Metrics
from ctpipe.serving.registry import ModelRegistry
from ctpipe.serving.servables import Servable


class ServingCore:
    def __init__(self, registry: ModelRegistry, metrics: Optional[Metrics] = None):
        self.registry = registry
        self.metrics = metrics or Metrics()

    def run(self, api: str, entrypoint: str, model: str, version: Optional[int],
            label: Optional[str], work: Callable[[Servable], Any]) -> Tuple[Servable, Any]:
        """Resolve the servable once and do all the request's work on that one object, so a
        version swap between two lookups cannot fail the request; time it for the metrics."""
        started = time.perf_counter()
        servable, status = None, "OK"
        try:
            servable = self.registry.resolve(model, version, label)
            return servable, work(servable)
        except ServingError as error:
            status = error.code
            error.recorded = True
            raise
        except Exception as error:  # noqa: BLE001 - never let a request kill the server
            status = "INTERNAL"
            internal = ServingError("INTERNAL", f"{type(error).__name__}: {error}")
            internal.recorded = True
            raise internal
        finally:
            shown = str(servable.version) if servable else str(version or label or "")
            self.metrics.observe(model, shown, api, entrypoint, status,
                                 time.perf_counter() - started)

    def record_rejected(self, entrypoint: str, api: str, model: str, error: ServingError,
                        seconds: float) -> None:
        """Requests refused before reaching a servable (bad JSON, unknown signature...)."""
        if not getattr(error, "recorded", False):
            self.metrics.observe(model, "", api, entrypoint, error.code, seconds)

    def predict(self, entrypoint: str, model: str, version: Optional[int], label: Optional[str],
                signature: str, inputs: Dict[str, Any], output_filter: Sequence[str] = ()):
        return self.run("predict", entrypoint, model, version, label,
                           lambda s: s.predict(signature, inputs, output_filter))

    def classify(self, entrypoint: str, model: str, version: Optional[int],
                 label: Optional[str], signature: str, examples: List[bytes]):
        return self.run("classify", entrypoint, model, version, label,
                           lambda s: s.classify(signature, examples))

    def regress(self, entrypoint: str, model: str, version: Optional[int], label: Optional[str],
                signature: str, examples: List[bytes]):
        return self.run("regress", entrypoint, model, version, label,
                           lambda s: s.regress(signature, examples))

    def metadata(self, entrypoint: str, model: str, version: Optional[int],
                 label: Optional[str]) -> Servable:
        servable, _ = self.run("metadata", entrypoint, model, version, label, lambda s: None)
        return servable
