"""What a trained probe attends to: per-head attention entropy, token contributions, top examples.

Three analyses of the EleutherAI "Attention Probes" study, done on every sequence asked for:

- :func:`attention_entropy`: for each sequence and probe head, the entropy (in nats) of the
  head's attention over the sequence's valid tokens, next to the entropy of a uniform
  distribution over the same number of valid tokens, ``log(n_valid)``, and their ratio.
- :func:`token_contributions`: each token's exact share of each logit, for every probe kind
  (``logits = contributions.sum(pos) + bias``).
- :func:`top_examples`: the true top-k sequences by class logit, for each class, and for each
  probe head the top-k sequences by the largest attention weight the head puts on one token,
  plus the tokens that receive the most attention mass over all the sequences.

Every function takes a probe and either an :class:`~lensprobe.activations.Activations` or a padded
``(x, mask)`` pair, optionally restricted to some ``rows`` (e.g. a protocol's test rows). Work is
done in batches, on the probe's device, in ``no_grad`` and eval mode (the probe's mode is restored).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.metrics import probabilities
from lensprobe.probes import AttentionProbe, LastTokenProbe, MaxProbe, MeanProbe, Probe
from lensprobe.probes.base import check_inputs
from lensprobe.probes.pooled import last_index

__all__ = [
    "AttentionEntropy",
    "Example",
    "TokenMass",
    "TopExamples",
    "attention_entropy",
    "class_scores",
    "entropy_from_attention",
    "explain",
    "token_contributions",
    "top_examples",
]

Data = Activations | tuple[Tensor, Tensor]
"""What the analyses read: an Activations, or padded ``(x, mask)``."""


# -- plumbing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _evaluating(probe: Probe) -> Iterator[None]:
    """Eval mode and no_grad for the duration; the probe's train/eval mode is restored."""
    was_training = probe.training
    probe.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        probe.train(was_training)


def _n_sequences(acts: Data) -> int:
    if isinstance(acts, Activations):
        return len(acts)
    if isinstance(acts, tuple) and len(acts) == 2:
        x, mask = acts
        check_inputs(x, mask, x.shape[-1] if x.ndim == 3 else -1)
        return int(x.shape[0])
    raise TypeError(
        f"expected an Activations (from lp.capture) or an (x, mask) tuple, got {type(acts).__name__}"
    )


def _resolve_rows(rows: Any, n: int) -> Tensor:
    """Rows as a 1-D int64 tensor of positions in ``[0, n)`` (all rows when ``None``)."""
    if rows is None:
        return torch.arange(n)
    rows = torch.as_tensor(rows).reshape(-1)
    if rows.dtype == torch.bool:
        if rows.numel() != n:
            raise ValueError(f"a bool rows mask needs {n} entries, got {rows.numel()}")
        return rows.nonzero().flatten().cpu()
    if rows.is_floating_point():
        raise TypeError(f"rows must be integer indices, got dtype {rows.dtype}")
    rows = rows.to(device="cpu", dtype=torch.long)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise IndexError(
            f"rows must lie in [0, {n}) for these {n} sequences; got [{int(rows.min())}, "
            f"{int(rows.max())}]: pass rows of the same activations the probe was evaluated on"
        )
    return rows


def _probe_device_dtype(probe: Probe) -> tuple[torch.device, torch.dtype]:
    p = next(probe.parameters())
    return p.device, p.dtype


