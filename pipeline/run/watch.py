"""`ctpipe watch`: poll the data root and run pending spans in order, unattended.

One line per decision; a failing cycle is logged and retried after a growing back-off (the
span stays pending; after `max_attempts` it is given up and quarantined, and the queue moves
on). SIGTERM or Ctrl-C: the current cycle finishes (a second signal abandons it safely: its
span stays pending, the attempt is not counted), then watch exits 0.

Every `watch_restart_cycles` decisions (no_new_data polls do not count: only cycles that ran a
span grow memory) watch replaces its own process image with the same command line (os.execv:
same PID), which bounds what tf_keras keeps per `model.fit` even after release_after_cycle.
The runner lock's fd is non-inheritable (PEP 446), so exec releases its flock and the new image
takes it again at start; the decisions so far travel in CTPIPE_WATCH_CYCLES_DONE, so
--max-cycles counts across restarts.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from ctpipe.components.basics import first_line
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput, HomeBusy
from ctpipe.pipeline.home import Home
from ctpipe.pipeline.home.outcomes import FAILED, NO_NEW_DATA, Decision
from ctpipe.pipeline.run.local_runner import next_cycle
from ctpipe.pipeline.run.memory import release_after_cycle, rss_mib

MAX_BACKOFF_SECONDS = 600.0
# Decisions made by earlier images of this watch (set just before os.execv).
CYCLES_DONE_ENV = "CTPIPE_WATCH_CYCLES_DONE"


def restart_due(since_start: int, restart_cycles: int, decided: int,
                max_cycles: Optional[int]) -> bool:
    """Restart after `restart_cycles` decisions of this image (0 = never), unless watch is
    about to stop anyway (--max-cycles reached)."""
    if restart_cycles <= 0 or since_start < restart_cycles:
        return False
    return max_cycles is None or decided < max_cycles


def restart_command(argv: List[str], executable: Optional[str] = None) -> List[str]:
    """The command line of the new image: this interpreter running the CLI with the original
    arguments (`argv` without the program name)."""
    return [executable or sys.executable, "-m", "ctpipe.pipeline.commands.main", *argv]


def restart_environ(environ: Dict[str, str], decided: int) -> Dict[str, str]:
    return {**environ, CYCLES_DONE_ENV: str(decided)}


def cycles_done_from_env(environ: Optional[Dict[str, str]] = None) -> int:
    """Decisions made before the last restart (0 when not restarted); removed from the
    environment so that nothing this image starts inherits it."""
    environ = os.environ if environ is None else environ
    value = environ.pop(CYCLES_DONE_ENV, "0")
    try:
        return max(int(value), 0)
    except ValueError:
        return 0


class SkewCheck:
    """Between polls: when new complete request-log files have arrived, compare them with the
    production model's training data (`ctpipe skew`) and record the result, which the pipeline
    metrics publish (ctpipe_skew_drifted, ctpipe_skew_alarms_total) for the alert."""

    def __init__(self, config: PipelineConfig, requests_dir: str, say: Callable[[str], None]):
        self.config, self.requests_dir, self.say = config, requests_dir, say
        self.seen: Optional[tuple] = None

    def __call__(self) -> None:
        from ctpipe.components.request_log_format import complete_log_files
        from ctpipe.pipeline.observe import skew

        files = tuple(complete_log_files(self.requests_dir))
        if not files or files == self.seen:
            return
        self.seen = files
        try:
            report = skew.skew_report(self.config, self.requests_dir)
        except BadInput as error:
            self.say(f"watch: skew check skipped: {error}")
            return
        skew.record_result(self.config.home, report)
        found = ", ".join(sorted({a["feature"] for a in report["anomalies"]}))
        verdict = f"DRIFTED ({found})" if report["drifted"] else "none"
        self.say(f"watch: serving skew: {verdict} over {report['examples']} logged rows")


class GuardCheck:
    """Between polls: `ctpipe guard` over the time since the last poll (canary removal,
    rollback, auto-promotion; every action recorded)."""

    def __init__(self, config: PipelineConfig, server: str, say: Callable[[str], None]):
        self.config, self.server, self.say = config, server, say
        self.before, self.at = None, 0.0

    def __call__(self) -> None:
        from ctpipe.pipeline.ops import guard

        try:
            after = guard.scrape(self.server)
        except BadInput as error:
            self.say(f"watch: guard skipped: {error}")
            return
        now = time.monotonic()
        if self.before is not None:
            report = guard.evaluate(self.config, self.before, after, guard.Bounds(),
                                    self.server, round(now - self.at, 1))
            if report["action"]:
                self.say(guard.describe(report))
        self.before, self.at = after, now


class _StopRequest:
    """First signal: stop after the current cycle. Second: abandon it (KeyboardInterrupt)."""

    def __init__(self, say: Callable[[str], None]):
        self.event = threading.Event()
        self.in_cycle = False
        self.say = say

    def __call__(self, signum, frame) -> None:
        if self.event.is_set() and self.in_cycle:
            raise KeyboardInterrupt
        self.event.set()
        if self.in_cycle:
            self.say("watch: stopping after the current cycle (signal again to abandon it)")


def watch(config: PipelineConfig, interval: float, max_cycles: Optional[int],
          on_decision: Callable[[Decision], None], say: Callable[[str], None],
          progress: Optional[Callable[[str], None]] = None,
          metrics_port: Optional[int] = None, metrics_host: str = "127.0.0.1",
          between_polls: Optional[List[Callable[[], None]]] = None,
          release_memory: bool = True, restart_argv: Optional[List[str]] = None,
          cycles_done: int = 0) -> int:
    """`release_memory`: give back what each cycle leaves (pipeline/run/memory.py), so RSS
    stays flat over months of cycles; off only to measure the difference (bench --soak).
    `restart_argv`: the CLI arguments to os.execv with every `config.watch_restart_cycles`
    decisions (None: never restart, e.g. in-process callers); `cycles_done`: decisions made
    by earlier images (counted against `max_cycles`)."""
    config = config.with_absolute_paths()
    stop = _StopRequest(say)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    decided, failures, since_start = cycles_done, 0, 0
    restart_cycles = config.watch_restart_cycles if restart_argv is not None else 0
    metrics = None
    try:
        with Home.of(config).runner_lock():
            if metrics_port is not None:  # after the lock: a refused watch serves nothing
                from ctpipe.pipeline.observe.metrics_http import serve_metrics

                metrics = serve_metrics(config, metrics_port, metrics_host,
                                        data_root=config.data_root)
                say(f"watch: pipeline metrics at {metrics.url}")
            say(f"watch: polling {config.data_root} every {interval:g}s for home {config.home}")
            while not stop.event.is_set() and (max_cycles is None or decided < max_cycles):
                stop.in_cycle = True
                try:
                    decision = next_cycle(config, progress, record_nothing_new=False)
                except KeyboardInterrupt:
                    say("watch: abandoned the running cycle; its span stays pending")
                    break
                except HomeBusy as error:
                    say(f"watch: {error}")
                    decision = None
                except BadInput as error:
                    say(f"watch: cycle failed: {error}")
                    decision, failures = None, failures + 1
                except Exception as error:  # noqa: BLE001 - watch survives a failing cycle
                    say(f"watch: cycle failed: {type(error).__name__}: "
                        f"{first_line(error, 200)}")
                    decision, failures = None, failures + 1
                finally:
                    stop.in_cycle = False
                    if release_memory:
                        release_after_cycle()
                if decision is not None and decision.outcome != NO_NEW_DATA:
                    on_decision(decision)
                    from ctpipe.pipeline.observe.report import write_after_cycle

                    write_after_cycle(config, say)
                    decided += 1
                    since_start += 1
                    failures = failures + 1 if decision.outcome == FAILED else 0
                    if (not stop.event.is_set() and restart_argv is not None
                            and restart_due(since_start, restart_cycles, decided, max_cycles)):
                        if metrics is not None:
                            metrics.close()
                            metrics = None
                        _restart(restart_argv, decided, since_start, say)  # returns on failure
                        since_start = 0
                    if not failures:
                        continue  # more may be pending: no wait
                for check in between_polls or []:
                    try:
                        check()
                    except Exception as error:  # noqa: BLE001 - a check never stops watch
                        say(f"watch: {type(check).__name__} failed: {error}")
                wait = interval if not failures else min(interval * 2 ** failures,
                                                         MAX_BACKOFF_SECONDS)
                if failures:
                    say(f"watch: backing off {wait:g}s after {failures} failure(s)")
                stop.event.wait(wait)
    finally:
        if metrics is not None:
            metrics.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say(f"watch: stopped after {decided} decision(s)")
    return 0


def _restart(argv: List[str], decided: int, since_start: int,
             say: Callable[[str], None]) -> None:
    """Replace this process image (same PID). The runner lock is held until exec closes its
    non-inheritable fd; the new image takes it again. Returns only if exec failed."""
    say(f"watch: restarting to release memory after {since_start} cycles "
        f"(RSS {rss_mib():.0f} MiB)")
    command = restart_command(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(command[0], command, restart_environ(dict(os.environ), decided))
    except OSError as error:
        say(f"watch: restart failed ({error}); watching on in this process")
