"""The report's charts, as inline SVG (matplotlib, vector, deterministic).

Every function takes plain lists (accuracies as fractions in [0, 1], deltas in points) and
returns a :class:`markupsafe.Markup` ``<svg>`` element. Class names are drawn as text,
never parsed as mathtext, and are shortened for axis labels (the table has them in full).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
from markupsafe import Markup
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from audit.contract.repair import Evaluation

from .svg import (AFTER, BEFORE, BETTER, CLEAN, CURVE_COLOURS, GROUP_COLOURS, OTHER_GROUP, ROBUST, WORSE, new_figure,
                  style, to_svg)

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


def group_colour(group: str | None) -> str:
    """Colour of a head / medium / tail (or many / medium / few) group."""
    if not group:
        return OTHER_GROUP
    aliases = {"many": GROUP_COLOURS["head"], "few": GROUP_COLOURS["tail"]}
    return GROUP_COLOURS.get(group, aliases.get(group, OTHER_GROUP))


def _group_legend(groups: Sequence[str]) -> list[Patch]:
    seen = list(dict.fromkeys(groups))
    return [Patch(color=group_colour(g), label=g) for g in seen]


def _value_format(percent: bool, signed: bool = True) -> str:
    """Bar labels: '42' for an accuracy in %, '+3.5' for a change in points, '3.5' for an amount in points."""
    return "{:.0f}" if percent else ("{:+.1f}" if signed else "{:.1f}")


def _fit_axis(ax, values: Sequence[float], labelled: bool) -> None:
    """A points axis that fits the data and always shows 0: no negative range without negative values."""
    lo = min(0.0, min(values, default=0.0))
    hi = max(0.0, max(values, default=0.0))
    span = max(hi - lo, 5.0)
    pad = (0.22 if labelled else 0.1) * span
    bottom = lo - pad if lo < 0 else 0.0
    top = hi + pad if hi > 0 else (span if lo == 0 else 0.5 * pad)
    ax.set_ylim(bottom, top)
    ax.axhline(0, color="#444444", linewidth=0.8)


def _label_bars(ax, bars, values: np.ndarray, percent: bool, n_bars: int, signed: bool = True) -> None:
    """Write each bar's own value on it (zeros included: 0 is a result, not missing data)."""
    fmt = _value_format(percent, signed)
    texts = [fmt.format(v) if np.isfinite(v) else "n/a" for v in values]
    if not percent:
        texts = ["0" if t in ("+0.0", "-0.0", "0.0") else t for t in texts]
    vertical = n_bars > 24
    ax.bar_label(bars, labels=texts, fontsize=5.5 if vertical else 6.5, padding=1.5,
                 rotation=90 if vertical else 0)


def _series_bars(ax: Any, x: np.ndarray, series: Sequence[tuple[str, Sequence[float], str]],
                 scale: float) -> Iterator[tuple[int, Any, np.ndarray]]:
    """Each series' bars side by side around the positions ``x`` (values times ``scale``), drawn one series at a
    time: yields (series index, its bars, their heights), so a caller labels a series before the next is drawn."""
    width = 0.8 / len(series)
    for j, (legend, values, colour) in enumerate(series):
        vals = np.asarray(values, dtype=float) * scale
        yield j, ax.bar(x - 0.4 + width * (j + 0.5), vals, width=width * 0.95, color=colour, label=legend), vals


