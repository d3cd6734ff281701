"""A probe's running state over sequences that grow one token at a time (live monitors).

A monitor scores a generation after every token. Rerunning the probe on the whole prefix costs
O(prefix) per token; a :class:`TokenStream` keeps what the probe needs instead, so a token costs
O(1): a running sum for the mean probe, the running softmax of each attention head, the running
maximum of rolling means, the moving average. Each kind says which stream it uses
(:attr:`~lensprobe.probes.base.Probe.stream_class`); :class:`PrefixStream`, the default, keeps the
prefix and reruns the probe, so every kind, a user's too, can be monitored.

The logits after each token equal the probe's forward on that prefix (up to float rounding):
``tests/test_monitor.py`` checks it for every kind, padding and BOS rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor

if TYPE_CHECKING:
    from lensprobe.probes.base import Probe

__all__ = ["FirstTokenAside", "PrefixStream", "TokenStream"]


class TokenStream:
    """Running state of a probe over ``batch`` sequences, fed one position at a time.

    :meth:`push` adds each row's next token (rows where ``valid`` is False are padding: their
    state does not change); :meth:`logits` is the probe's output over each row's tokens so far,
    NaN for a row without any. Every pushed token counts (the BOS rule is
    :class:`FirstTokenAside`'s).
    """

    def __init__(self, probe: Probe, batch: int):
        self.probe = probe
        self.config = probe.config
        param = next(probe.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.count = torch.zeros(batch, dtype=torch.long, device=self.device)
        """Tokens pushed per row."""

    def push(self, x: Float[Tensor, "batch d_model"], valid: Bool[Tensor, " batch"]) -> None:
        """Add each valid row's next token."""
        self._push(x.to(device=self.device, dtype=self.dtype), valid.to(self.device))
        self.count += valid.to(self.device).long()

    def _push(self, x: Tensor, valid: Tensor) -> None:
        """Update the state (``count`` is still the count before this token)."""
        raise NotImplementedError

    def logits(self) -> Float[Tensor, "batch n_outputs"]:
        """The probe's logits over each row's tokens so far (NaN for rows without a token)."""
        out = self._logits()
        return out.masked_fill((self.count == 0)[:, None], float("nan"))

    def _logits(self) -> Tensor:
        raise NotImplementedError


class PrefixStream(TokenStream):
    """Keeps every token and reruns the probe on the prefix: O(prefix) per token, any kind."""

    def __init__(self, probe: Probe, batch: int):
        super().__init__(probe, batch)
        self.xs: list[Tensor] = []
        self.valid: list[Tensor] = []

    def _push(self, x: Tensor, valid: Tensor) -> None:
        self.xs.append(x.masked_fill(~valid[:, None], 0.0))
        self.valid.append(valid)

    def _logits(self) -> Tensor:
        n_out = self.config.n_outputs
        out = torch.zeros(self.count.shape[0], n_out, dtype=self.dtype, device=self.device)
        rows = self.count > 0
        if not self.xs or not bool(rows.any()):
            return out
        x = torch.stack(self.xs, dim=1)[rows]
        mask = torch.stack(self.valid, dim=1)[rows]
        with torch.no_grad():
            logits, _ = type(self.probe).forward_members(
                self.config, self.probe.member_params(), x, mask
            )
        out[rows] = logits[0]
        return out


class FirstTokenAside(TokenStream):
    """The BOS rule (``exclude_bos``) over two streams: the first token alone, and the rest.

    A sequence of one token is read whole; from its second token on, the first is left out (as
    :func:`~lensprobe.probes.base.tokens_read` does).
    """

    def __init__(self, probe: Probe, first: TokenStream, rest: TokenStream):
        super().__init__(probe, first.count.shape[0])
        self.first, self.rest = first, rest

    def _push(self, x: Tensor, valid: Tensor) -> None:
        self.first.push(x, valid & (self.count == 0))
        self.rest.push(x, valid & (self.count > 0))

    def _logits(self) -> Tensor:
        alone = self.first.logits()
        return torch.where((self.rest.count > 0)[:, None], self.rest.logits(), alone)
