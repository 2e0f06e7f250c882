"""The stock reference pipeline (bench only): the seven TFX 1.16 components wired the way the
official penguin example wires them (tfx/examples/penguin/penguin_pipeline_local.py).

CsvExampleGen over the whole data root -> StatisticsGen -> SchemaGen -> ExampleValidator ->
Trainer (200 steps) -> Evaluator (vs the latest blessed model) -> Pusher. No spans, no gate, no
warm start: every cycle re-reads and re-trains on everything, as plain TFX does.

Usage: python -m ctpipe.pipeline.bench.stock --data-root D --home H [--train-steps 200]
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STOCK_PIPELINE_NAME = "stock"
STOCK_RUN_FN = "ctpipe.pipeline.bench.stock_trainer.run_fn"


def create_stock_pipeline(data_root: str, home: str, train_steps: int = 200):
    import tensorflow_model_analysis as tfma
    from tfx import v1 as tfx
    from tfx.proto import example_gen_pb2

    from ctpipe.components import features as F

    example_gen = tfx.components.CsvExampleGen(
        input_base=data_root,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern="span-*/*")]))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    trainer = tfx.components.Trainer(
        run_fn=STOCK_RUN_FN,
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=5))
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=F.LABEL_KEY)],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["payment_type"])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="BinaryAccuracy"),
            # The penguin example's threshold, held on the overall slice only: on every slice
            # a payment type with two rows vetoes every model and the Pusher never runs.
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[
                tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                             threshold=tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.6}),
                    change_threshold=tfma.GenericChangeThreshold(
                        direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                        absolute={"value": -1e-10})))]),
        ])])
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(home, "serving"))))
    return tfx.dsl.Pipeline(
        pipeline_name=STOCK_PIPELINE_NAME,
        pipeline_root=os.path.join(home, "pipeline_root"),
        components=[example_gen, statistics_gen, schema_gen, example_validator, trainer,
                    model_resolver, evaluator, pusher],
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(home, "metadata.sqlite")))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--train-steps", type=int, default=200)
    args = parser.parse_args(argv)

    from ctpipe.pipeline.cli import quiet_libraries

    quiet_libraries()
    from tfx import v1 as tfx

    os.makedirs(args.home, exist_ok=True)
    tfx.orchestration.LocalDagRunner().run(
        create_stock_pipeline(os.path.abspath(args.data_root), os.path.abspath(args.home),
                              args.train_steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
