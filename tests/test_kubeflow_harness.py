"""The compiled open-source-KFP spec runs: executed by tests/kfp_harness.py by KFP's own rules
(backend 2.5.0), each step a subprocess of the *installed wheel* (not the checkout), as uid
10001 when the tests run as root.

Scenario: two scheduled runs in a row (the first pushes, the second is no_new_data); a span
that breaks the contract skips the Trainer (CANCELED) so Evaluator and Pusher never start; a
clean span after it trains without the blocked one, against the first run's model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from ctpipe.kubeflow.entrypoint import NONE_KEY
from ctpipe.pipeline.home import outcomes

from tests.kfp_harness import COMPLETE, NOT_RUN, OMITTED, SKIPPED, KfpHarness, run_executions
from tests.support import deliver, world_readable_dir

pytestmark = pytest.mark.e2e

# No TF Serving runs beside the harness: the Pusher must not wait for one to load the new
# version (the two-phase label move with a server is tests/test_release*.py's business).
CONFIG = """
min_steps = 40
max_steps = 80
kfp_beam_pipeline_args = []
kfp_serving_rest = ""
"""
GATED = ("Trainer", "Evaluator", "Pusher")


@pytest.fixture(scope="module")
def kfp_runs(wheel_venv):
    root = world_readable_dir("ctpipe-kfp-harness-")
    try:
        yield _scenario(root, wheel_venv)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _scenario(root: Path, wheel_venv: Path):
    (root / "ctpipe.toml").write_text(CONFIG)
    spec = root / "ctpipe.yaml"
    compiled = subprocess.run([str(wheel_venv / "bin" / "ctpipe"), "kubeflow", "compile",
                               "--config", str(root / "ctpipe.toml"), "--output", str(spec)],
                              cwd=root, capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    models = root / "models-pvc"
    harness = KfpHarness(spec, root / "kfp", str(wheel_venv / "bin" / "python"),
                         mounts={"ctpipe-models": str(models)})
    data = root / "data"
    parameters = {"data-root": str(data)}
    runs = {}
    deliver(data, 1, 1)
    runs["first"] = harness.run(parameters)
    runs["again"] = harness.run(parameters)
    deliver(data, 2, 2, "break_contract")
    runs["blocked"] = harness.run(parameters)
    deliver(data, 3, 3)
    runs["clean"] = harness.run(parameters)
    decisions = {d.run_id: d for d in outcomes.history(harness.store, "ctpipe")}
    runs["sdists"] = sorted(str(p) for p in harness.temp_dir.rglob("tfx_ephemeral*"))
    runs["harness"] = harness
    return runs, decisions, models / "big_tipper"


def _explain(run):
    return json.dumps({task: log[-800:] for task, log in run.logs.items()
                       if run.states.get(task) != COMPLETE or "rror" in log})[:6000]


def test_first_scheduled_run_pushes_to_the_models_pvc(kfp_runs):
    runs, decisions, models = kfp_runs
    run = runs["first"]
    assert not run.failed, _explain(run)
    assert all(run.states[task] == COMPLETE for task in GATED), run.states
    decision = decisions[run.run_id]
    assert decision.outcome == "pushed", decision.reasons
    assert decision.span == 1 and decision.training_spans == [1]
    assert (models / "1" / "saved_model.pb").is_file()


def test_first_run_baseline_is_a_marked_phantom_that_the_evaluator_never_sees(kfp_runs):
    """Nothing blessed yet: the launcher still records the resolver's declared output (KFP's
    uploadOutputArtifacts), carrying our marker; the Evaluator ran without a baseline."""
    runs, decisions, _ = kfp_runs
    run = runs["first"]
    evaluator_input = run.executor_inputs["Evaluator"]["inputs"]["artifacts"]
    [phantom] = evaluator_input["baseline_model"]["artifacts"]
    assert phantom["metadata"][NONE_KEY] == 1.0
    assert not os.listdir(phantom["uri"])  # an empty, never-written artifact
    assert "baseline" not in decisions[run.run_id].metrics  # no model was compared against


def test_every_task_is_recorded_as_kfp_records_it(kfp_runs):
    """A root DAG execution, then one execution per started task; nothing for omitted ones."""
    runs, _, _ = kfp_runs
    run = runs["first"]
    executions = run_executions(runs["harness"].store, run.run_id)
    assert ("system.DAGExecution", "", pb.Execution.COMPLETE) in executions
    assert sorted(t for kind, t, _ in executions if kind == "system.ContainerExecution") == \
        sorted(run.states)


def test_second_run_with_nothing_new_trains_nothing(kfp_runs):
    runs, decisions, models = kfp_runs
    run = runs["again"]
    assert run.states["SpanSelect"] == COMPLETE, _explain(run)
    assert {state for task, state in run.states.items() if task != "SpanSelect"} <= \
        set(NOT_RUN)
    # Tasks right after SpanSelect are CANCELED by their trigger condition; the rest never start.
    executions = run_executions(runs["harness"].store, run.run_id)
    cancelled = {t for _, t, state in executions if state == pb.Execution.CANCELED}
    assert cancelled == {t for t, state in run.states.items() if state == SKIPPED}
    assert "CsvExampleGen" in cancelled and run.states["StatisticsGen"] == OMITTED
    decision = decisions[run.run_id]
    assert decision.outcome == "no_new_data", decision.reasons
    assert "waiting for span 2" in decision.reasons[0]


def test_a_contract_breaking_span_skips_trainer_evaluator_and_pusher(kfp_runs):
    runs, decisions, _ = kfp_runs
    run = runs["blocked"]
    assert not run.failed, _explain(run)
    assert run.states["DataGate"] == COMPLETE
    assert run.states["Trainer"] == SKIPPED  # condition accepted == 1.0 is false: CANCELED
    assert run.states["Evaluator"] == OMITTED and run.states["Pusher"] == OMITTED, run.states
    decision = decisions[run.run_id]
    assert decision.outcome == "data_blocked" and decision.span == 2


def test_a_clean_span_after_it_trains_without_the_blocked_one(kfp_runs):
    runs, decisions, models = kfp_runs
    run = runs["clean"]
    assert not run.failed, _explain(run)
    decision = decisions[run.run_id]
    assert decision.span == 3 and decision.outcome in ("pushed", "not_blessed"), decision.reasons
    assert decision.training_spans == [1, 3]
    assert decision.metrics["baseline"]["auc"] > 0  # compared with the model of run 1
    assert decision.checks["warm_start"]["uri"]  # warm-started from it, found over MLMD


def test_no_step_built_a_tfx_sdist(kfp_runs):
    runs, _, _ = kfp_runs
    assert runs["sdists"] == []
