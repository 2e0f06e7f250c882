"""Production = stable (issue 17): the Evaluator's baseline, the label check and the warm start
use the model serving as `stable` in the release manifest, never the latest blessed model (the
canary); a candidate that is only its warm-start parent's weights is not pushed."""
import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb
from tfx.types import standard_artifacts

from ctpipe.components import atomic_pusher, release
from ctpipe.components.layout import LINEAGE_FILE
from ctpipe.components.stable_model import MODEL_KEY, PUSHED_KEY, StableModelStrategy
from ctpipe.pipeline.home import outcomes
from ctpipe.pipeline.home import store as mlmd_store


def _pusher_run(store, types, model_id: int, version: int):
    """A Pusher execution: input `model` (an existing Model), output PushedModel `version`."""
    pushed = pb.Artifact(type_id=types["pushed"], uri=f"/p/pushed/{version}")
    pushed.custom_properties["pushed"].int_value = 1
    pushed.custom_properties["pushed_version"].string_value = str(version)
    [model] = store.get_artifacts_by_id([model_id])
    inp, out = pb.Event(type=pb.Event.INPUT), pb.Event(type=pb.Event.OUTPUT)
    inp.path.steps.add().key = "model"
    out.path.steps.add().key = "pushed_model"
    _, [_, pushed_id], _ = store.put_execution(pb.Execution(type_id=types["pusher"]),
                                               [(model, inp), (pushed, out)], [])
    return pushed_id


def _as_tfx(artifact_type, mlmd_artifact):
    artifact = artifact_type()
    artifact.set_mlmd_artifact(mlmd_artifact)
    return artifact


def test_stable_not_the_latest_blessed_model_is_the_production_model(tmp_path):
    store = mlmd_store.open_store(mlmd_store.sqlite_connection(str(tmp_path / "m.sqlite")))
    types = {"model": store.put_artifact_type(pb.ArtifactType(name="Model")),
             "pushed": store.put_artifact_type(pb.ArtifactType(name="PushedModel")),
             "pusher": store.put_execution_type(pb.ExecutionType(name="Pusher"))}
    model_ids = store.put_artifacts([pb.Artifact(type_id=types["model"], uri=f"/p/model/{i}")
                                     for i in (1, 2, 3)])
    for version, model_id in enumerate(model_ids, start=1):
        _pusher_run(store, types, model_id, version)
    manifest = str(tmp_path / "models.config")
    release.write(manifest, [release.Release("big_tipper", str(tmp_path), {
        release.STABLE: 2, release.PREVIOUS: 1, release.CANARY: 3})])
    input_dict = {
        MODEL_KEY: [_as_tfx(standard_artifacts.Model, a)
                    for a in store.get_artifacts_by_type("Model")],
        PUSHED_KEY: [_as_tfx(standard_artifacts.PushedModel, a)
                     for a in store.get_artifacts_by_type("PushedModel")]}
    resolved = StableModelStrategy(manifest, "big_tipper").resolve_artifacts(store, input_dict)
    [model] = resolved[MODEL_KEY]
    assert model.uri == "/p/model/2"  # stable, not the canary (3, the latest blessed)
    assert model.get_int_custom_property("release_version") == 2


def test_nothing_resolves_before_a_first_stable(tmp_path):
    store = mlmd_store.open_store(mlmd_store.sqlite_connection(str(tmp_path / "m.sqlite")))
    strategy = StableModelStrategy(str(tmp_path / "absent.config"), "big_tipper")
    assert strategy.resolve_artifacts(store, {MODEL_KEY: [], PUSHED_KEY: []})[MODEL_KEY] == []


def test_pipeline_wires_stable_into_gate_trainer_and_evaluator(tmp_path):
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.definition import create_pipeline

    pipeline = create_pipeline(PipelineConfig(home=str(tmp_path), data_root=str(tmp_path)))
    nodes = {c.id: c for c in pipeline.components}
    assert "LatestBlessedModel" not in nodes
    for node, key in (("DataGate", "production_model"), ("Trainer", "base_model"),
                      ("Evaluator", "baseline_model")):
        assert nodes[node].inputs[key].producer_component_id == "StableModel"


# -- identical candidates --------------------------------------------------------------------


def _lineage(model_dir, kept: bool, warm_start_uri="/p/model/2"):
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / LINEAGE_FILE).write_text(json.dumps({
        "training_spans": [1, 2], "warm_start_uri": warm_start_uri,
        "training": {"kept_warm_start_weights": kept}}))
    return str(model_dir)


def test_a_candidate_that_kept_its_warm_start_weights_is_identical(tmp_path):
    assert atomic_pusher.identical_to_warm_start(_lineage(tmp_path / "a", kept=True))
    assert not atomic_pusher.identical_to_warm_start(_lineage(tmp_path / "b", kept=False))
    assert not atomic_pusher.identical_to_warm_start(
        _lineage(tmp_path / "c", kept=True, warm_start_uri=None))
    assert not atomic_pusher.identical_to_warm_start(str(tmp_path / "no-lineage"))


