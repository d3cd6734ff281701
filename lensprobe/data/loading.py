"""Loading datasets: registry entries from the hub or a local folder, files, and built-in tasks.

Every source is read through ``datasets.load_dataset`` (a hub id, or the ``csv`` / ``json`` /
``text`` / ``parquet`` builder over local files) and then goes through the same column mapping:
texts from the entry's text columns, labels matched to its class names. ``datasets`` is imported
only when a file or hub dataset is loaded (``pip install 'lensprobe[data]'``); built-in tasks need
nothing beyond numpy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lensprobe.data.builtin import BUILTIN_TASKS
from lensprobe.data.dataset import TextDataset
from lensprobe.data.registry import (
    REGISTRY,
    Columns,
    DatasetSpec,
    HubSource,
    LocalFiles,
    LocalSource,
    find_spec,
)
from lensprobe.errors import DataFileError

logger = logging.getLogger(__name__)

__all__ = ["DatasetInfo", "list_datasets", "load_dataset"]

Source = Literal["auto", "hub", "local"]
_SOURCES = ("auto", "hub", "local")
_FILE_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
_COMPRESSIONS = (".zst", ".gz", ".bz2", ".xz")


def _datasets() -> Any:
    """The ``datasets`` module, or an ImportError that names the extra to install."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading file and hub datasets needs the `datasets` package: "
            "pip install 'lensprobe[data]' (built-in tasks work without it)"
        ) from err
    return datasets


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide ``datasets`` progress bars while reading local files; restore the setting after."""
    datasets = _datasets()
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


# --- rows read from a source, before the column mapping -----------------------------------------


@dataclass
class _Rows:
    """Columns read from one source, plus what the mapping needs to know about them."""

    columns: dict[str, list[Any]]
    available: tuple[str, ...]
    label_feature: Any = None  # a datasets.ClassLabel when the source declares one
    n_rows: int = 0


def _needed(columns: Columns) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*columns.text, columns.label, *columns.where]))


def _take_columns(ds: Any, needed: Sequence[str], label: str) -> _Rows:
    """The needed columns of a ``datasets.Dataset`` as Python lists (absent ones left out)."""
    present = [c for c in needed if c in ds.column_names]
    data = ds.select_columns(present).to_dict() if present else {}
    feature = ds.features.get(label)
    if not hasattr(feature, "int2str"):  # only a ClassLabel names integer labels
        feature = None
    return _Rows(data, tuple(ds.column_names), feature, len(ds))


def _concat(parts: Sequence[_Rows], needed: Sequence[str]) -> _Rows:
    """Rows of several parts, one after the other; a column some part lacks reads as missing."""
    found = [c for c in needed if any(c in p.columns for p in parts)]
    columns: dict[str, list[Any]] = {c: [] for c in found}
    for part in parts:
        for c in found:
            columns[c].extend(part.columns.get(c, [None] * part.n_rows))
    available = tuple(dict.fromkeys(c for p in parts for c in p.available))
    features = [p.label_feature for p in parts if p.label_feature is not None]
    return _Rows(
        columns, available, features[0] if features else None, sum(p.n_rows for p in parts)
    )


# --- label and text mapping (shared by every source) --------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class _Unmapped:
    """A raw label value that ``Columns.label_names`` does not name."""

    value: Any


def _label_key(value: Any, feature: Any, columns: Columns) -> Any:
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


def _class_id(key: Any, lookup: dict[str, int], n_classes: int) -> int | None:
    if isinstance(key, str):
        return lookup.get(key.casefold())
    if isinstance(key, int) and 0 <= key < n_classes:
        return key
    return None


def _rows_kept(rows: _Rows, columns: Columns) -> list[int]:
    """Positions of the rows that pass the entry's ``where`` filters."""
    keep = np.ones(rows.n_rows, dtype=bool)
    for column, wanted in columns.where.items():
        keep &= np.array([v == wanted for v in rows.columns[column]], dtype=bool)
    return np.flatnonzero(keep).tolist()


