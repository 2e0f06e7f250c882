"""`Home`: one pipeline home on disk, and every path under it.

    <home>/metadata.sqlite              ML Metadata (SQLite) of the local runner
    <home>/pipeline_root/               TFX artifacts (retention bounds it)
    <home>/serving/models.config        the release manifest (components/release.py)
    <home>/serving/<model>/<version>/   TF Serving's model base path
    <home>/logs/span-<N>.log            one cycle log per span
    <home>/reports/                     HTML cycle reports (observe/report.py)
    <home>/skew/latest.json             last skew check; history.jsonl, one line per check
    <home>/tmp/<cycle>/                 a cycle's temp folder, removed when it ends
    <home>/.ctpipe.lock                 one runner (`run`/`watch`) per home
    <home>/.ctpipe.write.lock           held while the ledger may change

Why an object and not strings: a home is passed everywhere (runner, operator commands,
reports, metrics, skew); a reader follows `home.manifest_path` to this file instead of losing
the trail at the first `os.path.join`, and each sub-path is spelled here only.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

from ctpipe.components import release
from ctpipe.components.basics import LockBusy, file_lock
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import HomeBusy


class Home:
    """Paths, store and locks of one home. `root` is made absolute once, here."""

    METADATA_FILE = "metadata.sqlite"
    RUNNER_LOCK, WRITE_LOCK = ".ctpipe.lock", ".ctpipe.write.lock"

    def __init__(self, root: str, model_name: str = PipelineConfig.model_name):
        self.root = os.path.abspath(root)
        self.model_name = model_name

    @classmethod
    def of(cls, config: PipelineConfig) -> "Home":
        return cls(config.home, config.model_name)

    def __repr__(self) -> str:
        return f"Home({self.root!r})"

    # -- paths -----------------------------------------------------------------------------------
    @property
    def metadata_path(self) -> str:
        return os.path.join(self.root, self.METADATA_FILE)

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.root, "pipeline_root")

    @property
    def serving_dir(self) -> str:
        """The folder of model base paths and the manifest (what a server mounts)."""
        return os.path.join(self.root, "serving")

    @property
    def model_dir(self) -> str:
        """TF Serving's model base path: all-digit version folders."""
        return os.path.join(self.serving_dir, self.model_name)

    @property
    def manifest_path(self) -> str:
        return release.manifest_path(self.serving_dir)

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.root, "logs")

    def log_path(self, span: int) -> str:
        return os.path.join(self.logs_dir, f"span-{span}.log")

    @property
    def reports_dir(self) -> str:
        return os.path.join(self.root, "reports")

    @property
    def report_index(self) -> str:
        return os.path.join(self.reports_dir, "index.html")

    @property
    def skew_dir(self) -> str:
        return os.path.join(self.root, "skew")

    @property
    def skew_latest(self) -> str:
        return os.path.join(self.skew_dir, "latest.json")

    @property
    def skew_history(self) -> str:
        return os.path.join(self.skew_dir, "history.jsonl")

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.root, "tmp")

    def exists(self) -> bool:
        return os.path.exists(self.metadata_path)

    # -- store -----------------------------------------------------------------------------------
    def open_store(self):
        """This home's ML Metadata; BadInput (exit 2) when the home has none yet."""
        from ctpipe.pipeline.home.store import open_sqlite

        return open_sqlite(self.metadata_path, self.root)

    def create_store(self):
        """This home's ML Metadata, created when missing (the runner's first cycle)."""
        from ctpipe.pipeline.home.store import open_store, sqlite_connection

        os.makedirs(self.root, exist_ok=True)
        return open_store(sqlite_connection(self.metadata_path))

    # -- locks -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str, wait_seconds: float, busy_message: str,
              on_wait: Optional[Callable[[str], None]] = None) -> Iterator[None]:
        try:
            with file_lock(os.path.join(self.root, name), wait_seconds, on_wait):
                yield
        except LockBusy:
            raise HomeBusy(busy_message)

    def runner_lock(self) -> contextlib.AbstractContextManager:
        """One runner (`run` or `watch`) per home."""
        return self._lock(self.RUNNER_LOCK, 0.0,
                          f"another ctpipe run or watch is running on home {self.root}")

    def write_lock(self, wait_seconds: float = 0.0,
                   on_wait: Optional[Callable[[str], None]] = None
                   ) -> contextlib.AbstractContextManager:
        """Held while the ledger may change: during a cycle, and by operator commands."""
        return self._lock(self.WRITE_LOCK, wait_seconds,
                          f"a cycle is still running on home {self.root}; try again later",
                          on_wait)
