"""The release state of a home, as `status`, the reports and the metrics read it: which
versions the manifest (<home>/serving/models.config) serves and where its labels point.
Changing it is an operator action (pipeline/ops/release.py)."""
from __future__ import annotations

from ctpipe.components import release
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.home.home import Home


def manifest_of(config: PipelineConfig) -> str:
    return Home.of(config).manifest_path


def release_state(config: PipelineConfig) -> release.Release:
    home = Home.of(config)
    return release.read_release(home.manifest_path, config.model_name, home.model_dir)
