"""Continuity over a long run (tests/scenario.py): 20+ real cycles with a backlog, poisoned
labels, an accepted drift, a killed cycle, failing cycles, an after-the-fact quarantine and
`ctpipe watch` - and the invariants after every step."""
from __future__ import annotations

import json

import pytest

from tests.support import ctpipe

pytestmark = pytest.mark.e2e


def _decision(long_run, label):
    return long_run.steps[label]["decision"]


def test_invariants_hold_after_every_step(long_run):
    assert long_run.violations == []
    assert len([s for s in long_run.steps.values() if "decision" in s]) + \
        len(long_run.steps["backlog"]["decisions"]) + \
        len(long_run.steps["watch"]["decisions"]) + 1 >= 20  # + the killed cycle


def test_nothing_accumulates_in_the_system_temp_dir(long_run):
    assert long_run.temp_growth == []


def test_backlog_is_processed_oldest_first_one_json_line_each(long_run):
    step = long_run.steps["backlog"]
    assert step["returncode"] == 0, step["stderr"]
    assert [d["span"] for d in step["decisions"]] == [3, 4, 5]
    outcomes = [d["outcome"] for d in step["decisions"]]
    assert outcomes[2] == "data_blocked"
    assert all(outcome in ("pushed", "not_blessed") for outcome in outcomes[:2])
    assert step["decisions"][1]["training_spans"] == [2, 3, 4]


def test_shuffled_labels_are_blocked_and_never_reach_a_window(long_run):
    decision = _decision(long_run, "shuffled")
    assert decision.outcome == "data_blocked", decision.reasons
    assert "labels disagree with the production model" in " ".join(decision.reasons)
    labels = decision.checks["labels"]
    assert labels["production_auc_on_span"] < labels["production_auc_expected"] - 0.15
    later = [s["decision"] for s in long_run.steps.values() if "decision" in s]
    assert all(6 not in d.training_spans for d in later)
    assert _decision(long_run, "after_shuffled").training_spans == [3, 4, 7]


def test_a_normal_span_records_the_production_models_score(long_run):
    decision = _decision(long_run, "after_shuffled")
    assert decision.outcome in ("pushed", "not_blessed")
    labels = decision.checks["labels"]
    assert labels["production_auc_on_span"] > 0.75 and labels["production_auc_expected"] > 0.75


def test_a_lasting_drift_is_blocked_until_an_operator_releases_it(long_run):
    drifted = _decision(long_run, "drifted")
    assert drifted.outcome == "data_blocked"
    assert any("payment_type: drift vs span 7" in r for r in drifted.reasons), drifted.reasons
    release = long_run.steps["release"]
    assert release["returncode"] == 0, release["stderr"]
    released = json.loads(release["output"])
    assert released["drift_baseline"] is True and 8 in released["accepted_spans"]
    after = _decision(long_run, "after_release")
    assert after.outcome in ("pushed", "not_blessed"), after.reasons
    assert 8 in after.training_spans


def test_a_killed_cycle_is_retried_to_a_decision(long_run):
    killed = long_run.steps["killed"]
    assert killed["reached_trainer"], killed["stderr"]
    assert killed["returncode"] == -9
    retried = _decision(long_run, "after_kill")
    assert retried.span == 10 and retried.outcome.final
    assert retried.attempt == 2


def test_a_failed_cycle_leaves_its_span_pending_then_is_retried(long_run):
    failing = _decision(long_run, "failing")
    assert failing.span == 11 and failing.outcome == "failed"
    assert any("JSONDecodeError" in reason for reason in failing.reasons), failing.reasons
    assert long_run.served_after["failing"] == long_run.served_after["after_kill"]
    retried = _decision(long_run, "after_failing")
    assert retried.span == 11 and retried.outcome.final and retried.attempt == 2


