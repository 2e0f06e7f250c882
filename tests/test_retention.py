"""Retention rules that need no pipeline run (the long run checks the rest: test_continuity)."""
import os
import time

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.run.retention import prune_logs


def test_only_the_newest_cycle_logs_are_kept(tmp_path):
    config = PipelineConfig(home=str(tmp_path), keep_cycles=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    for span in range(1, 13):
        path = logs / f"span-{span}.log"
        path.write_text("x")
        os.utime(path, (time.time() - 100 + span, time.time() - 100 + span))
    removed = prune_logs(config)
    assert sorted(os.path.basename(p) for p in removed) == ["span-1.log", "span-2.log"]
    assert len(os.listdir(logs)) == 10
