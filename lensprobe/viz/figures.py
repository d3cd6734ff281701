"""The report's figures: matplotlib figures, embedded as base64 PNGs in ``<img>`` elements.

Test accuracy and AUROC per probe (small multiples, one panel per probe over the layers when
there are several hooks, the CV pick starred; bars otherwise), cross-validation accuracy against
weight decay (one panel per probe, one line per hook), and each attention probe's entropy per
head. Each ``*_plot`` function builds the :class:`matplotlib.figure.Figure` (tests measure it);
each ``*_figure`` function turns it into the ``<img>`` the page embeds.

Within one panel no two series share a colour or a marker; series with equal values are dodged
sideways so neither hides the other; legends sit outside the panels; tick labels that would
overlap are turned; intervals are bands (lines) or error bars with the value written above them.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from lensprobe.analysis import AttentionEntropy
from lensprobe.errors import MissingDependencyError
from lensprobe.train.selection import LayerChoice, interval
from lensprobe.viz.entries import ReportEntry

__all__ = [
    "COLOURS",
    "cv_figure",
    "cv_plot",
    "entropy_figure",
    "entropy_plot",
    "layer_number",
    "metrics_figure",
    "metrics_plot",
    "palette",
]

COLOURS = ("#3b6fb6", "#e08a2c", "#3a9a5b", "#c0392b", "#7d5ba6", "#8c6d46", "#d46fae", "#7f8c8d")
"""The categorical colours, in order (:func:`palette` extends them when a plot needs more)."""

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d")
"""Series markers, in order (the star is kept for picks)."""

CHANCE = "#777777"
PICK = "#f5c518"
_DPI = 110


def palette(n: int, *, ordered: bool = False) -> list[str]:
    """``n`` distinct colours (``#rrggbb``): categorical, or ``ordered`` along a sequential map.

    Categorical: :data:`COLOURS`, then evenly spaced hues of ``turbo`` when more are needed;
    ordered (e.g. hooks by depth): ``viridis`` from dark to light-green.
    """
    import matplotlib
    from matplotlib.colors import to_hex

    if n <= 0:
        return []
    if not ordered and n <= len(COLOURS):
        return list(COLOURS[:n])
    cmap = matplotlib.colormaps["viridis" if ordered else "turbo"]
    low, high = (0.0, 0.85) if ordered else (0.05, 0.95)
    steps = [low + (high - low) * i / max(n - 1, 1) for i in range(n)]
    colours = list(dict.fromkeys(to_hex(cmap(s)) for s in steps))
    if len(colours) < n:  # hundreds of series: fall back on hue steps of the full circle
        from colorsys import hsv_to_rgb

        colours = [to_hex(hsv_to_rgb(i / n, 0.75, 0.85)) for i in range(n)]
    return colours


def _png(fig: Any, alt: str) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1, *, n: int | None = None, **kw: Any
) -> tuple[Any, list[Any]]:
    """A constrained-layout figure with ``n`` (default all) panels of an ``nrows x ncols`` grid."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise MissingDependencyError(
            "the report needs matplotlib: pip install 'lensprobe[viz]'"
        ) from err
    fig = Figure(figsize=(width, height), layout="constrained", dpi=_DPI)
    FigureCanvasAgg(fig)  # a renderer to measure text with, no display needed
    grid = fig.subplots(nrows, ncols, squeeze=False, **kw)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:] if n is not None else ():
        ax.set_visible(False)
    axes = axes[:n] if n is not None else axes
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=8)
    return fig, axes


