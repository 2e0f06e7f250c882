"""Fresh-label evaluation and promotion (issue 17 items 3 and 5): every labelled version scores
the new span before training; the canary is promoted or retired on those numbers; a new version
never displaces a better canary; the control version stays pinned through every move."""
import json
import random

import pytest

from ctpipe.components import features as F
from ctpipe.components import label_check, release
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.errors import ConfigError
from ctpipe.pipeline.home.outcomes import DATA_BLOCKED, NOT_BLESSED, PUSHED, Decision
from ctpipe.pipeline.ops import fresh_labels

from tests.support import FakeHome, decision

ROWS = 400


# -- the rule (pure) ---------------------------------------------------------------------------


def _score(auc, rows=ROWS, stderr=0.03, labels=("stable",)):
    return {"auc": auc, "rows": rows, "stderr": stderr, "label": labels[0],
            "labels": list(labels)}


def test_a_canary_within_the_noise_tolerance_is_promoted_a_clearly_worse_one_retired():
    tolerance = label_check.fresh_tolerance(0.03, 0.03)
    assert tolerance == pytest.approx(1.96 * (2 * 0.03 ** 2) ** 0.5, abs=1e-4)
    fresh = {"1": _score(0.85), "2": _score(0.85 - tolerance + 0.001, labels=("canary",))}
    judged = fresh_labels.verdict(fresh, 1, 2, span=7, min_rows=243)
    assert judged["action"] == "promote" and judged["tolerance"] == tolerance
    assert "canary v2" in judged["reason"] and "span 7" in judged["reason"]
    fresh["2"] = _score(0.85 - tolerance - 0.001, labels=("canary",))
    assert fresh_labels.verdict(fresh, 1, 2, 7, 243)["action"] == "retire"


def test_too_few_rows_or_a_missing_score_decides_nothing():
    fresh = {"1": _score(0.85, rows=70), "2": _score(0.5, rows=70, labels=("canary",))}
    judged = fresh_labels.verdict(fresh, 1, 2, 13, 243)
    assert judged["action"] is None and "fewer than 243 rows" in judged["reason"]
    assert fresh_labels.verdict({"1": _score(0.85)}, 1, 2, 13, 243)["action"] is None


def test_the_tolerance_floor_holds_for_huge_spans():
    assert label_check.fresh_tolerance(0.0001, 0.0001) == label_check.TOLERANCE_FLOOR


def test_min_rows_default_is_derived_from_the_standard_error():
    assert PipelineConfig().fresh_min_rows == label_check.min_rows_for()
    rows = label_check.min_rows_for()
    stderr = lambda n: label_check.auc_stderr(0.85, round(n * 0.2), n - round(n * 0.2))  # noqa
    assert label_check.fresh_tolerance(stderr(rows), stderr(rows)) <= 0.10
    assert label_check.fresh_tolerance(stderr(rows - 1), stderr(rows - 1)) > 0.10


def test_promotion_modes():
    assert PipelineConfig().promotion == "fresh_labels"
    for mode in ("fresh_labels", "live", "auto", "both", "manual"):
        PipelineConfig.from_mapping({"promotion": mode})
    with pytest.raises(ConfigError, match="promotion must be one of"):
        PipelineConfig.from_mapping({"promotion": "sometimes"})
    assert PipelineConfig(promotion="auto").promotes_on_live_traffic
    assert not PipelineConfig(promotion="auto").promotes_on_fresh_labels
    both = PipelineConfig(promotion="both")
    assert both.promotes_on_live_traffic and both.promotes_on_fresh_labels


# -- the control label -------------------------------------------------------------------------


def test_control_survives_push_promote_rollback_and_canary_removal():
    r = release.Release("m", "/b", {"stable": 1})
    r = release.control_pinned(r, 1)
    r = release.after_push(r, 2)
    assert r.labels == {"stable": 1, "canary": 2, "control": 1}
    r = release.promoted(r)
    assert r.labels == {"stable": 2, "previous": 1, "control": 1}
    r = release.without_canary(release.after_push(r, 3))
    assert r.control == 1
    r = release.rolled_back(r)
    assert r.labels == {"stable": 1, "control": 1}
    assert release.from_text(release.to_text([r]))[0].control == 1
    assert release.control_unpinned(r).labels == {"stable": 1}
    with pytest.raises(release.ReleaseError):
        release.control_pinned(r, 1)


