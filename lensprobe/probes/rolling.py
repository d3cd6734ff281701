"""Max of rolling means: attention-weighted means over windows of ``w`` tokens, then the maximum.

The second long-context aggregator of Kramár et al. (2026). For one sequence of ``n`` tokens read
and H heads, with scores and values as in the attention probe::

    window  W_r = tokens r - w + 1 .. r     (r = w - 1 .. n - 1; one window of all n if n < w)
    mean    M_h(r) = sum_{t in W_r} softmax_{W_r}(scores[:, h])_t * (x_t @ V_h)
    out     = sum_h max_r M_h(r) + b        (for several outputs, each output takes its own max)

A short passage that the heads score highly decides the output wherever it sits in a long text,
instead of being averaged with every other token. The windows count the tokens read (padding never
enters one), so the padding side and pad length do not change the output. The gradient of the
maximum goes to the window that attains it (the first, on ties).

``window`` defaults to 16 tokens: shorter than most training texts (tens of tokens), so that
training sees several windows per text and learns to pick one, and long enough to average a
phrase rather than a single token (MultiMax is the one-token limit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.errors import InputError
from lensprobe.probes.attention import AttentionProbe, HeadStream
from lensprobe.probes.config import ProbeConfig


class RollingStream(HeadStream):
    """The last ``window`` tokens' scores and values, and each output's best full window so far.

    O(window) per token: the window's mean is recomputed from the kept tokens.
    """

    def __init__(self, probe: Any, batch: int):
        super().__init__(probe, batch)
        self.window = int(self.config.options["window"])
        self.scores = self.blank(float("-inf"), self.window)
        self.values = self.blank(0.0, self.window, self.n_out)
        self.best = self.blank(float("-inf"), self.n_out)

    def _push(self, x: Tensor, valid: Tensor) -> None:
        s, v = self.score_value(x)
        scores = torch.cat([self.scores[..., 1:], s[..., None]], dim=-1)
        values = torch.cat([self.values[:, :, 1:], v[:, :, None]], dim=2)
        self.scores = torch.where(valid[:, None, None], scores, self.scores)
        self.values = torch.where(valid[:, None, None, None], values, self.values)
        full = valid & (self.count + 1 >= self.window)
        best = torch.maximum(self.best, self._mean())
        self.best = torch.where(full[:, None, None], best, self.best)

    def _mean(self) -> Tensor:
        """Each head's softmax-weighted mean over the kept tokens ``(batch, head, n_outputs)``."""
        weights = self.scores.softmax(dim=-1).nan_to_num(0.0)  # rows without a token: 0
        return (weights[..., None] * self.values).sum(dim=2)

    def _logits(self) -> Tensor:
        full = (self.count >= self.window)[:, None, None]
        return torch.where(full, self.best, self._mean()).sum(dim=1) + self.params["bias"]


