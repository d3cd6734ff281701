"""The dataset noun: labelled texts, their class names, and stratified subsampling."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Int

from lensprobe._types import Labels
from lensprobe.errors import InputError, InputIndexError

logger = logging.getLogger(__name__)

__all__ = ["TextDataset"]


class TextDataset:
    """Labelled texts for probing: one text and one integer class per row.

    The dataset is immutable: ``texts`` is a tuple, ``labels`` a read-only int64 array, and every
    method returns a new dataset. There is no train/test split here; the training protocol makes
    its own.

    Args:
        name: Short name (a registry name, a built-in task, or a file name).
        texts: One text per row; none may be empty or only whitespace.
        labels: Integer class of each row, ``0 <= label < len(class_names)``.
        class_names: Name of each class, indexed by label (at least two, all distinct).
        source: Where the rows came from (hub id and split, local folder, generator and seed).

    Raises:
        ValueError: If lengths differ, a text is empty, a label is out of range or not an
            integer, or the class names are fewer than two or repeated.

    Example:
        >>> ds = TextDataset("toy", ["a cat", "a dog", "a car"], [0, 0, 1], ("animal", "vehicle"))
        >>> ds.class_counts()
        {'animal': 2, 'vehicle': 1}
    """

    __slots__ = ("_class_names", "_labels", "_name", "_source", "_texts")

    def __init__(
        self,
        name: str,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        class_names: Sequence[str],
        source: str = "",
    ) -> None:
        texts = tuple(texts)
        label_array = _as_label_array(labels)
        class_names = tuple(class_names)
        if len(texts) != len(label_array):
            raise InputError(
                f"{name}: {len(texts)} texts but {len(label_array)} labels; give one label per text"
            )
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise InputError(
                f"{name}: class_names must hold at least two distinct names, got {class_names!r}"
            )
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise InputError(
                f"{name}: {len(bad)} of {len(texts)} texts are empty or not strings "
                f"(rows {bad[:5]}{' ...' if len(bad) > 5 else ''}); drop or fill those rows first"
            )
        if label_array.size and (label_array.min() < 0 or label_array.max() >= len(class_names)):
            raise InputError(
                f"{name}: labels must lie in [0, {len(class_names)}) to index class_names, "
                f"got values from {label_array.min()} to {label_array.max()}"
            )
        label_array.setflags(write=False)
        self._name = str(name)
        self._texts = texts
        self._labels = label_array
        self._class_names = class_names
        self._source = str(source)

    @property
    def name(self) -> str:
        """Short name of the dataset."""
        return self._name

    @property
    def texts(self) -> tuple[str, ...]:
        """The texts, one per row."""
        return self._texts

    @property
    def labels(self) -> Int[np.ndarray, " batch"]:
        """Integer class of each row (int64, read-only)."""
        return self._labels

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each class, indexed by label."""
        return self._class_names

    @property
    def source(self) -> str:
        """Where the rows came from."""
        return self._source

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(class_names)``), whether or not each occurs."""
        return len(self._class_names)

    def __len__(self) -> int:
        return len(self._texts)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.class_counts().items())
        if len(counts) > 120:
            counts = counts[:117] + "..."
        return (
            f"TextDataset(name={self._name!r}, rows={len(self)}, "
            f"classes={self.n_classes} {{{counts}}}, source={self._source!r})"
        )

    def class_counts(self) -> dict[str, int]:
        """Rows per class, every class included (zero when absent), in label order."""
        counts = np.bincount(self._labels, minlength=self.n_classes)
        return {name: int(c) for name, c in zip(self._class_names, counts, strict=True)}

    def label_tensor(self) -> Labels:
        """The labels as an int64 tensor on the CPU (a copy)."""
        return torch.tensor(self._labels, dtype=torch.int64)

    def select(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        """A new dataset holding the given rows, in the given order.

        Args:
            indices: Row indices into this dataset (repeats allowed).

        Returns:
            The selected rows, with the same class names, name and source.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise InputIndexError(f"{self._name}: row indices must lie in [0, {len(self)})")
        return TextDataset(
            self._name,
            [self._texts[i] for i in idx.tolist()],
            self._labels[idx],
            self._class_names,
            self._source,
        )

    def with_class_order(self, classes: Sequence[str]) -> TextDataset:
        """The same rows with class ids in the order of ``classes`` (each class name once).

        Loaders order classes as their source does (a registry's id order, else sorted names);
        this fixes one order whatever the loader, so probe output ``i`` means ``classes[i]``.

        Raises:
            InputError: ``classes`` misses a class, names an unknown one, or repeats one.
        """
        order = tuple(str(c) for c in classes)
        if len(set(order)) != len(order) or set(order) != set(self._class_names):
            missing = [c for c in self._class_names if c not in order]
            unknown = [c for c in order if c not in self._class_names]
            raise InputError(
                f"{self._name}: the class order must name each class once (missing {missing}, "
                f"unknown {unknown}, {len(order) - len(set(order))} repeated); its classes are "
                f"{list(self._class_names)}"
            )
        new_id = np.array([order.index(n) for n in self._class_names], dtype=np.int64)
        return TextDataset(self._name, self._texts, new_id[self._labels], order, self._source)

    def subsample(
        self, n: int | None = None, *, seed: int = 0, balance: bool = False
    ) -> TextDataset:
        """At most ``n`` rows, drawn per class; deterministic for a given seed.

        Without ``balance`` the draw is stratified: each class keeps its share of the rows
        (largest remainders round, and every class present keeps at least one row when ``n`` is
        at least the number of classes present). With ``balance`` every class present gets the
        same number of rows (within one when ``n`` does not divide evenly), at most the size of
        the smallest class, so the result can hold fewer than ``n`` rows. Selected rows keep their
        original order.

        Args:
            n: Upper bound on the number of rows; None keeps them all (with ``balance``: as many
                as the smallest class allows).
            seed: Seed of the draw.
            balance: Equalise the classes instead of keeping their proportions.

        Returns:
            The subsample, a new dataset.

        Raises:
            ValueError: If ``n`` is below 1.
        """
        if n is not None and n < 1:
            raise InputError(f"n must be at least 1 (or None for every row), got {n}")
        counts = np.bincount(self._labels, minlength=self.n_classes)
        present = np.flatnonzero(counts)
        rng = np.random.default_rng(seed)
        if balance:
            quotas = _balanced_quotas(counts, present, n, rng)
        elif n is None or n >= len(self):
            return self
        else:
            quotas = _stratified_quotas(counts, present, n, rng)
        chosen = [
            rng.choice(np.flatnonzero(self._labels == c), size=int(quotas[c]), replace=False)
            for c in present
            if quotas[c] > 0
        ]
        idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
        if n is not None and idx.size < n:
            logger.info(
                "%s: subsample kept %d rows (asked for at most %d)", self._name, idx.size, n
            )
        return self.select(idx)


