"""The request core both protocols share: resolve the servable, run the API, record metrics,
and shadow-score the canary. REST (serving/rest.py) and gRPC (serving/grpc_service.py) only
translate wire formats."""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ctpipe.components.serving_metric_names import LABEL_VERSION
from ctpipe.serving.errors import ServingError
from ctpipe.serving.metrics import Metrics
from ctpipe.serving.registry import ModelRegistry
from ctpipe.serving.servables import Servable

SHADOW_QUEUE = 64  # shadow calls waiting at most; beyond, new ones are dropped (and counted)


class Shadow:
    """Scores canary on a sample of the requests stable answered, off the request path: the
    client gets stable's answer at stable's latency; the comparison only feeds metrics.

    Disagreement: rows whose 0.5-thresholded first output differs (a changed decision), and the
    summed absolute difference of the first output (how far the scores moved)."""

    def __init__(self, metrics: Metrics, sample_rate: float = 1.0, workers: int = 1):
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"shadow sample rate must be within (0, 1], got {sample_rate}")
        self.metrics, self.sample_rate = metrics, sample_rate
        self._credit = 0.0
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(SHADOW_QUEUE)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="shadow")

    def _sampled(self) -> bool:
        with self._lock:
            self._credit += self.sample_rate
            if self._credit >= 1.0 - 1e-9:
                self._credit -= 1.0
                return True
            return False

    def submit(self, model: str, stable: Servable, canary: Servable,
               work: Callable[[Servable], Any], answer: Any) -> None:
        if not self._sampled():
            return
        if not self._pending.acquire(blocking=False):
            self.metrics.count_shadow_dropped(model)
            return
        self._pool.submit(self._compare, model, stable, canary, work, answer)

    def _compare(self, model, stable, canary, work, answer) -> None:
        started = time.perf_counter()
        try:
            shadow_answer = work(canary)
            seconds = time.perf_counter() - started
            ours, theirs = _first_scores(answer), _first_scores(shadow_answer)
            if ours is None or theirs is None or ours.shape != theirs.shape:
                self.metrics.observe_shadow(model, stable.version, canary.version, 0, 0, 0.0,
                                            seconds, status="INCOMPARABLE")
                return
            flips = int(np.sum((ours > 0.5) != (theirs > 0.5)))
            self.metrics.observe_shadow(model, stable.version, canary.version, ours.size, flips,
                                        float(np.sum(np.abs(ours - theirs))), seconds)
        except Exception:  # noqa: BLE001 - a failing canary is a metric, never a request error
            self.metrics.observe_shadow(model, stable.version, canary.version, 0, 0, 0.0,
                                        time.perf_counter() - started, status="ERROR")
        finally:
            self._pending.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _first_scores(answer: Any) -> Optional[np.ndarray]:
    """The first float output of a predict (dict of arrays), classify or regress answer."""
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], dict):
        answer = answer[1]  # (servable, outputs) from ServingCore.run
    if isinstance(answer, dict):
        for value in answer.values():
            array = np.asarray(value)
            if array.dtype.kind == "f":
                return array.reshape(-1).astype(np.float64)
        return None
    try:
        array = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array.reshape(-1)


