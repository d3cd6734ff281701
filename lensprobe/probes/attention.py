"""The attention probe of the EleutherAI "Attention Probes" study.

For one sequence ``x (pos, d_model)`` with valid-token mask ``m`` and H probe heads::

    scores = x @ Q + w * position          Q: (d_model, H), w: (H,)
    attn   = softmax(scores over valid pos) one distribution per head
    out    = sum_{pos, head} attn * (x @ V) + b        V: (d_model, H, n_outputs)

``position`` is minus the distance (in valid tokens) from the anchor token: the last valid token
(``position="last"``) or the first (``"first"``). So ``w = 0, Q = 0`` is a mean probe with weight
``sum_h V_h``, and ``w -> +inf`` attends to the anchor only: the last-token (or first-token) probe.
Distances count valid tokens, so the padding side and the amount of padding never change the
output. The per-head value biases of the study sum to one bias, because each head's attention sums
to one; lensprobe keeps that single bias ``b: (n_outputs,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from einops import einsum, rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.probes.base import Probe, check_inputs
from lensprobe.probes.config import ProbeConfig
from lensprobe.probes.stream import TokenStream


def token_distance(
    mask: Bool[Tensor, "batch pos"], anchor: Literal["last", "first"]
) -> Float[Tensor, "batch pos"]:
    """Distance of each valid token from the anchor, counted in valid tokens (0 at the anchor)."""
    rank = mask.cumsum(dim=-1) - 1  # index among valid tokens
    if anchor == "first":
        return rank.float()
    n_valid = mask.sum(dim=-1, keepdim=True)
    return (n_valid - 1 - rank).float()


def _products(
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    weight: Float[Tensor, "d_model k"],
    dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> Float[Tensor, "batch pos k"]:
    """``x @ weight`` in ``dtype``, returned in ``out_dtype``; zero at masked positions.

    ``x`` at masked positions is never read. On CPU the product runs over the valid tokens only
    (packed, then put back in place), so the padding of short texts in a long batch costs no
    multiplications; on other devices the padded product (``x`` zeroed where masked) avoids the
    host sync that packing needs.
    """
    if x.device.type != "cpu":
        return (_zeroed(x, mask).to(dtype) @ weight.to(dtype)).to(out_dtype)
    if bool(mask.all()):
        return (x.to(dtype) @ weight.to(dtype)).to(out_dtype)
    valid = (x[mask].to(dtype) @ weight.to(dtype)).to(out_dtype)
    out = valid.new_zeros(*mask.shape, weight.shape[1])
    return out.index_put((mask,), valid)


def _zeroed(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with zeros at masked positions.

    On CPU ``x`` itself when every position is valid; elsewhere always a zeroed copy, as checking
    would wait for the device.
    """
    if x.device.type == "cpu" and bool(mask.all()):
        return x
    return x.masked_fill(~mask[..., None], 0.0)


