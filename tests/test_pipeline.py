"""create_pipeline: the wiring, and that the very same pipeline compiles for Kubeflow V2."""
import json

import pytest

from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.definition import STABLE_BY_STEP, create_pipeline

EXPECTED_ORDER = ["CsvExampleGen", "StatisticsGen", "SchemaGen", "CuratedSchema",
                  "ExampleValidator", "PreviousGateState", "StableModel", "DataGate",
                  "Trainer", "Evaluator", "Pusher"]
GATED = {"Trainer", "Evaluator", "Pusher"}


@pytest.fixture(scope="module")
def local_pipeline(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return create_pipeline(PipelineConfig(home=str(home), data_root=str(home / "data")))


def test_all_components_in_dependency_order(local_pipeline):
    ids = [c.id for c in local_pipeline.components]  # topologically sorted by TFX
    assert sorted(ids) == sorted(EXPECTED_ORDER)
    chain = ["CsvExampleGen", "StatisticsGen", "ExampleValidator", "DataGate", "Trainer",
             "Evaluator", "Pusher"]
    assert [ids.index(c) for c in chain] == sorted(ids.index(c) for c in chain)


def test_only_training_steps_sit_behind_the_gate(local_pipeline):
    from tfx.dsl.experimental.conditionals.conditional import get_predicates

    registry = local_pipeline.dsl_context_registry
    gated = {c.id for c in local_pipeline.components if get_predicates(c, registry)}
    assert gated == GATED


def test_trainer_trains_on_the_gate_window_and_warm_starts(local_pipeline):
    nodes = {c.id: c for c in local_pipeline.components}
    trainer = nodes["Trainer"]
    assert trainer.inputs["examples"].producer_component_id == "DataGate"
    assert trainer.inputs["base_model"].producer_component_id == "StableModel"
    evaluator = nodes["Evaluator"]
    assert evaluator.inputs["examples"].producer_component_id == "CsvExampleGen"
    assert evaluator.inputs["baseline_model"].producer_component_id == "StableModel"


def test_same_pipeline_compiles_for_kubeflow_v2(tmp_path):
    from tfx import v1 as tfx

    config = PipelineConfig()
    pipeline = create_pipeline(config, pipeline_root=config.kfp_pipeline_root,
                               data_root=config.kfp_data_root,
                               serving_model_dir=config.kfp_serving_dir, beam_pipeline_args=[],
                               baseline=STABLE_BY_STEP)
    output = tmp_path / "spec.json"
    tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=config.image),
        output_dir=str(tmp_path), output_filename=output.name).run(pipeline, write_out=True)
    spec = json.loads(output.read_text())["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    conditioned = {name for name, task in tasks.items()
                   if "accepted" in task.get("triggerPolicy", {}).get("condition", "")}
    assert conditioned == GATED
    ledger_query = spec["deploymentSpec"]["executors"]["PreviousGateState_executor"]
    assert ledger_query["resolver"]["outputArtifactQueries"]["state"]["filter"].startswith(
        'schema_title="tfx.Dataset"')