def _artifact(uri="/x", **props):
    artifact = pb.Artifact(uri=uri)
    for key, value in props.items():
        if isinstance(value, str):
            artifact.custom_properties[key].string_value = value
        else:
            artifact.custom_properties[key].int_value = value
    return artifact


def _run(pushed):
    return outcomes.RunRecord(run_id="r", states={}, started_ms=0, finished_ms=1000, outputs={
        "CsvExampleGen": {"examples": _artifact(span=7)},
        "DataGate": {"state": _artifact(accepted=1, training_spans="[5, 6, 7]", checks="{}")},
        "Evaluator": {"evaluation": _artifact("/nonexistent"), "blessing": _artifact(blessed=1)},
        "Pusher": {"pushed_model": pushed}})


def test_identical_candidate_is_not_blessed_with_one_final_decision():
    decision = outcomes.decision_for_run(
        _run(_artifact(pushed=0, identical_to_warm_start=1)), baseline_version=4)
    assert decision.outcome == outcomes.NOT_BLESSED and decision.outcome.final
    assert decision.model_version is None
    assert decision.reasons[0].startswith("candidate identical to stable v4")
    assert decision.baseline_version == 4
    assert json.loads(json.dumps(decision.to_dict()))["baseline_version"] == 4


def test_pushed_decision_names_stable_as_its_baseline():
    decision = outcomes.decision_for_run(
        _run(_artifact(pushed=1, pushed_version="5")), baseline_version=4)
    assert decision.outcome == outcomes.PUSHED and decision.model_version == 5
    assert decision.baseline_version == 4
    assert "served model" not in " ".join(decision.reasons)


# -- the manifest tells the truth ------------------------------------------------------------


def _moved_home(tmp_path):
    """A home whose manifest names stable 1, canary 2 under its base path, then copied."""
    import shutil

    from tests.support import FakeHome, config_for

    old = FakeHome(tmp_path / "old")
    old.versions(1, 2)
    old.release(stable=1, canary=2)
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old" / "serving" / "big_tipper" / "2")  # the old place diverges
    return config_for(tmp_path / "new")


def test_a_copied_home_promotes_under_its_own_base_path_and_says_so(tmp_path):
    from ctpipe.pipeline.home import Home
    from ctpipe.pipeline.ops import release as ops

    config = _moved_home(tmp_path)
    result = ops.promote(config, None, "canary looked good")
    [entry] = release.read(Home.of(config).manifest_path)
    assert entry.base_path == Home.of(config).model_dir
    assert entry.labels == {"stable": 2, "previous": 1}
    assert "home moved" in result["note"] and str(tmp_path / "old") in result["note"]
    assert ops.describe(result).splitlines()[0] == result["note"]


def test_the_pusher_rewrites_a_stale_base_path(tmp_path):
    config = _moved_home(tmp_path)
    from ctpipe.pipeline.home import Home

    home = Home.of(config)
    folder = os.path.join(home.model_dir, "3")
    os.makedirs(folder)
    open(os.path.join(folder, "saved_model.pb"), "wb").close()
    labels = atomic_pusher.release_new_version(home.model_dir, 3, {})
    assert labels == {"stable": 1, "canary": 3}
    assert release.read(home.manifest_path)[0].base_path == home.model_dir


@pytest.mark.parametrize("broken", ["missing", "incomplete"])
def test_promote_refuses_a_target_missing_or_incomplete_under_the_base_path(tmp_path, broken):
    import shutil

    from ctpipe.pipeline.errors import BadInput
    from ctpipe.pipeline.ops import release as ops

    from tests.support import FakeHome

    home = FakeHome(tmp_path / "home")
    home.versions(1, 2)
    home.release(stable=1, canary=2)
    before = open(home.paths.manifest_path).read()
    target = os.path.join(home.paths.model_dir, "2")
    if broken == "missing":
        shutil.rmtree(target)
    else:
        os.remove(os.path.join(target, "saved_model.pb"))
    with pytest.raises(BadInput, match="version\\(s\\) 2 of big_tipper") as error:
        ops.promote(home.config, 2, "try")
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    assert open(home.paths.manifest_path).read() == before


# -- retention keeps every labelled version and what it needs -------------------------------


