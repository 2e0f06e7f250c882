"""Pipeline metrics (pipeline/observe/metrics.py): a real scrape of the HTTP endpoint on the
long-run home agrees with its ML Metadata and release manifest; the textfile is replaced
atomically and parses; the derived values (data-blocked run, skew contract, empty and broken
homes) on small homes written with the pipeline's own ML Metadata API; and the alert rules pass
`promtool check rules` and their unit tests (`promtool test rules`)."""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from ctpipe.pipeline.home import Home

from tests.support import REPO, FakeHome, config_for, decision

MONITORING = REPO / "serving" / "k8s" / "monitoring"
RULES = MONITORING / "ctpipe-alerts.yaml"
RULES_TEST = MONITORING / "ctpipe-alerts.test.yaml"
PROMETHEUS_RULE = MONITORING / "ctpipe-alerts.prometheusrule.yaml"
# Series whose value follows the clock or the scrape itself.
MOVING = {"ctpipe_metrics_generated_timestamp_seconds", "ctpipe_metrics_collect_seconds",
          "ctpipe_seconds_since_last_push"}


# -- helpers ---------------------------------------------------------------------------------


def parse(text: str) -> Dict[str, List[tuple]]:
    """{sample name: [(labels without pipeline/model_name, value)]}; checks HELP and TYPE."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Dict[str, List[tuple]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("ctpipe_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("gauge", "counter"), f"{family.name}: TYPE {family.type}"
        for sample in family.samples:
            labels = dict(sample.labels)
            assert (labels.pop("pipeline"), labels.pop("model_name")) == ("ctpipe",
                                                                          "big_tipper")
            samples[sample.name].append((labels, sample.value))
    return samples


def value(samples, name: str, **labels: str) -> Optional[float]:
    found = [v for series, v in samples.get(name, []) if series == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode("utf-8")


def scrape(home, data_root: Optional[str] = None):
    from ctpipe.pipeline.observe.metrics import exposition

    return parse(exposition(home.config, data_root))


# -- the real home: an HTTP scrape against ML Metadata ------------------------------------------


@pytest.fixture(scope="module")
def real(long_run):
    """The long-run home's config, data root and what ML Metadata / the manifest say."""
    from ctpipe.pipeline.commands.status import _local_status
    from ctpipe.pipeline.home import cycles
    from ctpipe.pipeline.home import store as mlmd_store
    from ctpipe.pipeline.home.release import release_state

    config = config_for(long_run.home, getattr(long_run, "config_path", None))
    store = mlmd_store.open_store(mlmd_store.sqlite_connection(Home.of(config).metadata_path))
    decisions = cycles.history(store, config.pipeline_name)
    return {"config": config, "data_root": str(long_run.data_root), "decisions": decisions,
            "status": _local_status(store, config, str(long_run.data_root)),
            "release": release_state(config)}


@pytest.fixture(scope="module")
def scraped(real):
    from ctpipe.pipeline.observe.metrics_http import serve_metrics

    server = serve_metrics(real["config"], 0, data_root=real["data_root"])
    try:
        assert server.port > 0 and server.thread.is_alive()
        text = get(server.url)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url.replace("/metrics", "/other"), timeout=30)
        assert missing.value.code == 404
        again = get(server.url)  # a second scrape reads the home afresh, same values
    finally:
        server.close()
    assert not server.thread.is_alive()
    return text, again


def test_scrape_counts_every_decision_by_outcome(real, scraped):
    from ctpipe.pipeline.home.outcomes import Outcome

    samples = parse(scraped[0])
    counts = collections.Counter(d.outcome.value for d in real["decisions"])
    assert {o.value: value(samples, "ctpipe_cycles_total", outcome=o.value) for o in Outcome} \
        == {o.value: float(counts.get(o.value, 0)) for o in Outcome}
    assert sum(counts.values()) == len(real["decisions"]) > 0
    assert value(samples, "ctpipe_metadata_up") == 1.0


