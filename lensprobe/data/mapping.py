"""The column mapping every source shares: rows read from a source become a TextDataset.

A source (a hub dataset, local files) is read into :class:`Rows`, the columns the entry's
:class:`~lensprobe.data.registry.Columns` needs; :func:`to_dataset` then takes the texts from the
text columns and matches each label to the entry's class names (or infers them), with the checks
that name what is wrong: a missing column, a missing or unknown label, an empty text, one class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensprobe.data.dataset import TextDataset
from lensprobe.data.registry import Columns
from lensprobe.errors import InputError

__all__ = [
    "Rows",
    "class_id",
    "concat_rows",
    "label_key",
    "needed_columns",
    "take_columns",
    "to_dataset",
]

# --- rows read from a source, before the column mapping -----------------------------------------


@dataclass
class Rows:
    """Columns read from one source, plus what the mapping needs to know about them."""

    columns: dict[str, list[Any]]
    available: tuple[str, ...]
    label_feature: Any = None  # a datasets.ClassLabel when the source declares one
    n_rows: int = 0


def needed_columns(columns: Columns) -> tuple[str, ...]:
    """The columns a mapping reads: text, label and filter columns, each once."""
    return tuple(dict.fromkeys([*columns.text, columns.label, *columns.where]))


def take_columns(ds: Any, needed: Sequence[str], label: str) -> Rows:
    """The needed columns of a ``datasets.Dataset`` as Python lists (absent ones left out)."""
    present = [c for c in needed if c in ds.column_names]
    data = ds.select_columns(present).to_dict() if present else {}
    feature = ds.features.get(label)
    if not hasattr(feature, "int2str"):  # only a ClassLabel names integer labels
        feature = None
    return Rows(data, tuple(ds.column_names), feature, len(ds))


def concat_rows(parts: Sequence[Rows], needed: Sequence[str]) -> Rows:
    """Rows of several parts, one after the other; a column some part lacks reads as missing."""
    found = [c for c in needed if any(c in p.columns for p in parts)]
    columns: dict[str, list[Any]] = {c: [] for c in found}
    for part in parts:
        for c in found:
            columns[c].extend(part.columns.get(c, [None] * part.n_rows))
    available = tuple(dict.fromkeys(c for p in parts for c in p.available))
    features = [p.label_feature for p in parts if p.label_feature is not None]
    return Rows(columns, available, features[0] if features else None, sum(p.n_rows for p in parts))


# --- label and text mapping (shared by every source) --------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class _Unmapped:
    """A raw label value that ``Columns.label_names`` does not name."""

    value: Any


def label_key(value: Any, feature: Any, columns: Columns) -> Any:
    """A raw label value as a class name (str) or class id (int); None when missing."""
    if _is_missing(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        value = int(value)
    if feature is not None and hasattr(feature, "int2str") and isinstance(value, int):
        value = feature.int2str(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if columns.label_names:
        if value in columns.label_names:
            value = columns.label_names[value]
        elif str(value) in columns.label_names:
            value = columns.label_names[str(value)]
        else:
            return _Unmapped(value)
    if isinstance(value, str):
        value = value.strip()
        if columns.label_transform is not None:
            value = columns.label_transform(value)
    return value


def class_id(key: Any, lookup: dict[str, int], n_classes: int) -> int | None:
    """A label key's class id: a name looked up (case-insensitively), or an id in range."""
    if isinstance(key, str):
        return lookup.get(key.casefold())
    if isinstance(key, int) and 0 <= key < n_classes:
        return key
    return None


def _rows_kept(rows: Rows, columns: Columns) -> list[int]:
    """Positions of the rows that pass the entry's ``where`` filters."""
    keep = np.ones(rows.n_rows, dtype=bool)
    for column, wanted in columns.where.items():
        keep &= np.array([v == wanted for v in rows.columns[column]], dtype=bool)
    return np.flatnonzero(keep).tolist()


