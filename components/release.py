"""The release manifest: `<serving dir>/models.config`, the one source of truth for what serves.

It is a TF Serving ModelServerConfig (text format), so TF Serving (`--model_config_file`, polled
with `--model_config_file_poll_wait_seconds`) and `ctpipe serve --home` read the same file. Each
model uses the `specific` version policy and three labels:

  stable    what unlabelled requests get
  canary    a newly pushed version on trial; when nothing is on trial the file still names
            `canary`, pointing at stable, so a traffic split that sends a share of requests to
            the canary label (serving/k8s/canary-route) never reaches a missing label
  previous  the stable before the current one: `rollback` moves stable back to it at once,
            because it is still loaded
  control   an old version pinned for good by `ctpipe control pin V` (the A/B test that never
            ends): it stays loaded, every fresh-span evaluation scores it, and lift = stable -
            control says what retraining buys; promote, rollback and pushes never move it

Rules every change keeps (checked in `check`, applied in `apply`):
  * a version is named only after its directory is complete on disk (the Pusher renames it into
    place first), so the protocol also holds on object storage, where rename is not atomic;
  * a label never points at a version that is not loaded: a version new to the policy is added
    first, the change waits until the server reports it AVAILABLE (when a server address is
    known), and only then are labels moved - TF Serving's own two-phase rule;
  * the file is replaced whole: a temporary file renamed over it locally, one object write on
    object storage - a reader sees the old manifest or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

from ctpipe.components.basics import atomic_write, file_lock

MANIFEST_FILE = "models.config"
STABLE, CANARY, PREVIOUS, CONTROL = "stable", "canary", "previous", "control"
LABELS = (STABLE, CANARY, PREVIOUS, CONTROL)


class ReleaseError(RuntimeError):
    """A release change that would break a rule; nothing was written."""


@dataclasses.dataclass
class Release:
    """One model's entry in the manifest."""

    model_name: str
    base_path: str
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)
    # Versions in the policy without a label: being loaded (phase 1 of a label move).
    loading: List[int] = dataclasses.field(default_factory=list)

    @property
    def stable(self) -> Optional[int]:
        return self.labels.get(STABLE)

    @property
    def canary(self) -> Optional[int]:
        """The version on trial; None when nothing is (the file then has canary = stable)."""
        canary = self.labels.get(CANARY)
        return None if canary == self.labels.get(STABLE) else canary

    @property
    def previous(self) -> Optional[int]:
        return self.labels.get(PREVIOUS)

    @property
    def control(self) -> Optional[int]:
        return self.labels.get(CONTROL)

    @property
    def versions(self) -> List[int]:
        """Versions the server must load: the labelled ones and any being loaded."""
        return sorted(set(self.labels.values()) | set(self.loading))

    def relabelled(self, labels: Dict[str, int]) -> "Release":
        """A completed change: exactly the labelled versions serve."""
        return Release(self.model_name, self.base_path, dict(labels))

    def to_dict(self) -> Dict[str, object]:
        return {"model_name": self.model_name, "base_path": self.base_path,
                "stable": self.stable, "canary": self.canary, "previous": self.previous,
                "control": self.control, "versions": self.versions}


def manifest_path(serving_dir: str) -> str:
    """`serving_dir` is the folder holding model base paths (<home>/serving)."""
    return os.path.join(serving_dir, MANIFEST_FILE)


# ---------------------------------------------------------------------------------------------
# Pure transitions.


def after_push(release: Release, version: int) -> Release:
    """A new version becomes canary; stable (and control) unchanged. The very first push becomes
    stable. A canary that never got promoted is replaced (it was never stable, so nothing to
    keep) - the local runner first checks the new version is not worse than that canary
    (pipeline/ops/fresh_labels.py, README "Release")."""
    if release.stable is None:
        return release.relabelled({STABLE: version})
    labels = {k: v for k, v in release.labels.items() if k != CANARY}
    labels[CANARY] = version
    return release.relabelled(labels)


