"""What the analyses read, and how they read it.

An Activations or a padded ``(x, mask)`` pair, some rows of it, in batches on the probe's device,
in eval mode and ``no_grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.errors import InputError, InputIndexError, InputTypeError
from lensprobe.probes import Probe
from lensprobe.probes.base import check_inputs

__all__ = [
    "Data",
    "batches",
    "evaluating",
    "n_sequences",
    "probe_class_names",
    "probe_device_dtype",
    "require_attention",
    "resolve_rows",
]

Data = Activations | tuple[Tensor, Tensor]
"""What the analyses read: an Activations, or padded ``(x, mask)``."""


@contextlib.contextmanager
def evaluating(probe: Probe) -> Iterator[None]:
    """Eval mode and no_grad for the duration; the probe's train/eval mode is restored."""
    was_training = probe.training
    probe.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        probe.train(was_training)


def n_sequences(acts: Data) -> int:
    """Sequences in an Activations or an ``(x, mask)`` pair (a pair is checked)."""
    if isinstance(acts, Activations):
        return len(acts)
    if isinstance(acts, tuple) and len(acts) == 2:
        x, mask = acts
        check_inputs(x, mask, x.shape[-1] if x.ndim == 3 else -1)
        return int(x.shape[0])
    raise InputTypeError(
        f"expected an Activations (from lp.capture) or an (x, mask) tuple, got {type(acts).__name__}"
    )


def resolve_rows(rows: Any, n: int) -> Tensor:
    """Rows as a 1-D int64 tensor of positions in ``[0, n)`` (all rows when ``None``)."""
    if rows is None:
        return torch.arange(n)
    rows = torch.as_tensor(rows).reshape(-1)
    if rows.dtype == torch.bool:
        if rows.numel() != n:
            raise InputError(f"a bool rows mask needs {n} entries, got {rows.numel()}")
        return rows.nonzero().flatten().cpu()
    if rows.is_floating_point():
        raise InputTypeError(f"rows must be integer indices, got dtype {rows.dtype}")
    rows = rows.to(device="cpu", dtype=torch.long)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise InputIndexError(
            f"rows must lie in [0, {n}) for these {n} sequences; got [{int(rows.min())}, "
            f"{int(rows.max())}]: pass rows of the same activations the probe was evaluated on"
        )
    return rows


def probe_device_dtype(probe: Probe) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the probe's parameters."""
    p = next(probe.parameters())
    return p.device, p.dtype


def batches(
    probe: Probe, acts: Data, rows: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Padded ``(x, mask)`` batches of ``rows`` on the probe's device, and their rows."""
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    device, dtype = probe_device_dtype(probe)
    for start in range(0, rows.numel(), batch_size):
        sel = rows[start : start + batch_size]
        if isinstance(acts, Activations):
            x, mask = acts.pad(sel, dtype=dtype, device=device)
        else:
            x_all, mask_all = acts
            idx = sel.to(x_all.device)
            x = x_all[idx].to(device=device, dtype=dtype)
            mask = mask_all[idx].to(device)
        check_inputs(x, mask, probe.config.d_model)
        yield x, mask, sel


def probe_class_names(probe: Probe, acts: Data) -> tuple[str, ...]:
    """The probe's class names, else the activations', else ``0``, ``1``, ..."""
    names = probe.config.class_names
    if names is None and isinstance(acts, Activations):
        meta_names = acts.meta.class_names
        if meta_names is not None and len(meta_names) == probe.config.n_classes:
            names = meta_names
    if names is None:
        names = tuple(str(c) for c in range(probe.config.n_classes))
    return tuple(names)


def require_attention(probe: Probe, what: str) -> Probe:
    """The probe, if its kind attends to tokens; a TypeError that says what to use otherwise."""
    if not probe.attends:
        raise InputTypeError(
            f"{what} needs a probe that attends to tokens (e.g. an AttentionProbe), got a "
            f"{probe.config.kind} probe: a mean probe's "
            "attention is uniform (entropy ratio 1) and a last-token probe's is one-hot (ratio 0); "
            "use lp.analysis.token_contributions to see which tokens a pooled probe reads"
        )
    return probe
