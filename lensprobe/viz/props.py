"""What each widget shows, as plain JSON-ready ``dict`` props (pure functions; tests check them).

- :func:`attention_props`: one example's tokens coloured by each probe head's attention
  (circuitsvis ``ColoredTokensMulti``);
- :func:`token_values_props`: tokens coloured by one of several values (a token's share of each
  logit, for any probe kind);
- :func:`top_examples_props`: the top-k sequences per class or per head (circuitsvis
  ``TopkSamples``), each led by an uncoloured tag ``#row label=... pred=... score=...``;
- :func:`entropy_props`: mean attention entropy per head against the uniform baseline.

Token strings are HTML-escaped in the props, because circuitsvis inserts tokens as HTML (a token
such as ``<bos>`` would otherwise vanish as an unknown tag).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jaxtyping import Float
from torch import Tensor

from lensprobe.analysis import AttentionEntropy, Example, TopExamples
from lensprobe.errors import InputError

__all__ = [
    "attention_props",
    "class_values",
    "entropy_props",
    "token_values_props",
    "top_examples_props",
]


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
        raise InputError(
            f"values must be (tokens, n_values) with {len(tokens)} rows, got {tuple(values.shape)}"
        )
    if len(labels) != values.shape[1]:
        raise InputError(f"{len(labels)} labels for {values.shape[1]} value columns")
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


def class_values(example: Example, c: int, n_outputs: int) -> Tensor:
    """Per-token contribution to the score of class ``c`` (minus the logit for class 0 of a binary probe)."""
    if n_outputs == 1:
        return example.contributions[:, 0] * (1.0 if c == 1 else -1.0)
    return example.contributions[:, c]


def _tag(example: Example, class_names: Sequence[str], score_name: str) -> str:
    """``#row label=TRUE pred=PREDICTED score=...`` (``label=?`` when the data has no labels)."""
    label = "?" if example.label is None else class_names[example.label]
    pred = class_names[example.predicted]
    text = f"#{example.row} label={label} pred={pred} {score_name}={example.score:.3g} \u2192 "
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
            return class_values(e, i, top.n_outputs)
        assert e.attention is not None
        return e.attention[:, j - 1]

    labels = [f"class {c}: {top.class_names[c]}" for c in range(len(top.by_class))]
    return _View(top.by_class, labels, colourings, values, "score")


def _head_view(top: TopExamples) -> _View:
    """One list per head, coloured by its attention or (one-logit probes) its contribution."""
    if not top.by_head:
        raise InputError(
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

    Each sample starts with a tag token ``#row label=TRUE pred=PREDICTED score=... →`` (value 0,
    so it stays white): the true class, the class the probe predicts, the ranking score.

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
        raise InputError(f"view must be 'class' or 'head', got {view!r}")
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
