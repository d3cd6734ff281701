"""Checks of training inputs that run before any compute, and label encoding.

Bad input is an error that says what is wrong, where, and how to fix it, before a probe trains:
an empty tensor, a mask of the wrong shape or dtype, a row with no valid token, NaN or inf on a
valid token. Labels of any kind (integers with gaps, strings, booleans) become contiguous class
ids ``0..k-1`` with their original values kept as the class names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from lensprobe.errors import InputError, InputTypeError

_SHOW = 5
"""How many offending rows / positions an error lists."""


def _first(items: Sequence[Any], total: int) -> str:
    shown = ", ".join(str(i) for i in items[:_SHOW])
    return f"{shown}, ... ({total} in all)" if total > _SHOW else shown


def check_activations(x: Any, mask: Any) -> None:
    """Raise a named :class:`~lensprobe.errors.InputError` for input no probe can train on.

    ``x`` should be ``Float[Tensor, "batch pos d_model"]`` and ``mask`` ``Bool[Tensor, "batch
    pos"]``; this is the function that says so, so it takes anything.

    Checks, in order: three dimensions, none of them empty, a floating-point dtype; a bool mask
    of shape ``(batch, pos)``; every row with at least one valid token; finite values on every
    valid token (padding may hold anything). The finiteness check reads ``x`` a chunk of rows at
    a time, so it never holds a second copy of a large capture.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"activations must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3:
        raise InputError(
            f"expected activations (batch, pos, d_model), got shape {tuple(x.shape)}; add a batch "
            "dimension with x[None] for one sequence"
        )
    if x.numel() == 0:
        raise InputError(
            f"the activations are empty (shape {tuple(x.shape)}): pass at least one sequence "
            "with at least one token and a non-zero width"
        )
    if not x.dtype.is_floating_point:
        raise InputError(f"activations must be floating point, got {x.dtype}: pass x.float()")
    if not isinstance(mask, Tensor):
        raise InputError(f"mask must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise InputError(
            f"mask must be a bool tensor (True = valid token), got {mask.dtype}: pass mask.bool() "
            "(or mask != 0)"
        )
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise InputError(
            f"mask shape {tuple(mask.shape)} does not match the activations' (batch, pos) "
            f"{tuple(x.shape[:2])}: pass the mask that was padded with these activations"
        )
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(
            f"row(s) {_first(empty, len(empty))} of {x.shape[0]} have no valid token: drop them "
            "(x[keep], mask[keep], labels[keep]) or fix the mask"
        )
    _check_finite(x, mask)


def _check_finite(x: Tensor, mask: Tensor) -> None:
    """Raise when a valid token holds NaN or inf, naming the first tokens and rows.

    ``x`` is read a chunk of rows at a time (never a second copy of a large capture).
    """
    check_finite_chunks(
        (start, x[start : start + 256], mask[start : start + 256])
        for start in range(0, x.shape[0], 256)
    )


def check_finite_chunks(chunks: Iterable[tuple[int, Tensor, Tensor]]) -> None:
    """:func:`check_activations`' finiteness check over ``(first row, x, mask)`` row blocks.

    Raises:
        InputError: A valid token holds NaN or inf (the first tokens and rows named).
    """
    bad_rows: list[int] = []
    bad_tokens: list[tuple[int, int]] = []
    n_bad = 0
    for start, chunk, chunk_mask in chunks:
        bad = ~torch.isfinite(chunk).all(dim=-1) & chunk_mask.to(chunk.device)
        if bool(bad.any()):
            where = bad.nonzero().tolist()
            n_bad += len(where)
            bad_tokens += [(start + r, p) for r, p in where[:_SHOW]]
            bad_rows += sorted({start + r for r, _ in where})
    if n_bad:
        tokens = ", ".join(f"(row {r}, pos {p})" for r, p in bad_tokens[:_SHOW])
        raise InputError(
            f"the activations are NaN or inf at {n_bad} valid token(s), e.g. {tokens}; rows "
            f"{_first(bad_rows, len(bad_rows))}: drop those rows, or recapture (a float16 "
            "capture overflows: use bfloat16 or float32)"
        )


def encode_labels(
    labels: Any, n_rows: int, names: Sequence[str] | None = None
) -> tuple[Int[Tensor, " batch"], tuple[Any, ...], tuple[str, ...] | None]:
    """Contiguous class ids ``0..k-1`` for labels of any kind, and what each id stands for.

    Args:
        labels: One label per row: integers (any values, e.g. ``{1, 2}`` or ``{0, 5}``), strings,
            booleans, or floats holding integers; a tensor, array or list.
        n_rows: The number of rows (sequences) the labels must cover.
        names: Known names of the original integer labels, indexed by label value (e.g. an
            ``Activations``' ``class_names``).

    Returns:
        ``(ids, classes, class_names)``: ``ids[i]`` indexes ``classes``, the sorted distinct
        original labels; ``class_names`` names each class (``None`` when the labels already
        were ``0..k-1`` and no names are known).
    """
    arr = _label_array(labels, n_rows)
    if arr.dtype.kind in "OUS":
        ids, classes = _encode_strings(arr)
        return ids, classes, classes
    values = torch.from_numpy(_integer_labels(arr))
    uniq = values.unique()
    classes = tuple(int(c) for c in uniq.tolist())
    ids = torch.searchsorted(uniq, values)
    if names is not None and all(0 <= c < len(names) for c in classes):
        return ids, classes, tuple(str(names[c]) for c in classes)
    if classes == tuple(range(len(classes))):
        return ids, classes, None
    return ids, classes, tuple(str(c) for c in classes)


def _label_array(labels: Any, n_rows: int) -> np.ndarray:
    """The labels as a flat array of ``n_rows`` (a tensor, array or list); errors name the fix."""
    if isinstance(labels, Tensor):
        arr = labels.detach().cpu()
        if arr.dtype == torch.bfloat16:
            arr = arr.float()
        arr = arr.numpy()
    else:
        if not isinstance(labels, np.ndarray):
            labels = list(labels)
            kinds = {type(v).__name__ for v in labels}
            if len(kinds) > 1 and any(isinstance(v, str) for v in labels):
                raise InputTypeError(
                    f"labels mix types {sorted(kinds)}: use all strings or all integers"
                )
        try:
            arr = np.asarray(labels)
        except ValueError as err:
            raise InputError(f"labels must be a flat sequence, one per row: {err}") from None
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        count = arr.shape[0] if arr.ndim == 1 else f"labels of shape {tuple(arr.shape)} as"
        raise InputError(
            f"{count} labels for {n_rows} sequences: pass one label per sequence, as a flat list "
            "or a 1-d tensor"
        )
    return arr


def _encode_strings(arr: np.ndarray) -> tuple[Int[Tensor, " batch"], tuple[str, ...]]:
    """Class ids of string labels, and the sorted distinct strings; mixed types are an error."""
    if arr.dtype.kind == "O" and not all(isinstance(v, str) for v in arr.tolist()):
        kinds = sorted({type(v).__name__ for v in arr.tolist()})
        raise InputTypeError(f"labels mix types {kinds}: use all strings or all integers")
    strings = arr.astype(str).tolist()
    classes = tuple(sorted(set(strings)))
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in strings], dtype=torch.long), classes


def _integer_labels(arr: np.ndarray) -> np.ndarray:
    """Integer, boolean, or integer-valued float labels as int64; anything else is an error."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            rows = np.flatnonzero(~np.isfinite(arr)).tolist()
            raise InputError(
                f"labels are NaN or inf at row(s) {_first(rows, len(rows))}: drop those rows"
            )
        if not (arr == np.round(arr)).all():
            raise InputError(
                "labels must be class ids or names, got non-integer floats: a probe classifies"
            )
    elif arr.dtype.kind not in "biu":
        raise InputTypeError(f"labels must be integers or strings, got dtype {arr.dtype}")
    return arr.astype(np.int64)