def test_retention_protects_stable_and_its_training_data_not_only_the_newest(tmp_path):
    from ctpipe.components.ledger import Ledger
    from ctpipe.pipeline.home import cycles, ledger_store
    from ctpipe.pipeline.run.retention import protected_uris

    from tests.support import FakeHome

    home = FakeHome(tmp_path / "home")
    store = home.store
    types = {"model": store.put_artifact_type(pb.ArtifactType(name="Model")),
             "pushed": store.put_artifact_type(pb.ArtifactType(name="PushedModel")),
             "pusher": store.put_execution_type(pb.ExecutionType(name="Pusher"))}
    uris = {}
    for version, spans in ((1, [1]), (2, [1, 2]), (3, [1, 2, 3])):
        uris[version] = _lineage(tmp_path / f"model-{version}", kept=False,
                                 warm_start_uri=str(tmp_path / f"parent-{version}"))
        lineage = json.loads(open(os.path.join(uris[version], LINEAGE_FILE)).read())
        lineage["training_spans"] = spans
        open(os.path.join(uris[version], LINEAGE_FILE), "w").write(json.dumps(lineage))
        [model_id] = store.put_artifacts([pb.Artifact(type_id=types["model"],
                                                      uri=uris[version],
                                                      state=pb.Artifact.LIVE)])
        _pusher_run(store, types, model_id, version)
    ledger = Ledger()
    for span in range(1, 9):
        ledger = ledger.accept({"span": span, "examples_uri": f"/ex/{span}",
                                "statistics_uri": f"/st/{span}", "rows": 5000})
    action = cycles.record_action(store, "ctpipe", "test", None, "test")
    ledger_store.publish_ledger(store, "ctpipe", home.paths.pipeline_root, ledger, action.id)
    home.release(stable=1, canary=3)  # stable is the oldest model, not the newest push

    keep = protected_uris(store, home.config)
    assert uris[1] in keep and str(tmp_path / "parent-1") in keep
    assert uris[3] in keep
    assert uris[2] not in keep  # labelled by nothing
    assert "/ex/1" in keep and "/st/1" in keep  # stable's training window (skew needs it)


def test_retention_keeps_the_span_files_a_retained_window_links_to(tmp_path):
    """A training window of a run retention keeps (the last keep_cycles) links to its spans'
    ExampleGen files; when its oldest span is older than the next cycle's window, those files
    must stay too, or a LIVE artifact is left pointing at nothing (found by `make bench
    --first-spans 10`: its leak check could not read a kept window)."""
    import dataclasses

    from ctpipe.components.ledger import Ledger
    from ctpipe.pipeline.home import cycles, ledger_store
    from ctpipe.pipeline.run.retention import apply_retention

    from tests.support import FakeHome

    home = FakeHome(tmp_path / "home")
    store = home.store
    config = dataclasses.replace(home.config, keep_cycles=4, window_spans=3, window_min_rows=0)
    root = home.paths.pipeline_root
    examples_type = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    [pipeline] = store.put_contexts([pb.Context(
        type_id=store.put_context_type(pb.ContextType(name="pipeline")),
        name=config.pipeline_name)])
    gate = store.put_execution_type(pb.ExecutionType(name="DataGate"))
    ledger = Ledger()
    for span in range(1, 9):
        examples = os.path.join(root, "CsvExampleGen", "examples", str(span))
        os.makedirs(os.path.join(examples, "Split-train"))
        open(os.path.join(examples, "Split-train", "data.gz"), "wb").write(b"rows")
        ledger = ledger.accept({"span": span, "examples_uri": examples, "rows": 5000})
        window = os.path.join(root, "DataGate", "training_examples", str(span))
        os.makedirs(os.path.join(window, "Split-train"))
        spans = [s for s in (span - 2, span - 1, span) if s >= 1]
        open(os.path.join(window, "window.json"), "w").write(json.dumps({"spans": spans}))
        for s in spans:
            os.symlink(os.path.join(root, "CsvExampleGen", "examples", str(s), "Split-train",
                                    "data.gz"),
                       os.path.join(window, "Split-train", f"span-{s}-data.gz"))
        [run] = store.put_contexts([pb.Context(type_id=run_type, name=f"run-{span}")])
        store.put_parent_contexts([pb.ParentContext(child_id=run, parent_id=pipeline)])
        ids = store.put_artifacts([pb.Artifact(type_id=examples_type, uri=uri,
                                               state=pb.Artifact.LIVE)
                                   for uri in (examples, window)])
        [execution] = store.put_executions([pb.Execution(type_id=gate)])
        store.put_attributions_and_associations(
            [pb.Attribution(artifact_id=i, context_id=run) for i in ids],
            [pb.Association(execution_id=execution, context_id=run)])
        store.put_events([pb.Event(artifact_id=i, execution_id=execution,
                                   type=pb.Event.OUTPUT) for i in ids])
    action = cycles.record_action(store, config.pipeline_name, "test", None, "test")
    ledger_store.publish_ledger(store, config.pipeline_name, root, ledger, action.id)

    removed = apply_retention(store, config)
    assert removed  # spans 1-3 and the old windows go
    live = [a for a in store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE]
    dangling = [os.path.join(folder, name) for artifact in live
                for folder, _, names in os.walk(artifact.uri) for name in names
                if not os.path.exists(os.path.join(folder, name))]
    assert live and not dangling
    assert os.path.isdir(os.path.join(root, "CsvExampleGen", "examples", "4"))  # a kept window's
    assert not os.path.exists(os.path.join(root, "CsvExampleGen", "examples", "2"))
