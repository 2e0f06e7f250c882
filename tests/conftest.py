"""Shared fixtures. The long-run scenario (tests/scenario.py) runs the real pipeline once per
test session; every e2e test reads its decisions, ML Metadata and served files."""
from __future__ import annotations

import os

import pytest

from tests.support import REPO, SAMPLE, ctpipe  # noqa: F401 - re-exported for older tests

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def long_run(tmp_path_factory):
    from tests.scenario import run_long_scenario

    return run_long_scenario(tmp_path_factory.mktemp("long-run"))
