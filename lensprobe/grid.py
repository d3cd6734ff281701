"""A grid run's one typed result, and its files: :func:`save` and :func:`load` side by side.

A :class:`Grid` holds the cells of a run (one :class:`Cell` per dataset, hook and probe, with its
full :class:`~lensprobe.train.result.ProtocolResult`), the hook each split picks per (dataset,
probe) (:class:`~lensprobe.train.selection.LayerChoice`) and the paired comparisons of every two
probes of a dataset, Holm-adjusted as one family; all computed once, when the grid is built.

Every cell is its own folder, written atomically the moment the cell finishes
(:func:`save_cell`), so a run that stops (Ctrl-C, a crash, a full disk) keeps every finished cell,
and a rerun into the same folder resumes from them (:func:`load_cell`, refused when the cell was
trained with other settings or on other data). The layout of a results folder ``OUT``::

    OUT/results.json                the index: schema, every cell's record, the comparisons
    OUT/results.csv                 the records, one row per cell
    OUT/cells/DATASET/HOOK/PROBE/   one finished cell:
        cell.json                   its protocol result (no tensors), data fingerprint, extras
        arrays.safetensors          each split's rows, test logits and labels, CV logits
        probes/K/                   split K's refit probe (``lp.load_probe`` reads it)

``results.json`` and ``results.csv`` are for other tools; :func:`load` rebuilds the grid from
the cell folders alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lensprobe.errors import (
    InputError,
    MissingDependencyError,
    MissingFileError,
    OutputPathError,
    ResultsFileError,
)
from lensprobe.metrics import Estimate
from lensprobe.train.compare import Comparison, comparison_to_dict, holm
from lensprobe.train.config import ProtocolConfig
from lensprobe.train.result import ProtocolResult, SeedRun
from lensprobe.train.selection import (
    LayerChoice,
    choose_layers,
    compare_choices,
    result_record,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA",
    "Cell",
    "Grid",
    "cell_folders",
    "cell_path",
    "check_folder",
    "check_resumable",
    "data_fingerprint",
    "ensure_folder",
    "load_cell",
    "load_results",
    "probe_path",
    "save",
    "save_cell",
]

SCHEMA = 2
"""Version of the results folder's files (``schema`` in ``results.json`` and each ``cell.json``)."""

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
CELLS = "cells"
CELL_JSON = "cell.json"
ARRAYS = "arrays.safetensors"
_RUN_TENSORS = ("train_rows", "test_rows", "test_logits", "test_labels", "cv_logits")


@dataclass
class Cell:
    """One (dataset, hook, probe) cell of a grid: its protocol result and what was added to it."""

    dataset: str
    """Name of the dataset."""
    hook: str
    """Hook name the activations come from."""
    probe: str
    """Probe spec label, e.g. ``attention-8``."""
    result: ProtocolResult = field(repr=False)
    """Everything the protocol returned (read back from the cell's folder after a resume)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further columns, e.g. ``entropy_ratio`` (attention entropy / uniform, test rows)."""
    fingerprint: str = ""
    """:func:`data_fingerprint` of the activations it was trained on ("" when not recorded)."""
    control_fingerprint: str = ""
    """:func:`control_fingerprint` of the control set its thresholds were fixed on ("": none,
    they were fixed on the training part's out-of-fold logits)."""
    resumed: bool = field(default=False, compare=False)
    """Read back from a results folder rather than trained in this run."""
    _summary: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """``(dataset, hook, probe)``."""
        return (self.dataset, self.hook, self.probe)

    def record(self) -> dict[str, Any]:
        """A flat, JSON-ready row for tables and CSV files (computed once).

        Identifiers, then :func:`~lensprobe.train.selection.result_record` (test metrics with
        ``n_test``, ``seeds`` and 95% intervals, the CV scores at the chosen decay, each split's
        scores), then :attr:`extra`.
        """
        if self._summary is None:
            self._summary = result_record(self.result)
        row: dict[str, Any] = {"dataset": self.dataset, "hook": self.hook, "probe": self.probe}
        row.update(self._summary)
        row.update({k: _round(v) for k, v in self.extra.items()})
        return row


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 5)
    return v


