"""Linear probes on pooled tokens: the mean- and last-token baselines, and max pooling.

Each pools a sequence's valid tokens to one vector ``(d_model,)`` and applies a linear map to
``n_outputs`` logits (logistic regression for one output, softmax regression for k). Pooling never
looks at masked positions, so padding side and pad length do not change the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.pooling import last_index, pool
from lensprobe.probes.base import Probe
from lensprobe.probes.config import ProbeConfig
from lensprobe.probes.stream import TokenStream


class PooledStream(TokenStream):
    """The pooled vector so far, updated by the kind's :meth:`PooledProbe.pool_step`."""

    def __init__(self, probe: Probe, batch: int):
        super().__init__(probe, batch)
        d = self.config.d_model
        self.pooled = torch.zeros(batch, d, dtype=self.dtype, device=self.device)
        self.params = {k: v.detach() for k, v in probe.named_parameters()}

    def _push(self, x: Tensor, valid: Tensor) -> None:
        step = type(self.probe).pool_step(self.config, self.pooled, self.count, x)  # type: ignore[attr-defined]
        self.pooled = torch.where(valid[:, None], step, self.pooled)

    def _logits(self) -> Tensor:
        return self.pooled @ self.params["weight"] + self.params["bias"]


class PooledProbe(Probe):
    """A linear probe on one pooled vector per sequence (subclasses choose the pooling).

    Parameters: ``weight (d_model, n_outputs)`` and ``bias (n_outputs,)``, both starting at zero.
    Weight decay applies to ``weight``.
    """

    decay_params = ("weight",)
    pooled = True
    default_optimizer = "lbfgs"
    stream_class = PooledStream

    def __init__(
        self,
        d_model: int,
        n_outputs: int = 1,
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
                d_model, n_outputs, hook, model_id, class_names, options=dict(options or {})
            )
        )

    @classmethod
    def pool(
        cls,
        config: ProbeConfig,
        x: Float[Tensor, "batch pos d_model"],
        mask: Bool[Tensor, "batch pos"],
    ) -> Float[Tensor, "batch d_model"]:
        """One vector per sequence from the tokens in ``mask`` (``x`` is zero elsewhere)."""
        raise NotImplementedError(f"{cls.__name__} does not say how it pools")

    @classmethod
    def pool_step(
        cls,
        config: ProbeConfig,
        pooled: Float[Tensor, "batch d_model"],
        count: Tensor,
        x: Float[Tensor, "batch d_model"],
    ) -> Float[Tensor, "batch d_model"]:
        """The pooled vector after one more token ``x`` (``count`` tokens pooled before it)."""
        raise NotImplementedError(f"{cls.__name__} does not say how to pool one more token")

    @torch.no_grad()
    def token_contributions(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos n_outputs"]:
        """Each token's share: its weight in the pooled vector times ``x_t @ W``."""
        weights = self.token_weights(x, mask).to(x.dtype)
        return einsum(x * weights, self.weight, "b p d, d c -> b p c")

    def token_weights(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos #d_model"]:
        """Each token's weight in the pooled vector (per feature where it differs by feature)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it weighs tokens")

    def class_directions(self) -> Float[Tensor, "n_outputs d_model"]:
        """The columns of ``weight``."""
        return self.weight.detach().T.clone()

    @classmethod
    def param_shapes(cls, config: ProbeConfig) -> dict[str, tuple[int, ...]]:
        """Weight and bias shapes."""
        return {"weight": (config.d_model, config.n_outputs), "bias": (config.n_outputs,)}

    @classmethod
    def init_members(cls, config: ProbeConfig, seeds: list[int]) -> dict[str, Tensor]:
        """Zero weight and bias (the seed does not matter: the problem is convex)."""
        m = len(seeds)
        return {name: torch.zeros(m, *shape) for name, shape in cls.param_shapes(config).items()}

    @staticmethod
    def linear_members(
        params: Mapping[str, Tensor], features: Float[Tensor, "batch d_model"]
    ) -> Float[Tensor, "member batch n_outputs"]:
        """Logits of every member for pooled features."""
        logits = einsum(features, params["weight"], "b d, m d c -> m b c")
        return logits + params["bias"][:, None, :]

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
    ) -> tuple[Float[Tensor, "member batch n_outputs"], None]:
        """Pool, then the linear map of every member (small: in the parameters' dtype)."""
        pooled = cls.pool(config, x.to(params["weight"].dtype), mask)
        return cls.linear_members(params, pooled / input_scale), None


class MeanProbe(PooledProbe):
    """Linear probe on the mean of the valid tokens."""

    kind = "mean"

    @classmethod
    def pool(cls, config: ProbeConfig, x: Tensor, mask: Tensor) -> Tensor:
        """The mean of the tokens."""
        return pool("mean", x, mask)

    @classmethod
    def pool_step(cls, config: ProbeConfig, pooled: Tensor, count: Tensor, x: Tensor) -> Tensor:
        """The running mean."""
        return pooled + (x - pooled) / (count + 1).to(x.dtype)[:, None]

    def token_weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """``1 / n_valid`` on each token."""
        return (mask / mask.sum(dim=1, keepdim=True))[..., None]


class LastTokenProbe(PooledProbe):
    """Linear probe on the last valid token (whichever side the padding is on)."""

    kind = "last"

    @classmethod
    def pool(cls, config: ProbeConfig, x: Tensor, mask: Tensor) -> Tensor:
        """The last token."""
        return pool("last", x, mask)

    @classmethod
    def pool_step(cls, config: ProbeConfig, pooled: Tensor, count: Tensor, x: Tensor) -> Tensor:
        """The newest token."""
        return x

    def token_weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """1 on the last token."""
        return torch.nn.functional.one_hot(last_index(mask), mask.shape[1])[..., None]


class MaxProbe(PooledProbe):
    """Linear probe on the elementwise maximum over the valid tokens (max over ``pos``)."""

    kind = "max"

    @classmethod
    def pool(cls, config: ProbeConfig, x: Tensor, mask: Tensor) -> Tensor:
        """The elementwise maximum over the tokens."""
        return pool("max", x, mask)

    @classmethod
    def pool_step(cls, config: ProbeConfig, pooled: Tensor, count: Tensor, x: Tensor) -> Tensor:
        """The running elementwise maximum."""
        return torch.where((count == 0)[:, None], x, torch.maximum(pooled, x))

    def token_weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """Feature ``d`` credited to the token holding its maximum (split evenly between ties)."""
        filled = x.masked_fill(~mask[..., None], float("-inf"))
        winner = (filled == filled.amax(dim=1, keepdim=True)).to(x.dtype)
        return winner / winner.sum(dim=1, keepdim=True)
