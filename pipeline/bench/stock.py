"""The stock reference pipelines (bench only), TFX 1.16 components only, two ways:

naive (create_stock_pipeline): the seven components wired the way the official penguin example
wires them (tfx/examples/penguin/penguin_pipeline_local.py). CsvExampleGen over the whole data
root -> StatisticsGen -> SchemaGen -> ExampleValidator -> Trainer (200 steps) -> Evaluator (vs
the latest blessed model) -> Pusher. No spans, no warm start: every cycle re-reads and
re-trains on everything, as plain TFX does.

expert (create_expert_pipeline): what the TFX docs recommend for continuous training, every
piece a stock one. CsvExampleGen reads only the newest span (`span-{SPAN}/*` with
RangeConfig(rolling_range num_spans=1); a static range to backfill one span); the curated
contract comes in through ImportSchemaGen; the Trainer gets a rolling window of the last K
spans' Examples from a `Resolver(SpanRangeStrategy, RollingRange(num_spans=K))` (wired as the
penguin example's `span_resolver`, upstream of nothing but ExampleGen) and warm-starts from
`base_model` = the latest blessed model (`Resolver(LatestBlessedModelStrategy)`, also the
Evaluator's baseline); the Evaluator scores the new span's eval split. Same 200-step budget
and trainer module as naive (stock_trainer.run_fn, which continues from base_model when given).

Usage: python -m ctpipe.pipeline.bench.stock --data-root D --home H [--train-steps 200]
       [--expert [--window-spans 3] [--spans 1 2 3]]   (--spans: backfill, one run each)
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STOCK_PIPELINE_NAME = "stock"
EXPERT_PIPELINE_NAME = "expert"
SPAN_RESOLVER_ID = "span_resolver"
LATEST_BLESSED_ID = "latest_blessed_model_resolver"
STOCK_RUN_FN = "ctpipe.pipeline.bench.stock_trainer.run_fn"


def latest_blessed_model_resolver():
    from tfx import v1 as tfx

    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(LATEST_BLESSED_ID)


def stock_eval_config():
    import tensorflow_model_analysis as tfma

    from ctpipe.components import features as F

    return tfma.EvalConfig(
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


def create_stock_pipeline(data_root: str, home: str, train_steps: int = 200):
    from tfx import v1 as tfx
    from tfx.proto import example_gen_pb2

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
    model_resolver = latest_blessed_model_resolver()
    eval_config = stock_eval_config()
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config)
    pusher = _pusher(trainer.outputs["model"], evaluator.outputs["blessing"], home)
    return _pipeline(STOCK_PIPELINE_NAME, home, [
        example_gen, statistics_gen, schema_gen, example_validator, trainer, model_resolver,
        evaluator, pusher])


def _pipeline(name: str, home: str, components):
    from tfx import v1 as tfx

    return tfx.dsl.Pipeline(
        pipeline_name=name,
        pipeline_root=os.path.join(home, "pipeline_root"),
        components=components,
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(home, "metadata.sqlite")))


def _pusher(model, blessing, home: str):
    from tfx import v1 as tfx

    return tfx.components.Pusher(
        model=model, model_blessing=blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(home, "serving"))))


def curated_schema_file() -> str:
    """The packaged contract as a file path (ImportSchemaGen bakes the path into the spec)."""
    from importlib import resources

    from ctpipe.components.curated_schema import SCHEMA_FILE

    return str(resources.files("ctpipe.schema").joinpath(SCHEMA_FILE))


def create_expert_pipeline(data_root: str, home: str, train_steps: int = 200,
                           window_spans: int = 3, span: Optional[int] = None):
    """Stock components configured for continuous training (module docstring). `span`: read
    that span (backfill, a static range) instead of the newest one."""
    from tfx import v1 as tfx
    from tfx.proto import example_gen_pb2

    if span is None:  # the newest span (also the driver's default; said explicitly)
        example_range = tfx.proto.RangeConfig(rolling_range=tfx.proto.RollingRange(num_spans=1))
    else:
        example_range = tfx.proto.RangeConfig(static_range=tfx.proto.StaticRange(
            start_span_number=span, end_span_number=span))
    example_gen = tfx.components.CsvExampleGen(
        input_base=data_root,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern="span-{SPAN}/*")]),
        range_config=example_range)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=curated_schema_file())
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    # The rolling window: the last K spans' Examples in ML Metadata, this run's included
    # (hence ExampleGen upstream, as in penguin_pipeline_local.py).
    examples_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
        config={"range_config": tfx.proto.RangeConfig(
            rolling_range=tfx.proto.RollingRange(num_spans=window_spans))},
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                 producer_component_id=example_gen.id),
    ).with_id(SPAN_RESOLVER_ID)
    examples_resolver.add_upstream_node(example_gen)
    model_resolver = latest_blessed_model_resolver()
    trainer = tfx.components.Trainer(
        run_fn=STOCK_RUN_FN,
        examples=examples_resolver.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        base_model=model_resolver.outputs["model"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=5))
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=stock_eval_config())
    pusher = _pusher(trainer.outputs["model"], evaluator.outputs["blessing"], home)
    return _pipeline(EXPERT_PIPELINE_NAME, home, [
        example_gen, statistics_gen, schema_gen, example_validator, examples_resolver,
        model_resolver, trainer, evaluator, pusher])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--expert", action="store_true",
                        help="the expert anchor: newest span, rolling window, warm start")
    parser.add_argument("--window-spans", type=int, default=3)
    parser.add_argument("--spans", type=int, nargs="+",
                        help="expert: backfill these spans in order, one run each")
    args = parser.parse_args(argv)

    from ctpipe.pipeline.run.progress import quiet_libraries

    quiet_libraries()
    from tfx import v1 as tfx

    os.makedirs(args.home, exist_ok=True)
    data_root, home = os.path.abspath(args.data_root), os.path.abspath(args.home)
    if not args.expert:
        tfx.orchestration.LocalDagRunner().run(
            create_stock_pipeline(data_root, home, args.train_steps))
        return 0
    for span in args.spans or [None]:
        tfx.orchestration.LocalDagRunner().run(create_expert_pipeline(
            data_root, home, args.train_steps, args.window_spans, span))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
