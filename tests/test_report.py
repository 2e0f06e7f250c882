"""ctpipe report: the SVG helpers, the data the pages show, and the pages themselves rendered
in a real headless browser (Chromium) from the shared long run: not blank, the span, outcome and
both models' AUC in the DOM, no network request - and a negative test proving the request
detector catches an injected external image."""
from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ctpipe.pipeline.home import Home
from ctpipe.pipeline.home.cycles import CycleRecord, OperatorAction
from ctpipe.pipeline.home.outcomes import Decision
from ctpipe.pipeline.observe import report_svg as svg
from ctpipe.pipeline.observe.report_data import (
    OTHER_VALUES,
    CyclePoint,
    CycleView,
    Distribution,
    compare_statistics,
    drift_by_feature,
    label_history,
)

from tests import browser

HOSTILE = '<script>alert("x")</script> & <img src="https://example.invalid/a.png">'
# What would make a browser fetch something: a src/href/srcset/poster/data with a network or
# protocol-relative URL, CSS url(...) or @import, <link>, <script>, <iframe>, <object>.
EXTERNAL = re.compile(r"""(?:\b(?:src|href|srcset|poster|data|action)\s*=\s*["']?\s*"""
                      r"""(?:[a-z][a-z0-9+.-]*:)?//)|url\s*\(|@import|<link\b|<script\b|"""
                      r"""<iframe\b|<object\b|<embed\b""", re.I)


def _svg_tree(text: str) -> ET.Element:
    return ET.fromstring(text)


def _texts(tree: ET.Element) -> list:
    return ["".join(node.itertext()) for node in tree.iter() if node.tag.endswith("text")]


# -- SVG helpers ---------------------------------------------------------------------------------


