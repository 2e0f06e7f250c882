"""Inline SVG charts for the cycle reports (pipeline/observe/report.py): bars, histograms,
line plots.

Why our own: the reports must render with no network at all (TFDV's and TFMA's Facets widgets
load scripts from the internet) and without a new dependency. Everything here is plain Python
and returns SVG text; every piece of text that goes into it is escaped. Axes and labels use
`currentColor`, so the page's colours (light or dark) apply to them.
"""
from __future__ import annotations

import dataclasses
import html
import math
from typing import Callable, List, Optional, Sequence, Tuple

FONT = 12
Number = Optional[float]


@dataclasses.dataclass
class Series:
    name: str
    values: Sequence[Number]
    colour: str
    dashed: bool = False
    step: bool = False  # a line that holds its value until the next point (versions)
    errors: Optional[Sequence[Number]] = None  # +- half-width of an error bar per point


def esc(value: object) -> str:
    """Text for HTML/SVG content and attribute values."""
    return html.escape(str(value), quote=True)


def number_text(value: Number, digits: int = 4) -> str:
    """'0.9432', '12', '1.2e+09', '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.{digits}g}"


def axis_text(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (17031030200, 41.75, 0.25)."""
    if step <= 0 or not math.isfinite(step):
        return number_text(value)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (0 if _round_step(step) else 1))
    if decimals == 0 and abs(value) < 1e15:
        return str(int(round(value)))
    text = f"{value:.{min(decimals, 8)}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _round_step(step: float) -> bool:
    """1, 2, 5, 10, ... x a power of ten: one significant digit is enough."""
    mantissa = step / 10 ** math.floor(math.log10(step))
    return abs(mantissa - round(mantissa)) < 1e-6


def percent_text(fraction: Number) -> str:
    if fraction is None:
        return "-"
    return f"{fraction * 100:.1f}%"


def nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    """Round tick values covering [low, high] (1, 2, 5 x a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < low:
        low, high = high, low
    if high == low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def nice_edges(low: float, high: float, bins: int = 20) -> List[float]:
    """About `bins` equal bins with round edges (1, 2, 2.5 or 5 x a power of ten wide) that
    cover [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / bins
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    start = math.floor(low / step + 1e-9) * step
    count = max(1, math.ceil((high - start) / step - 1e-9))
    return [round(start + i * step, 12) for i in range(count + 1)]


def rebin(buckets: Sequence[Tuple[float, float, float]], edges: Sequence[float]) -> List[float]:
    """Counts of `buckets` (low, high, count) spread over the bins between `edges`, assuming
    values are uniform inside a bucket (a bucket of zero width counts where its value falls).
    Two spans' TFDV histograms have different bucket edges; on common edges they can be drawn
    side by side."""
    bins = [0.0] * (len(edges) - 1)
    if not bins:
        return bins
    for low, high, count in buckets:
        if not count:
            continue
        if high <= low:
            for index in range(len(bins)):
                last = index == len(bins) - 1
                if edges[index] <= low < edges[index + 1] or (last and low == edges[-1]):
                    bins[index] += count
                    break
            continue
        for index in range(len(bins)):
            overlap = min(high, edges[index + 1]) - max(low, edges[index])
            if overlap > 0:
                bins[index] += count * overlap / (high - low)
    return bins


def _svg(width: int, height: int, body: List[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" font-size="{FONT}" '
            f'font-family="system-ui, sans-serif"><title>{esc(title)}</title>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, text: object, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="currentColor"'
            f'{extra}>{esc(text)}</text>')


def _legend(series: Sequence[Series], x: float, y: float) -> List[str]:
    parts = []
    for item in series:
        dash = ' stroke-dasharray="5 3"' if item.dashed else ""
        parts.append(f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 18:.1f}" y2="{y - 4:.1f}" '
                     f'stroke="{esc(item.colour)}" stroke-width="3"{dash}/>')
        parts.append(_text(x + 23, y, item.name))
        x += 35 + 7 * len(item.name)
    return parts


def horizontal_bars(categories: Sequence[str], series: Sequence[Series], title: str,
                    width: int = 560, label_width: int = 200,
                    value_text: Callable[[Number], str] = percent_text) -> str:
    """One row per category, one bar per series (fractions 0..1 unless `value_text` says
    otherwise; bars are scaled to the largest value)."""
    row = 8 + 12 * len(series)
    top = 22
    height = top + row * max(len(categories), 1) + 6
    scale = max([v for s in series for v in s.values if v is not None] + [1e-9])
    plot = width - label_width - 60
    body = _legend(series, label_width, 14)
    for index, category in enumerate(categories):
        y = top + index * row
        shown = category if len(category) <= 30 else category[:29] + "…"
        body.append(_text(label_width - 6, y + row / 2 + 4, shown, "end",
                          f' data-category="{esc(category)}"'))
        for position, item in enumerate(series):
            value = item.values[index] if index < len(item.values) else None
            bar_y = y + 4 + position * 12
            length = 0.0 if value is None else plot * value / scale
            body.append(f'<rect x="{label_width}" y="{bar_y:.1f}" width="{length:.1f}" '
                        f'height="10" fill="{esc(item.colour)}"><title>{esc(item.name)}: '
                        f'{esc(category)} {esc(value_text(value))}</title></rect>')
            body.append(_text(label_width + length + 4, bar_y + 9, value_text(value), "start",
                              ' font-size="10"'))
    return _svg(width, height, body, title)


def histogram(edges: Sequence[float], series: Sequence[Series], title: str,
              width: int = 560, height: int = 200) -> str:
    """Bars over the bins between `edges`, one bar per series in each bin (fractions 0..1)."""
    left, right, top, bottom = 48, 10, 22, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    bins = max(len(edges) - 1, 1)
    peak = max([v for s in series for v in s.values if v is not None] + [1e-9])
    ticks = nice_ticks(0.0, peak, 4)
    top_value = max(ticks[-1] if ticks else peak, peak)
    body = _legend(series, left, 14)
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                f'y2="{top + plot_h}" stroke="currentColor"/>')
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" '
                f'stroke="currentColor"/>')
    for tick in ticks:
        y = top + plot_h - plot_h * tick / top_value
        body.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" '
                    f'stroke="currentColor"/>')
        body.append(_text(left - 6, y + 4, percent_text(tick), "end", ' font-size="10"'))
    slot = plot_w / bins
    bar = max((slot - 2) / max(len(series), 1), 0.5)
    for index in range(bins):
        for position, item in enumerate(series):
            value = item.values[index] if index < len(item.values) else None
            if not value:
                continue
            bar_h = plot_h * value / top_value
            x = left + index * slot + 1 + position * bar
            label = (f"{item.name}: {number_text(edges[index])} to "
                     f"{number_text(edges[index + 1])}: {percent_text(value)}")
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar:.1f}" '
                        f'height="{bar_h:.1f}" fill="{esc(item.colour)}"><title>{esc(label)}'
                        f'</title></rect>')
    label_every = max(1, math.ceil((len(edges)) / 6))
    step = (edges[-1] - edges[0]) / bins * label_every if len(edges) > 1 else 0.0
    for index, edge in enumerate(edges):
        if not _labelled(index, len(edges), label_every):
            continue
        x = left + index * slot
        body.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" '
                    f'y2="{top + plot_h + 4}" stroke="currentColor"/>')
        body.append(_text(x, top + plot_h + 16, axis_text(edge, step), "middle",
                          ' font-size="10"'))
    return _svg(width, height, body, title)


