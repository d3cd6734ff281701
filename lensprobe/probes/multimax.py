"""MultiMax: an attention probe whose heads each read the one token they score highest.

The aggregator Kramár et al. (2026, "Building production-ready probes for Gemini") found to
generalise from short training texts to long contexts, where a softmax average dilutes a short
harmful passage among thousands of ordinary tokens. For one sequence and H heads::

    scores = x @ Q - w * distance           as in the attention probe
    t_h    = argmax over the tokens read of scores[:, h]
    out    = sum_h x[t_h] @ V_h + b

A hard maximum has no gradient with respect to the scores, so training uses a straight-through
estimator: the weights are ``onehot + softmax - softmax.detach()``. The forward pass is the hard
selection exactly (the added term is zero); the backward pass is that of the attention probe with
the same scores, so the query and the position slope learn. Ties go to the first token in order,
so neither the padding side nor the pad length changes the output.

The query starts random (seeded, like the values) so that the heads start at different tokens:
at zero every head would start at the first token it reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.probes.attention import AttentionProbe, HeadStream
from lensprobe.probes.config import ProbeConfig

QUERY_SEED_OFFSET = 1_000_003
"""Added to a member's seed for its query's generator, so that query and values differ."""


class MultiMaxStream(HeadStream):
    """Each head's best score so far and its token's value (a later tie does not replace it)."""

    def __init__(self, probe: Any, batch: int):
        super().__init__(probe, batch)
        self.best = self.blank(float("-inf"))
        self.value = self.blank(0.0, self.n_out)

    def _push(self, x: Tensor, valid: Tensor) -> None:
        scores, values = self.score_value(x)
        better = valid[:, None] & (scores > self.best)
        self.best = torch.where(better, scores, self.best)
        self.value = torch.where(better[..., None], values, self.value)

    def _logits(self) -> Tensor:
        return self.value.sum(dim=1) + self.params["bias"]


class MultiMaxProbe(AttentionProbe):
    """Each head reads its highest-scoring token (``multimax-4``); trained straight-through.

    Same parameters, options and constructor as :class:`AttentionProbe`. The weights it reports
    per head are one-hot: its attention entropy is 0.
    """

    kind = "multimax"
    stream_class = MultiMaxStream

    @classmethod
    def init_members(cls, config: ProbeConfig, seeds: list[int]) -> dict[str, Tensor]:
        """As the attention probe, with a seeded random query of std ``1 / sqrt(d_model)``."""
        params = super().init_members(config, seeds)
        std = 1.0 / math.sqrt(config.d_model)
        queries = [
            torch.randn(
                params["query"].shape[1:],
                generator=torch.Generator().manual_seed(seed + QUERY_SEED_OFFSET),
            )
            * std
            for seed in seeds
        ]
        params["query"] = torch.stack(queries)
        return params

    @classmethod
    def forward_members(
        cls,
        config: ProbeConfig,
        params: Mapping[str, Tensor],
        x: Float[Tensor, "batch pos d_model"],
        mask: Bool[Tensor, "batch pos"],
        *,
        matmul_dtype: torch.dtype | None = None,
        input_scale: float = 1.0,
    ) -> tuple[
        Float[Tensor, "member batch n_outputs"], Float[Tensor, "member batch pos probe_head"]
    ]:
        """Logits and the one-hot weight of every head of every member."""
        m = params["query"].shape[0]
        scores, values = cls.scores_and_values(
            config, params, x, mask, matmul_dtype=matmul_dtype, input_scale=input_scale
        )
        assert values is not None
        soft = scores.softmax(dim=1)
        hard = torch.zeros_like(soft).scatter_(1, scores.argmax(dim=1, keepdim=True), 1.0)
        weights = hard + (soft - soft.detach())
        out = (weights[..., None] * values).sum(dim=1)  # (batch, k, n_outputs)
        logits = rearrange(out, "b (m h) c -> m b h c", m=m).sum(dim=2)
        logits = logits + params["bias"][:, None, :]
        return logits, rearrange(weights, "b p (m h) -> m b p h", m=m)
