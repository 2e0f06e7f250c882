"""Which model versions are loaded, and the swap to new ones with no failed request.

Like TF Serving's file-system source and manager: every poll lists the all-digit directories
under each model's base path ("00000123" is version 123), picks the versions its policy wants
(latest N, all, specific), loads and warms up new ones *before* they become AVAILABLE, and only
then unloads versions the policy no longer wants - and only once a wanted version is AVAILABLE,
so a corrupt or half-copied newest version never takes serving down (its load is retried with
back-off). A request holds a reference to the servable it resolved, so in-flight requests finish
on the old version while new requests go to the new one. Each model's version map is guarded by
a lock: the poller changes it while request threads read it.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, List, Optional

from ctpipe.components.layout import version_dirs
from ctpipe.pipeline.errors import ServingError
from ctpipe.serving.model_config import ModelSpecConfig, parse_models
from ctpipe.serving.servables import Servable

# tensorflow.serving.ModelVersionStatus.State values
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
STATE_NAMES = {0: "UNKNOWN", START: "START", LOADING: "LOADING", AVAILABLE: "AVAILABLE",
               UNLOADING: "UNLOADING", END: "END"}

log = logging.getLogger(__name__)
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 300.0


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: int
    error_code: str = "OK"
    error_message: str = ""
    servable: Optional[Servable] = None
    failures: int = 0
    retry_at: float = 0.0


class ManagedModel:
    def __init__(self, spec: ModelSpecConfig):
        self.spec = spec
        self._versions: Dict[int, VersionStatus] = {}
        self._lock = threading.Lock()

    def available(self) -> Dict[int, Servable]:
        with self._lock:
            return {v: s.servable for v, s in self._versions.items()
                    if s.state == AVAILABLE and s.servable is not None}

    def statuses(self) -> List[VersionStatus]:
        with self._lock:
            return list(self._versions.values())

    def get(self, version: int) -> Optional[VersionStatus]:
        with self._lock:
            return self._versions.get(version)

    def put(self, status: VersionStatus) -> None:
        with self._lock:
            self._versions[status.version] = status


class ModelRegistry:
    def __init__(self, models: List[ModelSpecConfig], poll_seconds: float = 1.0,
                 on_event: Optional[Callable[[str], None]] = None):
        self._lock = threading.RLock()
        self._models: Dict[str, ManagedModel] = {m.name: ManagedModel(m) for m in models}
        self._poll_seconds = poll_seconds
        self._on_event = on_event or (lambda message: log.info(message))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ModelRegistry":
        self.poll_once()
        self._thread = threading.Thread(target=self._loop, name="model-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive a bad model directory
                log.exception("model poll failed")

    def poll_once(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._sync(model)

    def _sync(self, model: ManagedModel) -> None:
        directories = version_dirs(model.spec.base_path)
        wanted = set(model.spec.wanted_versions(sorted(directories)))
        now = time.monotonic()
        for version in sorted(wanted):
            current = model.get(version)
            unloaded = current is not None and current.state == END and current.error_code == "OK"
            retry = current is not None and current.error_code != "OK" and now >= current.retry_at
            if current is None or unloaded or retry:
                self._load(model, version, directories[version], current if retry else None)
        if not set(model.available()) & wanted:
            return  # keep what serves until a wanted version is AVAILABLE
        for status in model.statuses():
            if status.version not in wanted and status.state == AVAILABLE:
                status.servable = None
                status.state = END
                self._on_event(f"unloaded {model.spec.name} version {status.version}")

    def _load(self, model: ManagedModel, version: int, directory: str,
              failed: Optional[VersionStatus] = None) -> None:
        status = VersionStatus(version=version, state=LOADING,
                               failures=failed.failures if failed else 0)
        model.put(status)
        path = f"{model.spec.base_path.rstrip('/')}/{directory}"
        started = time.monotonic()
        try:
            servable = Servable(model.spec.name, version, path)
            replayed = servable.warm_up()
        except Exception as error:  # noqa: BLE001 - a broken version must not stop serving
            status.failures += 1
            delay = min(RETRY_FIRST_SECONDS * 2 ** (status.failures - 1), RETRY_MAX_SECONDS)
            status.retry_at = time.monotonic() + delay
            status.error_message = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            status.state, status.error_code = END, "UNKNOWN"
            self._on_event(f"failed to load {model.spec.name} version {version} (attempt "
                           f"{status.failures}, retry in {delay:g}s): {status.error_message}")
            return
        status.servable, status.state = servable, AVAILABLE
        self._on_event(f"loaded {model.spec.name} version {version} in "
                       f"{time.monotonic() - started:.1f}s ({replayed} warmup requests)")

    # -- configuration -------------------------------------------------------------------
    def reload_config(self, models: List[ModelSpecConfig]) -> None:
        """HandleReloadConfigRequest: new models load, removed ones unload, labels move."""
        with self._lock:
            old = self._models
            self._models = {}
            for spec in models:
                managed = old.get(spec.name)
                if managed is not None and managed.spec.base_path == spec.base_path:
                    managed.spec = spec
                    self._models[spec.name] = managed
                else:
                    self._models[spec.name] = ManagedModel(spec)
        self.poll_once()
        for spec in models:
            for label, version in spec.labels.items():
                if version not in self._models[spec.name].available():
                    raise ServingError("FAILED_PRECONDITION",
                                       f"label '{label}' points to version {version} of "
                                       f"{spec.name}, which is not available")

    # -- lookups ---------------------------------------------------------------------------
    def _model(self, name: str) -> ManagedModel:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return model

    def resolve(self, name: str, version: Optional[int] = None,
                label: Optional[str] = None) -> Servable:
        model = self._model(name)
        available = model.available()
        if label:
            if label not in model.spec.labels:
                raise ServingError("NOT_FOUND", f"Unrecognized servable version label: {label}")
            version = model.spec.labels[label]
        if version is not None:
            if version not in available:
                raise ServingError("NOT_FOUND",
                                   f"Servable not found for request: Specific({name}, {version})")
            return available[version]
        if not available:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return available[max(available)]

    def status(self, name: str, version: Optional[int] = None,
               label: Optional[str] = None) -> List[VersionStatus]:
        model = self._model(name)
        if label:
            if label not in model.spec.labels:
                raise ServingError("NOT_FOUND", f"Unrecognized servable version label: {label}")
            version = model.spec.labels[label]
        statuses = sorted(model.statuses(), key=lambda s: -s.version)
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise ServingError("NOT_FOUND",
                                   f"Could not find version {version} of model {name}")
        if not statuses:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return statuses

    def model_names(self) -> List[str]:
        with self._lock:
            return sorted(self._models)


def registry_from_config_text(text: str, poll_seconds: float = 1.0,
                              on_event=None) -> ModelRegistry:
    return ModelRegistry(parse_models(text), poll_seconds=poll_seconds, on_event=on_event)