@dataclass(frozen=True)
class Grid:
    """Cells of (dataset, hook, probe), each probe's per-split layer choice, the comparisons."""

    cells: tuple[Cell, ...]
    """Every cell, in run order."""
    choices: tuple[LayerChoice, ...]
    """Per (dataset, probe): the hook each split's CV accuracy picks (:func:`choose_layers`)."""
    comparisons: Mapping[str, tuple[Comparison, ...]]
    """Dataset -> every two probes compared on the same splits, each split at its own pick;
    Holm-adjusted over the whole grid (``family`` says how many)."""
    folder: Path | None = None
    """The results folder the grid was saved to or loaded from."""

    @classmethod
    def build(cls, cells: Iterable[Cell], *, folder: str | Path | None = None) -> Grid:
        """Choose each probe's layer per split and compare the probes, once.

        Raises:
            InputError: Two cells share a (dataset, hook, probe).
        """
        cells = tuple(cells)
        keys = [c.key for c in cells]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise InputError(f"cells {twice} appear twice; a grid holds one cell per key")
        results = {c.key: c.result for c in cells}
        choices: list[LayerChoice] = []
        per: dict[str, list[Comparison]] = {}
        for d in dict.fromkeys(c.dataset for c in cells):
            try:
                mine = choose_layers([c.record() for c in cells if c.dataset == d])
            except InputError as err:  # e.g. probes of one dataset run on different splits
                logger.warning("%s: no layer choice or comparison: %s", d, err)
                mine = []
            choices += mine
            per[d] = compare_choices(mine, results)
        family = iter(holm([c for comps in per.values() for c in comps]))
        comparisons = {d: tuple(next(family) for _ in comps) for d, comps in per.items()}
        return cls(cells, tuple(choices), comparisons, None if folder is None else Path(folder))

    @property
    def datasets(self) -> list[str]:
        """The datasets of the cells, in run order."""
        return list(dict.fromkeys(c.dataset for c in self.cells))

    def cell(self, dataset: str, hook: str, probe: str) -> Cell:
        """The cell of ``(dataset, hook, probe)``."""
        for c in self.cells:
            if c.key == (dataset, hook, probe):
                return c
        raise InputError(
            f"no cell ({dataset!r}, {hook!r}, {probe!r}); the grid holds {[c.key for c in self.cells]}"
        )

    def of(self, dataset: str) -> tuple[list[Cell], list[LayerChoice], tuple[Comparison, ...]]:
        """One dataset's cells, layer choices and comparisons."""
        return (
            [c for c in self.cells if c.dataset == dataset],
            [c for c in self.choices if c.dataset == dataset],
            self.comparisons.get(dataset, ()),
        )

    def records(self) -> list[dict[str, Any]]:
        """Every cell's :meth:`Cell.record`, in run order."""
        return [c.record() for c in self.cells]

    def to_pandas(self) -> Any:
        """One row per cell (:meth:`records`) as a ``pandas.DataFrame``.

        Raises:
            MissingDependencyError: pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise MissingDependencyError(
                "Grid.to_pandas needs pandas: pip install 'lensprobe[data]'"
            ) from err
        return pd.DataFrame(self.records())


# --- the data a cell was trained on ---------------------------------------------------------------


def data_fingerprint(acts: Any) -> str:
    """A short hash of what identifies a dataset's capture: labels, lengths, token ids, model.

    Captures of the same texts by the same model agree at every hook; another subsample,
    another label order or another model does not. The activation values are not read (a store
    may be larger than memory); a tensor input is hashed whole.
    """
    h = hashlib.sha256()
    if isinstance(acts, torch.Tensor):
        h.update(acts.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
    for name in ("labels", "offsets", "token_ids"):
        value = getattr(acts, name, None)
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(value.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    meta = getattr(acts, "meta", None)
    for name in ("model_id", "d_model"):
        h.update(f"{name}={getattr(meta, name, None)}".encode())
    return h.hexdigest()[:16]


def control_fingerprint(control: Any) -> str:
    """:func:`data_fingerprint` of a control set ("" for none; an ``(x, mask)`` pair, whole)."""
    if control is None:
        return ""
    if isinstance(control, tuple):
        parts = "".join(data_fingerprint(c) for c in control)
        return hashlib.sha256(parts.encode()).hexdigest()[:16]
    return data_fingerprint(control)


# --- one cell on disk ------------------------------------------------------------------------------


def _part(text: str) -> str:
    """``text`` as one safe path component (never ``..``, never a separator)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".")
    return safe or "_"