def test_control_pin_and_unpin_are_recorded_operator_actions(tmp_path):
    from ctpipe.pipeline.home import cycles
    from ctpipe.pipeline.ops import release as ops

    home = FakeHome(tmp_path / "home")
    home.versions(1, 2)
    home.release(stable=2, previous=1)
    result = ops.pin_control(home.config, 1, "long-run lift")
    assert result["control_version"] == 1 and result["after"]["control"] == 1
    ops.unpin_control(home.config, "done")
    actions = cycles.operator_actions(home.store, home.config.pipeline_name)
    assert [a.action for a in actions] == ["control_pin", "control_unpin"]
    assert actions[0].details["after"] == {"stable": 2, "previous": 1, "control": 1}


def test_status_json_and_metrics_show_control_and_fresh_span_auc(tmp_path):
    from ctpipe.pipeline.observe.metrics import exposition

    from tests.support import ctpipe

    home = FakeHome(tmp_path / "home")
    scored = decision("pushed", 3, version=3)
    scored.fresh_span_auc = {"1": _score(0.80, labels=("control", "previous")),
                             "2": _score(0.84, labels=("stable",))}
    home.decide(scored)
    home.versions(1, 2, 3)
    home.release(stable=2, canary=3, previous=1, control=1)
    text = exposition(home.config)
    assert 'ctpipe_fresh_span_auc{label="stable",model_name="big_tipper",pipeline="ctpipe",' \
           'version="2"} 0.84' in text
    assert 'label="control"' in text and 'label="previous"' in text
    assert "ctpipe_control_version" in text and "ctpipe_fresh_span_lift" in text
    status = json.loads(ctpipe("status", "--home", home.config.home, "--json").stdout)
    assert status["control_version"] == 1



def test_decay_shows_each_versions_fresh_span_auc_by_age(tmp_path):
    """Item 5: v1 (trained to span 1) scored on spans 2, 3, 4, v2 (trained to span 2) on 3, 4;
    a blocked span's numbers never count; `ctpipe decay` shows the same table."""
    from tests.support import ctpipe

    home = FakeHome(tmp_path / "home")

    def cycle(outcome, span, version=None, window=(), fresh=None, in_window=None):
        made = decision(outcome, span, version=version)
        made.training_spans = list(window)
        made.metrics = {"candidate": {"auc": in_window}} if in_window else {}
        made.fresh_span_auc = {str(v): _score(a, stderr=0.02) for v, a in (fresh or {}).items()}
        return made

    home.decide(cycle("pushed", 1, 1, [1], in_window=0.95),
                cycle("pushed", 2, 2, [1, 2], {1: 0.93}, in_window=0.94),
                cycle("data_blocked", 3, fresh={1: 0.50, 2: 0.50}),
                cycle("not_blessed", 4, None, [2, 3, 4], {1: 0.90, 2: 0.92}),
                cycle("pushed", 5, 3, [3, 4, 5], {1: 0.87, 2: 0.90}, in_window=0.93))
    status = json.loads(ctpipe("decay", "--home", home.config.home, "--json").stdout)
    versions = {entry["version"]: entry for entry in status["versions"]}
    assert set(versions) == {1, 2}  # v3 has no span after its window yet
    assert versions[1]["trained_to"] == 1 and versions[1]["in_window_auc"] == 0.95
    assert {age: s["auc"] for age, s in versions[1]["by_age"].items()} == \
        {"1": 0.93, "3": 0.90, "4": 0.87}  # span 3 was blocked: its labels do not count
    assert {age: s["span"] for age, s in versions[2]["by_age"].items()} == {"2": 4, "3": 5}
    by_age = {item["age"]: item for item in status["by_age"]}
    assert by_age[1]["versions"] == [1] and by_age[1]["mean_auc"] == 0.93
    assert by_age[3]["versions"] == [1, 2] and by_age[3]["mean_auc"] == 0.90
    assert by_age[4]["mean_change"] == pytest.approx(0.87 - 0.93, abs=1e-4)
    assert by_age[4]["change_stderr"] == pytest.approx((2 * 0.02 ** 2) ** 0.5, abs=1e-4)
    text = ctpipe("decay", "--home", home.config.home)
    assert text.returncode == 0, text.stderr
    assert "v1" in text.stdout and "0.9300" in text.stdout and "+4: AUC 0.8700" in text.stdout
    assert "change from age 1 -0.0600" in text.stdout