def _legend(fig: Any, axes: Sequence[Any], title: str | None = None) -> None:
    """One legend for every panel, outside them, below (each label once)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="outside lower center",
            fontsize=8,
            title=title,
            title_fontsize=8,
            frameon=False,
            ncols=min(len(seen), 4),
        )


def _bottom_labels(axes: Sequence[Any], ncols: int, xlabel: str, ylabel: str) -> None:
    """The x label under the lowest panel of each column, the y label left of each row."""
    for i, ax in enumerate(axes):
        if i + ncols >= len(axes):
            ax.set_xlabel(xlabel, fontsize=8)
        if i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)


def _labels_overlap(ax: Any, renderer: Any) -> bool:
    """Whether two visible x tick labels of ``ax`` overlap (as drawn last)."""
    boxes = [
        t.get_window_extent(renderer)
        for t in ax.get_xticklabels()
        if t.get_visible() and t.get_text()
    ]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _fit_ticks(fig: Any, axes: Sequence[Any]) -> None:
    """Turn x tick labels that would overlap: 40 degrees, else upright (90)."""
    for angle in (40, 90):
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        crowded = [ax for ax in axes if _labels_overlap(ax, renderer)]
        for ax in crowded:
            ax.tick_params(axis="x", labelrotation=angle)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right" if angle < 90 else "center")
                t.set_rotation_mode("anchor" if angle < 90 else "default")
        if not crowded:
            return


def layer_number(hook: str) -> int | None:
    """The layer a hook name points at (``blocks.9.hook_resid_post`` -> 9), if it names one."""
    m = re.search(r"(?:blocks|layers|h)\.(\d+)", hook)
    return int(m.group(1)) if m else None


def _hook_axis(hooks: Sequence[str]) -> tuple[list[float], list[str], str]:
    """The x of each hook (its layer when every hook names one), the tick labels, the axis label."""
    layers = [layer_number(h) for h in hooks]
    if all(v is not None for v in layers) and len(set(layers)) == len(layers):
        return [float(v) for v in layers if v is not None], [str(v) for v in layers], "layer"
    return [float(i) for i in range(len(hooks))], list(hooks), "hook"


def _dodge(xs: Sequence[float], n: int, share: float = 0.3) -> list[float]:
    """Sideways offsets of ``n`` series at positions ``xs``: ``share`` of the closest gap in all."""
    if n < 2:
        return [0.0] * max(n, 1)
    ordered = sorted(set(xs))
    gap = min((b - a for a, b in itertools.pairwise(ordered)), default=1.0)
    return [share * gap * (i / (n - 1) - 0.5) for i in range(n)]


def _band(entries: Sequence[ReportEntry], metric: str) -> tuple[list[float], list[float]] | None:
    """Each entry's 95% interval of ``metric`` (lows, highs); None if any lacks one."""
    lows, highs = [], []
    for e in entries:
        ci = interval(e.record, metric) if e.record is not None else None
        if ci is None or math.isnan(e.metrics.get(metric, math.nan)):
            return None
        lows.append(float(ci[0]))
        highs.append(float(ci[1]))
    return lows, highs


def _chance_lines(ax: Any, n_classes: int, metrics: Sequence[str] = ("accuracy", "auroc")) -> None:
    """Chance level of ``metrics``: accuracy ``1/n_classes``, AUROC 0.5 (one line when equal)."""
    if n_classes == 2:
        ax.axhline(0.5, color=CHANCE, linestyle="--", linewidth=1, label="chance")
        return
    if "accuracy" in metrics:
        label = f"chance (accuracy, 1/{n_classes})"
        ax.axhline(1 / n_classes, color=CHANCE, linestyle="--", linewidth=1, label=label)
    if "auroc" in metrics:
        ax.axhline(0.5, color="#b0b0b0", linestyle=":", linewidth=1.2, label="chance (AUROC)")


_METRIC_SERIES = (("accuracy", "test accuracy"), ("auroc", "test AUROC"))


