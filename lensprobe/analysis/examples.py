"""The sequences a probe scores highest, per class and per head, and one sequence in detail.

:func:`top_examples` ranks every row asked for (exact lists, not samples): per class by its logit,
per probe head by the largest weight the head puts on one token, and sums each head's attention
per token to find the tokens it reads most. :func:`explain` details one sequence: tokens, logits,
each token's contributions and each head's attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.analysis.contributions import head_contributions, token_contributions
from lensprobe.analysis.inputs import (
    Data,
    batches,
    evaluating,
    n_sequences,
    probe_class_names,
    resolve_rows,
)
from lensprobe.errors import InputError, InputIndexError
from lensprobe.metrics import probabilities
from lensprobe.probes import Probe

__all__ = ["Example", "TokenMass", "TopExamples", "class_scores", "explain", "top_examples"]


@dataclass(frozen=True)
class Example:
    """One sequence of a top-k list, with everything a view needs to show it."""

    row: int
    """Row of the sequence in the activations."""
    rank: int
    """0 for the top sequence of its list."""
    score: float
    """What the list is ranked by (a class logit, or a head's largest attention weight)."""
    tokens: tuple[str, ...]
    """The valid tokens, decoded one by one."""
    logits: Float[Tensor, " n_outputs"]
    """The probe's logits for the sequence."""
    contributions: Float[Tensor, "pos n_outputs"]
    """Each token's share of each logit (:func:`token_contributions`)."""
    attention: Float[Tensor, "pos probe_head"] | None
    """Each head's attention over the valid tokens (attention probes only)."""
    head_contributions: Float[Tensor, "pos probe_head n_outputs"] | None
    """``contributions`` split by head (attention probes only)."""
    label: int | None
    """The true class, when the activations carry labels."""
    text: str | None
    """The source text, when known."""
    head: int | None = None
    """For a per-head list: the head it ranks."""
    peak: int | None = None
    """For a per-head list: position of the token the head weights most."""

    @property
    def probs(self) -> Float[Tensor, " n_classes"]:
        """Class probabilities (sigmoid for one logit, softmax otherwise)."""
        return probabilities(self.logits[None])[0]

    @property
    def predicted(self) -> int:
        """The most probable class."""
        return int(self.probs.argmax())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tensors as nested lists)."""
        return {
            "row": self.row,
            "rank": self.rank,
            "score": self.score,
            "label": self.label,
            "predicted": self.predicted,
            "probs": self.probs.tolist(),
            "logits": self.logits.tolist(),
            "tokens": list(self.tokens),
            "text": self.text,
            "head": self.head,
            "peak": self.peak,
            "contributions": self.contributions.tolist(),
            "attention": None if self.attention is None else self.attention.tolist(),
        }


@dataclass(frozen=True)
class TokenMass:
    """A token (string) and how much of a head's attention it receives over many sequences."""

    token: str
    """The token as decoded (all occurrences of the same id, or string, are pooled)."""
    mass: float
    """Attention weight summed over all occurrences in all sequences."""
    share: float
    """``mass`` over the head's total mass (one per sequence): the token's share of the head."""
    count: int
    """Occurrences of the token in the sequences."""

    @property
    def mean_weight(self) -> float:
        """Average attention weight per occurrence."""
        return self.mass / self.count if self.count else math.nan