def _batches(
    probe: Probe, acts: Data, rows: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Padded ``(x, mask)`` batches of ``rows`` on the probe's device, and their rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device, dtype = _probe_device_dtype(probe)
    for start in range(0, rows.numel(), batch_size):
        sel = rows[start : start + batch_size]
        if isinstance(acts, Activations):
            x, mask = acts.pad(sel, dtype=dtype, device=device)
        else:
            x_all, mask_all = acts
            idx = sel.to(x_all.device)
            x = x_all[idx].to(device=device, dtype=dtype)
            mask = mask_all[idx].to(device)
        check_inputs(x, mask, probe.config.d_model)
        yield x, mask, sel


def _class_names(probe: Probe, acts: Data) -> tuple[str, ...]:
    names = probe.config.class_names
    if names is None and isinstance(acts, Activations):
        meta_names = acts.meta.class_names
        if meta_names is not None and len(meta_names) == probe.config.n_classes:
            names = meta_names
    if names is None:
        names = tuple(str(c) for c in range(probe.config.n_classes))
    return tuple(names)


def _require_attention(probe: Probe, what: str) -> AttentionProbe:
    if not isinstance(probe, AttentionProbe):
        raise TypeError(
            f"{what} needs an AttentionProbe, got a {probe.config.kind} probe: a mean probe's "
            "attention is uniform (entropy ratio 1) and a last-token probe's is one-hot (ratio 0); "
            "use lp.analysis.token_contributions to see which tokens a pooled probe reads"
        )
    return probe


# -- entropy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionEntropy:
    """Entropy of each probe head's attention, per sequence, against a uniform baseline.

    Entropies are in nats. A sequence with one valid token has entropy 0 and uniform entropy 0;
    its ratio is undefined and stored as NaN, and every summary leaves it out of the ratios (it
    still counts, with zeros, in the mean entropies).
    """

    entropy: Float[Tensor, "batch probe_head"]
    """Entropy ``-sum_t a_t log a_t`` of each head's attention over the valid tokens."""
    uniform: Float[Tensor, " batch"]
    """Entropy of a uniform distribution over the same valid tokens: ``log(n_valid)``."""
    ratio: Float[Tensor, "batch probe_head"]
    """``entropy / uniform``: 1 for uniform attention, 0 for one token; NaN where n_valid is 1."""
    n_valid: Int[Tensor, " batch"]
    """Valid tokens of each sequence."""
    rows: Int[Tensor, " batch"]
    """Row of each sequence in the activations it was computed on."""

    @property
    def n_heads(self) -> int:
        """Probe heads."""
        return int(self.entropy.shape[1])

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    def _stats(self, entropy: Tensor, uniform: Tensor, ratio: Tensor) -> dict[str, Any]:
        defined = ratio[~ratio.isnan()]
        mean_entropy = float(entropy.mean()) if entropy.numel() else math.nan
        mean_uniform = float(uniform.mean()) if uniform.numel() else math.nan
        return {
            "mean_entropy": mean_entropy,
            "std_entropy": float(entropy.std()) if entropy.numel() > 1 else math.nan,
            "mean_uniform": mean_uniform,
            "mean_ratio": float(defined.mean()) if defined.numel() else math.nan,
            "median_ratio": float(defined.median()) if defined.numel() else math.nan,
            "ratio_of_means": mean_entropy / mean_uniform if mean_uniform > 0 else math.nan,
            "n_sequences": int(entropy.numel()),
            "n_ratio_defined": int(defined.numel()),
        }

    def per_head(self) -> list[dict[str, Any]]:
        """One row per head: mean and spread of its entropy, the uniform baseline, the ratios.

        Keys: ``head``, ``mean_entropy``, ``std_entropy``, ``mean_uniform``, ``mean_ratio``
        (mean of per-sequence ratios), ``median_ratio``, ``ratio_of_means`` (mean entropy over
        mean uniform entropy), ``n_sequences`` and ``n_ratio_defined`` (sequences with more than
        one valid token).
        """
        return [
            {"head": h, **self._stats(self.entropy[:, h], self.uniform, self.ratio[:, h])}
            for h in range(self.n_heads)
        ]

    def summary(self) -> dict[str, Any]:
        """The same statistics over every head and sequence together."""
        h = self.n_heads
        stats = self._stats(
            self.entropy.reshape(-1), self.uniform.repeat_interleave(h), self.ratio.reshape(-1)
        )
        stats["n_heads"] = h
        return stats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summaries and the per-sequence values (NaN ratios as ``None``)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "summary": {
                k: clean(v) if isinstance(v, float) else v for k, v in self.summary().items()
            },
            "per_head": [
                {k: clean(v) if isinstance(v, float) else v for k, v in row.items()}
                for row in self.per_head()
            ],
            "rows": self.rows.tolist(),
            "n_valid": self.n_valid.tolist(),
            "uniform": self.uniform.tolist(),
            "entropy": self.entropy.tolist(),
            "ratio": [[clean(v) for v in r] for r in self.ratio.tolist()],
        }