def _probe_panel(
    ax: Any, mine: Sequence[ReportEntry], x_of: dict[str, float], picked: set[tuple[str, str]]
) -> None:
    """One probe over the hooks: accuracy and AUROC lines with 95% bands, its CV pick starred."""
    mine = sorted(mine, key=lambda e: x_of[e.hook_name])
    offsets = _dodge(list(x_of.values()), len(_METRIC_SERIES), share=0.16)
    colours = palette(len(_METRIC_SERIES))
    for k, (metric, name) in enumerate(_METRIC_SERIES):
        px = [x_of[e.hook_name] + offsets[k] for e in mine]
        py = [e.metrics.get(metric, math.nan) for e in mine]
        band = _band(mine, metric)
        if band is not None and len(px) > 1:
            ax.fill_between(px, *band, color=colours[k], alpha=0.16, linewidth=0)
        elif band is not None:
            below = [y - lo for y, lo in zip(py, band[0], strict=True)]
            above = [hi - y for y, hi in zip(py, band[1], strict=True)]
            ax.errorbar(px, py, yerr=[below, above], fmt="none", ecolor=colours[k], capsize=2)
        ax.plot(px, py, marker=MARKERS[k], markersize=4.5, color=colours[k], label=name)
    stars = [(x_of[e.hook_name] + offsets[0], e.metrics.get("accuracy", math.nan)) for e in mine]
    stars = [s for s, e in zip(stars, mine, strict=True) if (e.label, e.hook_name) in picked]
    if stars:
        ax.scatter(
            *zip(*stars, strict=True),
            marker="*",
            s=150,
            color=PICK,
            edgecolor="black",
            linewidth=0.6,
            zorder=5,
            label="hook the CV picks (accuracy)",
        )


def _metrics_by_layer(
    entries: Sequence[ReportEntry], picked: set[tuple[str, str]], n_classes: int
) -> Any:
    """Small multiples: one panel per probe, accuracy and AUROC over the hooks."""
    hooks = list(dict.fromkeys(e.hook_name for e in entries))
    labels = list(dict.fromkeys(e.label for e in entries))
    xs, ticks, xlabel = _hook_axis(hooks)
    x_of = dict(zip(hooks, xs, strict=True))
    ncols = min(len(labels), 3 if len(labels) <= 6 else 4)
    nrows = math.ceil(len(labels) / ncols)
    fig, axes = _figure(
        3.4 * ncols + 0.4, 2.4 * nrows + 0.9, nrows, ncols, n=len(labels), sharey=True
    )
    for ax, label in zip(axes, labels, strict=True):
        _probe_panel(ax, [e for e in entries if e.label == label], x_of, picked)
        _chance_lines(ax, n_classes)
        ax.set_title(label, fontsize=10)
        ax.set_xticks(xs, ticks)
    _bottom_labels(axes, ncols, xlabel, "score")
    shown = [e.metrics.get(m, math.nan) for e in entries for m, _ in _METRIC_SERIES]
    low = min([1 / n_classes, *(v for v in shown if not math.isnan(v))])
    axes[0].set_ylim(max(0.0, low - 0.08), 1.02)
    fig.suptitle(
        "test accuracy and AUROC per layer, one panel per probe (bands: 95% interval)", fontsize=10
    )
    _legend(fig, axes)
    return fig


def _bar_panel(ax: Any, entries: Sequence[ReportEntry], metric: str) -> None:
    """One bar per probe with its 95% error bar, the value written above the bar's top."""
    labels = list(dict.fromkeys(e.label for e in entries))
    firsts = [next(e for e in entries if e.label == lb) for lb in labels]
    values = [e.metrics.get(metric, math.nan) for e in firsts]
    band = _band(firsts, metric)
    yerr = None
    if band is not None:
        yerr = [
            [max(0.0, v - lo) for v, lo in zip(values, band[0], strict=True)],
            [max(0.0, hi - v) for v, hi in zip(values, band[1], strict=True)],
        ]
    xs = list(range(len(labels)))
    ax.bar(xs, values, yerr=yerr, capsize=3, color=palette(len(labels)), error_kw={"lw": 1})
    crowded = len(labels) > 8
    for i, v in enumerate(values):
        if math.isnan(v):
            continue
        top = max(v, band[1][i]) if band is not None else v
        ax.annotate(
            f"{v:.3f}",
            (i, top),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7.5,
            rotation=90 if crowded else 0,
        )
    ax.set_xticks(xs, labels)