def test_scrape_last_outcome_is_the_last_decision(real, scraped):
    from ctpipe.pipeline.home.outcomes import Outcome

    samples = parse(scraped[0])
    last = [d for d in real["decisions"] if d.outcome != Outcome.NO_NEW_DATA][-1]
    one_hot = {labels["outcome"]: v for labels, v in samples["ctpipe_last_outcome"]}
    assert one_hot == {o.value: float(o == last.outcome) for o in Outcome
                       if o != Outcome.NO_NEW_DATA}
    assert value(samples, "ctpipe_last_cycle_span") == last.span
    assert value(samples, "ctpipe_last_cycle_timestamp_seconds") == pytest.approx(
        last.finished_at, abs=1e-3)
    pushes = [d for d in real["decisions"] if d.outcome == Outcome.PUSHED]
    assert value(samples, "ctpipe_last_push_timestamp_seconds") == pytest.approx(
        pushes[-1].finished_at, abs=1e-3)
    assert value(samples, "ctpipe_last_pushed_version") == pushes[-1].model_version
    since = value(samples, "ctpipe_seconds_since_last_push")
    assert 0 <= since <= time.time() - pushes[-1].finished_at


def test_scrape_release_labels_equal_the_manifest(real, scraped):
    samples = parse(scraped[0])
    state = real["release"]
    assert state.stable is not None
    assert value(samples, "ctpipe_stable_version") == state.stable
    assert value(samples, "ctpipe_canary_version") == state.canary
    assert value(samples, "ctpipe_previous_version") == state.previous
    assert value(samples, "ctpipe_canary_on_trial") == float(state.canary is not None)


def test_scrape_spans_equal_status(real, scraped):
    samples = parse(scraped[0])
    status = real["status"]
    assert value(samples, "ctpipe_pending_spans") == len(status["pending_spans"])
    assert value(samples, "ctpipe_quarantined_spans") == len(status["quarantined_spans"])
    assert value(samples, "ctpipe_cycles_running") == len(status["running_spans"])


def test_scrape_times_of_the_last_cycle(real, scraped):
    from ctpipe.pipeline.bench.measure import component_seconds

    samples = parse(scraped[0])
    last_run = [d for d in real["decisions"] if d.run_id][-1]
    assert value(samples, "ctpipe_cycle_seconds") == last_run.seconds
    components = {labels["component"]: v for labels, v in samples["ctpipe_component_seconds"]}
    # the bench's measurement of the newest pipeline run (rounded to 0.1 s there)
    measured = component_seconds(Home.of(real["config"]).metadata_path,
                                 real["config"].pipeline_name)
    assert set(components) == set(measured)
    assert {"CsvExampleGen", "DataGate"} <= set(components)
    for name, seconds in measured.items():
        assert components[name] == pytest.approx(seconds, abs=0.051), name
    assert sum(components.values()) <= last_run.seconds


def test_scrapes_agree_and_every_family_has_help_and_type(scraped):
    first, second = (parse(text) for text in scraped)  # parse() checks HELP and TYPE
    assert {k: v for k, v in first.items() if k not in MOVING} == \
        {k: v for k, v in second.items() if k not in MOVING}
    names = {line.split()[2] for line in scraped[0].splitlines() if line.startswith("# TYPE")}
    assert names == {line.split()[2] for line in scraped[0].splitlines()
                     if line.startswith("# HELP")}
    assert value(first, "ctpipe_metrics_collect_seconds") < 5.0  # one cheap pass


# -- the textfile ----------------------------------------------------------------------------


def test_textfile_is_replaced_atomically_and_parses(real, tmp_path):
    from ctpipe.pipeline.observe.metrics import exposition, write_textfile

    path = tmp_path / "ctpipe.prom"
    write_textfile(real["config"], str(path), real["data_root"])
    expected = {k: v for k, v in parse(path.read_text()).items() if k not in MOVING}
    assert expected == {k: v for k, v in parse(exposition(real["config"], real["data_root"]))
                        .items() if k not in MOVING}
    done = threading.Event()
    errors: List[BaseException] = []

    def rewrite() -> None:
        try:
            for _ in range(25):
                write_textfile(real["config"], str(path), real["data_root"])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not done.is_set() or reads == 0:  # a reader sees the old file or the new one
        text = path.read_text()
        assert {k: v for k, v in parse(text).items() if k not in MOVING} == expected
        reads += 1
    writer.join()
    assert not errors, errors
    assert reads > 1
    assert os.listdir(tmp_path) == ["ctpipe.prom"]  # no temporary file left behind


def test_textfile_must_be_a_prom_file(tmp_path):
    from ctpipe.pipeline.errors import BadInput
    from ctpipe.pipeline.observe.metrics import write_textfile

    with pytest.raises(BadInput, match=r"\.prom"):
        write_textfile(config_for(tmp_path), str(tmp_path / "ctpipe.txt"))
    with pytest.raises(BadInput, match="does not exist"):
        write_textfile(config_for(tmp_path), str(tmp_path / "missing" / "ctpipe.prom"))
    assert os.listdir(tmp_path) == []


