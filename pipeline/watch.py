"""`ctpipe watch`: poll the data root and run pending spans in order, unattended.

One line per decision; a failing cycle is logged and retried after a growing back-off (the
span stays pending; after `max_attempts` it is given up and quarantined, and the queue moves
on). SIGTERM or Ctrl-C: the current cycle finishes (a second signal abandons it safely: its
span stays pending, the attempt is not counted), then watch exits 0.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput, HomeBusy
from ctpipe.pipeline.local_runner import absolute, next_cycle, runner_lock
from ctpipe.pipeline.outcomes import FAILED, NO_NEW_DATA, Decision

MAX_BACKOFF_SECONDS = 600.0


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
          metrics_port: Optional[int] = None, metrics_host: str = "127.0.0.1") -> int:
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