def _metrics_bars(entries: Sequence[ReportEntry], n_classes: int) -> Any:
    """One hook: a panel per metric, one bar per probe."""
    n = len({e.label for e in entries})
    fig, axes = _figure(max(8.0, 2.0 + 1.8 * n), 3.8, 1, 2)
    for ax, (metric, title) in zip(axes, _METRIC_SERIES, strict=True):
        _bar_panel(ax, entries, metric)
        _chance_lines(ax, n_classes, (metric,))
        ax.set_title(f"{title} (bars: 95% interval)", fontsize=10)
        ax.set_xlabel(entries[0].hook_name, fontsize=8)
        shown = [e.metrics.get(metric, math.nan) for e in entries]
        low = min(
            [0.5 if metric == "auroc" else 1 / n_classes, *(v for v in shown if not math.isnan(v))]
        )
        ax.set_ylim(max(0.0, low - 0.08), 1.16 if n > 8 else 1.1)
    _legend(fig, axes)
    _fit_ticks(fig, axes)
    return fig


def metrics_plot(entries: Sequence[ReportEntry], choices: Sequence[LayerChoice] = ()) -> Any:
    """The figure of :func:`metrics_figure`, before it becomes a PNG."""
    picked = {(c.probe, c.hook) for c in choices if len(c.hooks) > 1}
    n_classes = max(e.probe.config.n_classes for e in entries)
    if len({e.hook_name for e in entries}) > 1:
        fig = _metrics_by_layer(entries, picked, n_classes)
        _fit_ticks(fig, [ax for ax in fig.axes if ax.get_visible()])
        return fig
    return _metrics_bars(entries, n_classes)


def metrics_figure(entries: Sequence[ReportEntry], choices: Sequence[LayerChoice] = ()) -> str:
    """Test accuracy and AUROC of every probe with their 95% intervals, against chance.

    Several hooks: one panel per probe, its accuracy and AUROC over the layers with 95% bands, the
    hook its CV picks starred; one hook: one bar per probe, the value above its error bar.
    """
    return _png(metrics_plot(entries, choices), "test accuracy and AUROC of every probe")


def _decay_axis(entries: Sequence[ReportEntry]) -> tuple[float, list[float], list[str]]:
    """Where weight decay 0 is drawn (a decade below the smallest), the ticks and their labels."""
    decays = sorted({float(r["weight_decay"]) for e in entries for r in e.cv_summary or ()})
    positive = [d for d in decays if d > 0]
    floor = min(positive) / 10 if positive else 1e-4
    xs = [d if d > 0 else floor for d in decays]
    return floor, xs, [f"{d:g}" for d in decays]


def _cv_series(ax: Any, e: ReportEntry, floor: float, shift: float, style: dict[str, Any]) -> None:
    """One entry's CV accuracy over weight decay (x shifted by ``shift`` decades), its pick starred."""
    rows = sorted(e.cv_summary or (), key=lambda r: r["weight_decay"])
    decays = [float(r["weight_decay"]) for r in rows]
    xs = [(d if d > 0 else floor) * 10**shift for d in decays]
    ys = [r.get("accuracy", math.nan) for r in rows]
    ax.plot(xs, ys, markersize=4.5, linewidth=1.3, **style)
    if e.weight_decay is not None and e.weight_decay in decays:
        j = decays.index(e.weight_decay)
        ax.scatter(
            [xs[j]],
            [ys[j]],
            marker="*",
            s=130,
            color=style["color"],
            edgecolor="black",
            linewidth=0.6,
            zorder=5,
        )


