"""The dataset registry: one declarative entry per dataset, for its hub copy and its local copy.

An entry (:class:`DatasetSpec`) says where the rows live (:class:`HubSource`: a Hugging Face hub id;
:class:`LocalSource`: files of a local folder) and how rows become a text and a class
(:class:`Columns`). Both sources go through ``datasets.load_dataset`` and the same column mapping
(``lensprobe.data.mapping``), so a hub id and a local folder of the same dataset yield the same
classes in the same order.

The entries themselves (hub ids, the offline collection's folder and file names, column mappings,
class orders) are data, not code: ``registry.json`` beside this module, read once by
:func:`read_table`. A label transform is named there and looked up in :data:`LABEL_TRANSFORMS`.

Local folders are the ones of the offline data collection (``<data_dir>/<folder>``); the library
never assumes where that collection lives: callers pass ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

from lensprobe.errors import InputError

__all__ = [
    "LABEL_TRANSFORMS",
    "REGISTRY",
    "Columns",
    "DatasetSpec",
    "HubSource",
    "LocalFiles",
    "LocalSource",
    "find_spec",
    "read_table",
]


def _freeze(mapping: Mapping[Any, Any] | None) -> Mapping[Any, Any]:
    """A read-only copy of a mapping (registry entries are shared module state)."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Columns:
    """How a row of a source becomes a text and a class name."""

    text: tuple[str, ...]
    """Column(s) holding the text; several are joined with one space (ag_news: title, description).
    Surrounding whitespace is stripped."""

    label: str
    """Column holding the label: a class name, a class id, or a value named by ``label_names``."""

    label_names: Mapping[Any, str] = field(default_factory=dict)
    """Raw label value -> class name, for labels that are neither names nor class ids (amazon star
    ratings 1 and 5). Empty: strings are class names and integers are class ids."""

    label_transform: Callable[[str], str] | None = None
    """Applied to a label's class name before it is matched (massive_scenario: the intent's
    prefix). Must be a module-level function so entries stay declarative."""

    where: Mapping[str, Any] = field(default_factory=dict)
    """Keep only rows whose column equals the value (github_code_lang: ``target == 1``)."""

    unknown_labels: Literal["error", "drop"] = "error"
    """What to do with a label that is not one of the entry's classes: raise, or drop the row
    (codeparrot/github-code holds 30 languages of which the task uses three)."""

    def __post_init__(self) -> None:
        if isinstance(self.text, str):
            object.__setattr__(self, "text", (self.text,))
        if not self.text:
            raise InputError("Columns.text needs at least one column name")
        object.__setattr__(self, "label_names", _freeze(self.label_names))
        object.__setattr__(self, "where", _freeze(self.where))


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub, read with ``datasets.load_dataset(id, config, split)``."""

    id: str
    """Hub id, ``owner/name``."""

    columns: Columns
    """Column mapping of the hub copy."""

    split: str = "train"
    """Split loaded when the caller names none (the one the attention-probes study used)."""

    config: str | None = None
    """Hub configuration name, if the dataset has several."""

    streaming: bool = False
    """Stream rows instead of downloading the whole dataset (codeparrot/github-code is about
    1 TB); the stream stops once every class holds enough rows."""

    stream_rows_per_class: int = 2000
    """Rows kept per class when streaming and the caller gives no ``n``."""


@dataclass(frozen=True)
class LocalFiles:
    """Files of a local folder read with one ``datasets`` builder, split by split."""

    builder: Literal["csv", "json", "text", "parquet"]
    """The ``datasets`` packaged builder that reads the files."""

    splits: Mapping[str, tuple[str, ...]]
    """Split name -> file names (or glob patterns) inside the folder; ``.zst`` files are
    decompressed by ``datasets``."""

    options: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the builder (``sep="\\t"``, ``quoting=3`` for sms_spam)."""

    constants: Mapping[str, Any] = field(default_factory=dict)
    """Columns added to every row with a constant value (refusal: the label comes from the file
    name)."""

    label_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Split name -> files holding one integer label per line, aligned line by line with the text
    files (TweetEval). Read into the column ``label``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", _freeze(self.splits))
        object.__setattr__(self, "options", _freeze(self.options))
        object.__setattr__(self, "constants", _freeze(self.constants))
        object.__setattr__(self, "label_files", _freeze(self.label_files))
        if self.label_files and set(self.label_files) != set(self.splits):
            raise InputError("LocalFiles.label_files must name the same splits as splits")