def cell_path(out: str | Path, dataset: str, hook: str, probe: str) -> Path:
    """The folder of a cell: ``OUT/cells/DATASET/HOOK/PROBE`` (names made file-system safe).

    Raises:
        OutputPathError: The folder would fall outside ``out`` (cannot happen with safe names;
            checked anyway).
    """
    root = Path(out)
    path = root / CELLS / _part(dataset) / _part(hook) / _part(probe)
    if not path.resolve().is_relative_to(root.resolve()):  # pragma: no cover - _part forbids it
        raise OutputPathError(f"the cell {dataset}/{hook}/{probe} would be written outside {out}")
    return path


def probe_path(out: str | Path, dataset: str, hook: str, probe: str, split: int = 0) -> Path:
    """The saved refit probe of split ``split`` of a cell (``lp.load_probe`` reads it)."""
    return cell_path(out, dataset, hook, probe) / "probes" / str(split)


def save_cell(cell: Cell, out: str | Path) -> Path:
    """Write one cell's folder atomically (a temporary folder, then one rename).

    A cell already saved under that key is replaced only as a whole: the old folder is renamed
    aside first and deleted after the new one is in place.
    """
    from safetensors.torch import save_file

    final = cell_path(out, *cell.key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {
        f"{i}.{name}": getattr(run, name).detach().cpu().contiguous()
        for i, run in enumerate(cell.result.runs)
        for name in _RUN_TENSORS
    }
    save_file(tensors, str(tmp / ARRAYS))
    for i, run in enumerate(cell.result.runs):
        run.probe.save(tmp / "probes" / str(i))
    payload = {
        "schema": SCHEMA,
        "dataset": cell.dataset,
        "hook": cell.hook,
        "probe": cell.probe,
        "fingerprint": cell.fingerprint,
        "control_fingerprint": cell.control_fingerprint,
        "extra": cell.extra,
        "result": cell.result.to_dict(),
    }
    (tmp / CELL_JSON).write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False) + "\n")
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_cell(path: str | Path) -> Cell:
    """Read one cell's folder back (every split's probe loaded).

    Raises:
        MissingFileError: No ``cell.json`` there.
        ResultsFileError: A file of the cell is damaged or from another schema.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lensprobe.probes import load_probe

    path = Path(path)
    file = path / CELL_JSON
    if not file.is_file():
        raise MissingFileError(f"{file} not found: not a cell folder written by lensprobe")
    d = _read_json(file)
    try:
        if d.get("schema") != SCHEMA:
            raise ResultsFileError(
                f"{file} has schema {d.get('schema')!r}, this lensprobe reads {SCHEMA}; rerun "
                f"the training into a new --out, or delete {path}"
            )
        arrays = load_file(str(path / ARRAYS))
        res = d["result"]
        runs = []
        for i, r in enumerate(res["runs"]):
            runs.append(
                SeedRun(
                    seed=int(r["seed"]),
                    split_seed=int(r["split_seed"]),
                    weight_decay=float(r["weight_decay"]),
                    metrics=_floats(r["metrics"]),
                    cv_summary=[_floats(row) for row in r["cv_summary"]],
                    thresholds=_floats(r["thresholds"]),
                    input_scale=float(r["input_scale"]),
                    probe=load_probe(path / "probes" / str(i)),
                    **{name: arrays[f"{i}.{name}"] for name in _RUN_TENSORS},
                )
            )
        result = ProtocolResult(
            config=ProtocolConfig.from_dict(res["config"]),
            runs=runs,
            classes=tuple(res["classes"]),
            metrics=_floats(res["metrics"]),
            summary={k: Estimate.from_dict(v) for k, v in res["summary"].items()},
            cv_table=[_floats(row) for row in res["cv_table"]],
            cv_summary=[_floats(row) for row in res["cv_summary"]],
            seconds=float(res["seconds"]),
            precision=str(res.get("precision", "fp32")),
        )
        return Cell(
            dataset=str(d["dataset"]),
            hook=str(d["hook"]),
            probe=str(d["probe"]),
            result=result,
            extra=_floats(d.get("extra") or {}),
            fingerprint=str(d.get("fingerprint") or ""),
            control_fingerprint=str(d.get("control_fingerprint") or ""),
            resumed=True,
        )
    except ResultsFileError:
        raise
    except (KeyError, TypeError, ValueError, OSError, SafetensorError) as err:
        raise ResultsFileError(
            f"{path} is a damaged cell ({type(err).__name__}: {err}); delete that folder and rerun "
            "the same command to train the cell again"
        ) from None


def _floats(d: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON dict with its nulls (unavailable metrics) back as NaN."""
    return {k: math.nan if v is None else v for k, v in d.items()}