def cv_plot(entries: Sequence[ReportEntry]) -> Any | None:
    """The figure of :func:`cv_figure`, before it becomes a PNG (None: no entry has CV scores)."""
    with_cv = [e for e in entries if e.cv_summary]
    if not with_cv:
        return None
    hooks = list(dict.fromkeys(e.hook_name for e in with_cv))
    labels = list(dict.fromkeys(e.label for e in with_cv))
    several = len(hooks) > 1
    panels = labels if several else ["every probe"]
    names = hooks if several else labels  # the series of one panel
    colours = palette(len(names), ordered=several)
    ncols = min(len(panels), 3 if len(panels) <= 6 else 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(
        max(6.0, 3.4 * ncols + 0.4), 2.5 * nrows + 1.0, nrows, ncols, n=len(panels), sharey=True
    )
    floor, ticks, tick_labels = _decay_axis(with_cv)
    gaps = [math.log10(b / a) for a, b in itertools.pairwise(ticks)]
    offsets = _dodge([0.0, min(gaps, default=1.0)], len(names))
    for ax, panel in zip(axes, panels, strict=True):
        for e in (e for e in with_cv if not several or e.label == panel):
            i = names.index(e.hook_name if several else e.label)
            style = {"color": colours[i], "marker": MARKERS[i % len(MARKERS)], "label": names[i]}
            _cv_series(ax, e, floor, offsets[i], style)
        ax.set_xscale("log")
        ax.set_xticks(ticks, tick_labels)
        ax.minorticks_off()
        if several:
            ax.set_title(panel, fontsize=10)
    _bottom_labels(axes, ncols, "weight decay (0 at the left end)", "CV accuracy")
    what = "one panel per probe, one line per hook" if several else "one line per probe"
    fig.suptitle(
        f"cross-validation accuracy against weight decay\n({what}; star: the chosen decay)",
        fontsize=10,
    )
    _legend(fig, axes, title="hook" if several else "probe")
    _fit_ticks(fig, axes)
    return fig


def cv_figure(entries: Sequence[ReportEntry]) -> str | None:
    """Cross-validation accuracy against weight decay, one panel per probe (the chosen decay starred).

    With several hooks each panel has one line per hook (coloured by depth); with one hook one
    panel holds one line per probe. Lines with equal values are dodged sideways.
    """
    fig = cv_plot(entries)
    if fig is None:
        return None
    return _png(fig, "cross-validation accuracy against weight decay")


def entropy_plot(ent: AttentionEntropy) -> Any:
    """The figure of :func:`entropy_figure`, before it becomes a PNG."""
    heads = ent.per_head()
    fig, (ax1, ax2) = _figure(10.5, 3.2, 1, 2)
    xs = list(range(len(heads)))
    means = [r["mean_entropy"] for r in heads]
    stds = [0.0 if math.isnan(r["std_entropy"]) else r["std_entropy"] for r in heads]
    ax1.bar(xs, means, yerr=stds, color=COLOURS[0], capsize=3, label="probe head (mean ± std)")
    uniform = ent.summary()["mean_uniform"]
    ax1.axhline(uniform, color="#c0392b", linestyle="--", linewidth=1.2, label="uniform (log n)")
    ax1.set_xticks(xs)
    ax1.set_xlabel("head", fontsize=8)
    ax1.set_ylabel("nats", fontsize=8)
    ax1.set_title("mean attention entropy (± std)", fontsize=10)
    ratios = [ent.ratio[:, h][~ent.ratio[:, h].isnan()].tolist() for h in xs]
    if any(ratios):
        ax2.boxplot(
            [r if r else [math.nan] for r in ratios],
            positions=xs,
            widths=0.6,
            showfliers=False,
        )
    ax2.axhline(1.0, color="#c0392b", linestyle="--", linewidth=1.2)
    ax2.set_xticks(xs, [str(x) for x in xs])
    ax2.set_ylim(-0.03, 1.08)
    ax2.set_xlabel("head", fontsize=8)
    ax2.set_title("entropy / uniform entropy per sequence", fontsize=10)
    _legend(fig, [ax1])
    _fit_ticks(fig, [ax1, ax2])
    return fig


def entropy_figure(ent: AttentionEntropy, label: str) -> str:
    """Mean entropy per head against the uniform baseline, and the spread of the ratios."""
    return _png(entropy_plot(ent), f"attention entropy per head of {label}")