# -- derived values on small homes -----------------------------------------------------------


def test_data_blocked_run_counts_gate_verdicts_only(tmp_path):
    home = FakeHome(tmp_path / "home")
    home.decide(decision("pushed", 1, version=1), decision("data_blocked", 2),
                decision("failed", 3), decision("data_blocked", 3), decision("no_new_data", None))
    samples = scrape(home)
    assert value(samples, "ctpipe_consecutive_data_blocked") == 2  # failed, no_new_data: no say
    assert value(samples, "ctpipe_last_outcome", outcome="data_blocked") == 1
    assert value(samples, "ctpipe_last_cycle_span") == 3  # the no_new_data poll is no cycle
    assert value(samples, "ctpipe_cycles_total", outcome="no_new_data") == 1
    assert value(samples, "ctpipe_cycles_total", outcome="data_blocked") == 2
    home.action("release", 3)  # the operator accepts the change: the run is dealt with
    assert value(scrape(home), "ctpipe_consecutive_data_blocked") == 0
    home.decide(decision("data_blocked", 4))
    assert value(scrape(home), "ctpipe_consecutive_data_blocked") == 1
    home.decide(decision("not_blessed", 5), decision("data_blocked", 6))
    assert value(scrape(home), "ctpipe_consecutive_data_blocked") == 1


def test_release_skew_quarantine_and_a_running_cycle(tmp_path):
    from ctpipe.pipeline.home import cycles

    home = FakeHome(tmp_path / "home")
    home.decide(decision("pushed", 1, version=1), decision("pushed", 2, version=2),
                decision("gave_up", 3))
    home.quarantine(3)
    home.release(stable=2, previous=1, canary=4)
    home.skew({"drifted": True, "at": 100.0, "anomalies": ["a"]},
              {"drifted": False, "at": 200.0, "anomalies": []},
              {"drifted": True, "at": 300.0, "anomalies": ["a", "b", "c"]})
    started = time.time()
    cycles.start_cycle(home.store, home.config.pipeline_name, 4, attempt=1, runs_before=0)
    data_root = tmp_path / "incoming"
    for span in (3, 4, 5):
        (data_root / f"span-{span}").mkdir(parents=True)
        (data_root / f"span-{span}" / "data.csv").write_text("x\n")
    samples = scrape(home, str(data_root))
    assert (value(samples, "ctpipe_stable_version"), value(samples, "ctpipe_canary_version"),
            value(samples, "ctpipe_previous_version"),
            value(samples, "ctpipe_canary_on_trial")) == (2, 4, 1, 1)
    assert value(samples, "ctpipe_quarantined_spans") == 1
    assert value(samples, "ctpipe_pending_spans") == 2  # 4 (running) and 5; 3 was given up
    assert value(samples, "ctpipe_cycles_running") == 1
    assert value(samples, "ctpipe_running_cycle_started_timestamp_seconds") == pytest.approx(
        started, abs=1.0)
    assert value(samples, "ctpipe_last_outcome", outcome="gave_up") == 1
    assert value(samples, "ctpipe_last_pushed_version") == 2
    assert (value(samples, "ctpipe_skew_drifted"), value(samples, "ctpipe_skew_anomalies"),
            value(samples, "ctpipe_skew_last_check_timestamp_seconds"),
            value(samples, "ctpipe_skew_alarms_total")) == (1, 3, 300, 2)
    assert "ctpipe_cycle_seconds" not in samples  # no cycle ran a pipeline
    home.skew({"drifted": False, "at": 400.0, "anomalies": []}, history=False)
    os.remove(Path(home.config.home) / "skew" / "history.jsonl")
    samples = scrape(home)
    assert (value(samples, "ctpipe_skew_drifted"), value(samples, "ctpipe_skew_alarms_total")) \
        == (0, 0)
    assert "ctpipe_pending_spans" not in samples  # no data root given


def test_a_fresh_home_is_healthy_and_empty(tmp_path):
    (tmp_path / "home").mkdir()
    from ctpipe.pipeline.observe.metrics import exposition

    samples = parse(exposition(config_for(tmp_path / "home")))
    assert value(samples, "ctpipe_metadata_up") == 1
    assert {labels["outcome"]: v for labels, v in samples["ctpipe_cycles_total"]} == {
        "pushed": 0, "data_blocked": 0, "not_blessed": 0, "gave_up": 0, "no_new_data": 0,
        "failed": 0}
    assert set(v for _, v in samples["ctpipe_last_outcome"]) == {0.0}
    for absent in ("ctpipe_last_push_timestamp_seconds", "ctpipe_stable_version",
                   "ctpipe_skew_drifted", "ctpipe_first_cycle_timestamp_seconds"):
        assert absent not in samples
    assert not os.path.exists(tmp_path / "home" / "metadata.sqlite")  # read-only: not created


