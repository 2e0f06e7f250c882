"""`ctpipe watch`: poll the data root and run pending spans in order, unattended.

One line per decision; a failing cycle is logged and retried after a growing back-off (the
span stays pending; after `max_attempts` it is given up and quarantined, and the queue moves
on). SIGTERM or Ctrl-C: the current cycle finishes (a second signal abandons it safely: its
span stays pending, the attempt is not counted), then watch exits 0.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable, List, Optional

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput, HomeBusy
from ctpipe.pipeline.local_runner import absolute, next_cycle, runner_lock
from ctpipe.pipeline.outcomes import FAILED, NO_NEW_DATA, Decision

MAX_BACKOFF_SECONDS = 600.0


class SkewCheck:
    """Between polls: when new complete request-log files have arrived, compare them with the
    production model's training data (`ctpipe skew`) and record the result, which the pipeline
    metrics publish (ctpipe_skew_drifted, ctpipe_skew_alarms_total) for the alert."""

    def __init__(self, config: PipelineConfig, requests_dir: str, say: Callable[[str], None]):
        self.config, self.requests_dir, self.say = config, requests_dir, say
        self.seen: Optional[tuple] = None

    def __call__(self) -> None:
        from ctpipe.pipeline import skew

        files = tuple(skew.complete_log_files(self.requests_dir))
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
        from ctpipe.pipeline import guard

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
          between_polls: Optional[List[Callable[[], None]]] = None) -> int:
    config = absolute(config)
    stop = _StopRequest(say)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    decided, failures = 0, 0
    metrics = None
    try:
        with runner_lock(config.home):
            if metrics_port is not None:  # after the lock: a refused watch serves nothing
                from ctpipe.pipeline.pipeline_metrics import serve_metrics

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
                        f"{str(error).splitlines()[0][:200] if str(error) else ''}")
                    decision, failures = None, failures + 1
                finally:
                    stop.in_cycle = False
                if decision is not None and decision.outcome != NO_NEW_DATA:
                    on_decision(decision)
                    from ctpipe.pipeline.report import write_after_cycle

                    write_after_cycle(config, say)
                    decided += 1
                    failures = failures + 1 if decision.outcome == FAILED else 0
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