def line_chart(x_labels: Sequence[str], series: Sequence[Series], title: str,
               y_label: str = "", y_range: Optional[Tuple[float, float]] = None,
               integer_y: bool = False, highlight: Optional[int] = None,
               width: int = 900, height: int = 240,
               marks: Sequence[Tuple[int, str, str]] = ()) -> str:
    """Values over cycles (x = position in `x_labels`); None leaves a gap. `highlight` marks
    one x position (this cycle); `marks` are (x position, colour, tooltip) dots under the axis
    (the outcome of each cycle)."""
    left, right, top, bottom = 56, 16, 24, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    count = max(len(x_labels), 1)
    values = [v for s in series for v in s.values if v is not None]
    for item in series:  # error bars stay inside the plot
        for value, error in zip(item.values, item.errors or ()):
            if value is not None and error:
                values += [value - error, value + error]
    low, high = y_range if y_range else ((min(values), max(values)) if values else (0.0, 1.0))
    if not y_range and not integer_y:
        pad = (high - low) * 0.08 or 0.01
        low, high = low - pad, high + pad
    if integer_y:  # half a step of room: a line at the lowest version stays off the axis
        low, high = math.floor(low) - 0.5, math.ceil(high) + 0.5
    if high == low:
        low, high = low - 1, high + 1
    span = high - low

    def x_at(index: float) -> float:
        return left + (plot_w * (index + 0.5) / count)

    def y_at(value: float) -> float:
        return top + plot_h - plot_h * (value - low) / span

    body = _legend(series, left, 14)
    if y_label:
        body.append(_text(14, top + plot_h / 2, y_label, "middle",
                          f' transform="rotate(-90 14 {top + plot_h / 2:.1f})"'))
    if highlight is not None and 0 <= highlight < count:
        x = x_at(highlight)
        slot = plot_w / count
        body.append(f'<rect x="{x - slot / 2:.1f}" y="{top}" width="{slot:.1f}" '
                    f'height="{plot_h}" fill="#facc15" fill-opacity="0.25" '
                    f'data-highlight="{highlight}"/>')
    ticks = nice_ticks(low, high, 5)
    if integer_y:
        ticks = sorted({int(round(t)) for t in ticks if abs(t - round(t)) < 1e-9
                        and low <= t <= high}) or [int(math.ceil(low))]
    for tick in ticks:
        y = y_at(tick)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                    f'stroke="currentColor" stroke-opacity="0.15"/>')
        body.append(_text(left - 6, y + 4, number_text(tick), "end", ' font-size="10"'))
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                f'y2="{top + plot_h}" stroke="currentColor"/>')
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" '
                f'stroke="currentColor"/>')
    label_every = max(1, math.ceil(count / 30))
    for index, label in enumerate(x_labels):
        if not _labelled(index, count, label_every):
            continue
        body.append(_text(x_at(index), top + plot_h + 15, label, "middle", ' font-size="10"'))
    for index, colour, tooltip in marks:
        body.append(f'<circle cx="{x_at(index):.1f}" cy="{top + plot_h + 27}" r="4" '
                    f'fill="{esc(colour)}"><title>{esc(tooltip)}</title></circle>')
    for item in series:
        dash = ' stroke-dasharray="5 3"' if item.dashed else ""
        for run in _runs(item.values):
            points: List[Tuple[float, float]] = []
            for index in run:
                value = float(item.values[index])
                if item.step and points:
                    points.append((x_at(index), points[-1][1]))
                points.append((x_at(index), y_at(value)))
            if len(points) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
                body.append(f'<polyline points="{path}" fill="none" stroke="{esc(item.colour)}" '
                            f'stroke-width="2"{dash}/>')
            for index in run:
                value = item.values[index]
                error = (item.errors[index] if item.errors and index < len(item.errors)
                         else None)
                if error:
                    body.append(f'<line x1="{x_at(index):.1f}" y1="{y_at(value - error):.1f}" '
                                f'x2="{x_at(index):.1f}" y2="{y_at(value + error):.1f}" '
                                f'stroke="{esc(item.colour)}" stroke-width="1.5" '
                                f'data-error="{number_text(error)}"/>')
                body.append(f'<circle cx="{x_at(index):.1f}" cy="{y_at(float(value)):.1f}" '
                            f'r="3" fill="{esc(item.colour)}"><title>{esc(item.name)} at '
                            f'{esc(x_labels[index])}: {esc(number_text(value))}</title>'
                            f'</circle>')
    return _svg(width, height, body, title)


def _labelled(index: int, count: int, every: int) -> bool:
    """Label every `every`-th position, and the last one unless it would crowd the one
    labelled before it."""
    if index % every == 0:
        return True
    distance = index % every
    return index == count - 1 and distance >= 2 and distance >= 0.6 * every


def _runs(values: Sequence[Number]) -> List[List[int]]:
    """Positions of consecutive present values: [[0, 1], [3]] for (a, b, None, c)."""
    runs: List[List[int]] = []
    current: List[int] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(index)
    if current:
        runs.append(current)
    return runs
