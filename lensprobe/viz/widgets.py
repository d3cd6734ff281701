"""Widgets that show what a probe reads: inline in Jupyter, and offline in any browser.

Every widget is a :class:`Widget`: an object whose ``_repr_html_`` returns HTML with the circuitsvis
JavaScript *inlined* (circuitsvis' ``local_src`` way: no CDN, no network probe), so a notebook shows
it with or without internet and a saved page opens from disk. What each widget shows comes
from a pure function that returns plain JSON-ready ``dict`` props (tests check those):

- :func:`attention_props` / :func:`attention_widget`: one example's tokens coloured by each probe
  head's attention (circuitsvis ``ColoredTokensMulti``: hover or click a head to switch; hover a
  token for every head's weight).
- :func:`token_values_props` / :func:`contributions_widget`: one example's tokens coloured by their
  share of each logit, for any probe kind.
- :func:`top_examples_props` / :func:`top_examples_widget`: the top-k sequences per class or per head
  (circuitsvis ``TopkSamples``), each led by an uncoloured tag ``#row label score``.
- :func:`entropy_props` / :func:`entropy_widget`: mean attention entropy per head against the uniform
  baseline (a plain HTML table with bars; circuitsvis has no chart).

Token strings are HTML-escaped in the props, because circuitsvis inserts tokens as HTML (a token
such as ``<bos>`` would otherwise vanish as an unknown tag).
"""

from __future__ import annotations

import functools
import html
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lensprobe.analysis import (
    AttentionEntropy,
    Data,
    Example,
    TopExamples,
    attention_entropy,
    explain,
    top_examples,
)
from lensprobe.analysis.inputs import probe_class_names
from lensprobe.probes import AttentionProbe, Probe

__all__ = [
    "Widget",
    "attention_props",
    "attention_widget",
    "circuitsvis_js",
    "contributions_widget",
    "entropy_html",
    "entropy_props",
    "entropy_widget",
    "page",
    "script_json",
    "token_values_props",
    "top_examples_props",
    "top_examples_widget",
]

_FONT = "font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif;"


# -- rendering -----------------------------------------------------------------------------------