def _inferred_class_names(rows: _Rows, keys: list[Any]) -> tuple[tuple[str, ...], list[Any]]:
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
    rows: _Rows,
    columns: Columns,
    idx: list[int],
    class_names: tuple[str, ...] | None,
    source: str,
) -> tuple[list[int], list[int], tuple[str, ...]]:
    """The rows kept, their class ids and the class names.

    A missing label raises; so does an unknown one, unless the entry drops such rows.
    """
    keys = [_label_key(rows.columns[columns.label][i], rows.label_feature, columns) for i in idx]
    absent = [idx[j] for j, k in enumerate(keys) if k is None]
    if absent:
        raise ValueError(
            f"{name}: {len(absent)} rows of {source} have no label in column "
            f"{columns.label!r} (rows {absent[:5]}); remove them or choose another label_column"
        )
    if class_names is None:
        class_names, keys = _inferred_class_names(rows, keys)
    lookup = {c.casefold(): i for i, c in enumerate(class_names)}
    ids = [_class_id(k, lookup, len(class_names)) for k in keys]
    unknown = [keys[j] for j, i in enumerate(ids) if i is None]
    if unknown and columns.unknown_labels != "drop":
        values = sorted({repr(v.value if isinstance(v, _Unmapped) else v) for v in unknown})
        raise ValueError(
            f"{name}: label value(s) {', '.join(values[:5])} in column {columns.label!r} of "
            f"{source} match none of the {len(class_names)} classes "
            f"({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})"
        )
    kept = [j for j, i in enumerate(ids) if i is not None]
    return [idx[j] for j in kept], [ids[j] for j in kept], class_names  # type: ignore[misc]


def _texts(name: str, rows: _Rows, columns: Columns, idx: list[int], source: str) -> list[str]:
    """The text of each kept row (its text columns joined by a space); an empty one raises."""
    texts = []
    for i in idx:
        parts = [rows.columns[c][i] for c in columns.text]
        texts.append(" ".join(str(p) for p in parts if not _is_missing(p)).strip())
    empty = [i for i, t in zip(idx, texts, strict=True) if not t]
    if empty:
        raise ValueError(
            f"{name}: {len(empty)} of {len(texts)} rows of {source} have an empty text in "
            f"{list(columns.text)} (rows {empty[:5]}); remove them from the source or choose "
            "another text_column"
        )
    if not texts:
        raise ValueError(f"{name}: no rows left in {source} (check split= and the filters)")
    return texts


def _to_dataset(
    name: str,
    rows: _Rows,
    columns: Columns,
    class_names: tuple[str, ...] | None,
    source: str,
) -> TextDataset:
    """Rows of a source mapped to texts and class ids, with the registry's checks."""
    missing = [c for c in _needed(columns) if c not in rows.columns]
    if missing:
        raise ValueError(
            f"{name}: column(s) {missing} not found in {source}; it has {list(rows.available)}. "
            "Pass text_column= / label_column= to name the right ones."
        )
    idx = _rows_kept(rows, columns)
    idx, ids, class_names = _class_ids(name, rows, columns, idx, class_names, source)
    texts = _texts(name, rows, columns, idx, source)
    present = sorted(set(ids))
    if len(present) < 2:
        raise ValueError(
            f"{name}: the label column {columns.label!r} of {source} holds a single class "
            f"({class_names[present[0]]!r}) in all {len(ids)} rows; a probe needs at least two. "
            "Load more splits (split=None), or choose another label_column"
        )
    return TextDataset(name, texts, np.asarray(ids, dtype=np.int64), class_names, source)


# --- hub -------------------------------------------------------------------------------------------


def _read_hub(
    hub: HubSource,
    split: str,
    class_names: tuple[str, ...] | None,
    n: int | None,
    cache_dir: str | None,
) -> _Rows:
    """Rows of a hub dataset (or of a local directory laid out like a hub repository)."""
    datasets = _datasets()
    needed = _needed(hub.columns)
    if not hub.streaming:
        ds = datasets.load_dataset(hub.id, name=hub.config, split=split, cache_dir=cache_dir)
        return _take_columns(ds, needed, hub.columns.label)
    if class_names is None:
        raise ValueError(f"{hub.id}: streaming needs the entry's class names")
    stream = datasets.load_dataset(
        hub.id, name=hub.config, split=split, streaming=True, cache_dir=cache_dir
    )
    features = stream.features
    feature = features.get(hub.columns.label) if features else None
    if not hasattr(feature, "int2str"):
        feature = None
    quota = math.ceil(n / len(class_names)) if n else hub.stream_rows_per_class
    lookup = {c.casefold(): i for i, c in enumerate(class_names)}
    counts = [0] * len(class_names)
    columns: dict[str, list[Any]] = {c: [] for c in needed}
    available: tuple[str, ...] = ()
    for row in stream:
        if not available:
            available = tuple(row)
            if not set(needed) <= set(available):
                break  # the mapping reports the missing columns; do not read on
        if any(row.get(c) != v for c, v in hub.columns.where.items()):
            continue
        cid = _class_id(
            _label_key(row.get(hub.columns.label), feature, hub.columns), lookup, len(class_names)
        )
        if cid is None or counts[cid] >= quota:
            continue
        counts[cid] += 1
        for c in needed:
            columns[c].append(row.get(c))
        if min(counts) >= quota:
            break
    n_rows = sum(counts)
    if not all(c in available for c in needed):
        columns = {c: v for c, v in columns.items() if c in available}
    return _Rows(columns, available, feature, n_rows)