def class_bars(
    chart_id: str,
    names: Sequence[str],
    groups: Sequence[str | None],
    counts: Sequence[int] | None,
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    label: str,
    percent: bool = True,
    ylabel: str = "accuracy",
    flagged: Sequence[bool] | None = None,
    value_labels: str = "none",
    signed: bool = True,
    height: float = 3.3,
) -> Markup | None:
    """Grouped bars per class (x ordered as given: by training count) over a training-count strip.

    ``series`` are (legend label, values, colour); fractions when ``percent`` (drawn as %),
    else points (a zero line is drawn and the axis fits the data). ``flagged`` classes get red,
    bold axis labels. ``value_labels``: "all" writes every bar's value on it, "last" only the
    last series', "none" nothing; labels are formatted from the bar heights, so they agree.
    ``counts`` None (a balanced training set) drops the strip. None when there is nothing to draw.
    """
    n = len(names)
    if n == 0 or not series:
        return None
    with style():
        fig = new_figure(FULL_WIDTH, height if counts is not None else height * 0.8)
        if counts is not None:
            grid = fig.add_gridspec(2, 1, height_ratios=[1, 3.4])
            strip = fig.add_subplot(grid[0])
            ax = fig.add_subplot(grid[1], sharex=strip)
        else:
            ax = fig.add_subplot()
        x = np.arange(n)
        if counts is not None:
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
        scale = 100.0 if percent else 1.0
        for j, bars, vals in _series_bars(ax, x, series, scale):
            if value_labels == "all" or (value_labels == "last" and j == k - 1):
                _label_bars(ax, bars, vals, percent, n * (k if value_labels == "all" else 1), signed)
        labelled = value_labels != "none"
        if percent:
            ax.set_ylim(0, 112 if labelled else 100)
            ax.yaxis.set_major_formatter(_PERCENT)
            ax.set_yticks([0, 25, 50, 75, 100])
        else:
            _fit_axis(ax, [float(v) * scale for _, vals, _ in series for v in vals], labelled)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # ticks at round values
            ax.yaxis.set_major_formatter(FuncFormatter((lambda v, _p: f"{v:+g}" if v else "0") if signed
                                                       else (lambda v, _p: f"{v:g}")))
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
        real_groups = [g for g in groups if g and g != "–"]
        handles = ax.get_legend_handles_labels()[0] + (_group_legend(real_groups) if counts is not None else [])
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
) -> Markup | None:
    """Bars per group (head / medium / tail) with the value written on each bar; None without groups."""
    if not groups or not series:
        return None
    with style():
        fig = new_figure(width_in, height)
        ax = fig.add_subplot()
        x = np.arange(len(groups))
        k = max(1, len(series))
        scale = 100.0 if percent else 1.0
        for _, bars, vals in _series_bars(ax, x, series, scale):
            fmt = "{:.0f}%" if percent else "{:+.1f}"
            texts = [fmt.format(v) for v in vals]
            if not percent:
                texts = ["0" if t in ("+0.0", "-0.0") else t for t in texts]
            ax.bar_label(bars, labels=texts, fontsize=6.5, padding=1)
        if percent:
            ax.set_ylim(0, 112)
            ax.set_yticks([0, 25, 50, 75, 100])
            ax.yaxis.set_major_formatter(_PERCENT)
        else:
            _fit_axis(ax, [float(v) * scale for _, vals, _ in series for v in vals], True)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:+g}" if v else "0"))
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


def training_curves(chart_id: str, epochs: Sequence[Evaluation], *, label: str) -> Markup | None:
    """Loss, validation accuracies (clean and robust) and learning rate per epoch; None without epochs."""
    if not epochs:
        return None
    ep = [e.epoch if e.epoch is not None else i + 1 for i, e in enumerate(epochs)]

    def col(key: str) -> list[float]:
        values = [getattr(e, key) for e in epochs]  # loss, val_clean_acc, val_robust_acc, lr: typed figures
        return [float(v) if v is not None else math.nan for v in values]

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
        accs = [v * 100 for v in col("val_clean_acc") + col("val_robust_acc") if math.isfinite(v)]
        axes[1].set_ylim(max(0.0, 10 * math.floor((min(accs, default=0.0) - 5) / 10)), 101)  # never past 100%
        axes[1].yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
        axes[1].yaxis.set_major_formatter(_PERCENT)
        axes[1].legend(frameon=False)
        axes[2].plot(ep, col("lr"), color="#777777", marker="o", markersize=2.5)
        axes[2].set_title("learning rate")
        for ax in axes:
            ax.set_xlabel("epoch")
        return to_svg(fig, chart_id, label)