@dataclass(frozen=True)
class TopExamples:
    """The top-k sequences per class and per probe head, and each head's favourite tokens."""

    k: int
    """Sequences per list (at most the number of rows)."""
    class_names: tuple[str, ...]
    """Name of each class."""
    by_class: tuple[tuple[Example, ...], ...]
    """``by_class[c]``: sequences with the highest class-``c`` logit, best first. A one-logit probe
    ranks class 1 by the logit and class 0 by minus the logit (its log-odds)."""
    by_head: tuple[tuple[Example, ...], ...]
    """``by_head[h]``: sequences where head ``h`` puts the largest weight on one token (empty for
    pooled probes)."""
    head_tokens: tuple[tuple[TokenMass, ...], ...]
    """``head_tokens[h]``: tokens receiving the most attention mass of head ``h`` in total."""
    n_rows: int
    """Sequences the lists were chosen from."""
    probe_kind: str
    """Kind of the probe (``attention``, ``mean``, ``last``, ``max``)."""
    n_outputs: int
    """Logits of the probe (1 for a binary task)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "k": self.k,
            "class_names": list(self.class_names),
            "n_rows": self.n_rows,
            "probe_kind": self.probe_kind,
            "n_outputs": self.n_outputs,
            "by_class": [[e.to_dict() for e in lst] for lst in self.by_class],
            "by_head": [[e.to_dict() for e in lst] for lst in self.by_head],
            "head_tokens": [
                [
                    {"token": t.token, "mass": t.mass, "share": t.share, "count": t.count}
                    for t in lst
                ]
                for lst in self.head_tokens
            ],
        }


def class_scores(logits: Float[Tensor, "batch n_outputs"]) -> Float[Tensor, "batch n_classes"]:
    """Ranking score of every class: the logit, or ``[-logit, logit]`` for a one-logit probe."""
    if logits.shape[-1] == 1:
        return torch.cat([-logits, logits], dim=-1)
    return logits


def _top_rows(scores: Tensor, k: int) -> Tensor:
    """Positions of the k largest scores, best first; ties keep the earlier position first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def _sequence_tokens(acts: Data, row: int, n_valid: int, token_strs: Any) -> tuple[str, ...]:
    if token_strs is not None:
        strs = token_strs[row]
    elif isinstance(acts, Activations) and acts.token_strs is not None:
        strs = acts.token_strs[row]
    elif isinstance(acts, Activations):
        start, end = int(acts.offsets[row]), int(acts.offsets[row + 1])
        strs = [f"[{i}]" for i in acts.token_ids[start:end].tolist()]
    else:
        strs = [f"[{p}]" for p in range(n_valid)]
    if len(strs) != n_valid:
        raise InputError(f"sequence {row} has {n_valid} valid tokens but {len(strs)} token strings")
    return tuple(str(s) for s in strs)


@dataclass(frozen=True)
class _RowScores:
    """Pass 1 of :func:`top_examples`: what ranks every row, and each head's mass per token."""

    logits: Float[Tensor, "row n_outputs"]
    peaks: Float[Tensor, "row probe_head"] | None
    """Largest weight each head puts on one token (attention probes only)."""
    head_tokens: tuple[tuple[TokenMass, ...], ...]


