"""Each token's exact share of each logit, for every probe kind.

``logits == contributions.sum(pos) + bias``: an attention probe's share is each head's attention
times the token's value, a mean probe's the token's projection over ``n_valid``, a last-token
probe's all on the last token, a max probe's split by which token holds each feature's maximum.
"""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.analysis.inputs import evaluating, probe_device_dtype
from lensprobe.probes import Probe
from lensprobe.probes.base import check_inputs

__all__ = ["head_contributions", "token_contributions"]


def head_contributions(probe: Probe, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, attention ``(b, p, h)`` and per-head token contributions ``(b, p, h, c)``.

    For kinds that attend (:attr:`~lensprobe.probes.base.Probe.attends`).
    """
    logits, attn = probe(x, mask, return_attention=True)
    values = probe.head_values(x.masked_fill(~mask[..., None], 0.0), mask)
    return logits, attn, attn[..., None] * values


def token_contributions(
    probe: Probe,
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos n_outputs"]:
    """Each token's exact share of each logit: ``logits == contributions.sum(1) + probe.bias``.

    Each kind says its own (:meth:`~lensprobe.probes.base.Probe.token_contributions`), e.g.:

    - attention probe: ``sum_h attn[t, h] * (x_t @ V_h)``;
    - mean probe: ``(x_t @ W) / n_valid``;
    - last-token probe: ``x_last @ W`` on the last valid token, 0 elsewhere;
    - max probe: feature ``d`` is credited to the token holding the maximum (split evenly between
      tied tokens), so token ``t`` gets ``sum_{d won by t} x[t, d] W[d]``.

    Masked positions (and tokens the probe leaves out, such as BOS) get 0. Runs in no_grad and
    eval mode (the probe's mode is restored).

    Args:
        probe: Any lensprobe probe.
        x: Padded activations.
        mask: True at valid tokens.
    """
    check_inputs(x, mask, probe.config.d_model)
    _, dtype = probe_device_dtype(probe)
    with evaluating(probe):
        mask = probe.effective_mask(mask)
        x = x.to(dtype).masked_fill(~mask[..., None], 0.0)
        out = probe.token_contributions(x, mask)
        return out.masked_fill(~mask[..., None], 0.0)
