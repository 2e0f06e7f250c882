"""Helpers for the tests: the real CLI in a subprocess, span delivery, and the invariants every
cycle must keep (checked after each step of the long-run scenario)."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


def ctpipe_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "ctpipe.pipeline.commands.main", *args]


def ctpipe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh interpreter (exit codes and output as users see)."""
    return subprocess.run(ctpipe_command(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def deliver(data_root: Path, sample_span: int, as_span: int, corruption: str = "") -> None:
    """A span arrives: a copy of a sample span, optionally corrupted on the way."""
    from ctpipe.pipeline.run import corruptions

    target = Path(data_root) / f"span-{as_span}"
    target.mkdir(parents=True, exist_ok=True)
    source = SAMPLE / f"span-{sample_span}" / "data.csv"
    if corruption:
        corruptions.CORRUPTIONS[corruption](str(source), str(target / "data.csv"))
    else:
        shutil.copyfile(source, target / "data.csv")


def temp_entries() -> Set[str]:
    """What sits in the system temp dir, less pytest's own folders."""
    root = tempfile.gettempdir()
    return {name for name in os.listdir(root) if not name.startswith("pytest-of-")}


def directory_bytes(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


class Invariants:
    """The invariants of README "Continuity", checked against ML Metadata and the served files.
    `loaded` remembers versions already proven loadable (each is loaded once)."""

    def __init__(self, home: Path, model_name: str = "big_tipper",
                 keep_versions: Optional[int] = None):
        self.home = Path(home)
        self.base = self.home / "serving" / model_name
        # Retention may remove served versions beyond the newest `keep_versions` that the
        # release manifest does not name (pipeline/run/retention.py prune_served_versions).
        self.keep_versions = keep_versions
        self.loaded: Set[int] = set()
        self.max_version_seen = 0
        self.seen_versions: Set[int] = set()

    def check(self) -> List[str]:
        from ctpipe.pipeline.home import cycles, ledger_store
        from ctpipe.pipeline.home.store import open_store, sqlite_connection

        store = open_store(sqlite_connection(str(self.home / "metadata.sqlite")))
        records = cycles.cycle_records(store, "ctpipe")
        decisions = [r.decision for r in records if r.decision is not None]
        ledger, _ = ledger_store.latest_ledger(store, "ctpipe")
        actions = cycles.operator_actions(store, "ctpipe")
        problems = self._one_final_decision(decisions)
        problems += self._no_quarantined_span_in_windows(decisions, ledger, actions)
        problems += self._versions_grow_and_load(decisions)
        problems += self._labels_point_at_versions_on_disk()
        return problems

    def _named_versions(self) -> Set[int]:
        from ctpipe.components import release

        path = self.base.parent / release.MANIFEST_FILE
        if not path.exists():
            return set()
        return {v for entry in release.read(str(path)) for v in entry.versions}

    def _labels_point_at_versions_on_disk(self) -> List[str]:
        """The release manifest names only complete versions (a label never dangles)."""
        from ctpipe.components import release

        path = self.base.parent / release.MANIFEST_FILE
        if not path.exists():
            return []
        on_disk = {int(n) for n in os.listdir(self.base) if n.isdigit()}
        problems = []
        for entry in release.read(str(path)):
            for label, version in entry.labels.items():
                if version not in on_disk:
                    problems.append(f"label {label} points at version {version}, not on disk")
        return problems

    @staticmethod
    def _one_final_decision(decisions) -> List[str]:
        finals = collections.Counter(d.span for d in decisions if d.outcome.final)
        return [f"span {span} has {count} final decisions" for span, count in finals.items()
                if count != 1]

    @staticmethod
    def _no_quarantined_span_in_windows(decisions, ledger, actions) -> List[str]:
        """A span quarantined now must not be in the window of any decision made after it was
        quarantined (its own blocking decision, or the operator's action)."""
        problems = []
        for span in ledger.quarantined_spans():
            since = [d.finished_at for d in decisions
                     if d.span == span and d.outcome.final and d.outcome != "pushed"
                     and d.outcome != "not_blessed"]
            since += [a.at for a in actions if a.span == span and a.action == "quarantine"]
            start = min(since) if since else 0.0
            for decision in decisions:
                if (decision.finished_at or 0) > start and span in decision.training_spans:
                    problems.append(f"quarantined span {span} is in the window of the decision "
                                    f"on span {decision.span}")
        return problems

    def _versions_grow_and_load(self, decisions) -> List[str]:
        import tensorflow as tf

        problems = []
        pushed = [d.model_version for d in decisions if d.outcome == "pushed"]
        if pushed != sorted(set(pushed)):
            problems.append(f"pushed versions do not strictly grow: {pushed}")
        on_disk = sorted(int(name) for name in os.listdir(self.base)
                         if name.isdigit()) if self.base.exists() else []
        if on_disk and on_disk[-1] < self.max_version_seen:
            problems.append(f"highest version fell from {self.max_version_seen} to {on_disk[-1]}")
        self.max_version_seen = max([self.max_version_seen, *on_disk])
        self.seen_versions.update(on_disk)
        missing = sorted(set(pushed) - set(on_disk))
        if self.keep_versions is not None:
            # Retention keeps the newest `keep_versions` version folders, counting a candidate's
            # folder that was published but never labelled (it lost to the canary on trial).
            named = self._named_versions()
            newest = sorted(self.seen_versions | set(pushed))[-self.keep_versions:]
            missing = [v for v in missing if v in named or v in newest]
        if missing:
            problems.append(f"pushed versions missing on disk: {missing}")
        leftovers = [n for n in os.listdir(self.base) if n.startswith(".incoming")] \
            if self.base.exists() else []
        if leftovers:
            problems.append(f"half-written versions left: {leftovers}")
        for version in on_disk:
            if version in self.loaded:
                continue
            try:
                loaded = tf.saved_model.load(str(self.base / str(version)))
                assert "serving_default" in loaded.signatures
                self.loaded.add(version)
            except Exception as error:  # noqa: BLE001 - reported as a broken invariant
                problems.append(f"served version {version} does not load: {error}")
        return problems


class RequestLoad:
    """Sends `call()` again and again from a thread while the `with` block runs: `served`
    counts the answers, `failures` keeps every ServingClientError (a swap must leave none)."""

    def __init__(self, call):
        import threading

        self.call, self.served, self.failures = call, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        from ctpipe.serving.clients import ServingClientError

        while not self._stop.is_set():
            try:
                self.call()
                self.served += 1
            except ServingClientError as error:
                self.failures.append(error)

    def __enter__(self) -> "RequestLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def save_model_version(base: Path, module, version: int = 1) -> Path:
    """`module.predict` saved as TF Serving's version `version` under `base`, its only
    signature serving_default; returns `base`."""
    import tensorflow as tf

    tf.saved_model.save(module, str(base / str(version)),
                        signatures={"serving_default": module.predict.get_concrete_function()})
    return base


def wait_until(predicate, seconds: float = 30.0) -> bool:
    """Poll `predicate` every 0.1 s until it is true (True) or `seconds` pass (False)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def wait_for_line(stream, needle: str, timeout: float, seen: Optional[List[str]] = None) -> bool:
    """Read lines from a subprocess pipe until one contains `needle` (True) or EOF/timeout."""
    import selectors
    import time

    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not selector.select(timeout=1.0):
            continue
        line = stream.readline()
        if not line:
            return False
        if seen is not None:
            seen.append(line)
        if needle in line:
            return True
    return False


def spans_of(decisions: Iterable) -> List[Optional[int]]:
    return [d.span for d in decisions]


def as_dict(decisions: Iterable) -> Dict[int, object]:
    return {d.span: d for d in decisions}


# -- a home without a pipeline run -------------------------------------------------------------


def config_for(home: Path, config_path: Optional[Path] = None):
    from ctpipe.pipeline.config import PipelineConfig

    return PipelineConfig.from_sources(str(config_path) if config_path else None,
                                       {"home": str(home)})


def decision(outcome: str, span: Optional[int], version: Optional[int] = None,
             run_id: Optional[str] = None, seconds: Optional[float] = None):
    from ctpipe.pipeline.home.outcomes import Decision

    return Decision(outcome, span=span, model_version=version, reasons=[f"{outcome} (test)"],
                    metrics={}, training_spans=[], run_id=run_id, finished_at=time.time(),
                    seconds=seconds)


class FakeHome:
    """A small home written with real ML Metadata (the pipeline's own API) and real files, no
    pipeline run: for tests that only read a home (metrics, status, reports, skew, lineage)."""

    def __init__(self, root: Path):
        from ctpipe.pipeline.home import Home

        root.mkdir(parents=True, exist_ok=True)
        self.config = config_for(root)
        self.paths = Home.of(self.config)
        self.store = self.paths.create_store()

    def decide(self, *decisions) -> None:
        from ctpipe.pipeline.home import cycles

        for item in decisions:
            cycles.record_decision(self.store, self.config.pipeline_name, item)
            time.sleep(0.002)  # distinct finish times, as real cycles have

    def action(self, name: str, span: int) -> None:
        from ctpipe.pipeline.home import cycles

        cycles.record_action(self.store, self.config.pipeline_name, name, span, "test")

    def quarantine(self, *spans: int) -> None:
        from ctpipe.components.ledger import Ledger
        from ctpipe.pipeline.home import cycles, ledger_store

        ledger = Ledger()
        for span in spans:
            ledger = ledger.quarantine(span, ["test"], by="operator")
        action = cycles.record_action(self.store, self.config.pipeline_name, "quarantine",
                                      spans[-1], "test")
        ledger_store.publish_ledger(self.store, self.config.pipeline_name,
                                    self.paths.pipeline_root, ledger, action.id)

    def release(self, **labels: int) -> None:
        from ctpipe.components import release

        release.write(self.paths.manifest_path,
                      [release.Release(self.config.model_name, self.paths.model_dir, labels)])

    def versions(self, *versions: int) -> None:
        """Complete version folders under the model base path (a saved_model.pb each)."""
        for version in versions:
            folder = Path(self.paths.model_dir) / str(version)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "saved_model.pb").write_bytes(b"pb")

    def skew(self, *results: dict, history: bool = True) -> None:
        Path(self.paths.skew_dir).mkdir(exist_ok=True)
        Path(self.paths.skew_latest).write_text(json.dumps(results[-1]))
        if history:
            Path(self.paths.skew_history).write_text(
                "".join(json.dumps(r) + "\n" for r in results))


def world_readable_dir(prefix: str) -> Path:
    """pytest's temp folders are 0700; the steps run as the image's uid and must reach these."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def build_wheel_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(root / "dist"), str(REPO)], check=True,
                   capture_output=True)
    [wheel] = (root / "dist").glob("ctpipe-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # pip install puts only ctpipe into site-packages
        assert {name.split("/")[0] for name in archive.namelist()
                if not name.split("/")[0].endswith(".dist-info")} == {"ctpipe"}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "ctpipe-pinned-stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--ignore-requires-python", str(wheel)], check=True,
                   capture_output=True)
    return root / "venv"


def top_values_up_to_ties(pairs) -> tuple:
    """A top-k list [(value, count)] as what it means whatever order ties were met in: the
    values counted more often than the last kept count, and how many values were kept at that
    count (which of several tied values made the cut is arbitrary: TFDV on Beam and in memory
    break such ties differently)."""
    pairs = list(pairs)
    if not pairs:
        return {}, 0, 0
    last = min(count for _, count in pairs)
    return ({value: count for value, count in pairs if count > last},
            sum(count == last for _, count in pairs), last)


def home_artifact_uris(home: Path) -> Dict[str, List[str]]:
    """A home's Trainer models that still have their SavedModel and its ExampleGen outputs that
    still have an eval split, oldest first: {"models": [...], "examples": [...]}."""
    from ctpipe.pipeline.home.store import open_store, sqlite_connection

    store = open_store(sqlite_connection(str(Path(home) / "metadata.sqlite")))

    def uris(type_name: str, keep) -> List[str]:
        return [a.uri for a in sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)
                if keep(a.uri)]
    return {"models": uris("Model", lambda uri: os.path.isdir(os.path.join(uri,
                                                                           "Format-Serving"))),
            "examples": uris("Examples", lambda uri: "/CsvExampleGen/" in uri
                             and os.path.isdir(os.path.join(uri, "Split-eval")))}
