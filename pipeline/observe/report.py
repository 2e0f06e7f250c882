"""`ctpipe report`: one self-contained HTML page per cycle, and an index linking them all.

A cycle page says, from the top: the span and the outcome (big, coloured), the reasons, the AUC
of the candidate and of stable (the baseline); then the gate's checks, the metrics overall and per
slice, ExampleValidator's contract anomalies, every feature's distribution against the drift
baseline (drifted features first, marked), and the AUC and the stable/canary versions over
all cycles up to this one. The index lists every span with its latest decision and plots the
whole history. What the pages read, and how labels per cycle are reconstructed:
pipeline/observe/report_data.py.

The pages load nothing: no scripts, fonts, style sheets or images from anywhere - the charts are
inline SVG written by pipeline/observe/report_svg.py, all text is escaped, and a
Content-Security-Policy
(default-src 'none') stops the browser fetching anything even if a URL slipped in. TFDV's and
TFMA's Facets widgets load from the internet, so they are not used.

A span's page shows its latest cycle; `write_all` writes a page only when it is missing or
that span has a newer cycle than the page shows (pages carry the cycle's record id), so a page
written right after its cycle keeps the statistics and evaluations that retention removes
later. `--rewrite` writes them all again.

Usage:
  ctpipe report --home H                       # <home>/reports/index.html + span-<N>.html
  ctpipe report --home H --span 8 --out /tmp/span-8.html
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional

from ctpipe.components.basics import atomic_write, first_line
from ctpipe.pipeline.config import PipelineConfig
from ctpipe.pipeline.observe.report_svg import (
    Series,
    esc,
    histogram,
    horizontal_bars,
    line_chart,
    number_text,
    percent_text,
)

if TYPE_CHECKING:  # ML Metadata and TensorFlow load only when a report is written
    from ctpipe.pipeline.observe.report_data import CyclePoint, CycleView, Distribution, HomeView

INDEX_FILE = "index.html"
CYCLE_META = "ctpipe-cycle"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

# outcome -> banner colour (the headline and its meaning: formatting.HEADLINES)
OUTCOME_COLOURS: Dict[str, str] = {
    "pushed": "#15803d", "data_blocked": "#b91c1c", "not_blessed": "#b45309",
    "failed": "#7f1d1d", "gave_up": "#6b21a8", "no_new_data": "#4b5563",
}
CURRENT, BASELINE, REFERENCE = "#2563eb", "#9ca3af", "#d97706"
STABLE, CANARY, GATE = "#15803d", "#d97706", "#7c3aed"
SOURCE_COLOURS = (CURRENT, BASELINE, REFERENCE, "#0891b2")


def reports_dir(config: PipelineConfig) -> str:
    from ctpipe.pipeline.home import Home

    return Home.of(config).reports_dir


def page_name(span: int) -> str:
    return f"span-{span}.html"


# -- the public calls (ctpipe report; watch and demo after every cycle) --------------------------


def write_cycle_report(config: PipelineConfig, span: int, out_path: str,
                       home: Optional["HomeView"] = None, index_name: str = INDEX_FILE) -> str:
    """Write the page of `span`'s latest cycle to `out_path`; returns its path. The page
    links back to `index_name` beside it."""
    home = home or _home(config)
    _write(out_path, render_cycle(home.cycle_view(span), home.config, index_name))
    return out_path


def write_index(config: PipelineConfig, out_dir: str, home: Optional["HomeView"] = None,
                index_name: str = INDEX_FILE) -> str:
    """Write `<out_dir>/index.html` (every span, linked to span-<N>.html); returns its path."""
    home = home or _home(config)
    path = os.path.join(out_dir, index_name)
    _write(path, render_index(home))
    return path


def write_all(config: PipelineConfig, out_dir: str, rewrite: bool = False,
              say=lambda line: None, index_name: str = INDEX_FILE) -> str:
    """Every span's page (missing ones and those with a newer cycle, or all with `rewrite`)
    and the index; returns the index path. A page that cannot be made becomes a page that
    says why, so every link of the index leads somewhere."""
    home = _home(config)
    for span in home.spans():
        path = os.path.join(out_dir, page_name(span))
        record = home.latest_record(span)
        if not rewrite and record is not None and written_cycle(path) == record.id:
            continue
        try:
            write_cycle_report(config, span, path, home, index_name)
        except Exception as error:  # noqa: BLE001 - one bad page must not stop the others
            say(f"report: span {span}: {type(error).__name__}: {error}")
            _write(path, render_error(span, error, index_name))
    return write_index(config, out_dir, home, index_name)


def write_after_cycle(config: PipelineConfig, say=lambda line: None) -> Optional[str]:
    """For `ctpipe watch` and `ctpipe demo` after every decision: bring <home>/reports/ up to
    date (the new cycle's page and the index). A report never fails a cycle: an error is said
    in one line and None returned."""
    try:
        return write_all(config, reports_dir(config), say=say)
    except Exception as error:  # noqa: BLE001 - the cycle's decision stands without its page
        first = first_line(error, 200)
        say(f"report: not written: {type(error).__name__}: {first}")
        return None


def _home(config: PipelineConfig) -> "HomeView":
    from ctpipe.pipeline.observe.report_data import HomeView

    return HomeView(config)


def written_cycle(path: str) -> Optional[int]:
    """The cycle record id a page shows (None when there is no page)."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096)
    match = re.search(rf'<meta name="{CYCLE_META}" content="(\d+)"', head)
    return int(match.group(1)) if match else None


def _write(path: str, text: str) -> None:
    """Replace the file whole (a browser refreshing it never sees half a page)."""
    atomic_write(path, text, mode=0o644)


def stderr_line(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


# -- HTML -----------------------------------------------------------------------------------------

STYLE = """
:root { color-scheme: light dark; --fg: #111827; --bg: #ffffff; --muted: #4b5563;
  --card: #f3f4f6; --line: #d1d5db; --link: #1d4ed8; }
@media (prefers-color-scheme: dark) { :root { --fg: #e5e7eb; --bg: #111418; --muted: #9ca3af;
  --card: #1f242b; --line: #374151; --link: #93c5fd; } }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
a { color: var(--link); }
main { max-width: 1240px; margin: 0 auto; padding: 0 20px 48px; }
.banner { color: #fff; padding: 16px 24px; }
.banner .subject { font-size: 24px; font-weight: 600; }
.banner .outcome { font-size: 52px; font-weight: 800; letter-spacing: .02em; line-height: 1.1; }
.banner .meaning { font-size: 18px; opacity: .95; }
.banner a { color: #fff; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 10px;
  margin: 16px 0; }
.fact { background: var(--card); border-radius: 6px; padding: 10px 14px; }
.fact .k { font-size: 13px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.fact .v { font-size: 30px; font-weight: 700; }
.fact .v.long { font-size: 21px; } .fact .v.longer { font-size: 16px; }
.fact .n { font-size: 14px; color: var(--muted); }
.reasons li { margin: 4px 0; font-size: 17px; }
.reasons li:first-child { font-weight: 700; }
h2 { margin: 28px 0 8px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 15px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td { white-space: nowrap; } td.wrap { white-space: normal; min-width: 320px; }
.note { color: var(--muted); font-size: 14px; }
.badge { display: inline-block; color: #fff; border-radius: 4px; padding: 1px 7px;
  font-size: 13px; font-weight: 700; margin-left: 6px; vertical-align: middle; }
.drift { background: #b91c1c; } .contract { background: #b45309; }
.features { display: grid; grid-template-columns: repeat(auto-fill, minmax(580px, 1fr));
  gap: 12px; }
.feature { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.feature.drifted { border: 3px solid #b91c1c; }
.feature.anomalous { border: 3px solid #b45309; }
.feature h3 { margin: 0 0 4px; font-size: 17px; }
.feature ul { margin: 4px 0; padding-left: 18px; font-size: 14px; }
code, .uri { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px;
  word-break: break-all; }
svg { max-width: 100%; height: auto; display: block; }
"""


def _page(title: str, banner: str, body: List[str], meta: str = "") -> str:
    generated = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"{meta}<title>{esc(title)}</title><style>{STYLE}</style></head>"
            f"<body>{banner}<main>" + "".join(body)
            + f"<p class=\"note\">written by ctpipe report at {esc(generated)}; self-contained "
              "(no network)</p></main></body></html>\n")


def _outcome(outcome: str) -> tuple:
    from ctpipe.pipeline.observe.formatting import HEADLINES

    headline, meaning = HEADLINES.get(outcome, (outcome.upper(), ""))
    return headline, meaning, OUTCOME_COLOURS.get(outcome, "#374151")


def _fact(key: str, value: object, note: str = "", ident: str = "") -> str:
    attribute = f' id="{esc(ident)}"' if ident else ""
    size = " longer" if len(str(value)) > 32 else " long" if len(str(value)) > 14 else ""
    return (f'<div class="fact"><div class="k">{esc(key)}</div><div class="v{size}"{attribute}>'
            f'{esc(value)}</div><div class="n">{esc(note)}</div></div>')


def _table(header: List[str], rows: Iterable[List[object]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else
                        f'<td class="wrap">{esc(c)}</td>' if len(str(c)) > 40 else
                        f"<td>{esc(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _time(seconds: Optional[float]) -> str:
    from ctpipe.pipeline.observe.formatting import time_text

    return time_text(seconds) if seconds else "-"


def _change(candidate: Optional[float], baseline: Optional[float]) -> str:
    if candidate is None or baseline is None:
        return "-"
    return f"{candidate - baseline:+.4f}"


def _labels_text(labels: Dict[str, int]) -> str:
    if not labels:
        return "nothing serves"
    return ", ".join(f"{k} {labels[k]}" for k in ("stable", "canary", "previous") if k in labels)


# -- the cycle page -------------------------------------------------------------------------------


def render_cycle(view: CycleView, config: PipelineConfig, index_name: str = INDEX_FILE) -> str:
    decision = view.decision
    outcome = decision.outcome.value
    headline, meaning, colour = _outcome(outcome)
    attempt = f" (attempt {decision.attempt})" if (decision.attempt or 1) > 1 else ""
    banner = (f'<header class="banner" style="background:{colour}" data-span="{view.record.span}"'
              f' data-outcome="{esc(outcome)}"><div class="subject">'
              f'<a href="{esc(index_name)}">{esc(config.pipeline_name)}</a> · '
              f'<span id="span">span {view.record.span}</span>{esc(attempt)}</div>'
              f'<div class="outcome" id="outcome">{esc(headline)}</div>'
              f'<div class="meaning">{esc(meaning)}</div></header>')
    body = [_facts(view), _contents(index_name), _reasons(decision.reasons), _checks(decision),
            _metrics(view), _anomalies(view),
            _history(view.points, highlight=len(view.points) - 1,
                     subject=f"up to span {view.record.span}"),
            _fresh(view.points, highlight=len(view.points) - 1),
            _statistics(view), _attempts(view), _provenance(view)]
    meta = f'<meta name="{CYCLE_META}" content="{view.record.id}">'
    return _page(f"span {view.record.span}: {headline} - {config.pipeline_name}", banner, body,
                 meta)


def _facts(view: CycleView) -> str:
    decision = view.decision
    candidate = decision.metrics.get("candidate", {}).get("auc")
    baseline = decision.metrics.get("baseline", {}).get("auc")
    trained = decision.outcome.value in ("pushed", "not_blessed")
    facts = [
        _fact("candidate AUC", number_text(candidate) if candidate is not None else
              ("-" if trained else "not trained"),
              "the model trained in this cycle" if trained else "no model was trained",
              "auc-candidate"),
        _fact("stable AUC (baseline)", number_text(baseline) if baseline is not None else
              "-", "same eval split; change " + _change(candidate, baseline) if baseline
              is not None else ("first model: no baseline" if trained else
                                "nothing was evaluated"), "auc-baseline"),
    ]
    labels = decision.checks.get("labels") or {}
    if labels.get("production_auc_on_span") is not None:
        facts.append(_fact("production model AUC on this span",
                           number_text(labels["production_auc_on_span"]),
                           f"label check: {number_text(labels.get('production_auc_expected'))} "
                           f"expected on spans "
                           f"{', '.join(map(str, labels.get('reference_spans', [])))}",
                           "auc-gate"))
    facts += [
        _fact("model version", decision.model_version if decision.model_version is not None
              else "none", "published by this cycle" if decision.model_version is not None
              else "production unchanged"),
        _fact("serving after this cycle", _labels_text(view.labels),
              "release labels (reconstructed from ML Metadata)"),
        _fact("trained on spans", ", ".join(map(str, decision.training_spans)) or "none",
              "the rolling window of accepted spans"),
        _fact("drift baseline", f"span {view.baseline_span}" if view.baseline_span is not None
              else "none", view.baseline_note),
        _fact("span in the ledger", view.ledger_now,
              "when this page was written (the index always says it now)", "ledger-now"),
        _fact("finished", _time(decision.finished_at),
              f"took {decision.seconds:.1f} s" if decision.seconds is not None else ""),
    ]
    return f'<section class="facts">{"".join(facts)}</section>'


def _contents(index_name: str) -> str:
    links = (("why", "why"), ("metrics", "metrics"), ("anomalies", "contract"),
             ("history", "AUC and versions"), ("statistics", "data vs baseline"),
             ("attempts", "attempts"), ("provenance", "artifacts"), (index_name, "all cycles"))
    return '<nav class="note">' + " · ".join(
        f'<a href="{esc(target if target.endswith(".html") else "#" + target)}">{esc(text)}</a>'
        for target, text in links) + "</nav>"


def _reasons(reasons: List[str]) -> str:
    items = "".join(f"<li>{esc(reason)}</li>" for reason in reasons) or "<li>none recorded</li>"
    return f'<h2 id="why">Why</h2><ul class="reasons">{items}</ul>'


def _checks(decision) -> str:
    trained = decision.outcome.value in ("pushed", "not_blessed")
    parts = ['<h2>The gate\'s checks</h2>']
    labels = decision.checks.get("labels")
    if labels:
        parts.append("<p>Label check (poisoned labels): the production model scored this span "
                     "and the reference spans.</p>")
        parts.append(_table(["", "value"], [[k.replace("_", " "), v if not isinstance(v, list)
                                             else ", ".join(map(str, v))]
                                            for k, v in labels.items()], [1]))
    warm = decision.checks.get("warm_start")
    if warm:
        which = "Warm start" if trained else "Warm start (had the span been accepted)"
        parts.append(f"<p>{which}: {esc(warm.get('reason', ''))}</p>")
    fresh = decision.fresh_span_auc or decision.checks.get("fresh_span_auc") or {}
    if fresh:
        parts.append("<p>Fresh-span AUC: every labelled version scored this span's eval split "
                     "before anything trained on it.</p>")
        parts.append(_table(["version", "labels", "AUC", "± stderr", "rows"], [
            [f"v{v}", ", ".join(x.get("labels") or [x.get("label", "")]),
             number_text(x.get("auc")) if x.get("auc") is not None else x.get("error", "-"),
             number_text(x.get("stderr")), x.get("rows")]
            for v, x in sorted(fresh.items(), key=lambda item: int(item[0]))], [2, 3, 4]))
    release_step = decision.checks.get("release") or {}
    judged = release_step.get("fresh_labels")
    if judged:
        applied = "" if judged.get("applied", True) else " (not applied: promotion is not " \
            "fresh_labels)"
        parts.append(f"<p>Release by fresh labels: <b>{esc(judged.get('action') or 'none')}"
                     f"</b>{esc(applied)} - {esc(judged.get('reason', ''))}</p>")
    versus = release_step.get("candidate_vs_canary")
    if versus:
        parts.append(f"<p>New version vs the canary it would replace, same eval rows: "
                     f"v{esc(versus['candidate'])} {esc(number_text(versus['candidate_auc']))} "
                     f"vs v{esc(versus['canary'])} {esc(number_text(versus['canary_auc']))}</p>")
    other = {k: v for k, v in decision.checks.items()
             if k not in ("labels", "warm_start", "fresh_span_auc", "release")}
    if other:
        parts.append(f"<p class=\"note\">other checks: <code>{esc(json.dumps(other))}</code></p>")
    if len(parts) == 1:
        parts.append("<p class=\"note\">the gate recorded no checks for this cycle (it did not "
                     "reach them)</p>")
    return "".join(parts)


def _metrics(view: CycleView) -> str:
    from ctpipe.components.evaluation import REPORTED_METRICS

    parts = ['<h2 id="metrics">Candidate vs stable</h2>']
    metrics = view.decision.metrics
    if metrics:
        rows = []
        for name in REPORTED_METRICS:
            candidate = metrics.get("candidate", {}).get(name)
            baseline = metrics.get("baseline", {}).get(name)
            if candidate is None and baseline is None:
                continue
            rows.append([name, number_text(candidate), number_text(baseline),
                         _change(candidate, baseline)])
        parts.append("<p>Overall, on this span's eval split (the Evaluator's numbers).</p>")
        parts.append(_table(["metric", "candidate", "baseline (served)", "change"], rows,
                            [1, 2, 3]))
    if view.slices and any(name != "all data" for name in view.slices):
        rows, names, candidate_auc, baseline_auc = [], [], [], []
        for name, models in view.slices.items():
            candidate, baseline = models.get("candidate", {}), models.get("baseline", {})
            rows.append([name, number_text(candidate.get("example_count",
                                                         baseline.get("example_count"))),
                         number_text(candidate.get("auc")), number_text(baseline.get("auc")),
                         _change(candidate.get("auc"), baseline.get("auc")),
                         number_text(candidate.get("binary_accuracy")),
                         number_text(baseline.get("binary_accuracy"))])
            names.append(name)
            candidate_auc.append(candidate.get("auc"))
            baseline_auc.append(baseline.get("auc"))
        parts.append("<p>Per slice (thresholds hold on all data only; a tiny slice is shown, "
                     "not gated).</p>")
        parts.append(_table(["slice", "examples", "AUC candidate", "AUC baseline", "change",
                             "accuracy candidate", "accuracy baseline"], rows,
                            [1, 2, 3, 4, 5, 6]))
        series = [Series("candidate", candidate_auc, CURRENT)]
        if any(v is not None for v in baseline_auc):
            series.append(Series("baseline (served)", baseline_auc, BASELINE))
        parts.append(horizontal_bars(names, series, "AUC per slice", width=620,
                                     value_text=number_text))
    if view.slices_note:
        parts.append(f'<p class="note">{esc(view.slices_note)}</p>')
    return "".join(parts)


def _anomalies(view: CycleView) -> str:
    parts = ['<h2 id="anomalies">Contract anomalies (ExampleValidator vs the schema)</h2>']
    if view.anomalies:
        parts.append(_table(["split", "feature", "anomaly", "detail"],
                            [[a.split, a.feature, a.short, a.description]
                             for a in view.anomalies]))
    else:
        parts.append("<p>none: every split meets the data contract</p>"
                     if not view.anomalies_note else "<p>none recorded</p>")
    if view.anomalies_note:
        parts.append(f'<p class="note">{esc(view.anomalies_note)}</p>')
    return "".join(parts)


def _statistics(view: CycleView) -> str:
    against = " and ".join(f"span {s} ({role})" for s, role in view.references) or "nothing"
    drifted = [d.feature for d in view.distributions if d.drift]
    parts = [f'<h2 id="statistics">Span {view.record.span} vs {esc(against)}</h2>']
    if view.distributions:
        parts.append(f"<p>{len(view.distributions)} features of the {esc('train')} split "
                     "(TFDV statistics); each bar is a share of that span's values. "
                     f"Drifted: <b id=\"drifted\">{esc(', '.join(drifted) or 'none')}</b>.</p>")
    if view.statistics_note:
        parts.append(f'<p class="note">{esc(view.statistics_note)}</p>')
    cards = [_feature_card(item) for item in view.distributions]
    if cards:
        parts.append(f'<div class="features">{"".join(cards)}</div>')
    return "".join(parts)


def _feature_card(item: Distribution) -> str:
    classes = "feature" + (" drifted" if item.drift else " anomalous" if item.anomalies else "")
    badges = ('<span class="badge drift">DRIFT</span>' if item.drift else "") + \
        ('<span class="badge contract">CONTRACT</span>' if item.anomalies else "")
    notes = [f"<li><b>{esc(text)}</b></li>" for text in item.drift + item.anomalies]
    for source, summary, missing in zip(item.sources, item.summary or [""] * len(item.sources),
                                        item.missing):
        missing_text = f"missing {percent_text(missing)}" if missing is not None else ""
        text = "; ".join(part for part in (summary, missing_text) if part)
        notes.append(f"<li>{esc(source)}: {esc(text)}</li>")
    series = [Series(source, values, SOURCE_COLOURS[i % len(SOURCE_COLOURS)])
              for i, (source, values) in enumerate(zip(item.sources, item.values))]
    if item.kind == "numeric":
        chart = histogram(item.edges, series, f"{item.feature}: histogram", width=560)
    elif item.kind == "categorical":
        chart = horizontal_bars(item.categories, series, f"{item.feature}: top values",
                                width=560)
    else:
        chart = '<p class="note">no values to draw</p>'
    return (f'<div class="{classes}" data-feature="{esc(item.feature)}"><h3>'
            f'{esc(item.feature)}{badges}</h3><ul>{"".join(notes)}</ul>{chart}</div>')


def _history(points: List[CyclePoint], highlight: Optional[int], subject: str) -> str:
    parts = [f'<h2 id="history">AUC and versions over cycles ({esc(subject)})</h2>']
    if not points:
        return parts[0] + "<p>no cycles yet</p>"
    labels = [p.label for p in points]
    marks = [(i, _outcome(p.outcome)[2], f"span {p.label}: {p.outcome}")
             for i, p in enumerate(points)]
    auc = [Series("candidate AUC", [p.candidate_auc for p in points], CURRENT),
           Series("stable AUC", [p.baseline_auc for p in points], BASELINE),
           Series("production model on the new span (label check)",
                  [p.gate_auc for p in points], GATE, dashed=True)]
    parts.append(line_chart(labels, auc, "AUC over cycles", y_label="AUC",
                            highlight=highlight, marks=marks))
    versions = [Series("stable", [p.labels.get("stable") for p in points], STABLE, step=True),
                Series("canary", [p.labels.get("canary") for p in points], CANARY, dashed=True,
                       step=True)]
    if any(v is not None for s in versions for v in s.values):
        parts.append(line_chart(labels, versions, "stable and canary versions over cycles",
                                y_label="version", integer_y=True, highlight=highlight,
                                marks=marks, height=200))
    parts.append('<p class="note">x: span of each cycle in the order they ran (·2 = second '
                 "attempt); dots under the axis: the outcome's colour. Versions are the release "
                 "labels after each cycle, replayed from ML Metadata: each push's labels (the "
                 "runner's release step) and every promote / rollback / remove_canary / control "
                 "action's labels after; an action between two cycles shows on the later one."
                 "</p>")
    return "".join(parts)


VERSION_COLOURS = ("#15803d", "#d97706", "#2563eb", "#7c3aed", "#0891b2", "#be185d", "#4b5563",
                   "#65a30d")


def _fresh(points: List[CyclePoint], highlight: Optional[int]) -> str:
    """Each version's AUC on every accepted span before training on it (out-of-time), and the
    lift stable - control with its 95% error bar."""
    from ctpipe.pipeline.observe.health import fresh_lift

    scored = [p for p in points if p.fresh]
    parts = ['<h2 id="fresh">Fresh-span AUC: every live version on each new span</h2>']
    if not scored:
        return parts[0] + "<p>no fresh-span evaluation yet</p>"
    labels = [p.label for p in points]
    versions = sorted({int(v) for p in scored for v in p.fresh}, key=int)
    series = [Series(f"v{v}", [(p.fresh.get(str(v)) or {}).get("auc") for p in points],
                     VERSION_COLOURS[i % len(VERSION_COLOURS)])
              for i, v in enumerate(versions)]
    parts.append(line_chart(labels, series, "each version's AUC on the new span (before "
                            "training on it)", y_label="AUC", highlight=highlight))
    lifts = [fresh_lift(p.fresh) if p.fresh else None for p in points]
    if any(lifts):
        parts.append(line_chart(labels, [Series(
            "lift = stable - control (bar: 95%)", [x[0] if x else None for x in lifts], STABLE,
            errors=[round(1.96 * x[1], 4) if x else None for x in lifts])],
            "lift of stable over the pinned control", y_label="AUC lift", highlight=highlight,
            height=200))
    parts.append('<p class="note">Labels arrive with the next span, and no live version has '
                 "seen it: these are honest out-of-time numbers (blocked spans left out: their "
                 "labels are not trusted). With promotion = fresh_labels a canary not worse than "
                 "stable beyond the noise tolerance is promoted, a clearly worse one retired "
                 "(actions by fresh_labels below). A version's line over spans after its "
                 "training window shows how fast it decays.</p>")
    return "".join(parts)


def _attempts(view: CycleView) -> str:
    from ctpipe.pipeline.home.cycles import RUNNING

    rows = []
    for record in view.attempts:
        decision = record.decision
        state = "running (or killed)" if record.state == RUNNING else (
            decision.outcome.value if decision else "-")
        rows.append([record.attempt, _time(record.started_at), state,
                     (decision.reasons[-1] if decision and decision.reasons else "")])
    parts = ['<h2 id="attempts">Cycles of this span, release changes, operator actions</h2>',
             _table(["attempt", "started", "outcome", "last reason"], rows, [0])]
    events = view.points[-1].events if view.points else []
    if events:
        parts.append("<p>Release changes and operator actions since the previous cycle:</p>")
        parts.append("<ul>" + "".join(f"<li>{esc(event)}</li>" for event in events) + "</ul>")
    if view.actions:
        parts.append(_table(["action", "by", "at", "reason"],
                            [[a.action, a.user, _time(a.at), a.reason] for a in view.actions]))
    return "".join(parts)


def _provenance(view: CycleView) -> str:
    rows = [["run", view.decision.run_id or "-"], ["cycle record", view.record.id]]
    rows += [[name, uri or "not on disk"] for name, uri in view.artifacts.items()]
    return '<h2 id="provenance">Where this comes from</h2>' + _table(["", ""], rows)


def render_error(span: int, error: BaseException, index_name: str = INDEX_FILE) -> str:
    banner = (f'<header class="banner" style="background:#374151" data-span="{span}">'
              f'<div class="subject"><a href="{esc(index_name)}">index</a> · span {span}</div>'
              f'<div class="outcome">NO REPORT</div></header>')
    return _page(f"span {span}: no report", banner,
                 [f"<p>The report for span {span} could not be made: "
                  f"<code>{esc(type(error).__name__)}: {esc(error)}</code></p>"])


# -- the index ------------------------------------------------------------------------------------


def render_index(home: "HomeView") -> str:
    config = home.config
    points = home.points()
    now = home.release_now()
    spans = home.spans()
    latest = {span: home.latest_record(span) for span in spans}
    newest = points[-1] if points else None
    colour = _outcome(newest.outcome)[2] if newest else "#374151"
    headline = (f"latest: span {newest.label} {_outcome(newest.outcome)[0]}" if newest
                else "no cycles yet")
    if now is None:
        pushed = [p.model_version for p in points if p.model_version is not None]
        serving = ("no release manifest: the model base path serves its newest version"
                   + (f" ({pushed[-1]})" if pushed else ""))
    else:
        serving = f"serving now: {_labels_text(now)}"
    banner = (f'<header class="banner" style="background:{colour}"><div class="subject">'
              f'{esc(config.pipeline_name)} · model {esc(config.model_name)}</div>'
              f'<div class="outcome" id="outcome">{esc(headline)}</div>'
              f'<div class="meaning">{esc(serving)}</div></header>')
    counts: Dict[str, int] = {}
    for record in latest.values():
        counts[record.decision.outcome.value] = counts.get(record.decision.outcome.value, 0) + 1
    facts = [_fact("spans decided", len(spans), ", ".join(f"{k} {v}" for k, v in
                                                         sorted(counts.items())))]
    if now is not None:
        facts += [_fact("stable", now.get("stable", "none"), "release manifest now",
                        "stable"),
                  _fact("canary", now.get("canary", "none"), "release manifest now", "canary"),
                  _fact("previous", now.get("previous", "none"), "rollback target"),
                  _fact("control", now.get("control", "none"), "pinned for good (lift)")]
    if now is not None and newest is not None and newest.labels != now:
        facts.append(_fact("labels after the last cycle", _labels_text(newest.labels),
                           "changed since by an action after the last cycle"))
    body = [f'<section class="facts">{"".join(facts)}</section>',
            _history(points, highlight=None, subject="all cycles"),
            _fresh(points, highlight=None),
            '<h2 id="spans">Every span</h2>', _span_table(home, latest, points)]
    nothing_new = sum(1 for r in home.records if r.decision is not None
                      and r.decision.outcome.value == "no_new_data")
    if nothing_new:
        body.append(f'<p class="note">{nothing_new} poll(s) found nothing new (not listed)</p>')
    if home.actions:
        body.append('<h2 id="actions">Operator actions</h2>')
        body.append(_table(["at", "action", "span", "by", "reason", "details"], [
            [_time(a.at), a.action, a.span if a.span is not None else "-",
             a.details.get("by") or a.user, a.reason,
             json.dumps(a.details, sort_keys=True)] for a in home.actions]))
    return _page(f"{config.pipeline_name}: cycle reports", banner, body)


def _why(decision) -> str:
    """The most specific reason (as `ctpipe status` shows it): blocked and not-blessed cycles
    start with a summary line, the next one says why; a failed cycle's last reason is the
    error."""
    reasons = decision.reasons
    if decision.outcome.value in ("data_blocked", "not_blessed") and len(reasons) > 1:
        return reasons[1]
    if decision.outcome.value == "failed" and len(reasons) > 1:
        return f"{reasons[0]}: {reasons[-1]}"
    return reasons[0] if reasons else ""


def _span_table(home: "HomeView", latest, points: List[CyclePoint]) -> str:
    labels_after = {p.record_id: p.labels for p in points}
    rows = []
    for span in sorted(latest, reverse=True):
        record = latest[span]
        decision = record.decision
        headline, _, colour = _outcome(decision.outcome.value)
        candidate = decision.metrics.get("candidate", {}).get("auc")
        baseline = decision.metrics.get("baseline", {}).get("auc")
        cells = [f'<td><a href="{esc(page_name(span))}">span {span}</a></td>',
                 f'<td><span class="badge" style="background:{colour};margin:0">'
                 f'{esc(headline)}</span></td>',
                 f'<td class="num">{esc(number_text(candidate))}</td>',
                 f'<td class="num">{esc(number_text(baseline))}</td>',
                 f'<td class="num">{esc(decision.model_version or "-")}</td>',
                 f'<td>{esc(_labels_text(labels_after.get(record.id, {})))}</td>',
                 f'<td>{esc(_time(decision.finished_at))}</td>',
                 f'<td class="wrap">{esc(home.ledger_status(span))}</td>',
                 f'<td class="wrap">{esc(_why(decision)[:200])}</td>']
        rows.append(f'<tr data-span="{span}">{"".join(cells)}</tr>')
    header = "".join(f"<th>{h}</th>" for h in ("span", "outcome", "AUC", "baseline", "version",
                                                "serving after", "finished", "ledger now",
                                                "why"))
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
