"""Pooled probes on ragged (e.g. memory-mapped store) activations in one streaming pass.

A pooled probe (mean / last / max) reads each sequence only through its pooled vector, so the
protocol never needs the padded ``(n, pos, d_model)`` tensor: :func:`stream_pooled` reads the
activations a block of :data:`CHUNK` sequences at a time (each block padded to the longest
sequence of all, exactly as the in-RAM path pads them), checks their values, and keeps the raw
pooled features ``(n, d_model)`` and the norm of every token the probe reads (for the input
scale). The fit then runs on the features as one-token sequences, which every pooled probe maps
to themselves; the results equal the in-RAM path's (tests/test_streaming.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.probes import ProbeConfig, probe_class
from lensprobe.probes.base import tokens_read
from lensprobe.train.checks import check_finite_chunks

__all__ = ["CHUNK", "StreamedPool", "stream_pooled"]

CHUNK = 256
"""Sequences read (and padded) at a time; the same row chunks the in-RAM pooling uses."""

_NORM_ROWS = 32
"""Sequences whose token norms are taken in float64 at a time (a norm is per token: exact)."""


@dataclass(frozen=True)
class StreamedPool:
    """What a pooled fit needs of the activations, read once."""

    features: Float[Tensor, "batch 1 d_model"]
    """Each sequence's raw (unscaled) pooled vector in float32, as a one-token sequence."""
    norms: Float[Tensor, " tokens"]
    """Float64 norm of every token the probe reads, sequence after sequence."""
    counts: Int[Tensor, " batch"]
    """Tokens read per sequence (how :attr:`norms` splits into sequences)."""

    def token_scale(self, rows: Tensor) -> float:
        """The protocol's input scale on ``rows``: median token norm / sqrt(d_model)."""
        import math

        keep = torch.zeros(self.counts.numel(), dtype=torch.bool)
        keep[rows.cpu()] = True
        norms = self.norms[keep.repeat_interleave(self.counts)]
        scale = float(norms.median()) / self.features.shape[-1] ** 0.5
        return scale if scale > 0 and math.isfinite(scale) else 1.0


def _chunks(acts: Activations, pos: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(start, x, mask)`` blocks of :data:`CHUNK` sequences, padded to ``pos`` tokens."""
    n = len(acts)
    for start in range(0, n, CHUNK):
        x, mask = acts.pad(torch.arange(start, min(start + CHUNK, n)), dtype=acts.dtype)
        extra = pos - x.shape[1]
        if extra:  # the in-RAM path pads every block to the longest sequence of all
            x = F.pad(x, (0, 0, 0, extra))
            mask = F.pad(mask, (0, extra))
        yield start, x, mask


def stream_pooled(acts: Activations, config: ProbeConfig) -> StreamedPool:
    """Pooled features and token norms of ``acts`` for the pooled probe ``config``, one pass.

    Raises:
        InputError: A token the probe reads is NaN or infinite (named by row and position).
    """
    cls = probe_class(config.kind)
    n = len(acts)
    pos = int(acts.lengths.max())
    check_finite_chunks(_chunks(acts, pos))
    features, norms, counts = [], [], []
    for _, x, given in _chunks(acts, pos):
        read = tokens_read(config, given)
        xf = x.to(torch.float32).masked_fill(~read[..., None], 0.0)
        features.append(cls.pool(xf, read))  # type: ignore[attr-defined]
        for i in range(0, x.shape[0], _NORM_ROWS):  # float64 a few rows at a time
            block = torch.linalg.vector_norm(x[i : i + _NORM_ROWS].double(), dim=-1)
            norms.append(block[read[i : i + _NORM_ROWS]])
        counts.append(read.sum(dim=1))
    return StreamedPool(
        features=torch.cat(features)[:, None, :] if n else torch.empty(0, 1, acts.d_model),
        norms=torch.cat(norms),
        counts=torch.cat(counts),
    )