def entropy_from_attention(
    attention: Float[Tensor, "batch pos probe_head"],
    mask: Bool[Tensor, "batch pos"],
    rows: Int[Tensor, " batch"] | None = None,
) -> AttentionEntropy:
    """Entropy of attention distributions over the valid tokens (the pure core of the analysis).

    Args:
        attention: Each head's attention over each sequence's positions; every head's weights
            over the valid tokens should sum to one.
        mask: True at valid tokens. Weights at masked positions are ignored.
        rows: Row of each sequence in its activations (default ``0..batch-1``).

    Returns:
        Per sequence and head: the entropy (nats), ``log(n_valid)`` and their ratio.
    """
    if mask.shape != attention.shape[:2]:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match attention {tuple(attention.shape)[:2]}"
        )
    p = attention.detach().double().cpu().masked_fill(~mask.cpu()[..., None], 0.0)
    entropy = (-torch.special.xlogy(p, p).sum(dim=1)).clamp_min(0.0) + 0.0  # no -0.0
    n_valid = mask.sum(dim=1).cpu().long()
    if bool((n_valid == 0).any()):
        raise ValueError("a sequence has no valid token; drop it or fix the mask")
    uniform = n_valid.double().log()
    ratio = torch.where(
        (n_valid > 1)[:, None], entropy / uniform.clamp_min(1e-300)[:, None], math.nan
    )
    if rows is None:
        rows = torch.arange(attention.shape[0])
    return AttentionEntropy(
        entropy=entropy.float(),
        uniform=uniform.float(),
        ratio=ratio.float(),
        n_valid=n_valid,
        rows=rows.cpu().long(),
    )


def attention_entropy(
    probe: Probe,
    acts: Data,
    *,
    rows: Sequence[int] | Tensor | None = None,
    batch_size: int = 64,
) -> AttentionEntropy:
    """Per sequence and probe head, the entropy of the attention against a uniform baseline.

    Args:
        probe: An attention probe.
        acts: Activations at the probe's hook, or a padded ``(x, mask)`` pair.
        rows: Which sequences (e.g. ``result.test_rows``); default all.
        batch_size: Sequences per forward.

    Returns:
        An :class:`AttentionEntropy`; ``.per_head()`` and ``.summary()`` give the summaries.

    Example:
        >>> ent = lp.attention_entropy(res.probe, acts, rows=res.test_rows)
        >>> ent.per_head()[0]["mean_ratio"]   # 1.0: as spread as uniform; 0.0: one token
    """
    attn_probe = _require_attention(probe, "attention_entropy")
    sel = _resolve_rows(rows, _n_sequences(acts))
    parts: list[AttentionEntropy] = []
    with _evaluating(attn_probe):
        for x, mask, batch_rows in _batches(attn_probe, acts, sel, batch_size):
            # the tokens the probe reads (BOS left out when the probe excludes it)
            read = attn_probe.effective_mask(mask)
            parts.append(entropy_from_attention(attn_probe.attention(x, mask), read, batch_rows))
    if not parts:
        h = attn_probe.config.n_heads
        return AttentionEntropy(
            entropy=torch.zeros(0, h),
            uniform=torch.zeros(0),
            ratio=torch.zeros(0, h),
            n_valid=torch.zeros(0, dtype=torch.long),
            rows=torch.zeros(0, dtype=torch.long),
        )
    return AttentionEntropy(
        entropy=torch.cat([p.entropy for p in parts]),
        uniform=torch.cat([p.uniform for p in parts]),
        ratio=torch.cat([p.ratio for p in parts]),
        n_valid=torch.cat([p.n_valid for p in parts]),
        rows=torch.cat([p.rows for p in parts]),
    )


