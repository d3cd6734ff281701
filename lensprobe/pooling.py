"""Pooling a sequence's tokens into one vector: the one implementation, torch only.

The pooled probes (:mod:`lensprobe.probes.pooled`), capture-time reduction
(:mod:`lensprobe.reduced`) and a reduction computed where a remote model runs (nnsight / NDIF: the
server has torch but not lensprobe, so this module imports nothing else of lensprobe and its
functions are shipped by value) all pool through :func:`pool`, so their vectors agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["POOLINGS", "last_index", "pool", "pool_all", "token_norms", "without_first_token"]

POOLINGS: tuple[str, ...] = ("mean", "last", "max")
"""The poolings :func:`pool` knows."""

NORM_ROWS = 32
"""Sequences whose token norms are taken in float64 at a time (a norm is per token: exact)."""


def without_first_token(mask: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """``mask`` with each row's first valid token removed (rows of one valid token unchanged)."""
    first = mask & (mask.cumsum(dim=-1) == 1)
    keep_first = mask.sum(dim=-1, keepdim=True) < 2
    return mask & (~first | keep_first)


def last_index(mask: Bool[Tensor, "batch pos"]) -> Tensor:
    """Index of the last valid token of each row."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask, positions, -1).amax(dim=-1)


def pool(
    kind: str, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_model"]:
    """One vector per sequence from its valid tokens (``x`` is zero where masked).

    ``mean``: the mean of the valid tokens; ``last``: the last valid token; ``max``: the
    elementwise maximum over the valid tokens.
    """
    if kind == "mean":
        return x.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(x.dtype)
    if kind == "last":
        return x[torch.arange(x.shape[0], device=x.device), last_index(mask)]
    if kind == "max":
        return x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
    raise ValueError(f"unknown pooling {kind!r}; choose one of {POOLINGS}")


def pool_all(
    x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"], kinds: Sequence[str]
) -> Float[Tensor, "batch kind d_model"]:
    """Each sequence's pooled vector per kind, in float32.

    ``mask`` is the tokens to pool; ``x`` may hold anything at the other positions (padding).
    """
    xf = x.to(torch.float32).masked_fill(~mask[..., None], 0.0)
    if not kinds:
        return xf.new_zeros(x.shape[0], 0, x.shape[-1])
    return torch.stack([pool(k, xf, mask) for k in kinds], dim=1)


def token_norms(x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
    """The norm of every position of ``x``, taken in float64, as float32.

    Float64 because a float32 sum of squares overflows at entries of ~1e19; float32 after, which
    holds any such norm and halves what a reduced store keeps per token.
    """
    out = [
        torch.linalg.vector_norm(x[i : i + NORM_ROWS].double(), dim=-1).float()
        for i in range(0, x.shape[0], NORM_ROWS)
    ]
    return torch.cat(out) if out else x.new_zeros(0, x.shape[1], dtype=torch.float32)