def _read_json(file: Path) -> dict[str, Any]:
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsFileError(f"{file} is not valid JSON ({err}); delete it and rerun") from None
    if not isinstance(d, dict):
        raise ResultsFileError(f"{file} holds no JSON object; delete it and rerun")
    return d


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity as ``None`` (strict JSON; read back as NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --- the whole grid ----------------------------------------------------------------------------------


def with_saved(cells: Sequence[Cell], out: str | Path) -> list[Cell]:
    """``cells`` and the cells earlier runs left in ``out`` (other probes, hooks or datasets).

    The cells of ``cells`` are not read back (they are in memory already); the earlier ones come
    first, in folder order.
    """
    mine = {cell_path(out, *c.key) for c in cells}
    return [*(load_cell(p) for p in cell_folders(out) if p not in mine), *cells]


def save(grid: Grid, out: str | Path) -> Path:
    """Write the grid into ``out``: each cell not already there, then the index files.

    ``results.json`` (schema, records with their per-split scores, comparisons) and
    ``results.csv`` (records without the per-split lists) are written to temporary names and
    renamed, so a crash never leaves half a file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for cell in grid.cells:
        if not (cell.resumed and (cell_path(out, *cell.key) / CELL_JSON).is_file()):
            save_cell(cell, out)
    records = grid.records()
    payload = {
        "schema": SCHEMA,
        "records": records,
        "choices": [
            {"dataset": c.dataset, "probe": c.probe, "picks": list(c.picks), "by": c.by}
            for c in grid.choices
        ],
        "comparisons": [
            {"dataset": d, **comparison_to_dict(c)}
            for d, comps in grid.comparisons.items()
            for c in comps
        ],
    }
    text = json.dumps(_json_safe(payload), indent=1, allow_nan=False)
    _write_atomic(out / RESULTS_JSON, text + "\n")
    keys = list(dict.fromkeys(k for rec in records for k in rec if k != "splits"))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    _write_atomic(out / RESULTS_CSV, buf.getvalue())
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def cell_folders(out: str | Path) -> list[Path]:
    """Every finished cell folder under ``out`` (temporary folders of unfinished ones skipped)."""
    root = Path(out) / CELLS
    return sorted(
        p.parent for p in root.glob(f"*/*/*/{CELL_JSON}") if not p.parent.name.startswith(".")
    )


def load_results(out: str | Path) -> Grid:
    """Read a results folder written by :func:`save` (or by a run that stopped) into a grid.

    The choices and comparisons are computed again from the cells (the same functions, so the
    same values as when the grid was saved).

    Raises:
        MissingFileError: ``out`` holds no finished cell.
        ResultsFileError: A cell's files are damaged.
    """
    path = Path(out)
    if path.is_file() and path.name == RESULTS_JSON:
        path = path.parent
    folders = cell_folders(path)
    if not folders:
        why = (
            f"{path / RESULTS_JSON} is from an older lensprobe (no cells/ folder); rerun the training"
            if (path / RESULTS_JSON).is_file()
            else f"{path} holds no finished cell (no cells/*/*/*/{CELL_JSON})"
        )
        raise MissingFileError(f"{why}; pass the --out folder of lensprobe run/train/demo")
    folders.sort(key=lambda p: (p / CELL_JSON).stat().st_mtime_ns)  # the order they finished
    cells = [load_cell(p) for p in folders]
    order = _saved_order(path)  # the index's order first (a grid saved whole), then the rest
    rank = {c.key: order.get(c.key, len(order) + i) for i, c in enumerate(cells)}
    cells.sort(key=lambda c: rank[c.key])
    return Grid.build(cells, folder=path)


def _saved_order(out: Path) -> dict[tuple[str, str, str], int]:
    """Cell keys -> their place in ``results.json`` (run order), when it is readable."""
    file = out / RESULTS_JSON
    try:
        records = json.loads(file.read_text(encoding="utf-8")).get("records", [])
        keys = [(r["dataset"], r["hook"], r["probe"]) for r in records]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}
    return {k: i for i, k in enumerate(keys)}


def check_resumable(
    cell: Cell, config: ProtocolConfig, fingerprint: str, where: Path, control: str = ""
) -> None:
    """Refuse a saved cell that other settings, data or control set would have produced.

    ``control`` is this run's :func:`control_fingerprint` at the cell's hook.

    Raises:
        OutputPathError: The saved cell's protocol settings, data or control set differ from
            this run's.
    """
    saved = cell.result.config.to_dict()
    wanted = config.to_dict()
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in diff[:4])
        raise OutputPathError(
            f"{where} holds {cell.probe} at {cell.hook} trained with other settings ({changes}); "
            "pass another --out, or delete that folder to retrain the cell"
        )
    if cell.fingerprint and fingerprint and cell.fingerprint != fingerprint:
        raise OutputPathError(
            f"{where} holds {cell.probe} at {cell.hook} of {cell.dataset!r} trained on other data "
            "(other texts, labels or model); pass another --out or another dataset name"
        )
    if cell.control_fingerprint != control:
        saved = "another control set" if cell.control_fingerprint else "its training logits"
        wanted = "this control set" if control else "the training logits"
        raise OutputPathError(
            f"{where} holds {cell.probe} at {cell.hook} with thresholds fixed on {saved}, not "
            f"{wanted}; pass another --out, or delete that folder to retrain the cell"
        )


SPLIT_SETTINGS = ("seeds", "split_seed", "test_fraction", "test_rows", "n_folds")
"""Protocol settings that decide the splits: every cell of a dataset in one folder shares them,
so layers and probes are chosen and compared on the same rows."""


def check_folder(out: str | Path, dataset: str, config: ProtocolConfig, fingerprint: str) -> None:
    """Before training: refuse a folder whose cells of ``dataset`` had other splits or data.

    Raises:
        OutputPathError: A saved cell of ``dataset`` under ``out`` was split otherwise (seeds,
            test fraction, folds) or trained on other data under the same dataset name.
    """
    wanted = config.to_dict()
    for folder in cell_folders(out):
        d = _read_json(folder / CELL_JSON)
        if d.get("dataset") != dataset:
            continue
        saved = (d.get("result") or {}).get("config") or {}
        diff = [k for k in SPLIT_SETTINGS if saved.get(k) != wanted.get(k)]
        if diff:
            changes = ", ".join(
                f"{k} {_short(saved.get(k))} (saved) vs {_short(wanted.get(k))}" for k in diff
            )
            raise OutputPathError(
                f"{out} holds cells of {dataset!r} split otherwise ({changes}); pass the same "
                "settings to add to them, or another --out"
            )
        if d.get("fingerprint") and fingerprint and d["fingerprint"] != fingerprint:
            raise OutputPathError(
                f"{out} holds cells of a dataset named {dataset!r} captured from other texts, "
                "labels or model; pass another --out, or another name (--name)"
            )


def _short(value: Any) -> str:
    """A setting for an error line (a long row list as its length)."""
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} rows]"
    return repr(value)


def ensure_folder(out: str | Path) -> None:
    """Refuse an ``out`` that is a results folder of an older lensprobe (no cells to resume)."""
    path = Path(out)
    if (path / RESULTS_JSON).is_file() and not cell_folders(path):
        raise OutputPathError(
            f"{path} holds results of an older lensprobe (results.json without cells/); pass "
            "another --out, or delete them"
        )