def test_after_max_attempts_the_span_is_given_up_and_quarantined(long_run):
    assert _decision(long_run, "failing_again").outcome == "failed"
    gave_up = _decision(long_run, "gave_up")
    assert gave_up.span == 12 and gave_up.outcome == "gave_up"
    assert gave_up.exit_code == 6
    assert "gave up after 2 failed attempts" in " ".join(gave_up.reasons)
    assert 12 not in _decision(long_run, "after_gave_up").training_spans
    listed = json.loads(ctpipe("quarantine", "list", "--home", str(long_run.home),
                               "--json").stdout)
    by_span = {entry["span"]: entry for entry in listed}
    assert by_span[12]["by"] == "attempts"
    assert by_span[6]["by"] == "gate" and by_span[9]["by"] == "operator"


def test_quarantine_after_the_fact_leaves_windows_and_warm_starts(long_run):
    step = long_run.steps["quarantine_add"]
    assert step["returncode"] == 0, step["stderr"]
    result = json.loads(step["output"])
    assert result["was_accepted"] and result["no_longer_warm_start_sources"]
    nxt = _decision(long_run, "span14")
    assert 9 not in nxt.training_spans
    assert "quarantined span(s) 9" in nxt.checks["warm_start"]["reason"] or \
        nxt.checks["warm_start"]["uri"] not in result["no_longer_warm_start_sources"]
    assert nxt.checks["warm_start"]["uri"] not in result["no_longer_warm_start_sources"]


def test_watch_runs_pending_spans_refuses_a_second_runner_and_stops_on_sigterm(long_run):
    step = long_run.steps["watch"]
    assert step["started"] and step["second_cycle_started"], step["stderr"]
    assert step["busy_returncode"] == 7, step["busy_stderr"]
    assert "another ctpipe run or watch" in step["busy_stderr"]
    assert step["returncode"] == 0, step["stderr"]
    assert [d["span"] for d in step["decisions"]] == [17, 18]  # the second cycle finished
    assert "stopping after the current cycle" in step["stderr"]


def test_retention_bounds_pipeline_root(long_run):
    import os

    from ml_metadata.proto import metadata_store_pb2 as pb

    from ctpipe.pipeline.home import ledger_store
    from ctpipe.pipeline.home.store import open_store, sqlite_connection

    root = long_run.home / "pipeline_root"
    store = open_store(sqlite_connection(str(long_run.home / "metadata.sqlite")))
    ledger, _ = ledger_store.latest_ledger(store, "ctpipe")
    keep_cycles, window = 4, 3
    # Models: the last keep_cycles runs', plus each labelled version's model (stable, canary,
    # previous, control) and its warm-start parent, plus the newest blessed model.
    from ctpipe.components import release

    manifest = release.read(str(long_run.home / "serving" / "models.config"))
    labelled = {v for entry in manifest for v in entry.labels.values()}
    assert len(os.listdir(root / "Trainer" / "model")) <= keep_cycles + 2 * len(labelled) + 1
    # Examples: the last keep_cycles runs', the window and drift baseline, the quarantined
    # spans, and the training spans of every labelled version (its skew and lineage need them).
    from ctpipe.pipeline.home import cycles

    trained = {span for d in cycles.history(store, "ctpipe")
               if d.outcome == "pushed" and d.model_version in labelled
               for span in d.training_spans}
    assert len(os.listdir(root / "CsvExampleGen" / "examples")) <= \
        keep_cycles + window + 1 + len(ledger.quarantined) + len(trained)
    deleted = [a for a in store.get_artifacts() if a.state == pb.Artifact.DELETED]
    assert len(deleted) > 50  # records kept, files gone
    assert not [a.uri for a in deleted if os.path.exists(a.uri)]
    for entry in ledger.accepted[-(window + 1):] + ledger.quarantined:
        assert "examples_uri" not in entry or os.path.isdir(entry["examples_uri"])
    print(f"pipeline_root after {len(long_run.disk_bytes)} steps: "
          f"{[round(b / 1e6, 1) for b in long_run.disk_bytes]} MB")