# --- local files -------------------------------------------------------------------------------


def _split_list(split: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Split names asked for (``"train+test"``, a list, or None for all), checked."""
    if split is None:
        return list(available)
    wanted = split.split("+") if isinstance(split, str) else list(split)
    wanted = [s.strip() for s in wanted]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"split(s) {unknown} not available; this copy has {list(available)}")
    return wanted


def _resolve_files(folder: Path, patterns: Sequence[str], name: str) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(folder.glob(pattern))
        if not matches:
            raise FileNotFoundError(
                f"{name}: no file {pattern!r} in {folder}. The folder should hold the files of "
                "the offline data collection unchanged; check data_dir or restore the file"
            )
        files.extend(str(m) for m in matches)
    return files


def _load_files(
    datasets: Any, builder: str, files: list[str], cache_dir: str | None, **options: Any
) -> Any:
    """``datasets.load_dataset`` over local files; unreadable or empty files are a DataFileError."""
    for f in files:
        if os.path.getsize(f) == 0:
            raise DataFileError(f"{f} is empty (0 bytes); fill it or pass another file")
    generation_error = getattr(
        getattr(datasets, "exceptions", None), "DatasetGenerationError", ValueError
    )
    try:
        return datasets.load_dataset(
            builder, data_files=files, split="train", cache_dir=cache_dir, **options
        )
    except (generation_error, ValueError) as err:
        named = ", ".join(files)
        if "corresponds to no data" in str(err):
            raise DataFileError(
                f"{named} has no rows (only a header?); add rows or pass another file"
            ) from err
        cause = err.__cause__ or err
        raise DataFileError(
            f"{named} cannot be read as {builder} ({type(cause).__name__}: {cause}); check the "
            "file's format"
        ) from err


def _read_group(
    group: LocalFiles, folder: Path, split: str, columns: Columns, cache_dir: str | None
) -> _Rows:
    """One split of one file group, with its constant columns and label files."""
    datasets = _datasets()
    needed = _needed(columns)
    files = _resolve_files(folder, group.splits[split], folder.name)
    ds = _load_files(datasets, group.builder, files, cache_dir, **group.options)
    rows = _take_columns(ds, needed, columns.label)
    if group.label_files:
        label_files = _resolve_files(folder, group.label_files[split], folder.name)
        lines = _load_files(datasets, "text", label_files, cache_dir)["text"]
        if len(lines) != rows.n_rows:
            raise ValueError(
                f"{folder.name}: {split} has {rows.n_rows} texts but {len(lines)} labels in "
                f"{label_files}; the text and label files must align line by line"
            )
        rows.columns["label"] = [int(x) if str(x).strip() else None for x in lines]
        rows.available = (*rows.available, "label")
    for column, value in group.constants.items():
        rows.columns[column] = [value] * rows.n_rows
        rows.available = (*rows.available, column)
    return rows


def _read_local(
    local: LocalSource,
    folder: Path,
    split: str | Sequence[str] | None,
    cache_dir: str | None,
) -> tuple[_Rows, list[str]]:
    splits = _split_list(split, local.split_names)
    with _quiet_progress():
        parts = [
            _read_group(group, folder, s, local.columns, cache_dir)
            for group in local.files
            for s in splits
            if s in group.splits
        ]
    return _concat(parts, _needed(local.columns)), splits


def _check_data_dir(data_dir: str | os.PathLike[str] | None) -> None:
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise FileNotFoundError(
            f"data_dir {os.fspath(data_dir)!r} is not a folder; pass the folder that holds the "
            "offline data collection (its CATALOG.md and one folder per dataset)"
        )


def _local_folder(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``data_dir/<folder>`` (or ``data_dir`` itself when it is that folder), if it exists."""
    if spec.local is None or data_dir is None:
        return None
    base = Path(data_dir).expanduser()
    for candidate in (base / spec.local.folder, base):
        if candidate.is_dir() and candidate.name == spec.local.folder:
            return candidate
    return None


def _holds_every_file(spec: DatasetSpec, folder: Path) -> bool:
    """Whether ``folder`` has every file (or a match of every pattern) the local copy names."""
    assert spec.local is not None
    for group in spec.local.files:
        names = [n for files in group.splits.values() for n in files]
        names += [n for files in group.label_files.values() for n in files]
        if not all(any(folder.glob(name)) for name in names):
            return False
    return True


# --- resolving a name or a path ----------------------------------------------------------------


def _with_overrides(
    spec: DatasetSpec, text_column: str | None, label_column: str | None
) -> DatasetSpec:
    """The entry with caller-named columns; a new label column drops the entry's class names."""
    if text_column is None and label_column is None:
        return spec

    def patch(columns: Columns) -> Columns:
        if label_column is not None and label_column != columns.label:
            columns = Columns(columns.text, label_column, where=columns.where)
        if text_column is not None:
            columns = replace(columns, text=(text_column,))
        return columns

    relabelled = label_column is not None and any(
        s is not None and s.columns.label != label_column for s in (spec.hub, spec.local)
    )
    return replace(
        spec,
        class_names=None if relabelled else spec.class_names,
        hub=None if spec.hub is None else replace(spec.hub, columns=patch(spec.hub.columns)),
        local=None
        if spec.local is None
        else replace(spec.local, columns=patch(spec.local.columns)),
    )


def _known_names() -> str:
    names = [*BUILTIN_TASKS, *REGISTRY]
    return ", ".join(names)


def _spec_for_path(path: Path) -> DatasetSpec | None:
    """The registry entry whose local copy is this folder or this single file."""
    if path.is_dir():
        specs = [s for s in REGISTRY.values() if s.local and s.local.folder == path.name]
        if len(specs) > 1:
            raise ValueError(
                f"{path} holds several datasets ({', '.join(s.name for s in specs)}); load one "
                f"by name: load_dataset({specs[0].name!r}, data_dir={str(path.parent)!r})"
            )
        return specs[0] if specs else None
    listing = [s for s in REGISTRY.values() if s.local and s.local.folder == path.parent.name]
    for spec in listing:
        assert spec.local is not None
        files = {f for g in spec.local.files for pats in g.splits.values() for f in pats}
        if files == {path.name}:
            return spec
    for spec in listing:
        assert spec.local is not None
        for group in spec.local.files:
            for split, pats in group.splits.items():
                if path.name in pats:
                    raise ValueError(
                        f"{path.name} is the {split!r} split of {spec.name}; load it with "
                        f"load_dataset({spec.name!r}, data_dir={str(path.parent.parent)!r}, "
                        f"split={split!r})"
                    )
    return None


def _adhoc_local(path: Path, text_column: str | None, label_column: str | None) -> DatasetSpec:
    """An unregistered file or folder, read with default or caller-named columns."""
    columns = Columns((text_column or "text",), label_column or "label")
    if path.is_dir():  # a folder laid out like a hub repository: the hub reader reads it
        return DatasetSpec(path.name, "local folder", None, hub=HubSource(str(path), columns))
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    kind = _FILE_BUILDERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise ValueError(
            f"{path}: cannot tell how to read a {''.join(path.suffixes) or 'suffix-less'} file; "
            f"use one of {sorted(_FILE_BUILDERS)} (optionally compressed)"
        )
    builder, options = kind
    group = LocalFiles(builder, splits={"train": (path.name,)}, options=options)
    local = LocalSource(path.parent.name, (group,), columns)
    return DatasetSpec(path.name, "local file", None, local=local)


def _looks_like_path(name: str) -> bool:
    """A name no hub id could be: relative/absolute/home path, or a data-file suffix."""
    suffix = Path(name).suffix.lower()
    return name.startswith((".", "/", "~")) or suffix in (*_FILE_BUILDERS, *_COMPRESSIONS)


def _check_arguments(source: str, n: int | None, data_dir: str | os.PathLike[str] | None) -> None:
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1 (or None), got {n}")
    _check_data_dir(data_dir)


def _spec_of_path(
    path: Path, text_column: str | None, label_column: str | None
) -> tuple[DatasetSpec, Path | None, Source]:
    """An existing file or folder: its registry entry, else an ad-hoc one, and where to read."""
    path = path.resolve()
    spec = _spec_for_path(path) or _adhoc_local(path, text_column, label_column)
    if spec.local is None:  # an unregistered folder: read like a hub repository
        return spec, None, "hub"
    return spec, path if path.is_dir() else path.parent, "local"


def _unregistered_hub(name: str, text_column: str | None, label_column: str | None) -> DatasetSpec:
    """A hub id the registry does not know, read with the columns the caller names."""
    if text_column is None or label_column is None:
        raise ValueError(
            f"unknown dataset {name!r}. Known: {_known_names()}. To load another hub "
            "dataset, pass text_column= and label_column="
        )
    columns = Columns((text_column,), label_column)
    return DatasetSpec(name, "hub dataset", None, hub=HubSource(name, columns))


def _resolve(
    name: str,
    source: Source,
    data_dir: str | os.PathLike[str] | None,
    text_column: str | None,
    label_column: str | None,
) -> tuple[DatasetSpec, Path | None, Source]:
    """The entry a name stands for (with the caller's columns), its local folder, the source.

    The name is a registry name, alias or hub id; an existing path; or another hub id.
    """
    spec = find_spec(name)
    folder: Path | None = None
    path = Path(name).expanduser()
    if spec is None and path.exists():
        spec, folder, source = _spec_of_path(path, text_column, label_column)
    elif spec is None and _looks_like_path(name):
        raise FileNotFoundError(f"{name}: no such file or folder")
    elif spec is None:
        spec = _unregistered_hub(name, text_column, label_column)
    spec = _with_overrides(spec, text_column, label_column)
    if folder is None and source != "hub":
        folder = _local_folder(spec, data_dir)
    return spec, folder, source


def _load_local(
    spec: DatasetSpec,
    folder: Path | None,
    data_dir: str | os.PathLike[str] | None,
    split: str | Sequence[str] | None,
    cache: str | None,
) -> TextDataset:
    """The entry's local copy, read from ``folder``."""
    if spec.local is None:
        raise ValueError(
            f"{spec.name} has no local copy in the registry; use source='hub' or 'auto'"
        )
    if folder is None:
        raise FileNotFoundError(
            f"{spec.name}: folder {spec.local.folder!r} not found under data_dir={data_dir!r}; "
            f"pass the folder that holds {spec.local.folder}/"
        )
    rows, splits = _read_local(spec.local, folder, split, cache)
    origin = f"local:{folder} ({'+'.join(splits)})"
    return _to_dataset(spec.name, rows, spec.local.columns, spec.class_names, origin)


def _load_hub(
    spec: DatasetSpec,
    data_dir: str | os.PathLike[str] | None,
    split: str | Sequence[str] | None,
    n: int | None,
    cache: str | None,
) -> TextDataset:
    """The entry's hub copy (the split the caller names, else the entry's)."""
    if spec.hub is None:
        assert spec.local is not None
        raise ValueError(
            f"{spec.name} has no hub copy; pass data_dir= (the folder holding "
            f"{spec.local.folder}/ of the offline data collection)"
        )
    if data_dir is not None and spec.local is not None:
        logger.info(
            "%s: no %s/ in %s, loading from the hub", spec.name, spec.local.folder, data_dir
        )
    hub_split = split if isinstance(split, str) or split is None else "+".join(split)
    hub_split = hub_split or spec.hub.split
    rows = _read_hub(spec.hub, hub_split, spec.class_names, n, cache)
    origin = f"hub:{spec.hub.id} ({hub_split})"
    return _to_dataset(spec.name, rows, spec.hub.columns, spec.class_names, origin)


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str | Sequence[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    balance: bool = False,
    source: Source = "auto",
    text_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TextDataset:
    """Load a labelled-text dataset by registry name, hub id, path, or built-in task name.

    Resolution: a built-in task (``facts``, ``needle``, ``topics``) is generated; a registry
    name, alias or hub id loads the entry's local copy when ``data_dir`` holds its folder, else
    its hub copy; an existing file or folder loads its registry entry when it is one of the
    collection's, else is read with ``text_column`` / ``label_column`` (default ``text`` /
    ``label``); any other hub id loads from the hub when both columns are named.

    Args:
        name_or_path: Registry name (``"banking77"``), hub id (``"legacy-datasets/banking77"``),
            built-in task, or path to a folder or file.
        data_dir: Folder holding the offline collection's folders (``.../data``), or one of those
            folders itself. Never assumed: without it, registry entries load from the hub.
        split: Split(s) to load: a name, ``"train+test"``, or a list. None: every split of a
            local copy; the study's split (the entry's ``HubSource.split``) of a hub copy.
        n: Keep at most ``n`` rows, drawn per class (stratified; see ``balance``). For a built-in
            task: the number of rows to generate.
        seed: Seed of the subsample (and of a built-in task's generator).
        balance: Equalise the classes (undersampling the larger ones).
        source: ``"hub"`` or ``"local"`` forces where a registry entry is read from.
        text_column: Text column to read instead of the entry's (or of ``text``).
        label_column: Label column to read instead of the entry's (or of ``label``); the class
            names then come from the data.
        cache_dir: Cache folder of the ``datasets`` library (default: its own).

    Returns:
        The dataset, with integer labels and its class names.

    Raises:
        ValueError: Unknown name (the message lists the known ones), a label column with a single
            class, empty texts, unknown labels, or an entry without the requested copy.
        FileNotFoundError: A path or an expected file of a local copy does not exist.

    Example:
        >>> ds = load_dataset("needle", n=8, seed=1)
        >>> len(ds), ds.class_names
        (8, ('instrument', 'animal'))
    """
    name = os.fspath(name_or_path)
    _check_arguments(source, n, data_dir)
    builtin = BUILTIN_TASKS.get(name.lower().removeprefix("builtin/"))
    if builtin is not None:
        ds = builtin.make(builtin.default_size if n is None else n, seed=seed)
        return ds.subsample(balance=True, seed=seed) if balance else ds
    spec, folder, source = _resolve(name, source, data_dir, text_column, label_column)
    cache = None if cache_dir is None else os.fspath(cache_dir)
    if source == "local" or (source == "auto" and folder is not None):
        ds = _load_local(spec, folder, data_dir, split, cache)
    else:
        ds = _load_hub(spec, data_dir, split, n, cache)
    return ds.subsample(n, seed=seed, balance=balance) if n is not None or balance else ds


# --- listing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What ``list_datasets`` knows about one dataset."""

    name: str
    """Name to pass to ``load_dataset``."""

    task: str
    """What the label says."""

    origin: Literal["local", "hub", "builtin"]
    """Where ``load_dataset(name, data_dir=...)`` reads it from."""

    hub_id: str | None
    """Hub id of the entry, if it has a hub copy."""

    path: str | None
    """Local folder it loads from, when available."""

    n_rows: int | None
    """Rows (all splits of a local copy; the default size of a built-in task); None when not
    counted (hub copies are never downloaded to be listed)."""

    class_names: tuple[str, ...] | None
    """Class names, when known without a download."""

    class_counts: tuple[int, ...] | None
    """Rows per class, aligned with ``class_names``, when counted."""


def list_datasets(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    count: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[DatasetInfo]:
    """Every built-in task and registry entry, with sizes where they can be had offline.

    Args:
        data_dir: Folder of the offline collection; entries found there are marked local.
        count: Load each local copy to count its rows and classes (seconds; cached by
            ``datasets`` afterwards). False lists without reading any file.
        cache_dir: Cache folder of the ``datasets`` library.

    Returns:
        One :class:`DatasetInfo` per dataset: built-in tasks first, then the registry in order.
    """
    _check_data_dir(data_dir)
    infos = []
    for task in BUILTIN_TASKS.values():
        sample = task.make(task.default_size, seed=0)
        counts = tuple(sample.class_counts().values())
        infos.append(
            DatasetInfo(
                task.name, task.task, "builtin", None, None, len(sample), task.class_names, counts
            )
        )
    for spec in REGISTRY.values():
        folder = _local_folder(spec, data_dir)
        if folder is not None and not _holds_every_file(spec, folder):
            folder = None  # a partial copy (e.g. one file of a collection): not loadable here
        hub_id = spec.hub.id if spec.hub is not None else None
        if folder is None and spec.hub is None:
            continue  # local-only entry whose folder is not here: nothing to load
        n_rows = counts = None
        class_names = spec.class_names
        if folder is not None and count:
            ds = load_dataset(spec.name, data_dir=folder.parent, cache_dir=cache_dir)
            n_rows, class_names = len(ds), ds.class_names
            counts = tuple(ds.class_counts().values())
        infos.append(
            DatasetInfo(
                spec.name,
                spec.task,
                "local" if folder is not None else "hub",
                hub_id,
                None if folder is None else str(folder),
                n_rows,
                class_names,
                counts,
            )
        )
    return infos
