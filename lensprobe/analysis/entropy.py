"""How spread each probe head's attention is: its entropy per sequence against a uniform baseline.

For each sequence and probe head, the entropy (in nats) of the head's attention over the
sequence's valid tokens, next to the entropy of a uniform distribution over the same number of
valid tokens, ``log(n_valid)``, and their ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.analysis.inputs import (
    Data,
    batches,
    evaluating,
    n_sequences,
    require_attention,
    resolve_rows,
)
from lensprobe.errors import InputError
from lensprobe.probes import Probe

__all__ = ["AttentionEntropy", "attention_entropy", "entropy_from_attention"]


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
        raise InputError(
            f"mask {tuple(mask.shape)} does not match attention {tuple(attention.shape)[:2]}"
        )
    p = attention.detach().double().cpu().masked_fill(~mask.cpu()[..., None], 0.0)
    entropy = (-torch.special.xlogy(p, p).sum(dim=1)).clamp_min(0.0) + 0.0  # no -0.0
    n_valid = mask.sum(dim=1).cpu().long()
    if bool((n_valid == 0).any()):
        raise InputError("a sequence has no valid token; drop it or fix the mask")
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
    attn_probe = require_attention(probe, "attention_entropy")
    sel = resolve_rows(rows, n_sequences(acts))
    parts: list[AttentionEntropy] = []
    with evaluating(attn_probe):
        for x, mask, batch_rows in batches(attn_probe, acts, sel, batch_size):
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