def test_nice_ticks_are_round_and_cover_the_range():
    assert svg.nice_ticks(0.0, 1.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    ticks = svg.nice_ticks(0.913, 0.967, 5)
    assert all(0.913 <= t <= 0.967 for t in ticks) and len(ticks) >= 3
    assert svg.nice_ticks(3.0, 3.0) == [3.0]
    assert svg.nice_ticks(float("nan"), 1.0) == []


def test_nice_edges_cover_the_range_with_round_steps():
    edges = svg.nice_edges(41.6897, 42.0096, 20)
    assert edges[0] <= 41.6897 and edges[-1] >= 42.0096
    steps = {round(b - a, 9) for a, b in zip(edges, edges[1:])}
    assert steps == {0.02}
    assert 10 <= len(edges) - 1 <= 25
    assert svg.nice_edges(5.0, 5.0)[0] == 5.0  # a constant feature still gets bins


def test_rebin_keeps_every_count():
    buckets = [(0.0, 10.0, 10.0), (10.0, 20.0, 30.0), (20.0, 20.0, 5.0)]
    bins = svg.rebin(buckets, [0.0, 5.0, 15.0, 20.0])
    assert bins == pytest.approx([5.0, 5.0 + 15.0, 15.0 + 5.0])
    assert sum(bins) == pytest.approx(45.0)
    assert svg.rebin([(0.0, 1.0, 3.0)], [0.0]) == []


def test_number_and_axis_text():
    assert svg.number_text(None) == "-"
    assert svg.number_text(0.9432) == "0.9432"
    assert svg.number_text(17031030200.0) == "17031030200"
    assert svg.number_text(12.0) == "12"
    assert svg.axis_text(41.75, 0.05) == "41.75"
    assert svg.axis_text(0.25, 0.25) == "0.25"
    assert svg.axis_text(17031000000, 5e6) == "17031000000"
    assert svg.percent_text(0.25) == "25.0%"


def test_charts_are_well_formed_svg_and_escape_every_text():
    charts = [
        svg.histogram([0.0, 1.0, 2.0], [svg.Series(HOSTILE, [0.25, 0.75], "#123456")], HOSTILE),
        svg.horizontal_bars([HOSTILE, "b"], [svg.Series("s", [0.5, None], "#123456")], HOSTILE),
        svg.line_chart([HOSTILE, "2"], [svg.Series(HOSTILE, [0.5, 0.7], "#123456")], HOSTILE,
                       y_label=HOSTILE, marks=[(0, "#00ff00", HOSTILE)], highlight=1),
    ]
    for chart in charts:
        tree = _svg_tree(chart)  # parses: nothing unescaped broke the markup
        assert not [node for node in tree.iter() if node.tag.endswith(("script", "img"))]
        assert "<script>" not in chart and "&lt;script&gt;" in chart
        assert not EXTERNAL.search(chart), chart
        assert tree.find("{http://www.w3.org/2000/svg}title").text == HOSTILE


def test_histogram_draws_one_bar_per_series_and_bin_and_labels_the_axis():
    tree = _svg_tree(svg.histogram([0.0, 0.5, 1.0], [svg.Series("now", [0.2, 0.8], "#111111"),
                                                     svg.Series("then", [0.6, 0.4], "#222222")],
                                   "t"))
    rects = [r for r in tree.iter("{http://www.w3.org/2000/svg}rect")]
    assert len(rects) == 4
    heights = {(r.get("fill"), round(float(r.get("height")), 1)) for r in rects}
    tallest = max(h for _, h in heights)
    assert ("#111111", tallest) in heights  # 0.8 is the tallest bar
    texts = _texts(tree)
    assert {"0", "0.5", "1"} <= set(texts) and "now" in texts and "then" in texts


def test_line_chart_leaves_gaps_and_highlights_this_cycle():
    chart = svg.line_chart(["1", "2", "3", "4"],
                           [svg.Series("auc", [0.9, 0.95, None, 0.93], "#111111")], "t",
                           highlight=3)
    tree = _svg_tree(chart)
    lines = list(tree.iter("{http://www.w3.org/2000/svg}polyline"))
    dots = list(tree.iter("{http://www.w3.org/2000/svg}circle"))
    assert len(lines) == 1 and len(lines[0].get("points").split()) == 2  # 1-2, then a gap
    assert len(dots) == 3
    assert 'data-highlight="3"' in chart
    step = svg.line_chart(["1", "2"], [svg.Series("v", [1, 2], "#1", step=True)], "t",
                          integer_y=True)
    [line] = _svg_tree(step).iter("{http://www.w3.org/2000/svg}polyline")
    assert len(line.get("points").split()) == 3  # holds 1, then steps up to 2


# -- what the pages show -------------------------------------------------------------------------


def _record(record_id, span, outcome, finished_at, version=None, metrics=None, checks=None,
            attempt=1):
    decision = Decision(outcome=outcome, span=span, model_version=version, reasons=["r"],
                        metrics=metrics or {}, training_spans=[], run_id=f"run-{record_id}",
                        finished_at=finished_at, seconds=1.0, checks=checks or {},
                        attempt=attempt)
    return CycleRecord(id=record_id, pipeline="p", span=span, attempt=attempt, state=3,
                       started_at=finished_at - 1.0, runs_before=0, decision=decision)


def _action(action_id, action, at, span=None, **details):
    return OperatorAction(id=action_id, action=action, span=span, reason="why", at=at,
                          user="oncall", details=details)


def test_label_history_replays_pushes_and_operator_actions_in_time_order():
    records = [_record(1, 1, "pushed", 10.0, version=1),
               _record(2, 2, "pushed", 20.0, version=2,
                       metrics={"candidate": {"auc": 0.9}, "baseline": {"auc": 0.8}}),
               _record(3, 3, "data_blocked", 30.0, checks={"labels": {
                   "production_auc_on_span": 0.5}}),
               _record(4, 4, "pushed", 40.0, version=3)]
    pushed = {1: {"stable": 1}, 2: {"stable": 1, "canary": 2}, 4: {}}  # 4: an older home
    actions = [_action(10, "promote", 25.0, before={"stable": 1, "canary": 2},
                       after={"stable": 2, "previous": 1}),
               _action(11, "quarantine", 26.0, span=3),
               _action(12, "rollback", 50.0, before={"stable": 3}, after={"stable": 2})]
    points = label_history(records, actions, lambda record: pushed[record.id])
    assert [p.labels for p in points] == [
        {"stable": 1}, {"stable": 1, "canary": 2}, {"stable": 2, "previous": 1},
        {"stable": 2, "previous": 1}]  # no release_* labels on cycle 4: unchanged
    assert points[1].candidate_auc == 0.9 and points[1].baseline_auc == 0.8
    assert points[2].gate_auc == 0.5 and points[2].candidate_auc is None
    assert any("promote" in e and "stable=2" in e for e in points[2].events)
    assert any(e.startswith("quarantine span 3") for e in points[2].events)
    assert not any("rollback" in e for p in points for e in p.events)  # after the last cycle
    retried = label_history([_record(5, 7, "failed", 5.0, attempt=2)], [], lambda r: {})
    assert retried[0].label == "7·2"


def test_drift_reasons_name_the_feature_and_the_reference_span():
    reasons = ["span 8 quarantined: it drifted from the accepted data",
               "payment_type: drift vs span 7 - The Linfty distance is 0.41, above 0.2.",
               "fare: drift vs span 4 (oldest span of the window) - JS divergence 0.3",
               "[train] fare: Out-of-range values - Unexpectedly low values"]
    assert drift_by_feature(reasons) == {
        "payment_type": [(7, "The Linfty distance is 0.41, above 0.2.", False)],
        "fare": [(4, "JS divergence 0.3", True)]}


def _statistics(rows, fare_buckets, payments):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    dataset = statistics_pb2.DatasetFeatureStatistics(num_examples=rows)
    fare = dataset.features.add()
    fare.path.step.append("fare")
    fare.num_stats.common_stats.num_non_missing = rows
    fare.num_stats.mean = 10.0
    histogram = fare.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
    for low, high, count in fare_buckets:
        histogram.buckets.add(low_value=low, high_value=high, sample_count=count)
    payment = dataset.features.add()
    payment.path.step.append("payment_type")
    payment.string_stats.common_stats.num_non_missing = rows
    payment.string_stats.unique = len(payments)
    for value, frequency in payments:
        payment.string_stats.top_values.add(value=value, frequency=frequency)
    return dataset


def test_compare_statistics_puts_both_spans_on_common_bins_and_values():
    current = _statistics(100, [(0.0, 10.0, 50.0), (10.0, 20.0, 50.0)],
                          [("Credit Card", 70.0), ("Cash", 20.0)])
    baseline = _statistics(200, [(0.0, 40.0, 200.0)], [("Cash", 120.0), ("Credit Card", 60.0),
                                                       ("No Charge", 20.0)])
    fare, payment = compare_statistics([("span 8", current), ("span 7", baseline)])
    assert fare.kind == "numeric" and fare.edges[0] == 0.0 and fare.edges[-1] >= 40.0
    for values in fare.values:
        assert sum(values) == pytest.approx(1.0)
    assert sum(fare.values[0][:len(fare.edges) // 2]) == pytest.approx(1.0)  # all below 20
    assert payment.kind == "categorical"
    assert payment.categories == ["Credit Card", "Cash", "No Charge", OTHER_VALUES]
    assert payment.values[0] == pytest.approx([0.7, 0.2, 0.0, 0.1])  # 10% not in top values
    assert payment.values[1] == pytest.approx([0.3, 0.6, 0.1, 0.0])
    assert payment.sources == ["span 8", "span 7"]


def _view(**changes) -> CycleView:
    record = _record(7, 8, "data_blocked", 100.0,
                     checks={"labels": {"production_auc_on_span": 0.5,
                                        "production_auc_expected": 0.9,
                                        "reference_spans": [5, 6, 7]}})
    record.decision.reasons = ["span 8 quarantined: it drifted from the accepted data",
                               f"payment_type: drift vs span 7 - {HOSTILE}"]
    drifted = Distribution(feature="payment_type", kind="categorical",
                           sources=["span 8", "span 7 (drift baseline)"],
                           categories=[HOSTILE, "Cash"], values=[[0.7, 0.3], [0.3, 0.7]],
                           missing=[0.0, 0.0], summary=["2 unique values", "2 unique values"],
                           drift=[f"drift vs span 7: {HOSTILE}"])
    calm = Distribution(feature="fare", kind="numeric", sources=["span 8", "span 7"],
                        edges=[0.0, 10.0, 20.0], values=[[0.5, 0.5], [0.4, 0.6]],
                        missing=[0.0, 0.0], summary=["mean 10", "mean 11"])
    point = CyclePoint(record_id=7, span=8, attempt=1, outcome="data_blocked",
                       candidate_auc=None, baseline_auc=None, gate_auc=0.5, model_version=None,
                       labels={"stable": 4}, events=[HOSTILE], finished_at=100.0)
    values = dict(record=record, decision=record.decision, attempts=[record], points=[point],
                  labels={"stable": 4}, baseline_span=7, baseline_note="n",
                  references=[(7, "drift baseline")], distributions=[drifted, calm],
                  statistics_note="", anomalies=[], anomalies_note="", slices={},
                  slices_note="nothing was evaluated", actions=[], ledger_now="quarantined",
                  artifacts={"statistics": f"/x/{HOSTILE}"})
    values.update(changes)
    return CycleView(**values)


def test_cycle_page_escapes_text_marks_drift_and_loads_nothing():
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.observe.report import CSP, render_cycle

    page = render_cycle(_view(), PipelineConfig(pipeline_name=HOSTILE))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
    assert f'content="{CSP}"' in page and "default-src 'none'" in CSP
    assert re.search(r'class="feature drifted" data-feature="payment_type"><h3>payment_type'
                     r'<span class="badge drift">DRIFT</span>', page)
    assert 'class="feature" data-feature="fare"' in page
    assert re.search(r'id="drifted">payment_type<', page)
    assert page.index('data-feature="payment_type"') < page.index('data-feature="fare"')
    assert re.search(r'id="outcome">DATA BLOCKED<', page)
    assert re.search(r'id="auc-gate">0.5<', page)
    assert '<meta name="ctpipe-cycle" content="7">' in page


# -- real pages from the shared long run, in a real browser -----------------------------------


@pytest.fixture(scope="session")
def chromium():
    path, why = browser.ensure_chromium()
    if path is None:
        pytest.skip(f"no headless browser for the report tests: {why}")
    return path


def _config(long_run):
    from ctpipe.pipeline.config import PipelineConfig

    config_path = getattr(long_run, "config_path", None)
    return PipelineConfig.from_sources(str(config_path) if config_path else None,
                                       {"home": str(long_run.home)})


@pytest.fixture(scope="module")
def reports(long_run, tmp_path_factory):
    from ctpipe.pipeline.home import cycles
    from ctpipe.pipeline.home import store as mlmd_store
    from ctpipe.pipeline.observe.report import write_all

    config = _config(long_run)
    out = tmp_path_factory.mktemp("reports")
    index = Path(write_all(config, str(out)))
    store = mlmd_store.open_store(mlmd_store.sqlite_connection(Home.of(config).metadata_path))
    latest = {}
    for decision in cycles.history(store, config.pipeline_name):
        if decision.span is not None and decision.outcome != "no_new_data":
            latest[decision.span] = decision
    return config, index, latest


def _element_text(dom: str, ident: str) -> str:
    match = re.search(rf'id="{ident}"[^>]*>([^<]*)<', dom)
    assert match, f"no element #{ident}"
    return match.group(1)


@pytest.mark.e2e
def test_index_links_every_span_and_every_page_shows_its_latest_cycle(reports):
    from ctpipe.pipeline.observe.report import written_cycle

    _, index, latest = reports
    assert latest, "the long run decided no span"
    html = index.read_text()
    linked = {int(n) for n in re.findall(r'href="span-(\d+)\.html"', html)}
    assert linked == set(latest)
    for span in latest:
        page = index.parent / f"span-{span}.html"
        assert page.is_file() and written_cycle(str(page)) is not None
        assert not EXTERNAL.search(page.read_text()), span
    assert not EXTERNAL.search(html)


def _render_checks(chromium, page: Path, span: int, outcome: str):
    rendered = browser.render(chromium, page)
    dark, total = browser.non_white_pixels(rendered.screenshot)
    assert dark > 0.05 * total, f"page looks blank: {dark} of {total} pixels not white"
    assert _element_text(rendered.dom, "span") == f"span {span}"
    assert _element_text(rendered.dom, "outcome") == outcome
    assert rendered.page_requests() == [], rendered.page_requests()
    return rendered


@pytest.mark.e2e
def test_pushed_page_renders_offline_with_span_outcome_and_both_aucs(reports, chromium):
    from ctpipe.pipeline.observe.report_svg import number_text

    _, index, latest = reports
    pushed = [d for d in latest.values() if d.outcome == "pushed" and "baseline" in d.metrics]
    assert pushed, "the long run pushed no model against a baseline"
    decision = max(pushed, key=lambda d: d.finished_at or 0.0)
    rendered = _render_checks(chromium, index.parent / f"span-{decision.span}.html",
                              decision.span, "PUSHED")
    candidate = _element_text(rendered.dom, "auc-candidate")
    baseline = _element_text(rendered.dom, "auc-baseline")
    assert candidate == number_text(decision.metrics["candidate"]["auc"])
    assert baseline == number_text(decision.metrics["baseline"]["auc"])
    assert float(candidate) == pytest.approx(decision.metrics["candidate"]["auc"])
    assert "<svg" in rendered.dom and "AUC over cycles" in rendered.dom


@pytest.mark.e2e
def test_blocked_page_and_index_render_offline(reports, chromium):
    _, index, latest = reports
    blocked = [d for d in latest.values() if d.outcome == "data_blocked"]
    assert blocked, "the long run blocked no span"
    decision = blocked[0]
    rendered = _render_checks(chromium, index.parent / f"span-{decision.span}.html",
                              decision.span, "DATA BLOCKED")
    assert decision.reasons[0] in rendered.dom.replace("&amp;", "&")
    shown = browser.render(chromium, index)
    assert shown.page_requests() == []
    dark, total = browser.non_white_pixels(shown.screenshot)
    assert dark > 0.05 * total


@pytest.mark.e2e
def test_request_detector_catches_an_injected_external_image(reports, chromium, tmp_path):
    """The negative test: the same page with an external image must show a network request
    (else the offline checks above prove nothing); with our CSP in place Chromium blocks it,
    and the static check flags it either way."""
    from ctpipe.pipeline.observe.report import CSP

    _, index, latest = reports
    text = (index.parent / f"span-{next(iter(latest))}.html").read_text()
    probe = "https://example.invalid/ctpipe-probe.png"
    injected = text.replace("<main>", f'<main><img src="{probe}" alt="">', 1)
    open_page = tmp_path / "no-csp.html"
    open_page.write_text(injected.replace(
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">', ""))
    guarded = tmp_path / "csp.html"
    guarded.write_text(injected)
    assert browser.render(chromium, open_page).page_requests() == [probe]
    assert browser.render(chromium, guarded).page_requests() == []
    assert EXTERNAL.search(injected)


@pytest.mark.e2e
def test_cli_writes_one_page_or_every_page_and_the_index(reports, tmp_path, capsys):
    from ctpipe.pipeline.commands import observe

    config, _, latest = reports
    parser = argparse.ArgumentParser(prog="ctpipe")
    observe.register(parser.add_subparsers(dest="command", required=True))
    span = max(latest)
    out = tmp_path / "one" / "page.html"
    args = parser.parse_args(["report", "--home", config.home, "--span", str(span), "--out",
                              str(out), "--json"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out) == {"page": str(out)}
    assert f"span {span}" in out.read_text()
    named = tmp_path / "all" / "cycles.html"
    args = parser.parse_args(["report", "--home", config.home, "--out", str(named)])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.strip() == str(named)
    assert {p.name for p in named.parent.glob("span-*.html")} == {
        f"span-{s}.html" for s in latest}
    from ctpipe.pipeline.errors import BadInput
    from ctpipe.pipeline.observe import report

    with pytest.raises(BadInput, match="no decided cycle for span 9999"):
        report.write_cycle_report(config, 9999, str(tmp_path / "x.html"))


@pytest.mark.e2e
def test_write_all_keeps_a_page_of_the_same_cycle_unless_asked(reports, tmp_path):
    from ctpipe.pipeline.observe.report import write_all

    config, _, latest = reports
    out = tmp_path / "kept"
    write_all(config, str(out))
    page = out / f"span-{min(latest)}.html"
    page.write_text(page.read_text() + "<!-- kept -->")
    write_all(config, str(out))
    assert page.read_text().endswith("<!-- kept -->")
    write_all(config, str(out), rewrite=True)
    assert not page.read_text().endswith("<!-- kept -->")


def test_write_after_cycle_never_raises(tmp_path):
    from ctpipe.pipeline.config import PipelineConfig
    from ctpipe.pipeline.observe.report import write_after_cycle

    said = []
    assert write_after_cycle(PipelineConfig(home=str(tmp_path / "nowhere")), said.append) is None
    assert said and said[0].startswith("report: not written: BadInput: no pipeline home")


@pytest.mark.e2e
def test_write_after_cycle_brings_the_home_reports_up_to_date(reports, tmp_path, monkeypatch):
    from ctpipe.pipeline.observe import report

    config, _, latest = reports
    monkeypatch.setattr(report, "reports_dir", lambda _: str(tmp_path / "reports"))
    index = report.write_after_cycle(config)
    assert index == str(tmp_path / "reports" / "index.html")
    assert {p.name for p in (tmp_path / "reports").glob("span-*.html")} == {
        f"span-{s}.html" for s in latest}


def test_axis_labels_thin_out_without_crowding_the_last_one():
    labels = [str(n) for n in range(1, 63)]  # 62 cycles: every 3rd label
    texts = _texts(_svg_tree(svg.line_chart(labels, [svg.Series("a", [0.5] * 62, "#1")], "t")))
    shown = [t for t in texts if t.isdigit()]
    assert shown[:3] == ["1", "4", "7"] and shown[-1] == "61"  # not 62 right after it