def _inferred_class_names(rows: Rows, keys: list[Any]) -> tuple[tuple[str, ...], list[Any]]:
    """Class names from the data, and the label keys to match against them.

    A ClassLabel's names when the source declares one, else the sorted distinct label values.
    """
    if rows.label_feature is not None and hasattr(rows.label_feature, "names"):
        return tuple(rows.label_feature.names), keys
    mapped = {k for k in keys if not isinstance(k, _Unmapped)}
    distinct = sorted(mapped, key=lambda k: (isinstance(k, str), k))
    return tuple(str(k) for k in distinct), [
        k if isinstance(k, _Unmapped) else str(k) for k in keys
    ]


def _class_ids(
    name: str,
    rows: Rows,
    columns: Columns,
    idx: list[int],
    class_names: tuple[str, ...] | None,
    source: str,
) -> tuple[list[int], list[int], tuple[str, ...]]:
    """The rows kept, their class ids and the class names.

    A missing label raises; so does an unknown one, unless the entry drops such rows.
    """
    keys = [label_key(rows.columns[columns.label][i], rows.label_feature, columns) for i in idx]
    absent = [idx[j] for j, k in enumerate(keys) if k is None]
    if absent:
        raise InputError(
            f"{name}: {len(absent)} rows of {source} have no label in column "
            f"{columns.label!r} (rows {absent[:5]}); remove them or choose another label_column"
        )
    if class_names is None:
        class_names, keys = _inferred_class_names(rows, keys)
    lookup = {c.casefold(): i for i, c in enumerate(class_names)}
    ids = [class_id(k, lookup, len(class_names)) for k in keys]
    unknown = [keys[j] for j, i in enumerate(ids) if i is None]
    if unknown and columns.unknown_labels != "drop":
        values = sorted({repr(v.value if isinstance(v, _Unmapped) else v) for v in unknown})
        raise InputError(
            f"{name}: label value(s) {', '.join(values[:5])} in column {columns.label!r} of "
            f"{source} match none of the {len(class_names)} classes "
            f"({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})"
        )
    kept = [j for j, i in enumerate(ids) if i is not None]
    return [idx[j] for j in kept], [ids[j] for j in kept], class_names  # type: ignore[misc]


def _texts(name: str, rows: Rows, columns: Columns, idx: list[int], source: str) -> list[str]:
    """The text of each kept row (its text columns joined by a space); an empty one raises."""
    texts = []
    for i in idx:
        parts = [rows.columns[c][i] for c in columns.text]
        texts.append(" ".join(str(p) for p in parts if not _is_missing(p)).strip())
    empty = [i for i, t in zip(idx, texts, strict=True) if not t]
    if empty:
        raise InputError(
            f"{name}: {len(empty)} of {len(texts)} rows of {source} have an empty text in "
            f"{list(columns.text)} (rows {empty[:5]}); remove them from the source or choose "
            "another text_column"
        )
    if not texts:
        raise InputError(f"{name}: no rows left in {source} (check split= and the filters)")
    return texts


def to_dataset(
    name: str,
    rows: Rows,
    columns: Columns,
    class_names: tuple[str, ...] | None,
    source: str,
) -> TextDataset:
    """Rows of a source mapped to texts and class ids, with the registry's checks."""
    missing = [c for c in needed_columns(columns) if c not in rows.columns]
    if missing:
        raise InputError(
            f"{name}: column(s) {missing} not found in {source}; it has {list(rows.available)}. "
            "Pass text_column= / label_column= to name the right ones."
        )
    idx = _rows_kept(rows, columns)
    idx, ids, class_names = _class_ids(name, rows, columns, idx, class_names, source)
    texts = _texts(name, rows, columns, idx, source)
    present = sorted(set(ids))
    if len(present) < 2:
        raise InputError(
            f"{name}: the label column {columns.label!r} of {source} holds a single class "
            f"({class_names[present[0]]!r}) in all {len(ids)} rows; a probe needs at least two. "
            "Load more splits (split=None), or choose another label_column"
        )
    return TextDataset(name, texts, np.asarray(ids, dtype=np.int64), class_names, source)
