"""Charts for the report pages: SVG drawn on the server by pygal, inline in the page.

Why pygal: a maintained SVG charting library (LGPL-3.0, pure Python), whose charts need nothing at view
time. Its defaults would add two `<script>` tags loading its tooltips from a CDN (pygal.org docs,
"Embedding in a web page"): `js=[]` removes them, so the pages stay script-free (our CSP says
`script-src 'none'`) and make no request anywhere; the values are printed on the bars instead of in
tooltips, and each chart is followed by the same figures as a table. Each SVG is `role="img"` with a
`<title>` and an aria-label (WAI-ARIA Authoring Practices, "SVG images"), and two sizes are drawn, one
for desktop and one for phones, switched by the stylesheet (a phone gets larger text, not a shrunken
desktop chart).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape

import pygal
from markupsafe import Markup
from pygal.style import Style

#: the site's palette (templates/web/static/site.css): accent, ok, warn, bad, muted
COLORS = ("#0b5cad", "#1b7a3a", "#9a6200", "#b3261e", "#5b6475", "#6a3fa0")
STYLE = Style(
    background="transparent", plot_background="transparent", foreground="#1d2330", foreground_strong="#1d2330",
    foreground_subtle="#d8dde6", opacity=".9", opacity_hover="1", transition="0ms", colors=COLORS,
    font_family='system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif',
    label_font_size=13, major_label_font_size=13, legend_font_size=14, value_font_size=12, title_font_size=16,
)
SIZES = {"wide": (820, 330), "narrow": (380, 330)}
_ROOT = re.compile(r'<svg\b([^>]*?) class="pygal-chart"([^>]*)>')
#: pygal writes its tooltip configuration as an inline <script> even with js=[]: removed (the SVG is XML,
#: so a `<` inside the script's text is escaped and cannot end it early)
_COMMENT = re.compile(r"<!--.*?-->", re.S)  # pygal's credits: bytes nobody reads
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>|<script\b[^>]*/>", re.S)


def _svg(kind: str, title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
         size: str, percent: bool) -> str:
    width, height = SIZES[size]
    narrow = size == "narrow"
    top = max((v for _, values in series for v in values if v is not None), default=0)
    chart_class = pygal.Line if kind == "line" else pygal.Bar
    chart = chart_class(
        js=[], disable_xml_declaration=True, style=STYLE, width=width, height=height, show_legend=True,
        legend_at_bottom=True, legend_at_bottom_columns=2 if narrow else min(4, max(1, len(series))),
        # values printed just above their bar, in the text colour on the page's white (WCAG 1.4.3 contrast)
        print_values=kind == "bar" and not narrow and len(labels) <= 12, print_values_position="top",
        print_zeroes=False, include_x_axis=True,
        x_label_rotation=40 if narrow and len(labels) > 4 else 0, truncate_label=14 if narrow else 24,
        truncate_legend=24, show_minor_x_labels=True, min_scale=2, max_scale=6, margin=8, spacing=8,
        value_formatter=(lambda v: f"{v:.0%}" if v is not None else "") if percent
        else (lambda v: f"{v:,.0f}" if v is not None else ""),
        no_data_text="No data yet", tooltip_border_radius=0, dots_size=3,
    )
    chart.x_labels = list(labels)
    if not percent:  # counts of readers: whole numbers on the axis, from 0, even when every value is 0
        step = max(1, math.ceil(top / 5))
        upper = (int(top) // step + 1) * step  # a step above the tallest bar: room for its value
        chart.y_labels = list(range(0, upper + 1, step))
    for name, values in series:
        chart.add(name, list(values))
    svg = _COMMENT.sub("", _SCRIPT.sub("", chart.render(is_unicode=True)))
    if "<script" in svg:
        raise ValueError("pygal left a script in the chart")
    # pygal names its legend items `activate-serie-N` in every chart: made unique per chart, since a page
    # holds several charts and ids must be unique in a document (HTML, "the id attribute")
    chart_id = re.search(r'id="(chart-[^"]+)"', svg)
    if chart_id:
        svg = svg.replace('id="activate-serie-', f'id="{chart_id.group(1)}-serie-')
    label = escape(title, quote=True)
    # the root <svg>: an image with a name (role, aria-label, <title>), scaled to its container
    return _ROOT.sub(lambda m: f'<svg{m.group(1)} class="pygal-chart chart-svg {size}"{m.group(2)} role="img" '
                               f'aria-label="{label}"><title>{label}</title>', svg, count=1)


def chart(title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *,
          description: str = "", kind: str = "bar", percent: bool = False) -> Markup:
    """A figure: the chart at desktop and phone sizes, its caption (what it shows, where from)."""
    wide = _svg(kind, title, labels, series, "wide", percent)
    narrow = _svg(kind, title, labels, series, "narrow", percent)
    caption = f"<figcaption>{escape(description)}</figcaption>" if description else ""
    return Markup(f'<figure class="chart"><div class="chart-wide">{wide}</div>'
                  f'<div class="chart-narrow">{narrow}</div>{caption}</figure>')
