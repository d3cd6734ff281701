"""What capture checks before any work: texts, labels, settings, and the ``out`` directory."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lensprobe.errors import InputError, InputTypeError
from lensprobe.reduced import check_keep
from lensprobe.specs import CAPTURE_MAX_LENGTH
from lensprobe.storage import check_store_target

__all__ = ["check_capture_out", "check_texts"]


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, checked: strings, at least one, none empty or only whitespace.

    Raises:
        InputError: No texts, or an empty one (the message gives its position).
        TypeError: One string instead of a list, or a non-string entry.
    """
    if isinstance(texts, str):
        raise InputTypeError("texts must be a list of strings, not one string; wrap it: [text]")
    text_list = list(texts)
    if not text_list:
        raise InputError("texts is empty; pass at least one text")
    for i, t in enumerate(text_list):
        if not isinstance(t, str):
            raise InputTypeError(f"texts[{i}] is a {type(t).__name__}, not a string")
    empty = [i for i, t in enumerate(text_list) if not t.strip()]
    if empty:
        raise InputError(
            f"texts {empty[:10]} are empty or only whitespace ({len(empty)} of {len(text_list)}); "
            "remove them: an empty text has no tokens to probe"
        )
    return text_list


def hook_list(hooks: str | Sequence[str]) -> list[str]:
    """One hook name or several as a list without repeats (order kept)."""
    return list(dict.fromkeys([hooks] if isinstance(hooks, str) else hooks))


def class_ids(
    labels: Any, n: int, class_names: Sequence[str] | None
) -> tuple[Tensor | None, tuple[str, ...] | None]:
    """Labels as int64 class ids (strings become ids of ``class_names`` or of their sorted set).

    Returns:
        The ids (``None`` without labels) and the class names (``None`` when unknown).
    """
    names = None if class_names is None else tuple(str(c) for c in class_names)
    if labels is None:
        return None, names
    if isinstance(labels, (Tensor, np.ndarray)):
        values: list[Any] = labels.tolist()
    else:
        values = list(labels)
    if len(values) != n:
        raise InputError(
            f"labels has {len(values)} entries but texts has {n}; pass one label per text"
        )
    if values and all(isinstance(v, str) for v in values):
        if names is None:
            names = tuple(sorted(set(values)))
        lookup = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise InputError(f"labels {unknown} are not in class_names {list(names)}")
        return torch.tensor([lookup[v] for v in values], dtype=torch.long), names
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise InputTypeError("labels must be integer class ids or class-name strings")
    out = torch.tensor(values, dtype=torch.long)
    if out.numel() and int(out.min()) < 0:
        raise InputError("labels must be non-negative class ids")
    if names is not None and out.numel() and int(out.max()) >= len(names):
        raise InputError(f"label {int(out.max())} has no entry in class_names ({len(names)} names)")
    return out, names


def check_settings(
    batch_size: int,
    max_length: int | None,
    padding_side: str,
    dtype: torch.dtype,
    shard_tokens: int | None,
    keep: str = "tokens",
) -> None:
    """Refuse capture settings out of range (each error names the setting)."""
    check_keep(keep)
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if max_length is not None and max_length <= 0:
        raise InputError(f"max_length must be positive or None, got {max_length}")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating dtype, got {dtype}")
    if shard_tokens is not None and shard_tokens <= 0:
        raise InputError(f"shard_tokens must be positive or None, got {shard_tokens}")


@dataclass(frozen=True)
class CaptureInputs:
    """The texts, hooks and labels of a capture, checked."""

    texts: list[str]
    """The texts, none empty."""

    hooks: list[str]
    """Hook names without repeats, at least one."""

    labels: Tensor | None
    """One class id per text, or ``None``."""

    class_names: tuple[str, ...] | None
    """Name of each class id, when known."""

    source: dict[str, Any]
    """What identifies these inputs in a store's fingerprint (see :func:`source_fingerprint`)."""


def check_inputs(
    texts: Sequence[str],
    hooks: str | Sequence[str],
    labels: Any,
    class_names: Sequence[str] | None,
    max_length: int | None,
) -> CaptureInputs:
    """Check the hooks, texts and labels (in that order) and fingerprint them.

    Raises:
        ValueError: No hooks, or labels that do not fit the texts.
        InputError: No texts, or an empty one.
        TypeError: Texts or labels of the wrong type.
    """
    hooks = hook_list(hooks)
    if not hooks:
        raise InputError(
            "hooks is empty; pass at least one hook name, e.g. 'blocks.9.hook_resid_post'"
        )
    text_list = check_texts(texts)
    label_tensor, names = class_ids(labels, len(text_list), class_names)
    source = source_fingerprint(text_list, hooks, label_tensor, names, max_length)
    return CaptureInputs(text_list, hooks, label_tensor, names, source)


def digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as JSON (for a store's fingerprint)."""
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def source_fingerprint(
    texts: list[str],
    hooks: list[str],
    labels: Tensor | None,
    names: tuple[str, ...] | None,
    max_length: int | None,
) -> dict[str, Any]:
    """The part of a store's fingerprint that is known before the model is loaded."""
    return {
        "hooks": hooks,
        "n_sequences": len(texts),
        "max_length": max_length,
        "class_names": None if names is None else list(names),
        "texts_sha256": digest(texts),
        "labels_sha256": None if labels is None else digest(labels.tolist()),
    }


def check_capture_out(
    out: str | os.PathLike[str],
    texts: Sequence[str],
    hooks: str | Sequence[str],
    labels: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    max_length: int | None = CAPTURE_MAX_LENGTH,
) -> None:
    """Check, before loading a model, that ``capture(..., out=out)`` with these inputs may run.

    ``out`` may be absent, empty, or a store of this same capture (to resume or reuse it).

    Raises:
        OutputPathError: ``out`` is a file, or a non-empty folder that is no store.
        StoreError: ``out`` holds a store of another capture (other texts, hooks or labels).
        InputError: Empty texts.
    """
    text_list = check_texts(texts)
    label_tensor, names = class_ids(labels, len(text_list), class_names)
    check_store_target(
        out, source_fingerprint(text_list, hook_list(hooks), label_tensor, names, max_length)
    )