@dataclass(frozen=True)
class LocalSource:
    """A local copy: a folder, the files in it, and their column mapping."""

    folder: str
    """Folder name inside ``data_dir``."""

    files: tuple[LocalFiles, ...]
    """File groups, concatenated in order (refusal: harmful files, then harmless files)."""

    columns: Columns
    """Column mapping of the local copy."""

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split some file group provides, in first-seen order."""
        seen: dict[str, None] = {}
        for group in self.files:
            seen.update(dict.fromkeys(group.splits))
        return tuple(seen)


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: a labelled-text dataset and where its copies live."""

    name: str
    """Registry name, lowercase with underscores (``geometry_of_truth/<file>`` for that
    collection's files)."""

    task: str
    """What the label says, in a few words."""

    class_names: tuple[str, ...] | None
    """Class names in label-id order; None: taken from the data (a ``ClassLabel``'s names, else
    the sorted distinct values)."""

    hub: HubSource | None = None
    """The hub copy, if there is one."""

    local: LocalSource | None = None
    """The local copy's layout, if the offline collection has one."""

    aliases: tuple[str, ...] = ()
    """Other names that resolve to this entry."""

    def __post_init__(self) -> None:
        if self.hub is None and self.local is None:
            raise InputError(f"{self.name}: a registry entry needs a hub or a local source")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every name this entry answers to (name, hub id, aliases), lowercase."""
        names = [self.name, *self.aliases]
        if self.hub is not None:
            names.append(self.hub.id)
        return tuple(dict.fromkeys(k.lower() for k in names))


# --- reading the table ---------------------------------------------------------------------------


def scenario_of_intent(intent: str) -> str:
    """MASSIVE scenario of an intent: its prefix before the first ``_`` (``alarm_set`` -> alarm)."""
    return intent.split("_", 1)[0]


LABEL_TRANSFORMS: Mapping[str, Callable[[str], str]] = MappingProxyType(
    {"scenario_of_intent": scenario_of_intent}
)
"""The functions a table entry may name as its ``label_transform``."""

_TABLE = "registry.json"
"""The registry's table, shipped next to this module (its ``about`` says what each field means)."""


def _fields(raw: Mapping[str, Any], where: str, known: set[str]) -> dict[str, Any]:
    """The entry's fields, with an error naming any the table should not hold (a typo)."""
    unknown = set(raw) - known - {"note"}
    if unknown:
        raise InputError(f"{_TABLE}: {where} has unknown field(s) {sorted(unknown)}")
    return {k: v for k, v in raw.items() if k != "note"}


def _columns(raw: Mapping[str, Any], where: str) -> Columns:
    transform = raw.get("label_transform")
    if transform is not None and transform not in LABEL_TRANSFORMS:
        raise InputError(f"{_TABLE}: {where} names an unknown label_transform {transform!r}")
    return Columns(
        tuple(raw["text"]),
        raw["label"],
        label_names=raw.get("label_names", {}),
        label_transform=None if transform is None else LABEL_TRANSFORMS[transform],
        where=raw.get("where", {}),
        unknown_labels=raw.get("unknown_labels", "error"),
    )


_COLUMN_FIELDS = {f.name for f in dataclasses.fields(Columns)}


def _hub(raw: Mapping[str, Any], where: str) -> HubSource:
    extra = {"id", "split", "config", "streaming", "stream_rows_per_class"}
    fields = _fields(raw, where, _COLUMN_FIELDS | extra)
    options = {k: fields[k] for k in extra - {"id"} if k in fields}
    return HubSource(fields["id"], _columns(fields, where), **options)


def _files(raw: Mapping[str, Any], where: str) -> LocalFiles:
    fields = _fields(raw, where, {"builder", "splits", "options", "constants", "label_files"})
    return LocalFiles(
        fields["builder"],
        splits={k: tuple(v) for k, v in fields["splits"].items()},
        options=fields.get("options", {}),
        constants=fields.get("constants", {}),
        label_files={k: tuple(v) for k, v in fields.get("label_files", {}).items()},
    )


def _local(raw: Mapping[str, Any], where: str) -> LocalSource:
    fields = _fields(raw, where, _COLUMN_FIELDS | {"folder", "files"})
    files = tuple(_files(f, f"{where} file group {i}") for i, f in enumerate(fields["files"]))
    return LocalSource(fields["folder"], files, _columns(fields, where))


def _spec(raw: Mapping[str, Any]) -> DatasetSpec:
    """One table entry as a :class:`DatasetSpec`."""
    name = raw.get("name", "?")
    fields = _fields(raw, name, {"name", "task", "classes", "hub", "local", "aliases"})
    classes = fields.get("classes")
    return DatasetSpec(
        name,
        fields["task"],
        None if classes is None else tuple(classes),
        hub=_hub(fields["hub"], f"{name} hub") if "hub" in fields else None,
        local=_local(fields["local"], f"{name} local") if "local" in fields else None,
        aliases=tuple(fields.get("aliases", ())),
    )


def read_table(text: str) -> tuple[DatasetSpec, ...]:
    """The entries of a registry table (the JSON text of ``registry.json``), in its order."""
    return tuple(_spec(raw) for raw in json.loads(text)["datasets"])


_ENTRIES = read_table(resources.files(__package__).joinpath(_TABLE).read_text(encoding="utf-8"))

REGISTRY: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in _ENTRIES})
"""Every registry entry by name, in a stable order (study datasets first)."""

_BY_KEY: Mapping[str, DatasetSpec] = MappingProxyType(
    {key: spec for spec in reversed(_ENTRIES) for key in spec.keys}
)


def find_spec(name: str) -> DatasetSpec | None:
    """The registry entry a name, hub id or alias refers to (case-insensitive), or None.

    A hub id shared by several entries (LabHC/bias_in_bios) resolves to the first of them.
    """
    return _BY_KEY.get(name.strip().lower())