class ServingCore:
    def __init__(self, registry: ModelRegistry, metrics: Optional[Metrics] = None,
                 shadow: Optional[Shadow] = None):
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.shadow = shadow
        self.request_log = None  # serving/request_log.py RequestLogger, set by start_server
        self.control_key: Optional[str] = None  # --control-key: a header or an input feature

    def unit_of(self, headers: Any = None, inputs: Optional[Dict[str, Any]] = None
                ) -> Optional[str]:
        """The request's unit key for control routing: the --control-key header (gRPC
        metadata or HTTP header, case-insensitive), else the first value of the input feature
        of that name; None without one (such a request never goes to control)."""
        key = self.control_key
        if not key:
            return None
        for name, value in (headers or ()):
            if name.lower() == key.lower():
                return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
        if inputs and key in inputs:
            first = np.asarray(inputs[key]).reshape(-1)[:1]
            if first.size:
                value = first[0]
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return None
        self.metrics.add_gauges(self._label_gauges)

    def _label_gauges(self) -> List[str]:
        lines = [f"# TYPE {LABEL_VERSION} gauge"]
        for name in self.registry.model_names():
            for label, version in sorted(self.registry.labels(name).items()):
                lines.append(f'{LABEL_VERSION}{{model_name="{name}",'
                             f'version_label="{label}"}} {version}')
        return lines

    def run(self, api: str, entrypoint: str, model: str, version: Optional[int],
            label: Optional[str], work: Callable[[Servable], Any],
            unit: Optional[str] = None) -> Tuple[Servable, Any]:
        """Resolve the servable once and do all the request's work on that one object, so a
        version swap between two lookups cannot fail the request; time it for the metrics."""
        started = time.perf_counter()
        servable, status, routed = None, "OK", label or ""
        try:
            servable, routed = self.registry.route(model, version, label, unit)
            answer = work(servable)
            if self.shadow is not None and routed == "stable" and not label:
                canary = self._canary(model, servable)
                if canary is not None:
                    self.shadow.submit(model, servable, canary, work, answer)
            return servable, answer
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
            shown = str(servable.version) if servable else str(version or "")
            self.metrics.observe(model, shown, api, entrypoint, status,
                                 time.perf_counter() - started, routed)

    def _canary(self, model: str, stable: Servable) -> Optional[Servable]:
        labels = self.registry.labels(model)
        if "canary" not in labels or labels["canary"] == stable.version:
            return None
        try:
            return self.registry.resolve(model, labels["canary"])
        except ServingError:
            return None

    def record_rejected(self, entrypoint: str, api: str, model: str, error: ServingError,
                        seconds: float) -> None:
        """Requests refused before reaching a servable (bad JSON, unknown signature...)."""
        if not getattr(error, "recorded", False):
            self.metrics.observe(model, "", api, entrypoint, error.code, seconds)

    def predict(self, entrypoint: str, model: str, version: Optional[int], label: Optional[str],
                signature: str, inputs: Dict[str, Any], output_filter: Sequence[str] = (),
                unit: Optional[str] = None):
        servable, outputs = self.run("predict", entrypoint, model, version, label,
                                     lambda s: s.predict(signature, inputs, output_filter),
                                     unit)
        self.log_request("predict", servable, signature, inputs, outputs)
        return servable, outputs

    def classify(self, entrypoint: str, model: str, version: Optional[int],
                 label: Optional[str], signature: str, examples: List[bytes],
                 unit: Optional[str] = None):
        servable, results = self.run("classify", entrypoint, model, version, label,
                                     lambda s: s.classify(signature, examples), unit)
        self.log_request("classify", servable, signature, examples, results)
        return servable, results

    def regress(self, entrypoint: str, model: str, version: Optional[int], label: Optional[str],
                signature: str, examples: List[bytes], unit: Optional[str] = None):
        servable, values = self.run("regress", entrypoint, model, version, label,
                                    lambda s: s.regress(signature, examples), unit)
        self.log_request("regress", servable, signature, examples, values)
        return servable, values

    def log_request(self, api: str, servable: Servable, signature: str, request: Any,
             answer: Any) -> None:
        """A sampled request and its answer into the request log (TF Serving PredictionLog);
        protos are built only for sampled requests, and logging never fails a request."""
        logger = self.request_log
        if logger is None or not logger.should_sample():
            return
        from ctpipe.serving import request_log

        try:
            build = {"predict": request_log.predict_protos,
                     "classify": request_log.classify_protos,
                     "regress": request_log.regress_protos}[api]
            request_proto, response_proto = build(servable.name, servable.version, signature,
                                                  request, answer)
            getattr(logger, f"log_{api}")(request_proto.model_spec, request_proto,
                                          response_proto)
        except Exception:  # noqa: BLE001 - a log record is never worth a failed request
            import logging

            logging.getLogger(__name__).exception("request log record dropped")

    def metadata(self, entrypoint: str, model: str, version: Optional[int],
                 label: Optional[str]) -> Servable:
        servable, _ = self.run("metadata", entrypoint, model, version, label, lambda s: None)
        return servable
