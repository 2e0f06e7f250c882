"""A progress display for work a person waits on (bench, demo, watch start-up).

On a terminal: one line per step, redrawn in place with the elapsed seconds while the step runs.
Elsewhere (CI logs, pipes): plain lines, one when a step starts and one when it ends, so logs
stay readable and grep-able.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import IO, Iterator, Optional


class Progress:
    def __init__(self, total: int, stream: Optional[IO[str]] = None, tick_seconds: float = 1.0):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tick_seconds = tick_seconds
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {label}"
        started = time.monotonic()
        stop = threading.Event()
        ticker = None
        if self.interactive:
            ticker = threading.Thread(target=self._tick, args=(prefix, started, stop),
                                      daemon=True)
            ticker.start()
        else:
            self._write(f"{prefix} ...\n")
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            stop.set()
            if ticker:
                ticker.join()
            elapsed = time.monotonic() - started
            self._write(("\r\033[K" if self.interactive else "")
                        + f"{prefix}: {outcome} in {elapsed:.1f} s\n")

    def _tick(self, prefix: str, started: float, stop: threading.Event) -> None:
        while True:
            self._write(f"\r\033[K{prefix} ... {time.monotonic() - started:.0f} s")
            if stop.wait(self.tick_seconds):
                return

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def quiet_libraries() -> None:
    """Library warnings are for the cycle log, not the terminal."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
