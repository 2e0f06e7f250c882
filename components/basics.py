"""Small facts every layer shares, in their one place: the process exit codes, the one-line
error text a person reads, replacing a file whole, an exclusive file lock, and ending the
child processes a command started.

Why here: `components/` is the lowest layer (the pipeline, the server and the Kubeflow steps
all import it, it imports none of them), so a helper defined here has exactly one home.
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from typing import Callable, Iterator, Optional


class ExitCode(enum.IntEnum):
    """Every process exit code of `ctpipe` (the contract scripts and schedulers build on;
    README "Exit codes"). Serving and Kubeflow commands use the same table."""

    OK = 0
    INTERNAL = 1        # an internal error, or a failed cycle (the span stays pending)
    BAD_INPUT = 2       # input we cannot read, a usage mistake, a refused operator action
    DATA_BLOCKED = 3    # the gate blocked the span; `skew`: serving data drifted
    NOT_BLESSED = 4     # the candidate was not blessed (or not pushed)
    NO_NEW_DATA = 5     # nothing to do
    GAVE_UP = 6         # a span was quarantined after max_attempts failures
    HOME_BUSY = 7       # another runner holds the home


# Longest error text a person is shown on one line (the cycle log keeps the whole text).
FIRST_LINE_CHARS = 300


def first_line(error: BaseException, limit: int = FIRST_LINE_CHARS,
               with_type: bool = False) -> str:
    """The first line of an error's text, cut to `limit` characters: what a one-line message
    shows (library errors often carry a multi-line dump or a traceback of their own).
    `with_type` prefixes the exception's class name, for errors a person did not cause."""
    text = str(error).splitlines()[0][:limit] if str(error) else ""
    if with_type:
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text


def atomic_write(path: str, data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` whole: write a temporary file beside it, fsync, rename over it.

    A reader (a server polling a manifest, a browser refreshing a report, a metrics scraper)
    sees either the old file or the new one, never half of either; a crash leaves at most a
    hidden `.<name>.*.tmp` beside it. `mode` sets the permissions (default: the umask's)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                         dir=folder)
    try:
        with os.fdopen(handle, "wb" if isinstance(data, bytes) else "w") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class LockBusy(Exception):
    """The lock is held by someone else and we chose not to wait (longer)."""


@contextlib.contextmanager
def file_lock(path: str, wait_seconds: Optional[float] = None,
              on_wait: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the `with` block.

    wait_seconds None waits as long as it takes; 0 fails at once; otherwise polls until the
    deadline. LockBusy is raised when it gives up; `on_wait` is told once that we are waiting.
    flock locks die with their process, so a killed holder never leaves a stale lock."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        if wait_seconds is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + wait_seconds
            told = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusy(path)
                    if on_wait and not told:
                        on_wait("waiting for the running cycle to finish ...")
                        told = True
                    time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def end_process(process: subprocess.Popen, seconds: float = 30.0) -> None:
    """Terminate a child a command started (a server, a cycle, a benchmark), by its PID; kill
    it if it outlives `seconds`. Nothing when it has already ended."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def exit_on_sigterm() -> None:
    """SIGTERM ends this process as Ctrl-C does, by an exception in the main thread, so the
    `finally` blocks that stop its children by PID (servers, cycles, clusters) run; exit code
    143 (128 + SIGTERM), as a process ended by the signal reports in a shell. Python's default
    for SIGTERM ends the process on the spot, and each child it started kept running: found
    when a terminated benchmark left its `ctpipe serve` child listening."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