def _as_label_array(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Labels as a fresh 1-D int64 array; floats must be whole numbers."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "b" or arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=True)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64, copy=True)
    raise InputError(
        f"labels must be integer class ids, got dtype {arr.dtype} "
        f"(e.g. {arr[:3].tolist()}); map names to ids first"
    )


def _stratified_quotas(
    counts: np.ndarray, present: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Rows per class proportional to ``counts``, summing to ``n`` (< total)."""
    total = counts.sum()
    raw = n * counts / total
    quotas = np.floor(raw).astype(np.int64)
    if n >= present.size:
        quotas[present] = np.maximum(quotas[present], 1)
    while quotas.sum() > n:  # the minimum of one row per class overshot: trim the largest
        quotas[np.argmax(quotas)] -= 1
    frac = raw - np.floor(raw)
    order = np.lexsort((rng.random(counts.size), -frac))  # largest remainder, random ties
    remaining = n - int(quotas.sum())
    for c in order:
        if remaining == 0:
            break
        if quotas[c] < counts[c]:
            quotas[c] += 1
            remaining -= 1
    return quotas


def _balanced_quotas(
    counts: np.ndarray, present: np.ndarray, n: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Equal rows per class present, capped by the smallest class, at most ``n`` in all."""
    smallest = int(counts[present].min())
    quotas = np.zeros_like(counts)
    if n is None:
        quotas[present] = smallest
        return quotas
    per = min(n // present.size, smallest)
    quotas[present] = per
    if per < smallest:  # n was the limit: hand the remainder out one row each, at random
        extra = n - per * present.size
        quotas[rng.permutation(present)[:extra]] += 1
    return quotas
