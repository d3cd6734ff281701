"""Stratified, seeded splits of row indices: train/test, K folds, and a held-out slice."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from lensprobe.errors import InputError


def _per_class(labels: Tensor, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        out.append(rows[torch.randperm(rows.numel(), generator=gen)])
    return out


def stratified_split(
    labels: Int[Tensor, " batch"], fraction: float, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Split rows into ``(kept, held_out)`` with ``fraction`` of every class held out.

    Every class keeps at least one row on each side when it has two or more rows.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    labels = labels.cpu()
    kept, held = [], []
    for rows in _per_class(labels, seed):
        n_held = round(fraction * rows.numel())
        if rows.numel() >= 2:
            n_held = min(max(n_held, 1), rows.numel() - 1)
        held.append(rows[:n_held])
        kept.append(rows[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def stratified_folds(labels: Int[Tensor, " batch"], n_folds: int, *, seed: int = 0) -> Tensor:
    """Fold id in ``[0, n_folds)`` for each row, each class spread evenly over the folds."""
    labels = labels.cpu()
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if int(present.min()) < n_folds:
        smallest = int(present.min())
        raise InputError(
            f"the rarest class has {smallest} training example(s), fewer than n_folds={n_folds}: "
            "lower n_folds, subsample the other classes less, or collect more of that class"
        )
    fold = torch.empty_like(labels)
    offset = 0
    for rows in _per_class(labels, seed):
        fold[rows] = (torch.arange(rows.numel()) + offset) % n_folds
        offset += rows.numel()  # spread the remainders of different classes over folds
    return fold