def promoted(release: Release, version: Optional[int] = None) -> Release:
    """stable := canary (or `version`); the old stable becomes `previous` (kept loaded)."""
    target = version if version is not None else release.canary
    if target is None:
        raise ReleaseError("nothing to promote: no canary (give --version)")
    if target == release.stable:
        raise ReleaseError(f"version {target} is already stable")
    labels = {STABLE: target}
    if release.stable is not None:
        labels[PREVIOUS] = release.stable
    if release.canary is not None and release.canary != target:
        labels[CANARY] = release.canary
    return release.relabelled(_keep_control(release, labels))


def rolled_back(release: Release, to: Optional[int] = None) -> Release:
    """stable := `previous` (or `to`); the rolled-back version leaves service entirely."""
    target = to if to is not None else release.previous
    if target is None:
        raise ReleaseError("nothing to roll back to: no previous stable version (give --to)")
    if target == release.stable:
        raise ReleaseError(f"version {target} is already stable")
    labels = {STABLE: target}
    if release.canary is not None and release.canary not in (target, release.stable):
        labels[CANARY] = release.canary
    return release.relabelled(_keep_control(release, labels))


def _keep_control(release: Release, labels: Dict[str, int]) -> Dict[str, int]:
    if release.control is not None:
        labels[CONTROL] = release.control
    return labels


def control_pinned(release: Release, version: int) -> Release:
    """`control` := version, for good (until `unpin`); nothing else moves."""
    if release.control == version:
        raise ReleaseError(f"version {version} is already the control")
    return release.relabelled({**release.labels, CONTROL: version})


def control_unpinned(release: Release) -> Release:
    if release.control is None:
        raise ReleaseError("no control version is pinned")
    return release.relabelled({k: v for k, v in release.labels.items() if k != CONTROL})


def without_canary(release: Release) -> Release:
    """Take the canary out of traffic (the guard's first resort)."""
    if release.canary is None:
        raise ReleaseError("there is no canary")
    return release.relabelled({k: v for k, v in release.labels.items() if k != CANARY})


# ---------------------------------------------------------------------------------------------
# The file.


def to_text(releases: List[Release]) -> str:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for release in releases:
        entry = config.model_config_list.config.add(
            name=release.model_name, base_path=release.base_path, model_platform="tensorflow")
        entry.model_version_policy.specific.versions.extend(release.versions)
        labels = dict(release.labels)
        if STABLE in labels and release.canary is None:
            labels[CANARY] = labels[STABLE]  # nothing on trial: canary routes to stable
        for label in LABELS:
            if label in labels:
                entry.version_labels[label] = labels[label]
    header = ("# ctpipe release manifest (TF Serving ModelServerConfig). Written by the Pusher "
              "and by\n# `ctpipe promote|rollback`; edit with those commands, not by hand.\n")
    return header + text_format.MessageToString(config)


def from_text(text: str) -> List[Release]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ReleaseError(f"release manifest is not a ModelServerConfig: {error}")
    releases = []
    for entry in config.model_config_list.config:
        labels = dict(entry.version_labels)
        if labels.get(CANARY) is not None and labels.get(CANARY) == labels.get(STABLE):
            del labels[CANARY]  # canary = stable: nothing on trial
        loading = [v for v in entry.model_version_policy.specific.versions
                   if v not in set(labels.values())]
        releases.append(Release(entry.name, entry.base_path, labels, loading))
    return releases


def read(path: str) -> List[Release]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        return from_text(handle.read())


def read_release(path: str, model_name: str, base_path: str) -> Release:
    for release in read(path):
        if release.model_name == model_name:
            return release
    return Release(model_name, base_path)


def write(path: str, releases: List[Release]) -> None:
    """Replace the manifest whole (see the module docstring)."""
    import tensorflow as tf

    text = to_text(releases)
    if "://" in path:
        with tf.io.gfile.GFile(path, "w") as handle:  # one object PUT
            handle.write(text)
        return
    atomic_write(path, text)


# ---------------------------------------------------------------------------------------------
# Applying a change with the two-phase rule.

WaitAvailable = Callable[[str, int], None]


