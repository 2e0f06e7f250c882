"""create_pipeline(config): the only place components are wired, for every runner.

ExampleGen -> StatisticsGen -> SchemaGen (inferred, for review) + CuratedSchema (the contract)
-> ExampleValidator -> DataGate -> [if accepted] Trainer -> Evaluator (vs stable) -> Pusher.

Production = stable: `StableModel` resolves the Model serving as `stable` in the release manifest
(components/stable_model.py). The label check, the warm start and the Evaluator's baseline all
use it - never the latest blessed model, which is the canary on trial.
"""
from __future__ import annotations

import os
from typing import List, Optional

from tfx import v1 as tfx
from tfx.components import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2

from ctpipe.components import release
from ctpipe.components.atomic_pusher import (
    FRESH_MIN_ROWS_KEY,
    LABELS_BY,
    PROMOTION_KEY,
    AtomicPusherExecutor,
)
from ctpipe.components.csv_ingest import SpreadsheetCsvExecutor
from ctpipe.components.curated_schema import CuratedSchema
from ctpipe.components.data_gate import DataGate, GateState
from ctpipe.components.evaluation import build_eval_config
from ctpipe.components.fast_evaluator import InProcessEvaluatorExecutor
from ctpipe.components.fast_statistics import InProcessStatisticsGenExecutor
from ctpipe.components.stable_model import MODEL_KEY, StableModelStrategy
from ctpipe.components.stable_model import channels as stable_model_channels
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.home import Home

SPAN_PATTERN = "span-{SPAN}/*"
TRAINER_RUN_FN = "ctpipe.components.trainer.run_fn"


def _example_gen(config: PipelineConfig, data_root) -> FileBasedExampleGen:
    """CsvExampleGen with our executor (components/csv_ingest.py: spreadsheet exports)."""
    range_config = None
    if config.span is not None:
        range_config = range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
            start_span_number=config.span, end_span_number=config.span))
    return FileBasedExampleGen(
        input_base=data_root,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=SPAN_PATTERN)]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=config.train_buckets),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=config.eval_buckets)])),
        range_config=range_config,
        custom_executor_spec=executor_spec.BeamExecutorSpec(SpreadsheetCsvExecutor),
    ).with_id("CsvExampleGen")


# How the production model (stable) is resolved, per runner (create_pipeline's `baseline`):
STABLE = "stable"                  # StableModelStrategy reads the manifest (local runner)
STABLE_BY_STEP = "stable_by_step"  # Kubeflow (kfp): same node, compiled with a stock strategy
#                                    (KubeflowV2DagRunner compiles no other); kubeflow/adapt.py
#                                    replaces its executor with `steps resolve --kind stable`
LATEST_BLESSED = "latest_blessed"  # Vertex AI: runs only TFX's stock resolvers (README)
BASELINES = (STABLE, STABLE_BY_STEP, LATEST_BLESSED)
PRODUCTION_NODE = "StableModel"


