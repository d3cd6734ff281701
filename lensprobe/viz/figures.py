"""The report's figures, as matplotlib PNGs embedded in ``<img>`` elements (base64).

Test accuracy and AUROC per probe (per layer when there are several hooks, the CV pick starred),
cross-validation accuracy against weight decay, and each attention probe's entropy per head.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from typing import Any

from lensprobe.analysis import AttentionEntropy
from lensprobe.errors import MissingDependencyError
from lensprobe.train.selection import LayerChoice, interval
from lensprobe.viz.entries import ReportEntry

__all__ = ["COLOURS", "cv_figure", "entropy_figure", "layer_number", "metrics_figure"]

COLOURS = ("#3b6fb6", "#e08a2c", "#3a9a5b", "#c0392b", "#7d5ba6", "#8c6d46", "#d46fae", "#7f8c8d")


def _png(fig: Any, alt: str) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise MissingDependencyError(
            "the report needs matplotlib: pip install 'lensprobe[viz]'"
        ) from err
    fig = Figure(figsize=(width, height))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def layer_number(hook: str) -> int | None:
    """The layer a hook name points at (``blocks.9.hook_resid_post`` -> 9), if it names one."""
    m = re.search(r"(?:blocks|layers|h)\.(\d+)", hook)
    return int(m.group(1)) if m else None


def _errors(entries: Sequence[ReportEntry], metric: str) -> list[list[float]] | None:
    """Matplotlib ``yerr`` (below, above) of each entry's 95% interval; None if any lacks one."""
    below, above = [], []
    for e in entries:
        ci = interval(e.record, metric) if e.record is not None else None
        value = e.metrics.get(metric, math.nan)
        if ci is None or math.isnan(value):
            return None
        below.append(max(0.0, value - ci[0]))
        above.append(max(0.0, ci[1] - value))
    return [below, above]


def _plot_by_layer(
    ax: Any, entries: Sequence[ReportEntry], metric: str, picked: set[tuple[str, str]]
) -> None:
    """One line per probe over the hooks (x: the layer number when every hook has one)."""
    hooks = list(dict.fromkeys(e.hook_name for e in entries))
    labels = list(dict.fromkeys(e.label for e in entries))
    layers = [layer_number(h) for h in hooks]
    xs = layers if all(v is not None for v in layers) else list(range(len(hooks)))
    for i, label in enumerate(labels):
        mine = sorted(
            (e for e in entries if e.label == label), key=lambda e: xs[hooks.index(e.hook_name)]
        )
        px = [xs[hooks.index(e.hook_name)] for e in mine]
        py = [e.metrics.get(metric, math.nan) for e in mine]
        colour = COLOURS[i % len(COLOURS)]
        yerr = _errors(mine, metric)
        ax.errorbar(px, py, yerr=yerr, marker="o", color=colour, label=label, capsize=2)
        for x, y, e in zip(px, py, mine, strict=True):
            if (e.label, e.hook_name) in picked:
                ax.plot([x], [y], marker="*", markersize=14, color=colour)
    ax.set_xlabel("layer" if xs == layers else "hook")


def _plot_bars(ax: Any, entries: Sequence[ReportEntry], metric: str) -> None:
    """One bar per probe at the one hook, its value written on it."""
    labels = list(dict.fromkeys(e.label for e in entries))
    firsts = [next(e for e in entries if e.label == lb) for lb in labels]
    values = [e.metrics.get(metric, math.nan) for e in firsts]
    bars = ax.bar(
        labels,
        values,
        yerr=_errors(firsts, metric),
        capsize=3,
        color=[COLOURS[i % len(COLOURS)] for i in range(len(labels))],
    )
    ax.bar_label(bars, fmt="%.3f", fontsize=8, label_type="center")
    ax.set_xlabel(entries[0].hook_name)


