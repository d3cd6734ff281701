"""One self-contained HTML page for a protocol run: metrics, entropy, top examples.

:func:`report` takes one :class:`ReportEntry` per (hook, probe) — built from a
:class:`~lensprobe.train.ProtocolResult` with :meth:`ReportEntry.from_result`, or from saved parts
(a loaded probe, its metrics, the activations and the test rows) — and writes one HTML file:

- a table of the test metrics of every probe at every hook, each with ``n_test`` and its 95%
  interval (t over seeds, or with one seed a bootstrap over the test rows), the CV accuracy of the
  training part beside them, and a figure of them (per layer when there are several hooks), with
  the cross-validation curve over weight decay;
- with several hooks, the layer each probe's CV accuracy picks (never the test accuracy) and the
  test score of the pick; paired comparisons of the probes (:func:`lensprobe.compare`, with
  their verdict) at those layers;
- for each attention probe, the entropy of every head against the uniform baseline (a figure and
  a table), the tokens each head reads most, and its top examples per head and per class;
- for each pooled probe, its top examples per class, tokens coloured by their contribution.

Entropy and examples use the rows given (by default the protocol's test rows). Figures are
matplotlib PNGs embedded as base64; the circuitsvis JavaScript is inlined once. The page loads
nothing from the network and opens from disk in any browser.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.metadata
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.analysis import AttentionEntropy, TopExamples, attention_entropy, top_examples
from lensprobe.errors import InputError
from lensprobe.probes import AttentionProbe, Probe
from lensprobe.train import Comparison, ProtocolResult
from lensprobe.train.selection import (
    LayerChoice,
    choose_layers,
    compare_choices,
    interval,
    result_record,
    splits_text,
)
from lensprobe.viz.widgets import Widget, entropy_html, entropy_props, page, top_examples_props

__all__ = ["ReportEntry", "render_report", "report"]

logger = logging.getLogger(__name__)

HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "auroc")
"""Metrics shown with their interval."""

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced acc."),
    ("macro_f1", "macro-F1"),
    ("auroc", "AUROC"),
    ("log_loss", "log loss"),
)


@dataclass(frozen=True)
class ReportEntry:
    """One probe at one hook, and what the report should analyse it on."""

    label: str
    """How the probe is named in the report, e.g. ``attention-8`` or ``mean``."""
    probe: Probe
    """The trained probe."""
    metrics: Mapping[str, float]
    """Its test metrics (accuracy, balanced_accuracy, macro_f1, auroc, log_loss)."""
    acts: Activations | None = None
    """Activations at the probe's hook, for entropy and top examples (none: metrics only)."""
    rows: Int[Tensor, " n_rows"] | None = None
    """Rows of ``acts`` to analyse (the test rows); ``None`` for all of them."""
    hook: str | None = None
    """Hook name (default: the probe's, else the activations')."""
    weight_decay: float | None = None
    """Weight decay chosen by cross-validation."""
    cv_summary: tuple[Mapping[str, float], ...] | None = None
    """Cross-validation metrics per weight decay (``ProtocolResult.cv_summary``)."""
    n_train: int | None = None
    """Training sequences."""
    n_test: int | None = None
    """Test sequences."""
    record: Mapping[str, Any] | None = None
    """The flat result record (:func:`lensprobe.train.selection.result_record`): the CV scores
    (``cv_accuracy``, ...) the layer choice reads, the metrics' intervals and ``seeds``; none:
    no CV score or interval is shown, and no layer is chosen."""
    result: ProtocolResult | None = None
    """The protocol result, when the entry was made from one (lets the report run the paired
    comparisons itself)."""

    def __post_init__(self) -> None:
        if self.acts is not None and self.acts.d_model != self.probe.config.d_model:
            raise ValueError(
                f"entry {self.label!r}: the probe reads width {self.probe.config.d_model} but the "
                f"activations have width {self.acts.d_model}; pass the activations of its hook"
            )

    @property
    def hook_name(self) -> str:
        """The hook, from the entry, the probe or the activations (``?`` when unknown)."""
        if self.hook:
            return self.hook
        if self.probe.config.hook:
            return self.probe.config.hook
        if self.acts is not None:
            return self.acts.meta.hook
        return "?"

    @classmethod
    def from_result(
        cls,
        result: ProtocolResult,
        acts: Activations | None = None,
        *,
        label: str | None = None,
        hook: str | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> ReportEntry:
        """An entry for a protocol run (its probe, test metrics and test rows).

        Args:
            result: What :func:`lensprobe.run_protocol` returned.
            acts: The activations the protocol ran on (its test rows index them).
            label: Name in the report (default ``attention-<heads>`` or the probe kind).
            hook: Hook name (default: the probe's).
            record: Its flat record (default: :func:`~lensprobe.train.selection.result_record`,
                which with one seed bootstraps the test rows for the intervals).
        """
        cfg = result.probe.config
        if label is None:
            label = f"attention-{cfg.n_heads}" if cfg.kind == "attention" else cfg.kind
        return cls(
            label=label,
            probe=result.probe,
            metrics=dict(result.metrics),
            acts=acts,
            rows=result.test_rows,
            hook=hook,
            weight_decay=result.weight_decay,
            cv_summary=tuple(result.cv_summary),
            n_train=int(result.train_rows.numel()),
            n_test=int(result.test_rows.numel()),
            record=dict(record) if record is not None else result_record(result),
            result=result,
        )


# -- figures -------------------------------------------------------------------------------------

_COLOURS = ("#3b6fb6", "#e08a2c", "#3a9a5b", "#c0392b", "#7d5ba6", "#8c6d46", "#d46fae", "#7f8c8d")


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
        raise ImportError("the report needs matplotlib: pip install 'lensprobe[viz]'") from err
    fig = Figure(figsize=(width, height))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _layer(hook: str) -> int | None:
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


def _metrics_figure(entries: Sequence[ReportEntry], choices: Sequence[LayerChoice] = ()) -> str:
    hooks = list(dict.fromkeys(e.hook_name for e in entries))
    labels = list(dict.fromkeys(e.label for e in entries))
    picked = {(c.probe, c.hook) for c in choices if len(c.hooks) > 1}
    n_classes = max(e.probe.config.n_classes for e in entries)
    fig, axes = _figure(10.0, 3.4, ncols=2)
    for ax, (metric, title, chance) in zip(
        axes,
        [("accuracy", "test accuracy", 1 / n_classes), ("auroc", "test AUROC", 0.5)],
        strict=True,
    ):
        if len(hooks) > 1:
            layers = [_layer(h) for h in hooks]
            xs = layers if all(v is not None for v in layers) else list(range(len(hooks)))
            for i, label in enumerate(labels):
                mine = sorted(
                    (e for e in entries if e.label == label),
                    key=lambda e: xs[hooks.index(e.hook_name)],
                )
                px = [xs[hooks.index(e.hook_name)] for e in mine]
                py = [e.metrics.get(metric, math.nan) for e in mine]
                colour = _COLOURS[i % len(_COLOURS)]
                ax.errorbar(
                    px,
                    py,
                    yerr=_errors(mine, metric),
                    marker="o",
                    color=colour,
                    label=label,
                    capsize=2,
                )
                for x, y, e in zip(px, py, mine, strict=True):
                    if (e.label, e.hook_name) in picked:
                        ax.plot([x], [y], marker="*", markersize=14, color=colour)
            ax.set_xlabel("layer" if xs == layers else "hook")
        else:
            firsts = [next(e for e in entries if e.label == lb) for lb in labels]
            values = [e.metrics.get(metric, math.nan) for e in firsts]
            bars = ax.bar(
                labels,
                values,
                yerr=_errors(firsts, metric),
                capsize=3,
                color=[_COLOURS[i % len(_COLOURS)] for i in range(len(labels))],
            )
            ax.bar_label(bars, fmt="%.3f", fontsize=8, label_type="center")
            ax.set_xlabel(hooks[0])
        ax.axhline(chance, color="#888", linestyle="--", linewidth=1)
        star = "; star: the layer CV picks" if picked else ""
        ax.set_title(f"{title} (bars: 95% interval{star})", fontsize=10)
        shown = [e.metrics.get(metric, math.nan) for e in entries]
        low = min([chance, *(v for v in shown if not math.isnan(v))])
        ax.set_ylim(max(0.0, low - 0.08), 1.02)
    if len(hooks) > 1:
        axes[0].legend(fontsize=8, frameon=False)
    return _png(fig, "test accuracy and AUROC of every probe")


def _cv_figure(entries: Sequence[ReportEntry]) -> str | None:
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
        ax.plot(xs, ys, marker="o", color=_COLOURS[i % len(_COLOURS)], label=name)
        if e.weight_decay is not None and e.weight_decay in decays:
            j = decays.index(e.weight_decay)
            ax.plot([xs[j]], [ys[j]], marker="*", markersize=13, color=_COLOURS[i % len(_COLOURS)])
    ax.set_xscale("log")
    ax.set_xlabel("weight decay (0 drawn at the left end)")
    ax.set_title("cross-validation accuracy (star: the chosen weight decay)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig, "cross-validation accuracy against weight decay")


def _entropy_figure(ent: AttentionEntropy, label: str) -> str:
    heads = ent.per_head()
    fig, (ax1, ax2) = _figure(10.0, 3.2, ncols=2)
    xs = list(range(len(heads)))
    means = [r["mean_entropy"] for r in heads]
    stds = [0.0 if math.isnan(r["std_entropy"]) else r["std_entropy"] for r in heads]
    ax1.bar(xs, means, yerr=stds, color=_COLOURS[0], capsize=3, label="probe head")
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


# -- HTML pieces ---------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 80px; line-height: 1.45; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 1px solid #d8dee4; }
h3 { font-size: 15px; margin: 22px 0 6px; color: #333; }
.sub { color: #57606a; font-size: 14px; margin-bottom: 14px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 13px; color: #444; }
.facts b { color: #1f2328; }
table.metrics { border-collapse: collapse; font-size: 13px; margin: 8px 0 4px; }
table.metrics th, table.metrics td { padding: 5px 11px; border-bottom: 1px solid #e3e6ea;
       text-align: right; }
table.metrics th { background: #f6f8fa; }
table.metrics td.left, table.metrics th.left { text-align: left; }
table.metrics tr.chosen td { font-weight: 600; }
table.metrics small.ci { color: #57606a; font-weight: 400; white-space: nowrap; }
img.figure { max-width: 100%; display: block; margin: 8px 0; }
.card { border: 1px solid #d8dee4; border-radius: 8px; padding: 10px 14px; margin: 10px 0;
        background: #fff; }
.note { font-size: 13px; color: #57606a; }
nav ul { font-size: 13px; columns: 2; margin: 6px 0; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 3px; }
.tokens span.tok { display: inline-block; background: #eef3fb; border-radius: 3px; padding: 0 4px;
        margin: 1px 2px; font-family: ui-monospace, monospace; font-size: 12px; }
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _anchor(entry: ReportEntry) -> str:
    return "probe-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{entry.hook_name}-{entry.label}").strip("-")


def _records(entries: Sequence[ReportEntry]) -> list[dict[str, Any]] | None:
    """One record per entry for the layer choice; None when an entry has no CV score."""
    if not all(e.record is not None and "cv_accuracy" in e.record for e in entries):
        return None
    return [
        {**(e.record or {}), "dataset": None, "hook": e.hook_name, "probe": e.label}
        for e in entries
    ]


def _choices(entries: Sequence[ReportEntry]) -> list[LayerChoice]:
    """The hook each probe's CV accuracy picks (empty without CV scores)."""
    records = _records(entries)
    if not records:
        return []
    try:
        return choose_layers(records)
    except InputError as err:  # e.g. the same probe twice at one hook: no choice to make
        logger.warning("no layer chosen in the report: %s", err)
        return []


def _ci_cell(e: ReportEntry, key: str) -> str:
    """A test metric, with its 95% interval when the entry's record has one."""
    text = _fmt(e.metrics.get(key))
    ci = interval(e.record, key) if e.record is not None else None
    if ci is not None:
        text += f' <small class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</small>'
    return text


def _splits_cell(e: ReportEntry) -> str:
    if e.record is None:
        return "–"
    ci = interval(e.record, "accuracy")
    how = "no interval" if ci is None else ("t" if ci[2] == "t" else "bootstrap")
    return f"{html.escape(splits_text(e.record))} ({how})"


def _metrics_table(entries: Sequence[ReportEntry], choices: Sequence[LayerChoice]) -> str:
    picked = {(c.probe, c.hook) for c in choices if len(c.hooks) > 1}
    head = "".join(
        f"<th>{name}{' [95%]' if key in HEADLINE_METRICS else ''}</th>"
        for key, name in METRIC_COLUMNS
    )
    rows = []
    for e in entries:
        is_pick = (e.label, e.hook_name) in picked
        cv = e.record.get("cv_accuracy") if e.record is not None else None
        cells = "".join(f"<td>{_ci_cell(e, key)}</td>" for key, _ in METRIC_COLUMNS)
        decay = "–" if e.weight_decay is None else f"{e.weight_decay:g}"
        split = "–" if e.n_train is None else f"{e.n_train} / {e.n_test}"
        name = html.escape(e.label)
        if e.acts is not None:
            name = f'<a href="#{_anchor(e)}">{name}</a>'
        rows.append(
            f'<tr class="{"chosen" if is_pick else ""}"><td class="left"><code>'
            f'{html.escape(e.hook_name)}</code></td><td class="left">{name}</td>'
            f"<td>{_fmt(None if cv is None else float(cv))}</td>{cells}"
            f"<td>{decay}</td><td>{split}</td><td>{_splits_cell(e)}</td></tr>"
        )
    hooks = {e.hook_name for e in entries}
    if picked:
        bold = (
            "Bold: the layer each probe's CV accuracy picks (the test part plays no role in the "
            "choice; see below)."
        )
    elif len(hooks) > 1:
        bold = "No CV scores recorded: no layer is chosen."
    else:
        bold = "One hook: no layer to choose."
    return (
        '<table class="metrics"><thead><tr><th class="left">hook</th><th class="left">probe</th>'
        f"<th>CV accuracy</th>{head}<th>weight decay</th><th>n train / n test</th>"
        f"<th>splits (interval)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<div class="note">Test metrics of the refit probe: the mean over the splits (each seed '
        "draws its own train/test split), with a 95% interval: a Student-t interval over the "
        "splits when there are several, else a percentile bootstrap over the one split's test "
        "rows (which covers the test sample only). CV accuracy: the training part's "
        "cross-validation accuracy at the chosen weight decay (mean over folds and splits). "
        f"{bold}</div>"
    )


def _choice_section(choices: Sequence[LayerChoice]) -> str:
    """The layer each probe's CV picks and the test score of the pick."""
    rows = []
    for c in choices:
        ci = interval(c.record, "accuracy")
        acc = _fmt(c.test.get("accuracy"))
        if ci is not None:
            acc += f' <small class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</small>'
        rows.append(
            f'<tr><td class="left">{html.escape(c.probe)}</td><td class="left"><code>'
            f"{html.escape(c.hook)}</code></td><td>{_fmt(c.cv_score)}</td><td>{acc}</td>"
            f"<td>{c.n_test}</td><td>{html.escape(splits_text(c.record))}</td>"
            f"<td>{len(c.hooks)}</td></tr>"
        )
    return (
        '<h3 id="layer-choice">Layer chosen by cross-validation</h3>'
        '<table class="metrics"><thead><tr><th class="left">probe</th><th class="left">chosen '
        "hook</th><th>CV accuracy</th><th>test accuracy [95%]</th><th>n test</th><th>splits</th>"
        f"<th>hooks compared</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<div class="note">Each probe\'s layer is the hook with the best cross-validation '
        "accuracy on the training part (ties: lower CV log loss); its test accuracy, scored "
        "once, is what is reported. Choosing by test accuracy would flatter every probe.</div>"
    )


def _comparisons_section(comparisons: Sequence[Comparison]) -> str:
    """Paired comparisons (lp.compare) with their intervals and verdicts."""
    rows = []
    for c in comparisons:
        who = {"a better": c.a, "b better": c.b}.get(c.verdict)
        verdict = f"{html.escape(who)} better" if who else "undecided"
        how = f"t over {c.n_seeds} splits" if c.method == "t" else "paired bootstrap, 1 split"
        rows.append(
            f'<tr><td class="left">{html.escape(c.a)}</td><td class="left">{html.escape(c.b)}'
            f"</td><td>{html.escape(c.metric)}</td><td>{c.difference:+.3f}</td>"
            f"<td>[{c.low:+.3f}, {c.high:+.3f}]</td><td>{how}</td><td>{c.n_test}</td>"
            f'<td class="left">{verdict}</td></tr>'
        )
    return (
        '<h3 id="comparisons">Paired comparisons</h3>'
        '<table class="metrics"><thead><tr><th class="left">a</th><th class="left">b</th>'
        "<th>metric</th><th>a − b</th><th>95% interval</th><th>interval</th><th>n test</th>"
        f'<th class="left">verdict</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        '<div class="note">Each pair through <code>lp.compare</code>: both probes on the same '
        "splits, the difference paired per split, its 95% interval a t-interval over the splits "
        "(or, with one split, a paired bootstrap over its test rows). A difference whose "
        "interval contains 0 is undecided.</div>"
    )


def _auto_comparisons(
    entries: Sequence[ReportEntry], choices: Sequence[LayerChoice]
) -> list[Comparison]:
    """Comparisons at the chosen layers, when every entry carries its protocol result."""
    if not choices or any(e.result is None for e in entries):
        return []
    results = {(None, e.hook_name, e.label): e.result for e in entries}
    return compare_choices(choices, results)  # type: ignore[arg-type]


def _visible(token: str) -> str:
    r"""A token with its whitespace made visible (a space as ``␣``, a newline as ``\n``)."""
    return token.replace(" ", "\u2423").replace("\n", "\\n").replace("\t", "\\t")


def _head_tokens_table(top: TopExamples) -> str:
    cells = []
    for h, tokens in enumerate(top.head_tokens):
        toks = "".join(
            f'<span class="tok" title="mass {t.mass:.2f} over {t.count} occurrence(s)">'
            f"{html.escape(_visible(t.token))} <small>{100 * t.share:.0f}%</small></span>"
            for t in tokens
        )
        cells.append(f'<tr><td>head {h}</td><td class="left tokens">{toks}</td></tr>')
    return (
        '<table class="metrics"><thead><tr><th>head</th><th class="left">tokens with the most '
        "attention mass (share of the head's attention over all sequences)</th></tr></thead>"
        f"<tbody>{''.join(cells)}</tbody></table>"
    )


def _entry_section(entry: ReportEntry, k: int, n_tokens: int, batch_size: int) -> list[Any]:
    assert entry.acts is not None
    acts = entry.acts
    rows = entry.rows
    n_rows = len(acts) if rows is None else int(torch.as_tensor(rows).numel())
    title = f"{html.escape(entry.label)} at <code>{html.escape(entry.hook_name)}</code>"
    parts: list[Any] = [
        f'<h2 id="{_anchor(entry)}">{title}</h2>',
        f'<div class="note">Analysed on {n_rows} sequences'
        + (" (the test rows)." if rows is not None else ".")
        + "</div>",
    ]
    top = top_examples(entry.probe, acts, k=k, rows=rows, n_tokens=n_tokens, batch_size=batch_size)
    if isinstance(entry.probe, AttentionProbe):
        ent = attention_entropy(entry.probe, acts, rows=rows, batch_size=batch_size)
        props = entropy_props(ent)
        parts += [
            "<h3>Attention entropy per head</h3>",
            _entropy_figure(ent, entry.label),
            Widget("entropy", props, body=entropy_html(props)),
            "<h3>What each head reads</h3>",
            _head_tokens_table(top),
            f"<h3>Top {top.k} sequences per head (by the largest weight on one token)</h3>",
            '<div class="card">',
            Widget("top_examples", top_examples_props(top, "head"), component="TopkSamples"),
            "</div>",
        ]
    parts += [
        f"<h3>Top {top.k} sequences per class (by class logit)</h3>",
        '<div class="card">',
        Widget("top_examples", top_examples_props(top, "class"), component="TopkSamples"),
        "</div>",
    ]
    return parts


_HOW_TO_READ = (
    '<h2>How to read this page</h2><div class="note"><p>Entropy is in nats. A head that '
    "spreads its attention evenly over the n valid tokens of a sequence has entropy log n "
    "(ratio 1); one that attends to a single token has entropy 0 (ratio 0). Sequences of one "
    "token are left out of the ratios.</p><p>Top examples are exact (every analysed sequence "
    "is scored). Each starts with an uncoloured tag <code>#row label score</code>; for a binary "
    "probe, class 1 is ranked by the logit and class 0 by minus the logit. Tokens are "
    "coloured by a head's attention (blue), or by their contribution to the class score "
    "(blue up, red down; contributions of all tokens plus the bias give the logit). Use the "
    "selectors to switch class, head, colouring and page.</p></div>"
)


def _version() -> str:
    """The installed lensprobe's version (``unknown`` when it runs from an uninstalled tree)."""
    try:
        return importlib.metadata.version("lensprobe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _title_block(items: Sequence[ReportEntry], title: str, description: str | None) -> list[str]:
    """The title, the description, the facts line (model, hooks, probes, classes, when, version)."""
    models = sorted({e.probe.config.model_id for e in items if e.probe.config.model_id})
    class_names = next(
        (e.probe.config.class_names for e in items if e.probe.config.class_names), None
    )
    classes = ", ".join(class_names) if class_names else str(items[0].probe.config.n_classes)
    facts = [
        ("model", ", ".join(models) or "–"),
        ("hooks", str(len({e.hook_name for e in items}))),
        ("probes", str(len(items))),
        ("classes", classes),
        ("created", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
        ("lensprobe", _version()),
    ]
    spans = "".join(f"<span>{html.escape(k)}: <b>{html.escape(v)}</b></span>" for k, v in facts)
    return [
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="sub">{html.escape(description)}</div>' if description else "",
        f'<div class="facts">{spans}</div>',
    ]


def _navigation(analysed: Sequence[ReportEntry]) -> str:
    """Links to the metrics and to each analysed probe's section."""
    links = "".join(
        f'<li><a href="#{_anchor(e)}">{html.escape(e.label)} at {html.escape(e.hook_name)}</a></li>'
        for e in analysed
    )
    return f"<nav><ul><li><a href='#metrics'>metrics</a></li>{links}</ul></nav>"


def _metrics_sections(
    items: Sequence[ReportEntry], comparisons: Sequence[Comparison] | None
) -> list[str]:
    """The metrics table and figure, the layer choice, the comparisons and the CV figure."""
    choices = _choices(items)
    if comparisons is None:
        comparisons = _auto_comparisons(items, choices)
    parts = [
        '<h2 id="metrics">Test metrics</h2>',
        _metrics_table(items, choices),
        _metrics_figure(items, choices),
    ]
    if any(len(c.hooks) > 1 for c in choices):
        parts.append(_choice_section(choices))
    if comparisons:
        parts.append(_comparisons_section(comparisons))
    cv = _cv_figure(items)
    if cv:
        parts.append(cv)
    return parts


def render_report(
    entries: Sequence[ReportEntry | ProtocolResult],
    *,
    title: str = "lensprobe report",
    description: str | None = None,
    k: int = 5,
    n_tokens: int = 12,
    batch_size: int = 64,
    comparisons: Sequence[Comparison] | None = None,
) -> str:
    """The report as an HTML string.

    Args:
        entries: One :class:`ReportEntry` per probe and hook (``ReportEntry.from_result(res,
            acts)``); a bare ``ProtocolResult`` gives a metrics-only entry.
        title: Page title.
        description: A line under the title (dataset, settings).
        k: Top examples per class and per head.
        n_tokens: Tokens per head in the "what each head reads" table.
        batch_size: Sequences per forward when analysing.
        comparisons: Paired comparisons to show (:func:`lensprobe.compare` results); default:
            when every entry carries its protocol result, each two probes at the layers their
            CV picks; ``[]``: none.

    Returns:
        The whole page (it loads nothing from the network).
    """
    items = [e if isinstance(e, ReportEntry) else ReportEntry.from_result(e) for e in entries]
    if not items:
        raise ValueError("a report needs at least one entry (ReportEntry or ProtocolResult)")
    items.sort(key=lambda e: (_layer(e.hook_name) or 0, e.hook_name))
    analysed = [e for e in items if e.acts is not None]
    parts: list[Any] = _title_block(items, title, description)
    if analysed:
        parts.append(_navigation(analysed))
    parts += _metrics_sections(items, comparisons)
    for e in analysed:
        parts += _entry_section(e, k, n_tokens, batch_size)
    parts.append(_HOW_TO_READ)
    return page(parts, title=title, css=CSS)


def report(
    entries: Sequence[ReportEntry | ProtocolResult], path: str | Path, **options: Any
) -> Path:
    """Write one self-contained HTML page for a protocol run.

    Args:
        entries: One :class:`ReportEntry` per probe and hook (``ReportEntry.from_result(res,
            acts)``); a bare ``ProtocolResult`` gives a metrics-only entry.
        path: The HTML file to write (parent directories are created).
        **options: ``title``, ``description``, ``k``, ``n_tokens``, ``batch_size`` and
            ``comparisons``, as :func:`render_report` takes them.

    Returns:
        The path written.

    Example:
        >>> res = lp.run_protocol(acts, probe="attention", n_heads=8)
        >>> lp.report([lp.viz.ReportEntry.from_result(res, acts)], "report.html")
    """
    html_text = render_report(entries, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_text, encoding="utf-8")
    return path
