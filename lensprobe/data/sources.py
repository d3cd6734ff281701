"""Reading a source's rows: a hub dataset (or a streamed one), or the file groups of a folder.

Every source goes through ``datasets.load_dataset`` (a hub id, or the ``csv`` / ``json`` / ``text``
/ ``parquet`` builder over local files); ``datasets`` is imported only here, when a file or hub
dataset is read (``pip install 'lensprobe[data]'``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lensprobe.data.mapping import (
    Rows,
    class_id,
    concat_rows,
    label_key,
    needed_columns,
    take_columns,
)
from lensprobe.data.registry import Columns, HubSource, LocalFiles, LocalSource
from lensprobe.errors import DataFileError, InputError, MissingDependencyError, MissingFileError

__all__ = ["read_hub", "read_local"]


def _datasets() -> Any:
    """The ``datasets`` module, or an ImportError that names the extra to install."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
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


# --- hub -------------------------------------------------------------------------------------------


def read_hub(
    hub: HubSource,
    split: str,
    class_names: tuple[str, ...] | None,
    n: int | None,
    cache_dir: str | None,
) -> Rows:
    """Rows of a hub dataset (or of a local directory laid out like a hub repository)."""
    datasets = _datasets()
    needed = needed_columns(hub.columns)
    if not hub.streaming:
        ds = datasets.load_dataset(hub.id, name=hub.config, split=split, cache_dir=cache_dir)
        return take_columns(ds, needed, hub.columns.label)
    if class_names is None:
        raise InputError(f"{hub.id}: streaming needs the entry's class names")
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
        cid = class_id(
            label_key(row.get(hub.columns.label), feature, hub.columns), lookup, len(class_names)
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
    return Rows(columns, available, feature, n_rows)


# --- local files -------------------------------------------------------------------------------


def _split_list(split: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Split names asked for (``"train+test"``, a list, or None for all), checked."""
    if split is None:
        return list(available)
    wanted = split.split("+") if isinstance(split, str) else list(split)
    wanted = [s.strip() for s in wanted]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise InputError(f"split(s) {unknown} not available; this copy has {list(available)}")
    return wanted


def _resolve_files(folder: Path, patterns: Sequence[str], name: str) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(folder.glob(pattern))
        if not matches:
            raise MissingFileError(
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
) -> Rows:
    """One split of one file group, with its constant columns and label files."""
    datasets = _datasets()
    needed = needed_columns(columns)
    files = _resolve_files(folder, group.splits[split], folder.name)
    ds = _load_files(datasets, group.builder, files, cache_dir, **group.options)
    rows = take_columns(ds, needed, columns.label)
    if group.label_files:
        label_files = _resolve_files(folder, group.label_files[split], folder.name)
        lines = _load_files(datasets, "text", label_files, cache_dir)["text"]
        if len(lines) != rows.n_rows:
            raise InputError(
                f"{folder.name}: {split} has {rows.n_rows} texts but {len(lines)} labels in "
                f"{label_files}; the text and label files must align line by line"
            )
        rows.columns["label"] = [int(x) if str(x).strip() else None for x in lines]
        rows.available = (*rows.available, "label")
    for column, value in group.constants.items():
        rows.columns[column] = [value] * rows.n_rows
        rows.available = (*rows.available, column)
    return rows


def read_local(
    local: LocalSource,
    folder: Path,
    split: str | Sequence[str] | None,
    cache_dir: str | None,
) -> tuple[Rows, list[str]]:
    """The asked-for splits of every file group of a local copy, concatenated, and the splits."""
    splits = _split_list(split, local.split_names)
    with _quiet_progress():
        parts = [
            _read_group(group, folder, s, local.columns, cache_dir)
            for group in local.files
            for s in splits
            if s in group.splits
        ]
    return concat_rows(parts, needed_columns(local.columns)), splits