# -- token contributions -------------------------------------------------------------------------


def _head_contributions(
    probe: AttentionProbe, x: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, attention ``(b, p, h)`` and per-head token contributions ``(b, p, h, c)``."""
    logits, attn = probe(x, mask, return_attention=True)
    values = probe.head_values(x.masked_fill(~mask[..., None], 0.0), mask)
    return logits, attn, attn[..., None] * values


def token_contributions(
    probe: Probe,
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos n_outputs"]:
    """Each token's exact share of each logit: ``logits == contributions.sum(1) + probe.bias``.

    - attention probe: ``sum_h attn[t, h] * (x_t @ V_h)``;
    - mean probe: ``(x_t @ W) / n_valid``;
    - last-token probe: ``x_last @ W`` on the last valid token, 0 elsewhere;
    - max probe: feature ``d`` is credited to the token holding the maximum (split evenly between
      tied tokens), so token ``t`` gets ``sum_{d won by t} x[t, d] W[d]``.

    Masked positions get 0. Runs in no_grad and eval mode (the probe's mode is restored).

    Args:
        probe: Any lensprobe probe.
        x: Padded activations.
        mask: True at valid tokens.
    """
    check_inputs(x, mask, probe.config.d_model)
    _, dtype = _probe_device_dtype(probe)
    with _evaluating(probe):
        if isinstance(probe, AttentionProbe):
            # The probe applies its own effective mask (BOS excluded) to the mask as given.
            x = x.to(dtype).masked_fill(~mask[..., None], 0.0)
            _, _, per_head = _head_contributions(probe, x, mask)
            return per_head.sum(dim=2)
        mask = probe.effective_mask(mask)
        x = x.to(dtype).masked_fill(~mask[..., None], 0.0)
        if isinstance(probe, MeanProbe):
            n_valid = mask.sum(dim=1).to(dtype)
            out = einsum(x, probe.weight, "b p d, d c -> b p c") / n_valid[:, None, None]
        elif isinstance(probe, LastTokenProbe):
            last = torch.nn.functional.one_hot(last_index(mask), mask.shape[1]).to(dtype)
            out = einsum(x * last[..., None], probe.weight, "b p d, d c -> b p c")
        elif isinstance(probe, MaxProbe):
            filled = x.masked_fill(~mask[..., None], float("-inf"))
            winner = (filled == filled.amax(dim=1, keepdim=True)).to(dtype)
            winner = winner / winner.sum(dim=1, keepdim=True)
            out = einsum(x * winner, probe.weight, "b p d, d c -> b p c")
        else:
            raise TypeError(
                f"token_contributions knows attention, mean, last and max probes, got "
                f"{type(probe).__name__}"
            )
        return out.masked_fill(~mask[..., None], 0.0)


# -- top examples --------------------------------------------------------------------------------


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
        raise ValueError(f"sequence {row} has {n_valid} valid tokens but {len(strs)} token strings")
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
    with _evaluating(probe):
        for x, mask, batch_rows in _batches(probe, acts, rows, batch_size):
            if not isinstance(probe, AttentionProbe):
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
        raise ValueError(f"k must be positive, got {k}")
    n = _n_sequences(acts)
    sel = _resolve_rows(rows, n)
    if sel.numel() == 0:
        raise ValueError("no rows to rank; pass at least one sequence")
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
        class_names=_class_names(probe, acts),
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
    with _evaluating(probe):
        for x, mask, batch_rows in _batches(probe, acts, rows, batch_size):
            x = x.masked_fill(~mask[..., None], 0.0)
            if isinstance(probe, AttentionProbe):
                logits, attn, per_head = _head_contributions(probe, x, mask)
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
        raise ValueError(
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
    n = _n_sequences(acts)
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} sequences")
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
        raise ValueError("token_strs must hold one string per valid token of each sequence")
    keys = torch.tensor([key_of.setdefault(s, len(key_of)) for s in strs], dtype=torch.long)
    return keys, strs