def _batch_token_mass(
    attention: Float[Tensor, "token probe_head"],
    keys: Int[Tensor, " token"],
    strs: Sequence[str],
    first_str: dict[int, str],
) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct token keys of a batch, each head's attention mass on them and their counts.

    ``first_str`` learns the text of each key the first time it is seen.
    """
    uniq, inverse = torch.unique(keys, return_inverse=True)
    mass = torch.zeros(uniq.numel(), attention.shape[1], dtype=torch.float64)
    mass.index_add_(0, inverse, attention)
    count = torch.bincount(inverse, minlength=uniq.numel())
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel()), reduce="amin")
    for key, at in zip(uniq.tolist(), first.tolist(), strict=True):
        first_str.setdefault(key, strs[at])
    return uniq, mass, count


def _head_tokens(
    parts: Sequence[tuple[Tensor, Tensor, Tensor]],
    first_str: dict[int, str],
    n_tokens: int,
    n_rows: int,
) -> tuple[tuple[TokenMass, ...], ...]:
    """Per head, the ``n_tokens`` tokens with the most attention mass over all batches."""
    keys, inverse = torch.unique(torch.cat([u for u, _, _ in parts]), return_inverse=True)
    n_heads = parts[0][1].shape[1]
    table = torch.zeros(keys.numel(), n_heads, dtype=torch.float64)
    table.index_add_(0, inverse, torch.cat([m for _, m, _ in parts]))
    count = torch.zeros(keys.numel(), dtype=torch.long)
    count.index_add_(0, inverse, torch.cat([c for _, _, c in parts]))
    return tuple(
        tuple(
            TokenMass(
                token=first_str[int(keys[i])],
                mass=float(table[i, h]),
                share=float(table[i, h]) / n_rows,
                count=int(count[i]),
            )
            for i in _top_rows(table[:, h], min(n_tokens, keys.numel())).tolist()
        )
        for h in range(n_heads)
    )


def _score_rows(
    probe: Probe,
    acts: Data,
    rows: Tensor,
    batch_size: int,
    token_strs: Sequence[Sequence[str]] | None,
    n_tokens: int,
) -> _RowScores:
    """Pass 1: every row's logits (and, for an attention probe, peaks and tokens per head).

    For an attention probe: each row's largest weight on one token, per head, and the tokens
    each head reads most over all the rows.
    """
    logits_parts, peak_parts, mass_parts = [], [], []
    key_of: dict[str, int] = {}
    first_str: dict[int, str] = {}
    with evaluating(probe):
        for x, mask, batch_rows in batches(probe, acts, rows, batch_size):
            if not probe.attends:
                logits_parts.append(probe(x, mask).float().cpu())
                continue
            logits, attn = probe(x, mask, return_attention=True)
            logits_parts.append(logits.float().cpu())
            peak_parts.append(attn.amax(dim=1).float().cpu())
            keys, strs = _token_keys(acts, batch_rows, mask.cpu(), token_strs, key_of)
            valid = attn[mask].double().cpu()  # (tokens, head), row-major = packed order
            mass_parts.append(_batch_token_mass(valid, keys, strs, first_str))
    if not peak_parts:
        return _RowScores(torch.cat(logits_parts), None, ())
    head_tokens = _head_tokens(mass_parts, first_str, n_tokens, rows.numel())
    return _RowScores(torch.cat(logits_parts), torch.cat(peak_parts), head_tokens)


@dataclass(frozen=True)
class _Source:
    """Where the examples come from: the activations, the rows ranked, their strings and labels."""

    acts: Data
    rows: Tensor
    token_strs: Sequence[Sequence[str]] | None
    labels: Tensor | None
    texts: Sequence[str] | None


def _ranked(
    source: _Source,
    detail: dict[int, dict[str, Any]],
    picks: Sequence[Tensor],
    scores: Tensor,
    per_head: bool,
) -> tuple[tuple[Example, ...], ...]:
    """One list of examples per column of ``scores`` (a class or a head), best first."""
    return tuple(
        tuple(
            _example(
                detail[int(source.rows[p])],
                source.acts,
                int(source.rows[p]),
                source.token_strs,
                source.labels,
                source.texts,
                rank=rank,
                score=float(scores[p, j]),
                head=j if per_head else None,
            )
            for rank, p in enumerate(picked.tolist())
        )
        for j, picked in enumerate(picks)
    )


def top_examples(
    probe: Probe,
    acts: Data,
    k: int = 10,
    *,
    rows: Sequence[int] | Tensor | None = None,
    n_tokens: int = 20,
    batch_size: int = 64,
    token_strs: Sequence[Sequence[str]] | None = None,
    labels: Sequence[int] | Tensor | None = None,
) -> TopExamples:
    """The true top-k sequences per class (by logit) and per probe head (by peak attention).

    All ``rows`` are scored (in batches); the lists are exact, not samples. For each head, the
    sequences are ranked by the largest weight the head gives one token (the token is the
    example's ``peak``), and ``head_tokens`` sums the head's attention over every occurrence of
    each token to find the tokens it reads most.

    Args:
        probe: Any probe (the per-head lists are empty for pooled probes).
        acts: Activations at the probe's hook, or a padded ``(x, mask)`` pair.
        k: Sequences per list.
        rows: Which sequences to rank (e.g. ``result.test_rows``); default all.
        n_tokens: Tokens per ``head_tokens`` list.
        batch_size: Sequences per forward.
        token_strs: Token strings per sequence, for ``(x, mask)`` input (Activations carry theirs;
            without strings tokens show as ``[id]`` or ``[position]``).
        labels: True classes for ``(x, mask)`` input (Activations carry theirs).

    Returns:
        A :class:`TopExamples`.
    """
    if k < 1:
        raise InputError(f"k must be positive, got {k}")
    n = n_sequences(acts)
    sel = resolve_rows(rows, n)
    if sel.numel() == 0:
        raise InputError("no rows to rank; pass at least one sequence")
    source = _Source(acts, sel, token_strs, *_labels_texts(acts, labels, n))
    scored = _score_rows(probe, acts, sel, batch_size, token_strs, n_tokens)
    k = min(k, sel.numel())
    by_score = class_scores(scored.logits)
    class_picks = [_top_rows(by_score[:, c], k) for c in range(by_score.shape[1])]
    peaks = scored.peaks
    head_picks = [] if peaks is None else [_top_rows(peaks[:, h], k) for h in range(peaks.shape[1])]
    # pass 2: the chosen rows in detail
    needed = sorted({int(i) for t in [*class_picks, *head_picks] for i in t.tolist()})
    detail = _details(probe, acts, sel[needed], batch_size)
    return TopExamples(
        k=k,
        class_names=probe_class_names(probe, acts),
        by_class=_ranked(source, detail, class_picks, by_score, per_head=False),
        by_head=() if peaks is None else _ranked(source, detail, head_picks, peaks, per_head=True),
        head_tokens=scored.head_tokens,
        n_rows=int(sel.numel()),
        probe_kind=probe.config.kind,
        n_outputs=probe.config.n_outputs,
    )


def _details(probe: Probe, acts: Data, rows: Tensor, batch_size: int) -> dict[int, dict[str, Any]]:
    """Logits, contributions and attention (valid tokens only) of some rows, keyed by row."""
    detail: dict[int, dict[str, Any]] = {}
    with evaluating(probe):
        for x, mask, batch_rows in batches(probe, acts, rows, batch_size):
            x = x.masked_fill(~mask[..., None], 0.0)
            if probe.attends:
                logits, attn, per_head = head_contributions(probe, x, mask)
                contrib = per_head.sum(dim=2)
            else:
                logits, attn, per_head = probe(x, mask), None, None
                contrib = token_contributions(probe, x, mask)
            for b, row in enumerate(batch_rows.tolist()):
                m = mask[b]
                detail[row] = {
                    "logits": logits[b].float().cpu(),
                    "contributions": contrib[b][m].float().cpu(),
                    "attention": None if attn is None else attn[b][m].float().cpu(),
                    "head_contributions": None
                    if per_head is None
                    else per_head[b][m].float().cpu(),
                }
    return detail


def _labels_texts(
    acts: Data, labels: Sequence[int] | Tensor | None, n: int
) -> tuple[Tensor | None, list[str] | None]:
    if labels is None and isinstance(acts, Activations):
        labels = acts.labels
    label_t = None if labels is None else torch.as_tensor(labels).long().cpu()
    if label_t is not None and label_t.shape != (n,):
        raise InputError(
            f"labels must hold one class per sequence ({n}), got {tuple(label_t.shape)}"
        )
    texts = acts.texts if isinstance(acts, Activations) else None
    return label_t, texts


def explain(
    probe: Probe,
    acts: Data,
    index: int = 0,
    *,
    token_strs: Sequence[Sequence[str]] | None = None,
    labels: Sequence[int] | Tensor | None = None,
) -> Example:
    """One sequence in detail: tokens, logits, each token's contributions, each head's attention.

    Args:
        probe: Any probe.
        acts: Activations at the probe's hook, or a padded ``(x, mask)`` pair.
        index: Which sequence (negative counts from the end).
        token_strs: Token strings per sequence, for ``(x, mask)`` input.
        labels: True classes, for ``(x, mask)`` input.

    Returns:
        An :class:`Example` whose ``score`` is the predicted class's score (see
        :func:`class_scores`).
    """
    n = n_sequences(acts)
    if not -n <= index < n:
        raise InputIndexError(f"index {index} out of range for {n} sequences")
    row = index % n
    label_t, texts = _labels_texts(acts, labels, n)
    d = _details(probe, acts, torch.tensor([row]), 1)[row]
    score = float(class_scores(d["logits"][None])[0].max())
    return _example(d, acts, row, token_strs, label_t, texts, rank=0, score=score)


def _example(
    d: dict[str, Any],
    acts: Any,
    row: int,
    token_strs: Sequence[Sequence[str]] | None,
    label_t: Tensor | None,
    texts: Sequence[str] | None,
    *,
    rank: int,
    score: float,
    head: int | None = None,
) -> Example:
    """An :class:`Example` from one row's details (``head``: the head whose list it is in)."""
    return Example(
        row=row,
        rank=rank,
        score=score,
        tokens=_sequence_tokens(acts, row, d["contributions"].shape[0], token_strs),
        logits=d["logits"],
        contributions=d["contributions"],
        attention=d["attention"],
        head_contributions=d["head_contributions"],
        label=None if label_t is None else int(label_t[row]),
        text=None if texts is None else texts[row],
        head=head,
        peak=None if head is None else int(d["attention"][:, head].argmax()),
    )