def _production_model(config: PipelineConfig, manifest: str, baseline: str):
    """The production model (stable), resolved from `manifest` - on Vertex, which runs only
    TFX's stock resolvers, the latest blessed model instead."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r} (choose from {', '.join(BASELINES)})")
    if baseline == LATEST_BLESSED:
        return tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("LatestBlessedModel")
    if baseline == STABLE_BY_STEP:
        # Same id and channels as locally; the stock strategy only lets the compiler emit the
        # task, whose executor kubeflow/adapt.py replaces (it never runs as compiled).
        return tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            **stable_model_channels()).with_id(PRODUCTION_NODE)
    return tfx.dsl.Resolver(
        strategy_class=StableModelStrategy,
        config={"manifest": manifest, "model_name": config.model_name},
        **stable_model_channels()).with_id(PRODUCTION_NODE)


def manifest_for(config: PipelineConfig, serving_model_dir: Optional[str] = None) -> str:
    """The release manifest the Pusher writes: beside the model base path
    (<home>/serving/models.config locally, <kfp_serving_dir>/../models.config on Kubeflow)."""
    return release.manifest_path(os.path.dirname(
        (serving_model_dir or Home.of(config).model_dir).rstrip("/")))


def create_components(config: PipelineConfig, data_root=None,
                      serving_model_dir: Optional[str] = None,
                      serving_rest: Optional[str] = None, baseline: str = STABLE) -> List:
    """All nodes in order. `data_root` may be a runtime parameter (Kubeflow)."""
    manifest = manifest_for(config, serving_model_dir)
    example_gen = _example_gen(config, data_root if data_root is not None else config.data_root)
    curated_schema = CuratedSchema(schema_file=config.schema_path)
    # With the contract, TFDV computes value frequencies for the integer codes it marks
    # categorical: the Trainer's vocabularies come from these statistics.
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"],
                                                  schema=curated_schema.outputs["schema"])
    # TFX's StatisticsGen; on the DirectRunner TFDV runs in process for spans up to 256 MB
    # (components/fast_statistics.py), elsewhere on the configured Beam runner.
    statistics_gen.executor_spec = executor_spec.BeamExecutorSpec(InProcessStatisticsGenExecutor)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=curated_schema.outputs["schema"])
    previous_gate_state = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        state=tfx.dsl.Channel(type=GateState)).with_id("PreviousGateState")
    production_model = _production_model(config, manifest, baseline)
    gate = DataGate(
        examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"],
        schema=curated_schema.outputs["schema"],
        anomalies=example_validator.outputs["anomalies"],
        previous_state=previous_gate_state.outputs["state"],
        production_model=production_model.outputs[MODEL_KEY],
        window_spans=config.window_spans,
        window_min_rows=config.window_min_rows,
        label_check_max_drop=config.label_check_max_drop,
        label_check_min_rows=config.label_check_min_rows,
        # Every labelled version scores the span (fresh-span AUC) from the manifest the
        # Pusher writes.
        manifest=manifest,
        model_name=config.model_name)

    with tfx.dsl.Cond(gate.outputs["state"].future()[0].custom_property("accepted") == 1):
        trainer = tfx.components.Trainer(
            run_fn=TRAINER_RUN_FN,
            examples=gate.outputs["training_examples"],
            schema=curated_schema.outputs["schema"],
            base_model=production_model.outputs[MODEL_KEY],
            train_args=tfx.proto.TrainArgs(),
            eval_args=tfx.proto.EvalArgs(),
            custom_config={"hparams": config.trainer_hparams()})
        # TFX's Evaluator; on the DirectRunner its metrics are computed in process
        # (components/fast_evaluator.py), elsewhere TFMA runs on the configured Beam runner.
        evaluator = tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            example_splits=["eval"],
            model=trainer.outputs["model"],
            baseline_model=production_model.outputs[MODEL_KEY],
            eval_config=build_eval_config(config.min_auc, config.max_auc_drop,
                                          config.min_eval_examples))
        evaluator.executor_spec = executor_spec.BeamExecutorSpec(InProcessEvaluatorExecutor)
        pusher = tfx.components.Pusher(
            model=trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=serving_model_dir or Home.of(config).model_dir)),
            # Where the Pusher waits for the new version to be AVAILABLE before it names it
            # canary in the release manifest (components/release.py); "" = do not wait.
            custom_config={"serving_rest": config.serving_rest if serving_rest is None
                           else serving_rest,
                           # Locally the runner labels the new version after the fresh-label
                           # step (pipeline/ops/fresh_labels.py): a better canary is never
                           # replaced by a worse one, not even for a moment.
                           LABELS_BY: "runner" if serving_model_dir is None else "pusher",
                           # When the Pusher labels (Kubeflow), it first applies the fresh-label
                           # verdict to the canary on trial (components/fresh_labels.py).
                           PROMOTION_KEY: config.promotion,
                           FRESH_MIN_ROWS_KEY: config.fresh_min_rows},
            custom_executor_spec=executor_spec.ExecutorClassSpec(AtomicPusherExecutor))

    return [example_gen, curated_schema, statistics_gen, schema_gen, example_validator,
            previous_gate_state, production_model, gate, trainer, evaluator, pusher]


def create_pipeline(config: PipelineConfig, *, pipeline_root: Optional[str] = None,
                    data_root=None, serving_model_dir: Optional[str] = None,
                    serving_rest: Optional[str] = None, metadata_connection_config=None,
                    beam_pipeline_args: Optional[List[str]] = None,
                    baseline: str = STABLE) -> tfx.dsl.Pipeline:
    """The pipeline for any runner; runners pass only locations, metadata and beam args."""
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root or Home.of(config).pipeline_root,
        components=create_components(config, data_root, serving_model_dir, serving_rest,
                                      baseline),
        enable_cache=False,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args if beam_pipeline_args is not None
        else config.beam_pipeline_args)
