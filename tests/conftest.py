"""Shared fixtures. The long-run scenario (tests/scenario.py) runs the real pipeline once per
test session; every e2e test reads its decisions, ML Metadata and served files."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.support import build_wheel_venv, world_readable_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def long_run(tmp_path_factory):
    from tests.scenario import run_long_scenario

    return run_long_scenario(tmp_path_factory.mktemp("long-run"))


@pytest.fixture(scope="session")
def wheel_venv():
    """A fresh venv with the built wheel, reusing this interpreter's pinned stack (.pth): what
    a KFP step's image holds. Shared by the KFP harness tests (DirectRunner and Flink)."""
    root = world_readable_dir("ctpipe-wheel-")
    yield build_wheel_venv(root)
    shutil.rmtree(root, ignore_errors=True)
