"""Compile the pipeline for Kubeflow Pipelines v2 (KubeflowV2DagRunner -> PipelineSpec JSON).

The pipeline is pipeline.pipeline.create_pipeline - the one the local runner runs. This module
only supplies cluster locations, the image, resources, Beam arguments and runtime parameters.
On the cluster the span is ExampleGen's own rule (the newest span under the data root); the data
root is a runtime parameter, so one compiled spec serves several data locations.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from ctpipe.pipeline.config import PipelineConfig

DATA_ROOT_PARAMETER = "data-root"


def build_kubeflow_pipeline(config: PipelineConfig):
    from tfx.orchestration import data_types

    from ctpipe.kubeflow.resources import apply_resources
    from ctpipe.pipeline.pipeline import create_pipeline

    data_root = data_types.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str,
                                            default=config.kfp_data_root)
    pipeline = create_pipeline(config, pipeline_root=config.kfp_pipeline_root,
                               data_root=data_root, serving_model_dir=config.kfp_serving_dir,
                               beam_pipeline_args=list(config.kfp_beam_pipeline_args))
    apply_resources(pipeline, config)
    return pipeline


def compile_pipeline(config: PipelineConfig, output_path: str) -> Dict[str, Any]:
    """Write the PipelineSpec JSON to output_path and return it (parsed)."""
    from tfx import v1 as tfx

    output_path = os.path.abspath(output_path)
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=config.image),
        output_dir=os.path.dirname(output_path), output_filename=os.path.basename(output_path))
    # The default value goes into runtimeConfig, so a run started without parameters still works.
    runner.run(build_kubeflow_pipeline(config),
               parameter_values={DATA_ROOT_PARAMETER: config.kfp_data_root}, write_out=True)
    with open(output_path) as handle:
        return json.load(handle)