def metrics_figure(entries: Sequence[ReportEntry], choices: Sequence[LayerChoice] = ()) -> str:
    """Test accuracy and AUROC of every probe with their 95% intervals, against chance.

    Several hooks: one line per probe over the layers, the layer its CV picks starred; one hook:
    one bar per probe.
    """
    several = len({e.hook_name for e in entries}) > 1
    picked = {(c.probe, c.hook) for c in choices if len(c.hooks) > 1}
    n_classes = max(e.probe.config.n_classes for e in entries)
    fig, axes = _figure(10.0, 3.4, ncols=2)
    for ax, (metric, title, chance) in zip(
        axes,
        [("accuracy", "test accuracy", 1 / n_classes), ("auroc", "test AUROC", 0.5)],
        strict=True,
    ):
        if several:
            _plot_by_layer(ax, entries, metric, picked)
        else:
            _plot_bars(ax, entries, metric)
        ax.axhline(chance, color="#888", linestyle="--", linewidth=1)
        star = "; star: the layer CV picks" if picked else ""
        ax.set_title(f"{title} (bars: 95% interval{star})", fontsize=10)
        shown = [e.metrics.get(metric, math.nan) for e in entries]
        low = min([chance, *(v for v in shown if not math.isnan(v))])
        ax.set_ylim(max(0.0, low - 0.08), 1.02)
    if several:
        axes[0].legend(fontsize=8, frameon=False)
    return _png(fig, "test accuracy and AUROC of every probe")


def cv_figure(entries: Sequence[ReportEntry]) -> str | None:
    """Cross-validation accuracy against weight decay per probe (the chosen decay starred)."""
    with_cv = [e for e in entries if e.cv_summary]
    if not with_cv:
        return None
    fig, (ax,) = _figure(5.2, 3.2)
    for i, e in enumerate(with_cv):
        rows = sorted(e.cv_summary or (), key=lambda r: r["weight_decay"])
        decays = [r["weight_decay"] for r in rows]
        positive = [d for d in decays if d > 0]
        floor = min(positive) / 10 if positive else 1e-4
        xs = [d if d > 0 else floor for d in decays]
        ys = [r.get("accuracy", math.nan) for r in rows]
        name = e.label if len({x.hook_name for x in with_cv}) == 1 else f"{e.label} @ {e.hook_name}"
        ax.plot(xs, ys, marker="o", color=COLOURS[i % len(COLOURS)], label=name)
        if e.weight_decay is not None and e.weight_decay in decays:
            j = decays.index(e.weight_decay)
            ax.plot([xs[j]], [ys[j]], marker="*", markersize=13, color=COLOURS[i % len(COLOURS)])
    ax.set_xscale("log")
    ax.set_xlabel("weight decay (0 drawn at the left end)")
    ax.set_title("cross-validation accuracy (star: the chosen weight decay)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig, "cross-validation accuracy against weight decay")


def entropy_figure(ent: AttentionEntropy, label: str) -> str:
    """Mean entropy per head against the uniform baseline, and the spread of the ratios."""
    heads = ent.per_head()
    fig, (ax1, ax2) = _figure(10.0, 3.2, ncols=2)
    xs = list(range(len(heads)))
    means = [r["mean_entropy"] for r in heads]
    stds = [0.0 if math.isnan(r["std_entropy"]) else r["std_entropy"] for r in heads]
    ax1.bar(xs, means, yerr=stds, color=COLOURS[0], capsize=3, label="probe head")
    uniform = ent.summary()["mean_uniform"]
    ax1.axhline(uniform, color="#c0392b", linestyle="--", linewidth=1.2, label="uniform (log n)")
    ax1.set_xticks(xs)
    ax1.set_xlabel("head")
    ax1.set_ylabel("nats")
    ax1.set_title("mean attention entropy (± std)", fontsize=10)
    ax1.legend(fontsize=8, frameon=False)
    ratios = [ent.ratio[:, h][~ent.ratio[:, h].isnan()].tolist() for h in xs]
    if any(ratios):
        ax2.boxplot(
            [r if r else [math.nan] for r in ratios],
            positions=xs,
            widths=0.6,
            showfliers=False,
        )
    ax2.axhline(1.0, color="#c0392b", linestyle="--", linewidth=1.2)
    ax2.set_xticks(xs)
    ax2.set_xticklabels([str(x) for x in xs])
    ax2.set_ylim(-0.03, 1.08)
    ax2.set_xlabel("head")
    ax2.set_title("entropy / uniform entropy per sequence", fontsize=10)
    return _png(fig, f"attention entropy per head of {label}")
