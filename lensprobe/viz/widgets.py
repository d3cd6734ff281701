"""Widgets that show what a probe reads: inline in Jupyter, and offline in any browser.

Every widget is a :class:`~lensprobe.viz.rendering.Widget`: its ``_repr_html_`` returns HTML with
the circuitsvis JavaScript *inlined* (no CDN, no network probe), so a notebook shows it with or
without internet and a saved page opens from disk. What each widget shows comes from a pure
function of :mod:`lensprobe.viz.props` that returns plain JSON-ready ``dict`` props:

- :func:`attention_props` / :func:`attention_widget`: one example's tokens coloured by each probe
  head's attention (circuitsvis ``ColoredTokensMulti``: hover or click a head to switch; hover a
  token for every head's weight).
- :func:`token_values_props` / :func:`contributions_widget`: one example's tokens coloured by their
  share of each logit, for any probe kind.
- :func:`top_examples_props` / :func:`top_examples_widget`: the top-k sequences per class or per head
  (circuitsvis ``TopkSamples``), each led by an uncoloured tag ``#row label=... pred=... score=...``.
- :func:`monitor_widget`: a live monitor's score after each token of a sequence.
- :func:`entropy_props` / :func:`entropy_widget`: mean attention entropy per head against the uniform
  baseline (a plain HTML table with bars; circuitsvis has no chart).

Token strings are HTML-escaped in the props, because circuitsvis inserts tokens as HTML (a token
such as ``<bos>`` would otherwise vanish as an unknown tag).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lensprobe import analysis
from lensprobe.analysis import AttentionEntropy, Data, Example, TopExamples
from lensprobe.analysis.inputs import probe_class_names
from lensprobe.errors import InputError, InputTypeError
from lensprobe.monitoring import Monitor
from lensprobe.probes import Probe
from lensprobe.viz.props import (
    attention_props,
    class_values,
    entropy_props,
    token_values_props,
    top_examples_props,
)
from lensprobe.viz.rendering import FONT, Widget

__all__ = [
    "attention_widget",
    "contributions_widget",
    "entropy_html",
    "entropy_widget",
    "top_examples_widget",
]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def entropy_html(props: dict[str, Any]) -> str:
    """The entropy table with bars (ratio of entropy to the uniform baseline, per head)."""
    rows = []
    for r in [*props["heads"], {**props["overall"], "head": "all"}]:
        ratio = r["mean_ratio"]
        width = 0.0 if ratio is None else max(0.0, min(ratio, 1.0)) * 100
        bar = (
            '<div style="position:relative;width:220px;height:12px;background:#eef1f5;'
            'border-radius:2px">'
            f'<div class="lensprobe-entropy-bar" style="width:{width:.1f}%;height:100%;'
            'background:#3b6fb6;border-radius:2px"></div>'
            '<div title="uniform" style="position:absolute;right:0;top:-3px;width:2px;'
            'height:18px;background:#c0392b"></div></div>'
        )
        weight = "font-weight:600;" if r["head"] == "all" else ""
        rows.append(
            f'<tr style="{weight}"><td>{r["head"]}</td><td>{_fmt(r["mean_entropy"])}</td>'
            f"<td>{_fmt(r['mean_uniform'])}</td><td>{_fmt(ratio)}</td>"
            f"<td>{_fmt(r['median_ratio'])}</td><td>{bar}</td></tr>"
        )
    cell = "padding:3px 10px;text-align:right;border-bottom:1px solid #e3e6ea"
    return (
        f'<table class="lensprobe-entropy" style="border-collapse:collapse;{FONT}font-size:13px">'
        f'<thead><tr style="{cell}"><th>head</th><th>entropy (nats)</th>'
        "<th>uniform log n</th><th>mean ratio</th><th>median ratio</th>"
        "<th>ratio (red line: uniform)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<style>.lensprobe-entropy td, .lensprobe-entropy th {{{cell}}}</style>"
    )


def _example_header(example: Example, class_names: Sequence[str], title: str) -> str:
    probs = example.probs.tolist()
    pred = example.predicted
    facts = [f"row {example.row}", f"{len(example.tokens)} tokens"]
    if example.label is not None:
        facts.append(f"label <b>{html.escape(class_names[example.label])}</b>")
    facts.append(f"predicted <b>{html.escape(class_names[pred])}</b> (p={probs[pred]:.3f})")
    return (
        f'<div style="font-size:13px;color:#333"><b>{html.escape(title)}</b> · '
        + " · ".join(facts)
        + "</div>"
    )


# -- widgets -------------------------------------------------------------------------------------


def attention_widget(probe: Probe, acts: Data, index: int = 0) -> Widget:
    """Each probe head's attention over the tokens of one example (switch heads by hovering).

    Args:
        probe: An attention probe.
        acts: Activations at the probe's hook (or a padded ``(x, mask)`` pair).
        index: Which sequence.

    Returns:
        A :class:`Widget` (displays itself in Jupyter; ``.save(path)`` writes a page).
    """
    if not probe.attends:
        raise InputTypeError(
            f"attention_widget needs a probe that attends to tokens (e.g. an AttentionProbe), "
            f"got a {probe.config.kind} probe; "
            "lp.viz.contributions_widget(probe, acts, index) shows which tokens it reads (its "
            "values: lp.analysis.token_contributions)"
        )
    example = analysis.explain(probe, acts, index)
    assert example.attention is not None
    title = f"attention of {probe.config.n_heads} probe head(s)"
    if probe.config.hook:
        title += f" at {probe.config.hook}"
    return Widget(
        "attention",
        attention_props(example.tokens, example.attention),
        component="ColoredTokensMulti",
        header=_example_header(example, probe_class_names(probe, acts), title),
    )


def contributions_widget(probe: Probe, acts: Data, index: int = 0) -> Widget:
    """Each token's share of each class score for one example (any probe kind).

    For a one-logit probe the columns are the score of class 0 (minus the logit) and of class 1
    (the logit); otherwise one column per class logit. Blue pushes the score up, red down.
    """
    example = analysis.explain(probe, acts, index)
    names = probe_class_names(probe, acts)
    n_outputs = probe.config.n_outputs
    columns = torch.stack([class_values(example, c, n_outputs) for c in range(len(names))], dim=1)
    return Widget(
        "contributions",
        token_values_props(example.tokens, columns, [f"to {n}" for n in names]),
        component="ColoredTokensMulti",
        header=_example_header(example, names, f"token contributions ({probe.config.kind} probe)"),
    )


def monitor_widget(monitor: Monitor, row: int = 0, tokenizer: Any = None) -> Widget:
    """A monitored sequence's tokens coloured by the probe's score after each token.

    Args:
        monitor: A :class:`~lensprobe.monitoring.Monitor` after its block.
        row: Which sequence of the batch.
        tokenizer: Turns the recorded token ids into strings (e.g. ``model.tokenizer``); without
            one, the ids are shown.

    The columns: the logit after each token (one-logit probes; each class logit otherwise) and,
    with a threshold, the logit minus the threshold (so the colour turns where the monitor
    flags).
    """
    logits, mask = monitor.logits, monitor.mask
    if not 0 <= row < logits.shape[0]:
        raise InputError(f"row {row} is outside the monitored batch of {logits.shape[0]}")
    valid = mask[row]
    values = logits[row][valid]
    labels = ["logit"] if values.shape[1] == 1 else [f"logit {c}" for c in range(values.shape[1])]
    if monitor.threshold is not None:
        values = torch.cat([values, values[:, :1] - monitor.threshold], dim=1)
        labels.append(f"logit - threshold ({monitor.threshold:.3g})")
    ids = monitor.token_ids
    if ids is None:
        tokens = [f"[{i}]" for i in range(int(valid.sum()))]
    else:
        row_ids = ids[row][valid].tolist()
        tokens = (
            tokenizer.convert_ids_to_tokens(row_ids) if tokenizer else [str(i) for i in row_ids]
        )
    flag = next((f for f in monitor.flags if f.row == row), None)
    facts = [f"row {row}", f"{len(tokens)} tokens", f"hook {monitor.hook}"]
    if monitor.threshold is not None:
        where = "not flagged" if flag is None else f"flagged at position {flag.position}"
        facts.append(where)
    header = (
        f'<div style="font-size:13px;color:#333"><b>{html.escape(monitor.probe.config.kind)} '
        "monitor, score after each token</b> · " + " · ".join(html.escape(f) for f in facts)
    ) + "</div>"
    return Widget(
        "monitor",
        token_values_props(tokens, values, labels),
        component="ColoredTokensMulti",
        header=header,
    )


def top_examples_widget(
    top: TopExamples | Probe,
    acts: Data | None = None,
    *,
    view: Literal["class", "head"] = "class",
    k: int = 10,
    rows: Sequence[int] | Tensor | None = None,
) -> Widget:
    """The top-k sequences per class, or per probe head, with their tokens coloured.

    Args:
        top: Output of :func:`lensprobe.top_examples`, or a probe (then ``acts`` is required).
        acts: Activations, when ``top`` is a probe.
        view: ``"class"`` (by class logit) or ``"head"`` (by a head's peak attention).
        k: Examples per list, when computing them here.
        rows: Rows to rank, when computing them here.
    """
    if isinstance(top, Probe):
        if acts is None:
            raise InputTypeError(
                "pass the activations too: lp.viz.top_examples_widget(probe, acts)"
            )
        top = analysis.top_examples(top, acts, k=k, rows=rows)
    what = "class logit" if view == "class" else "peak attention of each head"
    header = (
        f'<div style="font-size:13px;color:#333"><b>top {top.k} of {top.n_rows} sequences by '
        f"{what}</b> ({top.probe_kind} probe)</div>"
    )
    return Widget(
        "top_examples",
        top_examples_props(top, view),
        component="TopkSamples",
        header=header,
    )


def entropy_widget(
    ent: AttentionEntropy | Probe,
    acts: Data | None = None,
    *,
    rows: Sequence[int] | Tensor | None = None,
) -> Widget:
    """Mean attention entropy per head against the uniform baseline, as a table with bars.

    Args:
        ent: Output of :func:`lensprobe.attention_entropy`, or an attention probe (then ``acts``
            is required).
        acts: Activations, when ``ent`` is a probe.
        rows: Rows to use, when computing here.
    """
    if isinstance(ent, Probe):
        if acts is None:
            raise InputTypeError("pass the activations too: lp.viz.entropy_widget(probe, acts)")
        ent = analysis.attention_entropy(ent, acts, rows=rows)
    props = entropy_props(ent)
    header = (
        f'<div style="font-size:13px;color:#333"><b>attention entropy per head</b> over '
        f"{props['n_sequences']} sequences (nats; ratio = entropy / log n_valid: 1 is uniform, "
        "0 is one token)</div>"
    )
    return Widget("entropy", props, header=header, body=entropy_html(props))
