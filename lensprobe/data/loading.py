"""Loading datasets by name or path: registry entries, local files, hub ids, built-in tasks.

:func:`load_dataset` resolves what a name stands for (a built-in task, a registry entry, a file or
folder, another hub id), picks the copy to read (the local one when ``data_dir`` holds it, else
the hub's), reads its rows (:mod:`lensprobe.data.sources`) and maps them to texts and classes
(:mod:`lensprobe.data.mapping`). :func:`list_datasets` says what can be loaded. ``datasets`` is
imported only when a file or hub dataset is loaded (``pip install 'lensprobe[data]'``); built-in
tasks need nothing beyond numpy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from lensprobe.data.builtin import BUILTIN_TASKS, BuiltinTask
from lensprobe.data.dataset import TextDataset
from lensprobe.data.mapping import to_dataset
from lensprobe.data.registry import (
    REGISTRY,
    Columns,
    DatasetSpec,
    HubSource,
    LocalFiles,
    LocalSource,
    find_spec,
)
from lensprobe.data.sources import read_hub, read_local
from lensprobe.errors import InputError, MissingFileError

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


def _check_data_dir(data_dir: str | os.PathLike[str] | None) -> None:
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise MissingFileError(
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
    spec: DatasetSpec, text_column: tuple[str, ...] | None, label_column: str | None
) -> DatasetSpec:
    """The entry with caller-named columns; a new label column drops the entry's class names."""
    if text_column is None and label_column is None:
        return spec

    def patch(columns: Columns) -> Columns:
        if label_column is not None and label_column != columns.label:
            columns = Columns(columns.text, label_column, where=columns.where)
        if text_column is not None:
            columns = replace(columns, text=text_column)
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
            raise InputError(
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
                    raise InputError(
                        f"{path.name} is the {split!r} split of {spec.name}; load it with "
                        f"load_dataset({spec.name!r}, data_dir={str(path.parent.parent)!r}, "
                        f"split={split!r})"
                    )
    return None


def _adhoc_local(
    path: Path, text_column: tuple[str, ...] | None, label_column: str | None
) -> DatasetSpec:
    """An unregistered file or folder, read with default or caller-named columns."""
    columns = Columns(text_column or ("text",), label_column or "label")
    if path.is_dir():  # a folder laid out like a hub repository: the hub reader reads it
        return DatasetSpec(path.name, "local folder", None, hub=HubSource(str(path), columns))
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    kind = _FILE_BUILDERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise InputError(
            f"{path}: cannot tell how to read a {''.join(path.suffixes) or 'suffix-less'} file; "
            f"use one of {sorted(_FILE_BUILDERS)} (optionally compressed)"
        )
    builder, options = kind
    group = LocalFiles(builder, splits={"train": (path.name,)}, options=options)
    local = LocalSource(path.parent.name, (group,), columns)
    # named by the file without its data suffixes (my_news.csv.gz -> my_news): results and
    # reports are named after the dataset
    data_suffixes = 1 + (len(path.suffixes) > len(suffixes))  # .csv, or .csv.gz
    name = path.name[: len(path.name) - len("".join(path.suffixes[-data_suffixes:]))]
    return DatasetSpec(name or path.name, "local file", None, local=local)


def _looks_like_path(name: str) -> bool:
    """A name no hub id could be: relative/absolute/home path, or a data-file suffix."""
    suffix = Path(name).suffix.lower()
    return name.startswith((".", "/", "~")) or suffix in (*_FILE_BUILDERS, *_COMPRESSIONS)


def _check_arguments(source: str, n: int | None, data_dir: str | os.PathLike[str] | None) -> None:
    if source not in _SOURCES:
        raise InputError(f"source must be one of {_SOURCES}, got {source!r}")
    if n is not None and n < 1:
        raise InputError(f"n must be at least 1 (or None), got {n}")
    _check_data_dir(data_dir)


def _spec_of_path(
    path: Path, text_column: tuple[str, ...] | None, label_column: str | None
) -> tuple[DatasetSpec, Path | None, Source]:
    """An existing file or folder: its registry entry, else an ad-hoc one, and where to read."""
    path = path.resolve()
    spec = _spec_for_path(path) or _adhoc_local(path, text_column, label_column)
    if spec.local is None:  # an unregistered folder: read like a hub repository
        return spec, None, "hub"
    return spec, path if path.is_dir() else path.parent, "local"


def _unregistered_hub(
    name: str, text_column: tuple[str, ...] | None, label_column: str | None
) -> DatasetSpec:
    """A hub id the registry does not know, read with the columns the caller names."""
    if text_column is None or label_column is None:
        raise InputError(
            f"unknown dataset {name!r}. Known: {_known_names()}. To load another hub "
            "dataset, pass text_column= and label_column="
        )
    columns = Columns(text_column, label_column)
    return DatasetSpec(name, "hub dataset", None, hub=HubSource(name, columns))


def _resolve(
    name: str,
    source: Source,
    data_dir: str | os.PathLike[str] | None,
    text_column: tuple[str, ...] | None,
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
        raise MissingFileError(f"{name}: no such file or folder")
    elif spec is None:
        spec = _unregistered_hub(name, text_column, label_column)
    spec = _with_overrides(spec, text_column, label_column)
    if folder is None and source != "hub":
        folder = _local_folder(spec, data_dir)
    return spec, folder, source


def _generate(task: BuiltinTask, n: int | None, seed: int, balance: bool) -> TextDataset:
    """A built-in task's rows (its default size unless ``n`` is given), balanced if asked."""
    ds = task.make(task.default_size if n is None else n, seed=seed)
    return ds.subsample(balance=True, seed=seed) if balance else ds


def _cache(cache_dir: str | os.PathLike[str] | None) -> str | None:
    return None if cache_dir is None else os.fspath(cache_dir)


def _load_local(
    spec: DatasetSpec,
    folder: Path | None,
    data_dir: str | os.PathLike[str] | None,
    split: str | Sequence[str] | None,
    cache_dir: str | os.PathLike[str] | None,
) -> TextDataset:
    """The entry's local copy, read from ``folder``."""
    if spec.local is None:
        raise InputError(
            f"{spec.name} has no local copy in the registry; use source='hub' or 'auto'"
        )
    if folder is None:
        raise MissingFileError(
            f"{spec.name}: folder {spec.local.folder!r} not found under data_dir={data_dir!r}; "
            f"pass the folder that holds {spec.local.folder}/"
        )
    rows, splits = read_local(spec.local, folder, split, _cache(cache_dir))
    origin = f"local:{folder} ({'+'.join(splits)}; {_column_names(spec.local.columns)})"
    return to_dataset(spec.name, rows, spec.local.columns, spec.class_names, origin)


def _column_names(columns: Columns) -> str:
    """The columns read, for a dataset's source line (``text title+description, label topic``)."""
    return f"text {'+'.join(columns.text)}, label {columns.label}"


def _load_hub(
    spec: DatasetSpec,
    data_dir: str | os.PathLike[str] | None,
    split: str | Sequence[str] | None,
    n: int | None,
    cache_dir: str | os.PathLike[str] | None,
) -> TextDataset:
    """The entry's hub copy (the split the caller names, else the entry's)."""
    if spec.hub is None:
        assert spec.local is not None
        raise InputError(
            f"{spec.name} has no hub copy; pass data_dir= (the folder holding "
            f"{spec.local.folder}/ of the offline data collection)"
        )
    if data_dir is not None and spec.local is not None:
        logger.info(
            "%s: no %s/ in %s, loading from the hub", spec.name, spec.local.folder, data_dir
        )
    hub_split = split if isinstance(split, str) or split is None else "+".join(split)
    hub_split = hub_split or spec.hub.split
    rows = read_hub(spec.hub, hub_split, spec.class_names, n, _cache(cache_dir))
    origin = f"hub:{spec.hub.id} ({hub_split}; {_column_names(spec.hub.columns)})"
    return to_dataset(spec.name, rows, spec.hub.columns, spec.class_names, origin)


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str | Sequence[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    balance: bool = False,
    source: Source = "auto",
    text_column: str | Sequence[str] | None = None,
    label_column: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
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
        text_column: Text column to read instead of the entry's (or of ``text``); several
            (``["title", "description"]``) are joined with one space.
        label_column: Label column to read instead of the entry's (or of ``label``); the class
            names then come from the data.
        cache_dir: Cache folder of the ``datasets`` library (default: its own).
        classes: Every class name in the order to number them (class ``i`` is ``classes[i]``;
            default: the source's order, else sorted); see :meth:`TextDataset.with_class_order`.

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
    if not name.strip():  # "" would read every data file of the current folder
        raise InputError(
            "the dataset name is empty: pass a registry name, a hub id, a file or a folder"
        )
    _check_arguments(source, n, data_dir)
    builtin = BUILTIN_TASKS.get(name.lower().removeprefix("builtin/"))
    if builtin is not None:
        ds = _generate(builtin, n, seed, balance)
    else:
        texts = (text_column,) if isinstance(text_column, str) else text_column
        texts = None if texts is None else tuple(str(c) for c in texts)
        spec, folder, source = _resolve(name, source, data_dir, texts, label_column)
        if source == "local" or (source == "auto" and folder is not None):
            ds = _load_local(spec, folder, data_dir, split, cache_dir)
        else:
            ds = _load_hub(spec, data_dir, split, n, cache_dir)
        if n is not None or balance:
            ds = ds.subsample(n, seed=seed, balance=balance)
    return ds if classes is None else ds.with_class_order(classes)


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
