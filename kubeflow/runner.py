"""Compile the pipeline for Kubeflow: the same create_pipeline, two targets.

  kfp     (default) open-source Kubeflow Pipelines 2.x: PipelineSpec schema 2.1.0 as YAML, plus a
          kfp-kubernetes platform-spec document when the Pusher writes to a PVC; adapted by
          kubeflow/adapt.py so it uses only container executors.
  vertex  Vertex AI Pipelines: TFX's PipelineJob JSON as compiled (resolver executors and the
          ExampleGen driver hook, which Vertex runs). Vertex runs only TFX's stock resolvers, so
          its Evaluator baseline is the latest blessed model, not stable (README).

The pipeline is ctpipe.pipeline.definition.create_pipeline - the one the local runner runs. This
module only supplies cluster locations, the image, resources, Beam arguments and runtime
parameters; the data root is a runtime parameter, so one compiled spec serves several data
locations.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Union

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import BadInput

DATA_ROOT_PARAMETER = "data-root"
TARGETS = ("kfp", "vertex")
# Any one of these keeps TFX from building an sdist of itself for every Beam step
# (tfx/utils/dependency_utils.py); the image already holds everything. On Kubeflow the
# container entrypoint always hands the executor a non-empty argument list (argv[0] is among
# the "beam args"), so without one of these every Beam step would build it.
BEAM_DEPENDENCY_FLAGS = ("--extra_package", "--setup_file", "--requirements_file",
                         "--sdk_container_image")


def cluster_beam_args(config: PipelineConfig) -> List[str]:
    args = list(config.kfp_beam_pipeline_args)
    if not any(arg.split("=")[0] in BEAM_DEPENDENCY_FLAGS for arg in args):
        args.append(f"--sdk_container_image={config.image}")
    return args


def build_kubeflow_pipeline(config: PipelineConfig, target: str = "kfp"):
    from tfx.orchestration import data_types

    from ctpipe.kubeflow.resources import apply_resources
    from ctpipe.pipeline.definition import LATEST_BLESSED, STABLE_BY_STEP, create_pipeline

    data_root = data_types.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str,
                                            default=config.kfp_data_root)
    pipeline = create_pipeline(config, pipeline_root=config.kfp_pipeline_root,
                               data_root=data_root, serving_model_dir=config.kfp_serving_dir,
                               serving_rest=config.kfp_serving_rest,
                               beam_pipeline_args=cluster_beam_args(config),
                               # kfp: stable, by our step (kubeflow/adapt.py); Vertex runs only
                               # TFX's stock resolvers: the latest blessed model (README).
                               baseline=STABLE_BY_STEP if target == "kfp" else LATEST_BLESSED)
    apply_resources(pipeline, config, target)
    return pipeline


def compile_job(config: PipelineConfig, target: str) -> Dict[str, Any]:
    """TFX's PipelineJob dict for `target` (schema 2.1.0 for kfp)."""
    from tfx import v1 as tfx

    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=config.image, use_pipeline_spec_2_1=(target == "kfp")))
    # The default value goes into runtimeConfig, so a run started without parameters works.
    return runner.run(build_kubeflow_pipeline(config, target),
                      parameter_values={DATA_ROOT_PARAMETER: config.kfp_data_root},
                      write_out=False)


def compile_pipeline(config: PipelineConfig, output_path: str, target: str = "kfp"
                     ) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
    """Write the compiled pipeline to output_path; returns what was written (the PipelineJob
    dict for vertex, the list of YAML documents for kfp). A spec that fails
    `ctpipe kubeflow lint` is not written (lint.LintFailed, exit 2)."""
    from ctpipe.kubeflow.lint import require_clean

    if target not in TARGETS:
        raise BadInput(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    output_path = os.path.abspath(output_path)
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    job = compile_job(config, target)
    if target == "vertex":
        from ctpipe.kubeflow.adapt import add_data_dependencies

        # TFX leaves the blessing -> model resolver edge implicit; write it down for every reader.
        add_data_dependencies(job["pipelineSpec"])
        require_clean([job], target, f"the compiled {target} spec")
        with open(output_path, "w") as handle:
            json.dump(job, handle, indent=2, sort_keys=True)
        return job
    import yaml

    from ctpipe.kubeflow.adapt import adapt_for_open_source_kfp

    documents = adapt_for_open_source_kfp(job["pipelineSpec"], config, DATA_ROOT_PARAMETER)
    require_clean(documents, target, f"the compiled {target} spec")
    with open(output_path, "w") as handle:
        handle.write("# Compiled by `ctpipe kubeflow compile --target kfp` for open-source "
                     "Kubeflow Pipelines 2.x.\n")
        yaml.safe_dump_all(documents, handle, sort_keys=True)
    return documents


def load_documents(path: str) -> List[Dict[str, Any]]:
    """A compiled spec read back: YAML documents (kfp) or the PipelineJob JSON (vertex)."""
    import yaml

    with open(path) as handle:
        text = handle.read()
    if path.endswith(".json"):
        return [json.loads(text)]
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]