def eps_curve(
    chart_id: str,
    eps_labels: Sequence[str],
    lines: Sequence[tuple[str, Sequence[float | None], str, str]],
    class_lines: Sequence[tuple[str, Sequence[float | None]]],
    *,
    label: str,
) -> Markup | None:
    """Robust accuracy against the attack budget: groups (left panel) and the weakest classes (right).

    ``lines`` are (legend, accuracies per eps, colour, line style) for overall / balanced / groups;
    ``class_lines`` (name, accuracies per eps) for a few classes. The eps axis is categorical
    (one tick per audited budget, labelled as recorded, e.g. 2/255). None with fewer than 2 budgets.
    """
    n = len(eps_labels)
    if n < 2 or not lines:
        return None
    x = np.arange(n)

    def ys(values: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) * 100 for v in values], dtype=float)

    markers = ("o", "s", "^", "D", "v")
    with style():
        fig = new_figure(FULL_WIDTH, 2.6)
        axes = fig.subplots(1, 2 if class_lines else 1, squeeze=False)[0]
        for legend, values, colour, ls in lines:
            axes[0].plot(x, ys(values), color=colour, linestyle=ls, marker="o", markersize=3, linewidth=1.4,
                         label=legend)
        axes[0].set_title("overall and per group")
        if class_lines:
            for j, (name, values) in enumerate(class_lines):
                axes[1].plot(x, ys(values), color=CURVE_COLOURS[j % len(CURVE_COLOURS)],
                             marker=markers[j % len(markers)], markersize=3, linewidth=1.2, label=short(name, 18))
            axes[1].set_title(f"the {len(class_lines)} weakest classes")
        for ax in axes:
            ax.set_xticks(x, list(eps_labels))
            ax.set_xlabel("attack budget ε")
            ax.set_ylim(-3, 103)
            ax.yaxis.set_major_formatter(_PERCENT)
            ax.grid(True, axis="both")
            ax.legend(frameon=False, fontsize=6.5, loc="upper right")
        axes[0].set_ylabel("robust accuracy")
        return to_svg(fig, chart_id, label)


__all__ = [
    "AFTER", "BEFORE", "BETTER", "CLEAN", "ROBUST", "WORSE",
    "class_bars", "confusion_heatmap", "count_scatter", "eps_curve", "group_bars", "group_colour", "short",
    "training_curves",
]


def corruption_heatmap(
    chart_id: str,
    accuracy: Sequence[Sequence[float | None]],
    class_names: Sequence[str],
    corruption_names: Sequence[str],
    *,
    label: str,
    width_in: float = FULL_WIDTH,
) -> Markup:
    """Class × corruption accuracy (rows: classes, columns: corruptions, severity-averaged), vector cells.

    Sized to fit one A4 page for 10 to 100 classes: cells carry their percentage while there is room
    (up to 30 classes); the row labels shrink with the class count."""
    m = np.array([[np.nan if v is None else 100 * v for v in row] for row in accuracy], dtype=float)
    n, k = m.shape
    height = min(9.4, 1.6 + (0.22 if n <= 30 else 0.078) * n)
    with style():
        fig = new_figure(width_in, height)
        ax = fig.add_subplot()
        ax.grid(False)
        mesh = ax.pcolormesh(np.arange(k + 1) - 0.5, np.arange(n + 1) - 0.5, np.ma.masked_invalid(m), cmap="RdYlGn",
                             vmin=0, vmax=100, edgecolors="#ffffff", linewidth=0.4 if n <= 30 else 0.1)
        ax.invert_yaxis()
        if n <= 30:
            for i in range(n):
                for j in range(k):
                    if not np.isnan(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=6, color="#222222")
        ax.xaxis.set_ticks_position("top")
        ax.set_xticks(np.arange(k), [c.replace("_", " ") for c in corruption_names], rotation=45, ha="left",
                      rotation_mode="anchor", fontsize=6.5)
        ax.set_yticks(np.arange(n), [short(s, 16) for s in class_names], fontsize=7 if n <= 30 else 4)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        bar = fig.colorbar(mesh, ax=ax, shrink=0.6 if n > 30 else 0.8, pad=0.02)
        if bar.solids is not None:
            bar.solids.set_rasterized(False)  # keep the whole chart vector
        bar.set_label("accuracy under corruption (%)")
        return to_svg(fig, chart_id, label)