class RollingMeanProbe(AttentionProbe):
    """The max over windows of attention-weighted means, per head (``rolling-4:window=16``).

    Same parameters and constructor as :class:`AttentionProbe`; its option ``window`` (tokens)
    is set with ``options={"window": w}``. With one output, the weights it reports per head are
    the softmax over the window that attains the maximum (zero elsewhere).
    """

    kind = "rolling"
    stream_class = RollingStream
    option_defaults: ClassVar[Mapping[str, int | float | str]] = {"window": 16}

    @classmethod
    def check_option_values(cls, options: Mapping[str, Any]) -> None:
        """The window is at least one token."""
        if options["window"] < 1:
            raise InputError(f"rolling window must be at least 1 token, got {options['window']}")

    @classmethod
    def floats_per_head_token(cls, n_outputs: int, options: Mapping[str, Any]) -> int:
        """A window's scores, weights and weighted values per token, and the window's means."""
        return (int(options["window"]) + 1) * (2 + n_outputs)

    @property
    def attends(self) -> bool:  # type: ignore[override]
        """One output: yes. Several outputs each take their own window, so no one weighting."""
        return self.config.n_outputs == 1

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
    ) -> tuple[Float[Tensor, "member batch n_outputs"], Tensor | None]:
        """Logits and (one output) the weights of each head's top window, of every member."""
        one = params["value"].shape[-1] == 1
        logits, weights = cls.top_windows(
            config,
            params,
            x,
            mask,
            matmul_dtype=matmul_dtype,
            input_scale=input_scale,
            weights=one,
        )
        if weights is None:
            return logits, None
        m = params["query"].shape[0]
        return logits, rearrange(weights[..., 0], "b p (m h) -> m b p h", m=m)

    @classmethod
    def top_windows(
        cls,
        config: ProbeConfig,
        params: Mapping[str, Tensor],
        x: Float[Tensor, "batch pos d_model"],
        mask: Bool[Tensor, "batch pos"],
        *,
        matmul_dtype: torch.dtype | None = None,
        input_scale: float = 1.0,
        weights: bool = True,
    ) -> tuple[Float[Tensor, "member batch n_outputs"], Tensor | None]:
        """Logits, and (with ``weights``) each output's token weights ``(batch, pos, k, out)``.

        ``k = (member, head)``; an output's weights are the softmax over the window that
        attains its maximum, zero elsewhere.
        """
        m = params["query"].shape[0]
        scores, values = cls.scores_and_values(
            config, params, x, mask, matmul_dtype=matmul_dtype, input_scale=input_scale
        )
        assert values is not None
        b, p, k = scores.shape
        n_out = values.shape[-1]
        w = min(int(config.options["window"]), p)
        # The tokens read, moved to the front in order: windows then never contain padding.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        n = mask.sum(dim=1, keepdim=True)
        s = scores.gather(1, order[..., None].expand(b, p, k))
        v = values.gather(1, order[..., None, None].expand(b, p, k, n_out))
        # Window r holds packed tokens r - w + 1 .. r: (batch, window end, k, w).
        s_win = F.pad(s, (0, 0, w - 1, 0), value=float("-inf")).unfold(1, w, 1)
        v_win = F.pad(v, (0, 0, 0, 0, w - 1, 0)).unfold(1, w, 1)
        r = torch.arange(p, device=mask.device)
        counted = (r < n) & (r >= torch.clamp(n, max=w) - 1)  # (batch, window end)
        soft = s_win.masked_fill(~counted[..., None, None], 0.0).softmax(dim=-1)
        means = (soft[:, :, :, None, :] * v_win).sum(dim=-1)  # (batch, end, k, n_outputs)
        means = means.masked_fill(~counted[..., None, None], float("-inf"))
        top = means.argmax(dim=1, keepdim=True)  # (batch, 1, k, n_outputs)
        best = means.gather(1, top)[:, 0]
        logits = rearrange(best, "b (m h) c -> m b h c", m=m).sum(dim=2)
        logits = logits + params["bias"][:, None, :]
        if not weights:
            return logits, None
        out = []
        for j in range(n_out):
            ends = top[:, 0, :, j]  # (batch, k): packed index of each head's window end
            chosen = soft.gather(1, ends[:, None, :, None].expand(b, 1, k, w))[:, 0]
            slots = ends[..., None] + torch.arange(w, device=mask.device)  # padded frame
            packed = chosen.new_zeros(b, k, p + w - 1).scatter(2, slots, chosen)[..., w - 1 :]
            out.append(
                torch.zeros_like(scores).scatter(1, order[..., None].expand(b, p, k), packed.mT)
            )
        return logits, torch.stack(out, dim=-1)

    @torch.no_grad()
    def token_contributions(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos n_outputs"]:
        """Each token's share: per output, its weight in each head's top window times its value."""
        _, weights = self.top_windows(self.config, self.member_params(), x, mask)
        assert weights is not None
        return (weights * self.head_values(x, mask)).sum(dim=2)