class HeadStream(TokenStream):
    """Running state of the kinds that weigh tokens by per-head scores: new scores and values.

    A new token's score is ``x @ Q + w * rank`` (anchor ``last``) or ``x @ Q - w * rank``
    (``first``), ``rank`` its index among the tokens read. With anchor ``last`` the probe's
    ``x @ Q - w * distance`` is this minus ``w * (n - 1)``, the same for every token of the
    sequence, which no softmax, argmax or window softmax sees; so no score changes as tokens
    arrive.
    """

    def __init__(self, probe: Probe, batch: int):
        super().__init__(probe, batch)
        self.sign = 1.0 if self.config.position == "last" else -1.0
        self.heads, self.n_out = self.config.n_heads, self.config.n_outputs
        self.params = {k: v.detach() for k, v in probe.named_parameters()}

    def score_value(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores ``(batch, head)`` and values ``(batch, head, n_outputs)`` of new tokens."""
        rank = self.count.to(self.dtype)[:, None]
        scores = x @ self.params["query"] + self.sign * rank * self.params["position_weight"]
        return scores, einsum(x, self.params["value"], "b d, d h c -> b h c")

    def blank(self, fill: float, *shape: int) -> Tensor:
        """A ``(batch, heads, *shape)`` tensor of ``fill``."""
        size = (self.count.shape[0], self.heads, *shape)
        return torch.full(size, fill, dtype=self.dtype, device=self.device)


class AttentionStream(HeadStream):
    """Each head's running softmax: the top score, the sum of weights and of weighted values."""

    def __init__(self, probe: Probe, batch: int):
        super().__init__(probe, batch)
        self.top = self.blank(float("-inf"))
        self.total = self.blank(0.0)
        self.weighted = self.blank(0.0, self.n_out)

    def _push(self, x: Tensor, valid: Tensor) -> None:
        scores, values = self.score_value(x)
        top = torch.maximum(self.top, scores)
        old, new = torch.exp(self.top - top), torch.exp(scores - top)
        keep = valid[:, None]
        self.total = torch.where(keep, self.total * old + new, self.total)
        weighted = self.weighted * old[..., None] + new[..., None] * values
        self.weighted = torch.where(keep[..., None], weighted, self.weighted)
        self.top = torch.where(keep, top, self.top)

    def _logits(self) -> Tensor:
        total = torch.where(self.total > 0, self.total, 1.0)[..., None]
        return (self.weighted / total).sum(dim=1) + self.params["bias"]


class AttentionProbe(Probe):
    """Multi-head attention probe: learned query, position bias, per-head values to logits.

    Args:
        d_model: Width of the activations.
        n_heads: Probe heads.
        n_outputs: 1 for a binary task, k for k classes.
        position: Count positions from the ``"last"`` or the ``"first"`` valid token.
        options: The kind's own options (e.g. ``{"window": 8}`` for a rolling probe).
        hook: Hook name the probe reads (recorded in its config).
        model_id: Model the probe was trained on (recorded).
        class_names: Names of the classes (recorded).

    Parameters: ``query (d_model, probe_head)`` (starts at zero: the probe starts as a mean probe),
    ``position_weight (probe_head,)`` (starts at zero), ``value (d_model, probe_head, n_outputs)``
    (random), ``bias (n_outputs,)``. Weight decay applies to ``query`` and ``value``.
    """

    kind = "attention"
    decay_params = ("query", "value")
    ignores_masked = True
    has_heads = True
    attends = True
    stream_class = AttentionStream

    def __init__(
        self,
        d_model: int,
        n_heads: int = 1,
        n_outputs: int = 1,
        position: Literal["last", "first"] = "last",
        *,
        hook: str | None = None,
        model_id: str | None = None,
        class_names: tuple[str, ...] | None = None,
        options: Mapping[str, Any] | None = None,
        config: ProbeConfig | None = None,
    ):
        super().__init__(
            config
            or self.config_from(
                d_model,
                n_outputs,
                hook,
                model_id,
                class_names,
                n_heads=n_heads,
                position=position,
                options=dict(options or {}),
            )
        )

    @classmethod
    def param_shapes(cls, config: ProbeConfig) -> dict[str, tuple[int, ...]]:
        """Query, position slope, values and bias shapes."""
        d, h, c = config.d_model, config.n_heads, config.n_outputs
        return {"query": (d, h), "position_weight": (h,), "value": (d, h, c), "bias": (c,)}

    @classmethod
    def init_members(cls, config: ProbeConfig, seeds: list[int]) -> dict[str, Tensor]:
        """Zero query and slope (a mean probe), seeded random values, zero bias."""
        shapes = cls.param_shapes(config)
        std = 1.0 / math.sqrt(config.d_model * config.n_heads)
        values = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            values.append(torch.randn(shapes["value"], generator=gen) * std)
        m = len(seeds)
        return {
            "query": torch.zeros(m, *shapes["query"]),
            "position_weight": torch.zeros(m, *shapes["position_weight"]),
            "value": torch.stack(values),
            "bias": torch.zeros(m, *shapes["bias"]),
        }

    @classmethod
    def scores_and_values(
        cls,
        config: ProbeConfig,
        params: Mapping[str, Tensor],
        x: Float[Tensor, "batch pos d_model"],
        mask: Bool[Tensor, "batch pos"],
        *,
        matmul_dtype: torch.dtype | None = None,
        input_scale: float = 1.0,
        values: bool = True,
    ) -> tuple[Float[Tensor, "batch pos k"], Float[Tensor, "batch pos k n_outputs"] | None]:
        """Every head's score and value at every token, heads of all members on one axis.

        ``k = (member, head)``. Scores are ``x @ Q - w * distance``, ``-inf`` at masked
        positions; values ``x @ V`` (with ``values``). Both come from one product
        ``x @ [Q | V]``, in ``matmul_dtype`` (default ``x``'s dtype), returned in the
        parameters' dtype and divided by ``input_scale``. ``x`` at masked positions is never
        read. The kinds that weigh tokens by these scores (attention, MultiMax, rolling means)
        share this.
        """
        dt, pt = matmul_dtype or x.dtype, params["query"].dtype
        query = rearrange(params["query"], "m d h -> d (m h)")
        k = query.shape[1]
        weight = query
        if values:
            value = rearrange(params["value"], "m d h c -> d (m h c)")
            weight = torch.cat([query, value], dim=1)
        both = _products(x, mask, weight, dt, pt)
        if input_scale != 1.0:
            both = both / input_scale
        scores = both[..., :k]
        slope = rearrange(params["position_weight"], "m h -> (m h)")
        distance = token_distance(mask, config.position).to(scores.dtype)
        scores = (scores - distance[..., None] * slope).masked_fill(~mask[..., None], float("-inf"))
        per_token = both[..., k:].unflatten(-1, (k, -1)) if values else None
        return scores, per_token

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
        """Logits and attention of every member (see the module docstring for the math).

        Members and heads are merged into one axis ``k = (member, head)``, so each contraction is
        one large matrix product over the shared activations (what makes a sweep cheap). With
        one output the values come first: ``x @ [Q | V]`` is one product ``(batch * pos,
        d_model) x (d_model, 2k)`` and the attention then weighs per-token values, the same
        number of operations as pooling ``x`` per head but without a ``(batch, k, d_model)``
        intermediate and in one large product instead of a product per sequence. With several
        outputs that would cost ``n_outputs + 1`` products, so ``x`` is pooled per head first.
        ``matmul_dtype`` (e.g. bfloat16) applies to the products over ``x`` only; everything
        else is in the parameters' dtype. ``input_scale`` divides the products' outputs. ``x``
        at masked positions is never read (:attr:`ignores_masked`).
        """
        m = params["query"].shape[0]
        n_out = params["value"].shape[-1]
        dt, pt = matmul_dtype or x.dtype, params["query"].dtype
        scores, per_token = cls.scores_and_values(
            config,
            params,
            x,
            mask,
            matmul_dtype=matmul_dtype,
            input_scale=input_scale,
            values=n_out == 1,
        )
        attn = scores.softmax(dim=1)
        if per_token is not None:
            out = (attn * per_token[..., 0]).sum(dim=1)  # (batch, k): each head's weighted value
            logits = rearrange(out, "b (m h) -> m b h", m=m).sum(dim=-1, keepdim=True)
        else:
            pooled = einsum(attn.to(dt), _zeroed(x, mask).to(dt), "b p k, b p d -> b k d").to(pt)
            if input_scale != 1.0:
                pooled = pooled / input_scale
            pooled = rearrange(pooled, "b (m h) d -> m b (h d)", m=m)
            value = rearrange(params["value"], "m d h c -> m (h d) c")
            logits = einsum(pooled, value, "m b j, m j c -> m b c")
        logits = logits + params["bias"][:, None, :]
        return logits, rearrange(attn, "b p (m h) -> m b p h", m=m)

    @torch.no_grad()
    def head_values(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos probe_head n_outputs"]:
        """Each token's value ``x @ V`` per head (what a head adds when it attends there)."""
        check_inputs(x, mask, self.config.d_model)
        x = x.to(self.value.dtype)
        return einsum(x, self.value, "b p d, d h c -> b p h c")

    def class_directions(self) -> Float[Tensor, "n_outputs d_model"]:
        """The values summed over heads, ``sum_h value[:, h, c]`` (each head's weights sum to 1)."""
        return self.value.detach().sum(dim=1).T.clone()

    def read_directions(self) -> Float[Tensor, "direction d_model"]:
        """Every head's value direction per output, ``(probe_head * n_outputs, d_model)``."""
        return self.value.detach().permute(1, 2, 0).reshape(-1, self.config.d_model).clone()