# -- the release step on real (toy) SavedModels ------------------------------------------------


def _toy_model(path, weight: float) -> None:
    """A SavedModel scoring sigmoid(weight * fare): weight > 0 ranks well, < 0 badly."""
    import tensorflow as tf

    class Toy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            fare = tf.io.parse_example(examples, {"fare": tf.io.FixedLenFeature(
                [], tf.float32, default_value=0.0)})["fare"]
            return {"probabilities": tf.sigmoid(weight * (fare - 10.0))}

    toy = Toy()
    tf.saved_model.save(toy, str(path), signatures={"serving_default": toy.serve})


def _span_examples(folder) -> str:
    """An ExampleGen-like artifact: Split-eval/*.gz with `fare` and the label."""
    import tensorflow as tf

    rng = random.Random(3)
    (folder / "Split-eval").mkdir(parents=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(folder / "Split-eval" / "data.gz"), options) as writer:
        for _ in range(ROWS):
            fare = rng.uniform(0, 20)
            label = int(fare + rng.gauss(0, 4) > 13)
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "fare": tf.train.Feature(float_list=tf.train.FloatList(value=[fare])),
                F.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            })).SerializeToString())
    return str(folder)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("toys")
    for name, weight in (("good", 1.0), ("bad", -1.0)):
        _toy_model(root / name, weight)
    return root, _span_examples(root / "examples")


def _home(tmp_path, toys, models, **labels):
    import shutil

    root, examples = toys
    home = FakeHome(tmp_path / "home")
    for version, kind in models.items():
        shutil.copytree(root / kind, f"{home.paths.model_dir}/{version}")
    home.release(**labels)
    return home, examples


def _cycle(home, examples, outcome, span=7, version=None, promotion="fresh_labels"):
    import dataclasses

    config = dataclasses.replace(home.config, promotion=promotion)
    fresh = label_check.fresh_span_scores(home.paths.manifest_path, config.model_name, examples)
    made = Decision(outcome, span=span, model_version=version, reasons=[f"{outcome} (test)"],
                    metrics={}, training_spans=[], baseline_version=1, fresh_span_auc=fresh)
    return config, fresh_labels.settle_release(config, made, examples)


def _actions(home):
    from ctpipe.pipeline.home import cycles

    return cycles.operator_actions(home.store, home.config.pipeline_name)


def test_every_labelled_version_is_scored_once_with_its_labels(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "bad"}, stable=1, canary=2, control=1)
    fresh = label_check.fresh_span_scores(home.paths.manifest_path, "big_tipper", examples)
    assert set(fresh) == {"1", "2"}
    assert fresh["1"]["labels"] == ["stable", "control"] and fresh["1"]["rows"] == ROWS
    assert fresh["1"]["auc"] > 0.8 > 0.2 > fresh["2"]["auc"]
    assert 0 < fresh["1"]["stderr"] < 0.05


def test_a_good_canary_is_promoted_and_a_worse_candidate_never_replaces_it(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "good", 3: "bad"},
                           stable=1, canary=2, control=1)
    _, decided = _cycle(home, examples, PUSHED, version=3)
    [entry] = release.read(home.paths.manifest_path)
    assert entry.labels == {"stable": 2, "previous": 1, "control": 1}  # v3 stays unlabelled
    assert decided.outcome == NOT_BLESSED and decided.model_version is None
    assert decided.reasons[0].startswith("candidate v3 AUC") and "just promoted" in \
        decided.reasons[0]
    assert decided.checks["release"]["after"] == entry.labels
    [action] = _actions(home)
    assert (action.action, action.details["by"]) == ("promote", "fresh_labels")
    assert action.details["fresh"]["canary_auc"] == decided.fresh_span_auc["2"]["auc"]


def test_a_clearly_worse_canary_is_retired_and_the_new_version_goes_on_trial(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "bad", 3: "good"},
                           stable=1, canary=2, control=1)
    _, decided = _cycle(home, examples, PUSHED, version=3)
    assert decided.outcome == PUSHED
    assert release.read(home.paths.manifest_path)[0].labels == {
        "stable": 1, "canary": 3, "control": 1}
    assert [(a.action, a.details["by"]) for a in _actions(home)] == [
        ("remove_canary", "fresh_labels")]