def _token_keys(
    acts: Data,
    batch_rows: Tensor,
    mask: Tensor,
    token_strs: Sequence[Sequence[str]] | None,
    key_of: dict[str, int],
) -> tuple[Tensor, list[str]]:
    """A key per valid token of the batch (token id, or an id per distinct string) and its text.

    Tokens come in the order of ``attn[mask]``: sequence by sequence, position by position.
    """
    lengths = mask.sum(dim=1).tolist()
    rows = batch_rows.tolist()
    strs: list[str] | None = None
    if token_strs is not None:
        strs = [str(s) for r in rows for s in token_strs[r]]
    elif isinstance(acts, Activations) and acts.token_strs is not None:
        strs = [s for r in rows for s in acts.token_strs[r]]
    if isinstance(acts, Activations):
        ids = acts[batch_rows].token_ids
        if strs is None:
            strs = [f"[{i}]" for i in ids.tolist()]
        return ids, strs
    if strs is None:  # (x, mask) without strings: pool by position
        strs = [f"[{p}]" for n_valid in lengths for p in range(n_valid)]
    if len(strs) != sum(lengths):
        raise InputError("token_strs must hold one string per valid token of each sequence")
    keys = torch.tensor([key_of.setdefault(s, len(key_of)) for s in strs], dtype=torch.long)
    return keys, strs