def check(release: Release, on_disk: List[int],
          complete: Callable[[int], bool] = lambda version: True) -> None:
    """Every version the manifest would name is a complete folder under `release.base_path`
    (the path written to the file - what the server reads)."""
    missing = [v for v in release.versions if v not in set(on_disk)]
    if missing:
        raise ReleaseError(f"version(s) {', '.join(map(str, missing))} of {release.model_name} "
                           f"are not under {release.base_path}")
    incomplete = [v for v in release.versions if not complete(v)]
    if incomplete:
        raise ReleaseError(f"version(s) {', '.join(map(str, incomplete))} of "
                           f"{release.model_name} under {release.base_path} are incomplete "
                           "(no saved_model.pb)")


def version_complete(base_path: str) -> Callable[[int], bool]:
    import tensorflow as tf

    from ctpipe.components.layout import version_dirs

    names = version_dirs(base_path)
    return lambda version: version in names and tf.io.gfile.exists(
        os.path.join(base_path, names[version], "saved_model.pb"))


def moved_note(before: Release, base_path: str) -> Optional[str]:
    """The line said when the manifest named another base path than this home's (a home moved,
    restored from backup or mounted elsewhere): the manifest is rewritten to this home's."""
    if before.base_path and before.base_path.rstrip("/") != base_path.rstrip("/"):
        return (f"release manifest base_path was {before.base_path}, not this home's "
                f"{base_path} (home moved?): rewritten to {base_path}")
    return None


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """One writer at a time (the Pusher, promote, rollback, the guard) on a local manifest.
    Not the pipeline's home lock: a rollback must not wait for a training cycle to finish.
    Object storage has no lock; there one writer (the pipeline) plus operators is assumed."""
    if "://" in path:
        yield
        return
    with file_lock(f"{path}.lock"):
        yield


def apply(path: str, model_name: str, base_path: str, change: Callable[[Release], Release],
          wait_available: Optional[WaitAvailable] = None) -> Dict[str, Any]:
    """Read, change, write - in two phases when the change loads a new version:
    1. the manifest gains the new version(s), labels unchanged;
    2. once the server reports them AVAILABLE (`wait_available`, when a server is known),
       the labels move. Returns {"before": ..., "after": ..., "note": a line or None}."""
    with exclusive(path):
        return _apply(path, model_name, base_path, change, wait_available)


def _apply(path: str, model_name: str, base_path: str, change: Callable[[Release], Release],
           wait_available: Optional[WaitAvailable]) -> Dict[str, Any]:
    from ctpipe.components.layout import versions_on_disk

    releases = read(path)
    before = next((r for r in releases if r.model_name == model_name),
                  Release(model_name, base_path))
    # The manifest always names the caller's base path - where this home's server reads and the
    # Pusher writes. A manifest naming another one (a moved home) is rewritten, and says so.
    note = moved_note(before, base_path)
    before = dataclasses.replace(before, base_path=base_path)
    after = dataclasses.replace(change(before), base_path=base_path)
    check(after, versions_on_disk(base_path), version_complete(base_path))
    others = [r for r in releases if r.model_name != model_name]
    loaded = set(before.labels.values())
    new_versions = [v for v in after.versions if v not in loaded]
    if new_versions:
        phase_one = dataclasses.replace(before, loading=sorted(set(before.loading)
                                                               | set(new_versions)))
        write(path, others + [phase_one])
        if wait_available:
            for version in new_versions:
                wait_available(model_name, version)
    write(path, others + [after])
    return {"before": before, "after": after, "note": note}


def rest_waiter(rest_url: str, timeout_seconds: float = 120.0,
                poll_seconds: float = 0.2) -> WaitAvailable:
    """Polls TF Serving's (or our server's) REST model status until the version is AVAILABLE."""
    import json
    import urllib.error
    import urllib.request

    def wait(model_name: str, version: int) -> None:
        url = f"{rest_url.rstrip('/')}/v1/models/{model_name}/versions/{version}"
        deadline = time.monotonic() + timeout_seconds
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    states = [s.get("state") for s in
                              json.load(response).get("model_version_status", [])]
                if "AVAILABLE" in states:
                    return
                last = f"state {states}"
            except (urllib.error.URLError, OSError, ValueError) as error:
                last = str(error)
            time.sleep(poll_seconds)
        raise ReleaseError(f"version {version} of {model_name} did not become AVAILABLE on "
                           f"{rest_url} within {timeout_seconds:.0f} s ({last}); labels not moved")

    return wait
