"""Matplotlib figures to inline SVG: deterministic, self-contained, ids unique per chart."""
from __future__ import annotations

import contextlib
import io
import re
from typing import Iterator

import matplotlib
from matplotlib.figure import Figure  # used directly, without pyplot: no backend, no GUI, no figure registry
from markupsafe import Markup

STYLE = {
    "svg.fonttype": "none",  # text stays text: extractable from the PDF, small files
    "svg.hashsalt": "tailaudit",  # stable clip-path ids: same input, same bytes
    "svg.image_inline": True,
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "text.parse_math": False,  # a class called "$5 bill" is text, not mathtext
}

# Okabe-Ito colours, readable for colour-blind readers. Every series that can share a chart has its
# own hue: accuracies in blues that differ clearly in lightness (clean light, robust dark), groups in
# green / grey / vermillion (never blue, so "head" cannot be mistaken for "robust"), before in
# reddish purple against after in blue. tests/test_report_pages.py checks the pairs stay apart.
CLEAN = "#56B4E9"
ROBUST = "#003F7F"
BEFORE = "#CC79A7"
AFTER = ROBUST  # "robust after" is the robust series: the same colour in every chart
WORSE = "#B2182B"
BETTER = "#1A7F3C"
GROUP_COLOURS = {"head": "#009E73", "medium": "#666666", "tail": "#D55E00"}
OTHER_GROUP = "#222222"
CURVE_COLOURS = ("#000000", "#E69F00", "#56B4E9", "#CC79A7", "#8C6D00")  # overall/balanced lines and classes

_ID_RE = re.compile(r'\bid="([^"]+)"')


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib settings for every report chart (scoped, no global change)."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free figure (no global figure registry, nothing to close)."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def to_svg(fig: Figure, chart_id: str, label: str) -> Markup:
    """Serialise ``fig`` to an inline ``<svg>`` element.

    The XML prolog, DOCTYPE and metadata are dropped, fixed sizes become CSS-scalable
    (viewBox kept), and every id gets the ``chart_id`` prefix so several charts can live in
    one HTML document. Matplotlib escapes text (class names) when writing SVG.
    """
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    ids = _ID_RE.findall(text)
    for old in sorted(set(ids), key=len, reverse=True):
        new = f"{chart_id}-{old}"
        text = text.replace(f'id="{old}"', f'id="{new}"').replace(f"#{old})", f"#{new})")
        text = text.replace(f'href="#{old}"', f'href="#{new}"')
    head_end = text.index(">")
    head = text[:head_end]
    head = re.sub(r'\s(width|height)="[^"]*"', "", head, count=2)
    safe_label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    head += f' class="chart" role="img" aria-label="{safe_label}" preserveAspectRatio="xMidYMid meet"'
    return Markup(head + text[head_end:].rstrip())
