"""A linear probe on an exponential moving average of the tokens: the streaming baseline.

For the tokens read ``x_1 .. x_n`` and ``a = 0.5 ** (1 / halflife)``::

    f_1 = x_1,    f_t = a * f_{t-1} + (1 - a) * x_t,    logits = f_n @ W + b

so token ``t`` weighs ``(1 - a) * a ** (n - t)`` (the first ``a ** (n - 1)``; the weights sum to
1). A monitor updates ``f`` in O(1) per generated token, and a token ``halflife`` tokens back counts
half as much as the newest: over a long context it reads the recent passage, where a mean probe
averages it away. It is pooled (no parameters before the linear map), so it trains like the mean
probe: one pooling pass, then L-BFGS.

``halflife`` defaults to 16 tokens, the span of the rolling probe's default window, so the two
long-context baselines look back about as far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.errors import InputError
from lensprobe.probes.attention import token_distance
from lensprobe.probes.config import ProbeConfig
from lensprobe.probes.pooled import PooledProbe


def ema_weights(
    mask: Bool[Tensor, "batch pos"], halflife: float, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "batch pos"]:
    """Each token's weight in the moving average at the last token (0 where masked)."""
    a = 0.5 ** (1.0 / halflife)
    distance = token_distance(mask, "last").double()
    weights = (1.0 - a) * torch.pow(a, distance)
    first = mask & (mask.cumsum(dim=-1) == 1)
    weights = torch.where(first, torch.pow(a, distance), weights)
    return weights.masked_fill(~mask, 0.0).to(dtype)


class EMAProbe(PooledProbe):
    """Linear probe on the exponential moving average of the tokens (``ema:halflife=16``)."""

    kind = "ema"
    option_defaults: ClassVar[Mapping[str, int | float | str]] = {"halflife": 16.0}

    @classmethod
    def check_option_values(cls, options: Mapping[str, Any]) -> None:
        """The half-life is a positive number of tokens."""
        h = options["halflife"]
        if not (math.isfinite(h) and h > 0):
            raise InputError(f"ema halflife must be a positive number of tokens, got {h}")

    @classmethod
    def pool(cls, config: ProbeConfig, x: Tensor, mask: Tensor) -> Tensor:
        """The moving average at each sequence's last token."""
        weights = ema_weights(mask, float(config.options["halflife"]), x.dtype)
        return torch.einsum("bp,bpd->bd", weights, x)

    @classmethod
    def pool_step(cls, config: ProbeConfig, pooled: Tensor, count: Tensor, x: Tensor) -> Tensor:
        """``a * f + (1 - a) * x``; the first token starts the average."""
        a = 0.5 ** (1.0 / float(config.options["halflife"]))
        return torch.where((count == 0)[:, None], x, a * pooled + (1.0 - a) * x)

    def token_weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """Each token's weight in the average."""
        return ema_weights(mask, float(self.config.options["halflife"]), x.dtype)[..., None]
