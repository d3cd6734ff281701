"""Training on ragged (e.g. memory-mapped store) activations without padding them whole.

The protocol never needs the padded ``(n, pos, d_model)`` tensor of a capture:

- :func:`stream_inputs` reads the activations once, a block of :data:`CHUNK` sequences at a time
  (each block padded to the longest sequence of all, exactly as the in-RAM path pads them),
  checks their values, and keeps the norm of every token the probe reads (for the input scale)
  and, for a pooled probe (mean / last / max, any kind that :attr:`pools
  <lensprobe.probes.base.Probe.pooled>`), each sequence's raw pooled vector. A pooled fit
  then runs on the features as one-token sequences, which every pooled probe maps to themselves.
- An attention fit reads its minibatches straight from the storage
  (:class:`~lensprobe.train.members.FitData` pads only the rows of each minibatch, in the stored
  dtype), so it holds a bounded number of padded minibatches whatever the store's size.

Both give the results of the in-RAM path (tests/test_streaming.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.errors import InputError
from lensprobe.hardware import return_freed_memory
from lensprobe.pooling import token_norms
from lensprobe.probes import ProbeConfig, probe_class
from lensprobe.probes.base import tokens_read
from lensprobe.reduced import ReducedActivations
from lensprobe.train.checks import check_finite_chunks

__all__ = ["CHUNK", "Streamed", "stream_inputs"]

CHUNK = 256
"""Sequences read (and padded) at a time; the same row chunks the in-RAM pooling uses."""


@dataclass(frozen=True)
class Streamed:
    """What a fit needs of the activations besides its minibatches, read in one pass."""

    norms: Float[Tensor, " tokens"]
    """Norm of every token the probe reads (float32, taken in float64), sequence after sequence."""
    counts: Int[Tensor, " batch"]
    """Tokens read per sequence (how :attr:`norms` splits into sequences)."""
    d_model: int
    features: dict[str, Float[Tensor, "batch 1 d_model"]]
    """Per pooled kind read (keyed by :attr:`ProbeConfig.aggregation`), each sequence's raw
    (unscaled) pooled vector in float32, as a one-token sequence."""

    def token_scale(self, rows: Tensor) -> float:
        """The protocol's input scale on ``rows``: median token norm / sqrt(d_model)."""
        keep = torch.zeros(self.counts.numel(), dtype=torch.bool)
        keep[rows.cpu()] = True
        norms = self.norms[keep.repeat_interleave(self.counts)]
        scale = float(norms.median()) / self.d_model**0.5
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


def stream_inputs(
    acts: Activations, config: ProbeConfig, pooled: Sequence[ProbeConfig] | None = None
) -> Streamed:
    """Token norms (and pooled features) of ``acts`` for the probe ``config``, in one pass.

    Args:
        acts: The activations, read :data:`CHUNK` sequences at a time; a reduced capture
            (:class:`~lensprobe.reduced.ReducedActivations`) gives its stored features and norms.
        config: Which tokens count (:func:`~lensprobe.probes.base.tokens_read`).
        pooled: The probes whose pooled features to keep (default: ``config``, when it is
            pooled); probes that do not pool are skipped, and so are kinds a reduced capture lacks
            (the protocol refuses those cells before training).

    Raises:
        InputError: A valid token (or a reduced capture's feature) is NaN or infinite.
    """
    wanted = [config] if pooled is None else list(pooled)
    pools = list({c.aggregation: c for c in wanted if probe_class(c.kind).pooled}.values())
    if isinstance(acts, ReducedActivations):
        return _stored(acts, config, [c.aggregation for c in pools])
    n = len(acts)
    pos = int(acts.lengths.max())
    check_finite_chunks(_chunks(acts, pos))
    features: list[Tensor] = []
    norms, counts = [], []
    for _, x, given in _chunks(acts, pos):
        read = tokens_read(config, given)
        if pools:
            xf = x.to(torch.float32).masked_fill(~read[..., None], 0.0)
            features.append(
                torch.stack([probe_class(c.kind).pool(c, xf, read) for c in pools], dim=1)
            )
            del xf
        norms.append(token_norms(x)[read])
        counts.append(read.sum(dim=1))
        del x, given, read
        return_freed_memory()  # blocks of varying size: what glibc keeps goes back to the OS
    stacked = torch.cat(features) if features else torch.empty(n, len(pools), acts.d_model)
    return Streamed(
        norms=torch.cat(norms),
        counts=torch.cat(counts),
        d_model=acts.d_model,
        features={
            c.aggregation: stacked[:, j : j + 1, :].contiguous() for j, c in enumerate(pools)
        },
    )


def _stored(acts: ReducedActivations, config: ProbeConfig, kinds: Sequence[str]) -> Streamed:
    """What a reduced capture already holds: its features (checked finite) and token norms."""
    for name, t in (("pooled vector", acts.features), ("token norm", acts.norms)):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            row = int(bad.reshape(t.shape[0], -1).any(dim=1).nonzero()[0, 0])
            if t is acts.norms:
                row = int(torch.searchsorted(acts.offsets, row, right=True)) - 1
            raise InputError(
                f"sequence {row} of {acts.meta.hook!r} has a non-finite {name} (NaN or inf): "
                "the model overflowed in this dtype; capture in float32 or bfloat16"
            )
    norms, counts = acts.read_norms(config.exclude_bos)
    return Streamed(
        norms=norms,
        counts=counts,
        d_model=acts.d_model,
        features={
            k: acts.features[:, acts.kinds.index(k)][:, None, :].contiguous()
            for k in kinds
            if k in acts.kinds
        },
    )
