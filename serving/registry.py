"""Which model versions are loaded, and the swap to new ones with no failed request.

Like TF Serving's file-system source and manager: every poll lists the all-digit directories
under each model's base path ("00000123" is version 123), picks the versions its policy wants
(latest N, all, specific), loads and warms up new ones *before* they become AVAILABLE, and only
then unloads versions the policy no longer wants - and only once a wanted version is AVAILABLE,
so a corrupt or half-copied newest version never takes serving down (its load is retried with
back-off). A request holds a reference to the servable it resolved, so in-flight requests finish
on the old version while new requests go to the new one. Each model's version map is guarded by
a lock: the poller changes it while request threads read it.

Labels (stable, canary, ...) follow TF Serving's rule that a label only points at a loaded
version: when the config moves a label to a version that is not AVAILABLE yet, the label keeps
its old version (which stays loaded) until the new one is, so a label move never fails a
request - even when the writer did not wait for the load. With a config file (`--home`'s release
manifest, or `--model-config-file`) the registry re-reads it every poll and applies changes.
Requests with no version and no label go to `stable` when the model has one (else the latest
version, as TF Serving does); `canary_percent` of them go to `canary` instead.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, List, Optional

from ctpipe.components.layout import version_dirs
from ctpipe.serving.errors import ServingError
from ctpipe.serving.model_config import ModelSpecConfig, parse_models
from ctpipe.serving.servables import Servable

STABLE, CANARY, CONTROL = "stable", "canary", "control"


def in_control(unit: str, percent: float) -> bool:
    """Whether unit key `unit` belongs to the control arm at `percent` %: sha256 of the key
    (never Python's salted hash), so the same unit gets the same arm in every process and
    after every restart, and raising the percent only moves units into control."""
    import hashlib

    if percent <= 0:
        return False
    digest = hashlib.sha256(b"ctpipe-control\0" + unit.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 * 100.0 < percent

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
        self._labels: Dict[str, int] = {}  # effective labels: only AVAILABLE versions
        self._canary_credit = 0.0

    def labels(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._labels)

    def update_labels(self) -> List[str]:
        """Point each configured label at its version once that is AVAILABLE; until then keep
        the old one if it still serves. Returns readable changes."""
        changes = []
        with self._lock:
            available = {v for v, s in self._versions.items()
                         if s.state == AVAILABLE and s.servable is not None}
            effective = {}
            for label, wanted in self.spec.labels.items():
                old = self._labels.get(label)
                if wanted in available:
                    effective[label] = wanted
                    if old != wanted:
                        changes.append(f"label {label} of {self.spec.name} -> version {wanted}"
                                       + (f" (was {old})" if old is not None else ""))
                elif old is not None and old in available:
                    effective[label] = old  # pending: the new version is not loaded yet
            for label in set(self._labels) - set(effective):
                changes.append(f"label {label} of {self.spec.name} removed")
            self._labels = effective
        return changes

    def pinned_versions(self) -> set:
        """Versions a label points at (they stay loaded whatever the policy says)."""
        with self._lock:
            return set(self._labels.values())

    def route_to_canary(self, percent: float) -> bool:
        """Exactly `percent` % of calls answer True, spread evenly (no randomness)."""
        if percent <= 0:
            return False
        with self._lock:
            self._canary_credit += percent
            if self._canary_credit >= 100.0:
                self._canary_credit -= 100.0
                return True
            return False

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
                 on_event: Optional[Callable[[str], None]] = None,
                 config_file: Optional[str] = None, canary_percent: float = 0.0,
                 method_name_check: bool = False, batching=None,
                 control_percent: float = 0.0):
        """`method_name_check`: TF Serving's --enable_signature_method_name_check (default
        off), for every version this registry loads (serving/servables.py). `batching`:
        serving/batching.py BatchingOptions (--enable_batching) for every version, or None."""
        self._lock = threading.RLock()
        self._models: Dict[str, ManagedModel] = {m.name: ManagedModel(m) for m in models}
        self._poll_seconds = poll_seconds
        self._on_event = on_event or (lambda message: log.info(message))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.config_file = config_file
        self._config_text: Optional[str] = None
        if not 0.0 <= canary_percent <= 100.0:
            raise ValueError(f"canary percent must be within [0, 100], got {canary_percent}")
        self.canary_percent = canary_percent
        if not 0.0 <= control_percent <= 100.0:
            raise ValueError(f"control percent must be within [0, 100], got {control_percent}")
        self.control_percent = control_percent
        self.method_name_check = method_name_check
        self.batching = batching

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
        if self.config_file:
            self._read_config_file()
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._settle(model)

    def _settle(self, model: ManagedModel) -> None:
        """Load what is wanted, move labels to what loaded, then unload what nobody needs."""
        directories = version_dirs(model.spec.base_path)  # one listing per poll
        wanted = set(model.spec.wanted_versions(sorted(directories)))
        self._sync(model, directories, wanted)
        for change in model.update_labels():
            self._on_event(change)
        self._unload_unwanted(model, wanted)

    def _read_config_file(self) -> None:
        """Apply the config file when its text changed; a missing or broken file changes
        nothing (what serves keeps serving) and is reported once."""
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(self.config_file) as handle:
                text = handle.read()
        except Exception as error:  # noqa: BLE001 - absent until the first push, or unreadable
            if self._config_text:  # it was there: say so once, keep serving what loaded
                self._on_event(f"cannot read model config {self.config_file} (keeping the "
                               f"current models): {str(error).splitlines()[0]}")
            self._config_text = ""
            return
        if text == self._config_text:
            return
        self._config_text = text
        try:
            models = parse_models(text)
        except ServingError as error:
            self._on_event(f"ignored model config {self.config_file}: {error.message}")
            return
        self._apply_specs(models)
        self._on_event(f"model config {self.config_file}: " + "; ".join(
            f"{m.name} versions {list(m.specific_versions) if m.policy == 'specific' else m.policy}"
            f" labels {m.labels}" for m in models))

    def _apply_specs(self, models: List[ModelSpecConfig]) -> None:
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

    def _sync(self, model: ManagedModel, directories: Dict[int, str], wanted: set) -> None:
        now = time.monotonic()
        for version in sorted(wanted):
            current = model.get(version)
            unloaded = current is not None and current.state == END and current.error_code == "OK"
            retry = current is not None and current.error_code != "OK" and now >= current.retry_at
            if current is None or unloaded or retry:
                self._load(model, version, directories[version], current if retry else None)

    def _unload_unwanted(self, model: ManagedModel, wanted: set) -> None:
        if not set(model.available()) & wanted:
            return  # keep what serves until a wanted version is AVAILABLE
        pinned = model.pinned_versions()  # a label's old version until its new one loads
        for status in model.statuses():
            if status.version not in wanted and status.version not in pinned and \
                    status.state == AVAILABLE:
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
            servable = Servable(model.spec.name, version, path,
                                method_name_check=self.method_name_check,
                                batching=self.batching)
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
        self._apply_specs(models)
        with self._lock:
            managed = list(self._models.values())
        for model in managed:
            self._settle(model)
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
        return self.route(name, version, label)[0]

    def route(self, name: str, version: Optional[int] = None,
              label: Optional[str] = None, unit: Optional[str] = None
              ) -> "tuple[Servable, str]":
        """(servable, the label it was reached by: the request's, or stable/canary/control for
        an unlabelled request to a model with labels, else ""). `unit`: the request's unit key
        (--control-key); a unit in_control() goes to `control` when the model has one, the same
        arm every time. A request without a unit key never goes to control."""
        model = self._model(name)
        available = model.available()
        labels = model.labels()
        routed = label or ""
        if label:
            if label not in labels:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Unrecognized servable version label: {label}")
            version = labels[label]
        elif version is None and STABLE in labels:
            routed = STABLE
            if CONTROL in labels and unit is not None and \
                    in_control(unit, self.control_percent):
                routed = CONTROL
            elif CANARY in labels and model.route_to_canary(self.canary_percent):
                routed = CANARY
            version = labels[routed]
        if version is not None:
            if version not in available:
                raise ServingError("NOT_FOUND",
                                   f"Servable not found for request: Specific({name}, {version})")
            return available[version], routed
        if not available:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return available[max(available)], routed

    def labels(self, name: str) -> Dict[str, int]:
        """Effective labels of a model (only AVAILABLE versions)."""
        return self._model(name).labels()

    def status(self, name: str, version: Optional[int] = None,
               label: Optional[str] = None) -> List[VersionStatus]:
        model = self._model(name)
        if label:
            labels = model.labels()
            if label not in labels:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Unrecognized servable version label: {label}")
            version = labels[label]
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