@functools.cache
def circuitsvis_js() -> str:
    r"""The circuitsvis browser bundle, ready to inline in a ``<script>`` element.

    ``</script`` inside the bundle is written ``<\/script`` (the same string for JavaScript,
    but no longer the end of the element), and the source-map comment is dropped so a browser
    never asks for a file next to the page.

    Raises:
        ImportError: circuitsvis is not installed.
    """
    try:
        bundle = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js")
        js = bundle.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ImportError(
            "the widgets need circuitsvis (its bundled JavaScript): pip install 'lensprobe[viz]'"
        ) from err
    lines = [ln for ln in js.splitlines() if not ln.startswith("//# sourceMappingURL=")]
    return "\n".join(lines).replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def script_json(value: Any) -> str:
    """JSON for inside a ``<script>`` element: strict (no NaN) and with ``<`` escaped."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class Widget:
    """A view with JSON props that renders in Jupyter (``_repr_html_``) and in saved pages.

    Attributes:
        kind: What the widget shows (``attention``, ``contributions``, ``top_examples``,
            ``entropy``).
        component: The circuitsvis React component, or ``None`` for a plain-HTML widget.
        props: The JSON-ready props (what the component, or the HTML, is built from).
        header: HTML shown above the view (title and the example's facts).
    """

    def __init__(
        self,
        kind: str,
        props: dict[str, Any],
        *,
        component: str | None = None,
        header: str = "",
        body: str = "",
    ) -> None:
        """Wrap props for a circuitsvis ``component``, or a plain HTML ``body``."""
        self.kind = kind
        self.component = component
        self.props = props
        self.header = header
        self._body = body

    def __repr__(self) -> str:
        what = self.component or "html"
        return f"Widget(kind={self.kind!r}, component={what!r}, props={sorted(self.props)})"

    def html(self, *, include_library: bool = True) -> str:
        """An HTML fragment; ``include_library=False`` when the page already loaded circuitsvis."""
        parts = [
            f'<div class="lensprobe-widget" data-widget="{self.kind}" style="{_FONT} margin: 8px 0;">',
            self.header,
        ]
        if self.component is None:
            parts.append(self._body)
        else:
            uid = "lensprobe-" + uuid.uuid4().hex[:12]
            parts.append(
                f'<div id="{uid}" class="lensprobe-cv" data-component="{self.component}"></div>'
            )
            if include_library:
                parts.append(f"<script>{circuitsvis_js()}</script>")
            parts.append(
                f'<script>CircuitsVis.render("{uid}", CircuitsVis.{self.component}, '
                f"{script_json(self.props)});</script>"
            )
        parts.append("</div>")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        """Jupyter's HTML: the JavaScript is inlined, nothing is fetched."""
        return self.html(include_library=True)

    def __html__(self) -> str:
        """The same HTML, for tools that use the ``__html__`` protocol."""
        return self._repr_html_()

    def save(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write a standalone HTML page holding this widget (opens offline)."""
        path = Path(path)
        path.write_text(page([self], title=title or f"lensprobe: {self.kind}"), encoding="utf-8")
        return path


def page(widgets: Sequence[Widget | str], *, title: str = "lensprobe", css: str = "") -> str:
    """A complete HTML page: circuitsvis inlined once, then the widgets (or raw HTML strings)."""
    body = "\n".join(w if isinstance(w, str) else w.html(include_library=False) for w in widgets)
    library = ""
    if any(isinstance(w, Widget) and w.component is not None for w in widgets):
        library = f"<script>{circuitsvis_js()}</script>"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n{library}\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


# -- pure props builders -------------------------------------------------------------------------


def _num(v: float) -> float:
    """A finite float with 6 significant digits (NaN and inf become 0)."""
    v = float(v)
    if not math.isfinite(v):
        return 0.0
    return float(f"{v:.6g}")


def _escape_tokens(tokens: Sequence[str]) -> list[str]:
    return [html.escape(str(t), quote=False) for t in tokens]


def token_values_props(
    tokens: Sequence[str],
    values: Float[Tensor, "pos n_values"],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Props of circuitsvis ``ColoredTokensMulti``: tokens coloured by one of several values.

    Args:
        tokens: The tokens, one string each.
        values: One row per token, one column per value the viewer can switch between.
        labels: Name of each column.

    Returns:
        ``{"tokens", "values" (one list per token), "labels", "positiveBounds",
        "negativeBounds"}``: tokens HTML-escaped, values rounded to 6 significant digits, and a
        symmetric colour scale per column (``±`` its largest absolute value), so white is 0.
    """
    if values.ndim != 2 or values.shape[0] != len(tokens):
        raise ValueError(
            f"values must be (tokens, n_values) with {len(tokens)} rows, got {tuple(values.shape)}"
        )
    if len(labels) != values.shape[1]:
        raise ValueError(f"{len(labels)} labels for {values.shape[1]} value columns")
    rows = [[_num(v) for v in row] for row in values.tolist()]
    # one symmetric scale per column: white is 0, the most extreme value is full colour
    bounds = [max([abs(r[j]) for r in rows], default=0.0) or 1e-6 for j in range(len(labels))]
    return {
        "tokens": _escape_tokens(tokens),
        "values": rows,
        "labels": [str(s) for s in labels],
        "positiveBounds": bounds,
        "negativeBounds": [-b for b in bounds],
    }


def attention_props(
    tokens: Sequence[str],
    attention: Float[Tensor, "pos probe_head"],
    head_labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Props of the per-head attention view of one example (``ColoredTokensMulti``).

    Args:
        tokens: The example's valid tokens.
        attention: Each head's attention over those tokens.
        head_labels: Name of each head (default ``head 0``, ``head 1``, ...).
    """
    if head_labels is None:
        head_labels = [f"head {h}" for h in range(attention.shape[1])]
    return token_values_props(tokens, attention, head_labels)


def _class_values(example: Example, c: int, n_outputs: int) -> Tensor:
    """Per-token contribution to the score of class ``c`` (minus the logit for class 0 of a binary probe)."""
    if n_outputs == 1:
        return example.contributions[:, 0] * (1.0 if c == 1 else -1.0)
    return example.contributions[:, c]


def _tag(example: Example, class_names: Sequence[str], score_name: str) -> str:
    label = "?" if example.label is None else class_names[example.label]
    text = f"#{example.row} {label} {score_name}={example.score:.3g} \u2192 "
    return html.escape(text, quote=False)  # circuitsvis renders tokens as HTML


@dataclass(frozen=True)
class _View:
    """One way of listing top examples: which lists, how they are labelled, how tokens are coloured."""

    lists: tuple[tuple[Example, ...], ...]
    list_labels: list[str]
    colourings: list[str]
    values: Callable[[Example, int, int], Tensor]
    """``values(example, list index, colouring index)``: one value per token."""
    score_name: str


def _class_view(top: TopExamples) -> _View:
    """One list per class, coloured by the contribution to its logit or by one head's attention."""
    n_heads = len(top.by_head)
    colourings = ["contribution to the class logit"]
    colourings += [f"attention of head {h}" for h in range(n_heads)]

    def values(e: Example, i: int, j: int) -> Tensor:
        if j == 0:
            return _class_values(e, i, top.n_outputs)
        assert e.attention is not None
        return e.attention[:, j - 1]

    labels = [f"class {c}: {top.class_names[c]}" for c in range(len(top.by_class))]
    return _View(top.by_class, labels, colourings, values, "score")


def _head_view(top: TopExamples) -> _View:
    """One list per head, coloured by its attention or (one-logit probes) its contribution."""
    if not top.by_head:
        raise ValueError(
            f"a {top.probe_kind} probe has no heads; use view='class' for its top examples"
        )
    colourings = ["attention"]
    if top.n_outputs == 1:
        colourings.append("contribution to the logit")

    def values(e: Example, i: int, j: int) -> Tensor:
        assert e.attention is not None and e.head_contributions is not None
        if j == 0:
            return e.attention[:, i]
        return e.head_contributions[:, i, 0]

    labels = [f"head {h}" for h in range(len(top.by_head))]
    return _View(top.by_head, labels, colourings, values, "peak")


def top_examples_props(
    top: TopExamples, view: Literal["class", "head"] = "class"
) -> dict[str, Any]:
    """Props of circuitsvis ``TopkSamples`` for the top examples per class or per head.

    Each sample starts with a tag token ``#row label score=... →`` (value 0, so it stays white).

    - ``view="class"``: one list per class (the sequences with the highest class logit), coloured
      by each token's contribution to that class's logit, or by the attention of one head.
    - ``view="head"``: one list per probe head (the sequences where it puts the largest weight on
      one token), coloured by the head's attention, or (one-logit probes) by the head's
      contribution to the logit.

    Returns:
        ``{"tokens", "activations"}`` nested ``[list][colouring][sample][token]``, with the names
        and labels of both selector dimensions.
    """
    if view not in ("class", "head"):
        raise ValueError(f"view must be 'class' or 'head', got {view!r}")
    v = _class_view(top) if view == "class" else _head_view(top)
    names, n_colourings = top.class_names, len(v.colourings)
    tokens = [
        [
            [[_tag(e, names, v.score_name), *_escape_tokens(e.tokens)] for e in examples]
            for _ in range(n_colourings)
        ]
        for examples in v.lists
    ]
    activations = [
        [
            [[0.0, *(_num(x) for x in v.values(e, i, j).tolist())] for e in examples]
            for j in range(n_colourings)
        ]
        for i, examples in enumerate(v.lists)
    ]
    return {
        "tokens": tokens,
        "activations": activations,
        "zerothDimensionName": "Class" if view == "class" else "Head",
        "firstDimensionName": "Colour by",
        "zerothDimensionLabels": v.list_labels,
        "firstDimensionLabels": v.colourings,
    }


def entropy_props(ent: AttentionEntropy) -> dict[str, Any]:
    """Props of the entropy view: per-head and overall statistics, as plain JSON.

    Returns:
        ``{"heads": [per-head rows of AttentionEntropy.per_head()], "overall": summary(),
        "n_sequences": ...}`` with NaN written as ``None``.
    """

    def clean(row: dict[str, Any]) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    return {
        "heads": [clean(r) for r in ent.per_head()],
        "overall": clean(ent.summary()),
        "n_sequences": len(ent),
    }


# -- plain HTML pieces ---------------------------------------------------------------------------


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
        f'<table class="lensprobe-entropy" style="border-collapse:collapse;{_FONT}font-size:13px">'
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
    if not isinstance(probe, AttentionProbe):
        raise TypeError(
            f"attention_widget needs an AttentionProbe, got a {probe.config.kind} probe; "
            "lp.viz.contributions_widget(probe, acts, index) shows which tokens it reads (its "
            "values: lp.analysis.token_contributions)"
        )
    example = explain(probe, acts, index)
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
    example = explain(probe, acts, index)
    names = probe_class_names(probe, acts)
    n_outputs = probe.config.n_outputs
    columns = torch.stack([_class_values(example, c, n_outputs) for c in range(len(names))], dim=1)
    return Widget(
        "contributions",
        token_values_props(example.tokens, columns, [f"to {n}" for n in names]),
        component="ColoredTokensMulti",
        header=_example_header(example, names, f"token contributions ({probe.config.kind} probe)"),
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
            raise TypeError("pass the activations too: lp.viz.top_examples_widget(probe, acts)")
        top = top_examples(top, acts, k=k, rows=rows)
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
            raise TypeError("pass the activations too: lp.viz.entropy_widget(probe, acts)")
        ent = attention_entropy(ent, acts, rows=rows)
    props = entropy_props(ent)
    header = (
        f'<div style="font-size:13px;color:#333"><b>attention entropy per head</b> over '
        f"{props['n_sequences']} sequences (nats; ratio = entropy / log n_valid: 1 is uniform, "
        "0 is one token)</div>"
    )
    return Widget("entropy", props, header=header, body=entropy_html(props))
