"""`ctpipe history` and `ctpipe lineage` on the real multi-cycle scenario (real CLI, real MLMD)."""
import json

import pytest

from ctpipe.pipeline.home import cycles
from ctpipe.pipeline.home.store import open_store, sqlite_connection

from tests.support import ctpipe

pytestmark = pytest.mark.e2e


def _json(*args):
    result = ctpipe(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _store(long_run):
    return open_store(sqlite_connection(str(long_run.home / "metadata.sqlite")))


def test_history_is_every_cycle_and_every_action_in_order(long_run):
    entries = _json("history", "--home", str(long_run.home))
    store = _store(long_run)
    decisions = cycles.history(store, "ctpipe")
    actions = cycles.operator_actions(store, "ctpipe")
    cycle_entries = [e for e in entries if e["kind"] == "cycle"]
    assert [(e["span"], e["outcome"]) for e in cycle_entries] == [
        (d.span, d.outcome.value) for d in decisions]
    assert sorted(e["action"] for e in entries if e["kind"] == "action") == sorted(
        a.action for a in actions)
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    pushed = [e for e in cycle_entries if e["outcome"] == "pushed"]
    assert pushed[0]["warm_start_parent"] is None
    # every later push names the served version it was warm-started from (or a cold start)
    versions = {e["model_version"] for e in pushed}
    assert all(e["warm_start_parent"] in versions | {None} for e in pushed)
    assert any(e["warm_start_parent"] for e in pushed[1:])
    text = ctpipe("history", "--home", str(long_run.home))
    assert text.returncode == 0 and f"span {pushed[-1]['span']} pushed" in text.stdout


def test_lineage_of_the_newest_version_goes_back_to_a_cold_start(long_run):
    store = _store(long_run)
    decisions = cycles.history(store, "ctpipe")
    pushed = [d for d in decisions if d.outcome == "pushed"]
    newest = pushed[-1]
    found = _json("lineage", str(newest.model_version), "--home", str(long_run.home))
    assert found["training_spans"] == newest.training_spans
    assert found["pushed_by_cycle"]["span"] == newest.span
    chain = found["warm_start_chain"]
    assert chain[0]["version"] == newest.model_version
    assert chain[-1]["warm_start"].startswith("cold start")
    assert len(chain) >= 2
    # the baseline it was compared with is an earlier pushed version
    assert found["baseline"]["version"] in {d.model_version for d in pushed[:-1]}
    assert found["statistics_uris"] and found["training_examples_uri"]


def test_lineage_of_an_unknown_version_is_one_line_exit_2(long_run):
    result = ctpipe("lineage", "999", "--home", str(long_run.home))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "ctpipe: error: no pushed model version 999 in ML Metadata (pushed versions: 1,")