def test_a_blocked_span_moves_nothing(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "bad"}, stable=1, canary=2)
    before = open(home.paths.manifest_path).read()
    _, decided = _cycle(home, examples, DATA_BLOCKED)
    assert open(home.paths.manifest_path).read() == before and not _actions(home)
    assert "release" not in decided.checks


def test_manual_promotion_records_the_verdict_without_applying_it(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "bad"}, stable=1, canary=2)
    _, decided = _cycle(home, examples, NOT_BLESSED, promotion="manual")
    judged = decided.checks["release"]["fresh_labels"]
    assert judged["action"] == "retire" and judged["applied"] is False
    assert release.read(home.paths.manifest_path)[0].canary == 2 and not _actions(home)


def test_a_canary_on_trial_is_never_replaced_by_a_worse_candidate(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "good", 3: "bad"}, stable=1,
                           canary=2)
    _, decided = _cycle(home, examples, PUSHED, version=3, promotion="manual")
    assert decided.outcome == NOT_BLESSED
    assert "a better canary is never replaced by a worse one" in decided.reasons[0]
    assert release.read(home.paths.manifest_path)[0].labels == {"stable": 1, "canary": 2}


def test_both_needs_the_live_guard_after_fresh_labels_passed(tmp_path, toys):
    home, examples = _home(tmp_path, toys, {1: "good", 2: "good"}, stable=1, canary=2)
    config, _ = _cycle(home, examples, NOT_BLESSED, promotion="both")
    assert release.read(home.paths.manifest_path)[0].canary == 2  # not promoted yet
    assert fresh_labels.fresh_passes(config, 2) and not fresh_labels.fresh_passes(config, 3)


# -- on Kubeflow: the Pusher applies the verdict where it writes (issue 17 item 3) ------------


def _kfp_push(tmp_path, canary_auc, promotion="fresh_labels"):
    """The Pusher's executor as a kfp run calls it: stable v1, canary v2 in the manifest beside
    its base directory, a candidate whose lineage carries the DataGate's fresh-span scores."""
    from tfx.types import standard_artifacts

    from ctpipe.components import atomic_pusher
    from ctpipe.components.layout import LINEAGE_FILE

    base = tmp_path / "models" / "big_tipper"
    for version in (1, 2):
        (base / str(version) / "variables").mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"pb")
        (base / str(version) / "variables" / "variables.index").write_bytes(b"i")
    manifest = release.manifest_path(str(base.parent))
    release.write(manifest, [release.Release("big_tipper", str(base)).relabelled(
        {"stable": 1, "canary": 2})])
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "trainer_model")
    serving = tmp_path / "trainer_model" / "Format-Serving"
    (serving / "variables").mkdir(parents=True)
    (serving / "saved_model.pb").write_bytes(b"pb")
    (serving / "variables" / "variables.index").write_bytes(b"i")
    fresh = {"1": _score(0.85), "2": _score(canary_auc, labels=("canary",))}
    (tmp_path / "trainer_model" / LINEAGE_FILE).write_text(json.dumps(
        {"training_spans": [5], "fresh_labels": {"span": 5, "fresh_span_auc": fresh}}))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    custom_config = {"serving_rest": "", atomic_pusher.LABELS_BY: "pusher",
                     atomic_pusher.PROMOTION_KEY: promotion,
                     atomic_pusher.FRESH_MIN_ROWS_KEY: 243}
    atomic_pusher.AtomicPusherExecutor().Do(
        {"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
        {"push_destination": json.dumps({"filesystem": {"base_directory": str(base)}}),
         "custom_config": json.dumps(custom_config)})
    [after] = release.read(manifest)
    return after.labels, json.loads(pushed.get_string_custom_property(
        atomic_pusher.FRESH_LABELS_PROPERTY))


@pytest.mark.parametrize("canary_auc, promotion, action, labels", [
    (0.85, "fresh_labels", "promote", {"stable": 2, "previous": 1, "canary": 3}),
    (0.60, "fresh_labels", "retire", {"stable": 1, "canary": 3}),
    (0.85, "manual", "promote", {"stable": 1, "canary": 3}),  # recorded, not applied
])
def test_on_kubeflow_the_pusher_applies_the_fresh_label_verdict_before_labelling(
        tmp_path, canary_auc, promotion, action, labels):
    after, judged = _kfp_push(tmp_path, canary_auc, promotion)
    assert after == labels
    assert judged["action"] == action and judged["canary"] == 2 and judged["span"] == 5
    assert judged["applied"] == (promotion == "fresh_labels")