def test_unreadable_metadata_is_reported_not_raised(tmp_path):
    home = FakeHome(tmp_path / "home")
    home.release(stable=1)
    Path(home.paths.metadata_path).write_bytes(b"not a database" * 100)
    samples = scrape(home)
    assert value(samples, "ctpipe_metadata_up") == 0
    assert value(samples, "ctpipe_stable_version") == 1  # the rest still reports


def test_command_prints_or_writes_the_exposition(tmp_path, capsys):
    from ctpipe.pipeline.commands.observe import register
    from ctpipe.pipeline.errors import BadInput

    home = FakeHome(tmp_path / "home")
    home.decide(decision("pushed", 1, version=1))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(["metrics", *argv])
        return args.handler(args)

    assert run("--home", home.config.home) == 0
    assert value(parse(capsys.readouterr().out), "ctpipe_cycles_total", outcome="pushed") == 1
    assert run("--home", home.config.home, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name": "ctpipe_last_pushed_version", "value": 1.0,
            "labels": {"pipeline": "ctpipe", "model_name": "big_tipper"}} in rows
    target = tmp_path / "ctpipe.prom"
    assert run("--home", home.config.home, "--textfile", str(target)) == 0
    assert capsys.readouterr().out == ""
    assert value(parse(target.read_text()), "ctpipe_last_pushed_version") == 1
    with pytest.raises(BadInput, match="no pipeline home"):
        run("--home", str(tmp_path / "nowhere"))


# -- alert rules -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from the Debian `prometheus` package, installed here if missing."""
    found = shutil.which("promtool")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("promtool is not installed and cannot be (needs apt-get as root): "
                    "apt-get install prometheus")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        if result.returncode != 0:
            pytest.skip(f"promtool is not installed and `{' '.join(command)}` failed: "
                        f"{(result.stderr or result.stdout).strip()[-500:]}")
    found = shutil.which("promtool")
    if not found:
        pytest.skip("the prometheus package installed no promtool")
    return found


def promtool_run(promtool: str, *args: str, cwd: Path = MONITORING) -> str:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=300,
                            cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_pass_promtool_check(promtool):
    assert "SUCCESS: 9 rules found" in promtool_run(promtool, "check", "rules", RULES.name)


def test_rules_fire_and_stay_quiet_as_their_unit_tests_say(promtool):
    assert "SUCCESS" in promtool_run(promtool, "test", "rules", RULES_TEST.name)


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}
    cases = collections.defaultdict(set)
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {name: cases[name] for name in alerts} == {name: {True, False} for name in alerts}


def test_prometheus_rule_carries_the_same_groups(promtool, tmp_path):
    custom = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (custom["apiVersion"], custom["kind"]) == ("monitoring.coreos.com/v1",
                                                      "PrometheusRule")
    assert custom["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    extracted = tmp_path / "spec.yaml"
    extracted.write_text(yaml.safe_dump(custom["spec"]))
    promtool_run(promtool, "check", "rules", str(extracted), cwd=tmp_path)


def test_rules_use_only_exported_series(tmp_path):
    """Every ctpipe_* name in an expression is one the exporter writes (a typo would make an
    alert silently never fire)."""
    from ctpipe.pipeline.home import cycles

    home = FakeHome(tmp_path / "home")
    scored = decision("pushed", 1, version=1)
    scored.fresh_span_auc = {"1": {"auc": 0.8, "rows": 300, "stderr": 0.03, "label": "stable",
                                   "labels": ["stable", "control"]}}
    home.decide(scored, decision("data_blocked", 2))
    home.release(stable=1)
    home.skew({"drifted": True, "at": 1.0, "anomalies": []})
    cycles.start_cycle(home.store, home.config.pipeline_name, 3, attempt=1, runs_before=0)
    exported = set(scrape(home))
    expressions = " ".join(rule["expr"] for group in
                           yaml.safe_load(RULES.read_text())["groups"]
                           for rule in group["rules"])
    used = set(re.findall(r"\bctpipe_[a-z_]+", expressions))
    assert used and used <= exported, sorted(used - exported)

