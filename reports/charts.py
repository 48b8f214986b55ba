"""The report's charts, as inline SVG (matplotlib, vector, deterministic).

Every function takes plain lists (accuracies as fractions in [0, 1], deltas in points) and
returns a :class:`markupsafe.Markup` ``<svg>`` element. Class names are drawn as text,
never parsed as mathtext, and are shortened for axis labels (the table has them in full).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from markupsafe import Markup
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from .svg import AFTER, BEFORE, BETTER, CLEAN, GROUP_COLOURS, OTHER_GROUP, ROBUST, WORSE, new_figure, style, to_svg

FULL_WIDTH = 7.1  # inches: the A4 text width at 12 mm margins
_PERCENT = FuncFormatter(lambda v, _pos: f"{v:.0f}%")


def _count_label(value: float, _pos: int | None = None) -> str:
    """Log-axis tick labels without mathtext: 10, 100, 1k, 10k."""
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


_COUNTS = FuncFormatter(_count_label)


def short(name: str, limit: int = 20) -> str:
    """Shorten a class name for an axis label."""
    name = " ".join(str(name).split())
    return name if len(name) <= limit else name[: limit - 1] + "…"


def group_colour(group: str) -> str:
    """Colour of a head / medium / tail (or many / medium / few) group."""
    return GROUP_COLOURS.get(group, {"many": GROUP_COLOURS["head"], "few": GROUP_COLOURS["tail"]}.get(group, OTHER_GROUP))


def _group_legend(groups: Sequence[str]) -> list[Patch]:
    seen = list(dict.fromkeys(groups))
    return [Patch(color=group_colour(g), label=g) for g in seen]


def class_bars(
    chart_id: str,
    names: Sequence[str],
    groups: Sequence[str],
    counts: Sequence[int],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    label: str,
    percent: bool = True,
    ylabel: str = "accuracy",
    flagged: Sequence[bool] | None = None,
    annotate: Sequence[str] | None = None,
    height: float = 3.3,
) -> Markup:
    """Grouped bars per class (x ordered as given: by training count) over a training-count strip.

    ``series`` are (legend label, values, colour); fractions when ``percent`` (drawn as %),
    else points (a zero line is drawn). ``flagged`` classes get red, bold axis labels.
    ``annotate`` puts a short text above the last series' bars.
    """
    n = len(names)
    with style():
        fig = new_figure(FULL_WIDTH, height)
        grid = fig.add_gridspec(2, 1, height_ratios=[1, 3.4])
        strip = fig.add_subplot(grid[0])
        ax = fig.add_subplot(grid[1], sharex=strip)
        x = np.arange(n)
        strip.bar(x, counts, width=0.7, color=[group_colour(g) for g in groups])
        strip.set_yscale("log")
        strip.set_ylabel("training\nimages", fontsize=7)
        lo, hi = max(1, min(counts, default=1)), max(1, max(counts, default=1))
        strip.set_ylim(lo / 1.6, hi * 1.25)
        strip.yaxis.set_major_locator(FixedLocator(sorted({lo, hi})))
        strip.yaxis.set_major_formatter(_COUNTS)
        strip.yaxis.set_minor_locator(NullLocator())
        strip.tick_params(axis="x", labelbottom=False, length=0)
        strip.grid(False)
        k = len(series)
        width = 0.8 / k
        scale = 100.0 if percent else 1.0
        for j, (legend, values, colour) in enumerate(series):
            vals = np.asarray(values, dtype=float) * scale
            ax.bar(x - 0.4 + width * (j + 0.5), vals, width=width * 0.95, color=colour, label=legend)
        if annotate is not None:
            last = np.asarray(series[-1][1], dtype=float) * scale
            for xi, (v, text) in enumerate(zip(last, annotate)):
                if text:
                    ax.annotate(text, (xi - 0.4 + width * (k - 0.5), max(v, 0)), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
        if percent:
            ax.set_ylim(0, 109 if annotate is not None else 100)
            ax.yaxis.set_major_formatter(_PERCENT)
            ax.set_yticks([0, 25, 50, 75, 100])
        else:
            ax.axhline(0, color="#444444", linewidth=0.8)
            flat = [float(v) for _, vals, _ in series for v in vals]
            lim = max(5.0, max((abs(v) for v in flat), default=0.0) * 1.18)
            ax.set_ylim(-lim if any(v < 0 for v in flat) else 0, lim)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:+.0f}" if v else "0"))
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.6, n - 0.4)
        labels = [short(s) for s in names]
        rotate = n * (max((len(s) for s in labels), default=0) + 1) > 70  # labels would collide
        ax.set_xticks(x, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                      rotation_mode="anchor")
        for xi, (tick, bad) in enumerate(zip(ax.get_xticklabels(), flagged or [])):
            if bad:
                tick.set_color(WORSE)
                tick.set_fontweight("bold")
                low = min(0.0, min(float(vals[xi]) * scale for _, vals, _ in series))
                ax.annotate("▼", (xi, low), xytext=(0, -2), textcoords="offset points", ha="center", va="top",
                            color=WORSE, fontsize=8)
        handles = ax.get_legend_handles_labels()[0] + _group_legend(groups)
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 7), frameon=False,
                   title=None, handlelength=1.2, columnspacing=1.2)
        return to_svg(fig, chart_id, label)


def group_bars(
    chart_id: str,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    label: str,
    percent: bool = True,
    width_in: float = 3.4,
    height: float = 2.4,
    title: str | None = None,
) -> Markup:
    """Bars per group (head / medium / tail) with the value written on each bar."""
    with style():
        fig = new_figure(width_in, height)
        ax = fig.add_subplot()
        x = np.arange(len(groups))
        k = max(1, len(series))
        width = 0.8 / k
        scale = 100.0 if percent else 1.0
        for j, (legend, values, colour) in enumerate(series):
            vals = np.asarray(values, dtype=float) * scale
            bars = ax.bar(x - 0.4 + width * (j + 0.5), vals, width=width * 0.95, color=colour, label=legend)
            fmt = "{:.0f}%" if percent else "{:+.1f}"
            ax.bar_label(bars, labels=[fmt.format(v) for v in vals], fontsize=6.5, padding=1)
        if percent:
            ax.set_ylim(0, 112)
            ax.set_yticks([0, 25, 50, 75, 100])
            ax.yaxis.set_major_formatter(_PERCENT)
        else:
            ax.axhline(0, color="#444444", linewidth=0.8)
            lim = max(5.0, max((abs(float(v)) for _, vals, _ in series for v in vals), default=0.0) * 1.3)
            ax.set_ylim(-lim, lim)
        ax.set_xticks(x, groups)
        for tick, g in zip(ax.get_xticklabels(), groups):
            tick.set_color(group_colour(g.split(" ")[0]))
        if title:
            ax.set_title(title)
        fig.legend(loc="outside lower center", frameon=False, ncols=min(k, 3), handlelength=1.2)
        return to_svg(fig, chart_id, label)


def count_scatter(
    chart_id: str,
    counts: Sequence[int],
    groups: Sequence[str],
    names: Sequence[str],
    robust: Sequence[float],
    *,
    label: str,
    title: str,
    intervals: Sequence[Sequence[float] | None] | None = None,
    before: Sequence[float] | None = None,
    label_classes: Sequence[int] = (),
    width_in: float = FULL_WIDTH,
    height: float = 2.8,
) -> Markup:
    """Robust accuracy against training count (log x), one point per class, coloured by group.

    With ``before`` (a comparison) the earlier value is a hollow marker joined to the new one.
    """
    n = len(counts)
    c = np.asarray(counts, dtype=float)
    y = np.asarray(robust, dtype=float) * 100
    size = 22 if n <= 100 else 8
    with style():
        fig = new_figure(width_in, height)
        ax = fig.add_subplot()
        ax.grid(True, axis="both")
        colours = [group_colour(g) for g in groups]
        jitter = np.ones(n)
        if before is not None:
            b = np.asarray(before, dtype=float) * 100
            if n <= 200:
                for xi, y0, y1 in zip(c, b, y):
                    ax.plot([xi, xi], [y0, y1], color="#aaaaaa", linewidth=0.7, zorder=1)
            ax.scatter(c * jitter, b, s=size, facecolors="none", edgecolors=colours, linewidths=0.8,
                       zorder=2, label="before")
        if intervals is not None and n <= 60:
            lo = np.array([(iv[0] if iv else np.nan) for iv in intervals], dtype=float) * 100
            hi = np.array([(iv[1] if iv else np.nan) for iv in intervals], dtype=float) * 100
            ax.vlines(c, lo, hi, colors=colours, linewidth=0.8, alpha=0.45, zorder=1)
        ax.scatter(c, y, s=size, c=colours, zorder=3, linewidths=0,
                   label="after" if before is not None else "robust accuracy (worst case)")
        for i in label_classes:
            ax.annotate(short(names[i], 16), (c[i], y[i]), xytext=(4, 3), textcoords="offset points", fontsize=6.5,
                        color="#333333")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_COUNTS)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-3, 103)
        ax.yaxis.set_major_formatter(_PERCENT)
        ax.set_title(title)
        handles = [Patch(color=group_colour(g), label=g) for g in dict.fromkeys(groups)]
        if before is not None:
            handles += ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="best", frameon=False, fontsize=7)
        return to_svg(fig, chart_id, label)


def confusion_heatmap(
    chart_id: str,
    fractions: Sequence[Sequence[float]],
    names: Sequence[str],
    *,
    label: str,
    width_in: float = FULL_WIDTH,
) -> Markup:
    """Row-normalised adversarial confusion (true class rows, predicted-under-attack columns).

    Drawn with vector cells (pcolormesh), each cell >= 5% labelled with its percentage.
    """
    m = np.asarray(fractions, dtype=float) * 100
    n = m.shape[0]
    height = min(6.0, 0.9 + 0.21 * n)
    with style():
        fig = new_figure(min(width_in, 1.9 + 0.3 * n), height)
        ax = fig.add_subplot()
        ax.grid(False)
        mesh = ax.pcolormesh(np.arange(n + 1) - 0.5, np.arange(n + 1) - 0.5, m, cmap="Reds", vmin=0, vmax=100,
                             edgecolors="#ffffff", linewidth=0.5)
        ax.invert_yaxis()
        for i in range(n):
            for j in range(n):
                if m[i, j] >= 5:
                    ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=6 if n > 12 else 7,
                            color="white" if m[i, j] >= 55 else "#222222")
        labels = [short(s, 14) for s in names]
        rotate = n * (max((len(s) for s in labels), default=0) + 1) > 40
        ax.set_xticks(np.arange(n), labels, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                      rotation_mode="anchor")
        ax.set_yticks(np.arange(n), labels)
        ax.set_xlabel("predicted under attack")
        ax.set_ylabel("true class")
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        bar = fig.colorbar(mesh, ax=ax, shrink=0.8, pad=0.02)
        if bar.solids is not None:
            bar.solids.set_rasterized(False)  # keep the whole chart vector
        bar.set_label("% of the class's broken points")
        return to_svg(fig, chart_id, label)


def training_curves(chart_id: str, epochs: Sequence[Mapping[str, float]], *, label: str) -> Markup:
    """Loss, validation accuracies (clean and robust) and learning rate per epoch."""
    ep = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]

    def col(key: str) -> list[float]:
        return [float(e[key]) if e.get(key) is not None else math.nan for e in epochs]

    with style():
        fig = new_figure(FULL_WIDTH, 2.3)
        axes = fig.subplots(1, 3)
        axes[0].plot(ep, col("loss"), color="#444444", marker="o", markersize=2.5)
        axes[0].set_title("training loss")
        axes[1].plot(ep, [v * 100 for v in col("val_clean_acc")], color=CLEAN, marker="o", markersize=2.5,
                     label="clean")
        axes[1].plot(ep, [v * 100 for v in col("val_robust_acc")], color=ROBUST, marker="o", markersize=2.5,
                     label="robust")
        axes[1].set_title("validation accuracy")
        axes[1].yaxis.set_major_formatter(_PERCENT)
        axes[1].legend(frameon=False)
        axes[2].plot(ep, col("lr"), color="#777777", marker="o", markersize=2.5)
        axes[2].set_title("learning rate")
        for ax in axes:
            ax.set_xlabel("epoch")
        return to_svg(fig, chart_id, label)


__all__ = [
    "AFTER", "BEFORE", "BETTER", "CLEAN", "ROBUST", "WORSE",
    "class_bars", "confusion_heatmap", "count_scatter", "group_bars", "group_colour", "short", "training_curves",
]
