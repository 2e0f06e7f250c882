"""Shared fixtures. The end-to-end scenario runs the real pipeline once per test session;
every e2e test reads its decisions, ML Metadata and served files."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def ctpipe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh interpreter (exit codes and output as users see)."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def copy_span(sample_span: int, data_root: Path, as_span: int, corruption: str = "") -> None:
    from pipeline import corruptions

    target = data_root / f"span-{as_span}"
    target.mkdir(parents=True, exist_ok=True)
    source = SAMPLE / f"span-{sample_span}" / "data.csv"
    if corruption:
        corruptions.CORRUPTIONS[corruption](str(source), str(target / "data.csv"))
    else:
        shutil.copyfile(source, target / "data.csv")


@dataclasses.dataclass
class Scenario:
    home: Path
    data_root: Path
    decisions: Dict[str, object]
    served_after: Dict[str, List[str]]


# (label, sample span, span number on arrival, corruption)
SCENARIO = [
    ("first", 1, 1, ""),
    ("broken_contract", 2, 2, "break_contract"),
    ("clean_after_block", 3, 3, ""),
    ("shuffled_labels", 4, 4, "shuffle_labels"),
]


@pytest.fixture(scope="session")
def scenario(tmp_path_factory) -> Scenario:
    from pipeline.config import PipelineConfig
    from pipeline.local_runner import run_cycle

    root = tmp_path_factory.mktemp("e2e")
    home, data_root = root / "home", root / "incoming"
    config = PipelineConfig(home=str(home), data_root=str(data_root))
    decisions, served_after = {}, {}
    for label, sample_span, span, corruption in SCENARIO:
        copy_span(sample_span, data_root, span, corruption)
        decisions[label] = run_cycle(config, progress=print)
        base = home / "serving" / config.model_name
        served_after[label] = sorted(os.listdir(base)) if base.exists() else []
    return Scenario(home=home, data_root=data_root, decisions=decisions,
                    served_after=served_after)
