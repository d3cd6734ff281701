"""Running the protocol over a grid of hooks x probe kinds; tables and reports of the grid.

The command line (``lensprobe demo``/``run``/``train``) and the benchmarks are thin layers over
this module: name probes with short specs (``attention-8``, ``mean``, ``last-adamw``), hand over
captured activations per hook, get one :class:`~lensprobe.grid.Cell` per (hook, probe). With
``out=``, every cell is saved the moment it finishes and a rerun resumes from the saved cells;
:class:`~lensprobe.grid.Grid` (built from the cells) holds the layer choices and comparisons,
:mod:`lensprobe.grid` saves and loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lensprobe.analysis import attention_entropy
from lensprobe.errors import InputError
from lensprobe.grid import (
    CELL_JSON,
    Cell,
    Grid,
    cell_path,
    check_folder,
    check_resumable,
    control_fingerprint,
    data_fingerprint,
    load_cell,
    save,
    save_cell,
    with_saved,
)
from lensprobe.probes.spec import ProbeSpec
from lensprobe.train.compare import Comparison
from lensprobe.train.config import ProtocolConfig, seed_tuple
from lensprobe.train.protocol import run_sweep
from lensprobe.train.result import ProtocolResult
from lensprobe.train.selection import (
    LayerChoice,
    choose_layer,
    choose_layers,
    describe,
    interval,
    splits_text,
)

logger = logging.getLogger(__name__)


def run_grid(
    activations: Mapping[str, Any],
    probes: Sequence[ProbeSpec | str],
    *,
    dataset: str = "data",
    protocol: ProtocolConfig | None = None,
    out: str | Path | None = None,
    entropy: bool = False,
    on_row: Callable[[Cell], None] | None = None,
    progress: bool | None = None,
    max_memory: int | float | str | None = None,
    controls: Mapping[str, Any] | None = None,
) -> list[Cell]:
    """Run the protocol for every hook and probe in one sweep; with ``out``, save and resume.

    The cells train through :func:`lensprobe.train.protocol.run_sweep` (each hook read once, every
    cell on each seed's same split); each equals :func:`~lensprobe.train.protocol.run_protocol`
    on it alone.

    Args:
        activations: Hook name -> ``Activations`` (with labels), e.g. from ``lp.capture``.
        probes: Probe specs (``"attention-8"``) or :class:`ProbeSpec`.
        dataset: Name recorded in every cell.
        protocol: Base protocol settings; each spec sets probe kind, heads and optimizer.
        out: A results folder. Each cell is written there atomically as soon as it finishes
            (:func:`lensprobe.grid.save_cell`; a probe spec's hooks finish together); a cell
            already there is read back instead of trained (``cell.resumed``), after checking it
            was trained with the same settings on the same data (and control set).
        entropy: Add ``entropy_ratio`` (attention entropy / uniform, test rows) to cells.
        on_row: Called with each finished (or resumed: those first) cell.
        progress: Show a progress bar per fit (None: in a terminal or a notebook only).
        max_memory: Most memory a cell may hold (``"4GB"``; default 80% of what is available).
        controls: Hook name -> control negatives (:func:`sweep`).

    Returns:
        One :class:`~lensprobe.grid.Cell` per (hook, probe), hooks in the given order.

    Raises:
        MemoryBudgetError: A cell would need more than ``max_memory`` (before any training).
        OutputPathError: ``out`` holds cells of this dataset split otherwise, or a cell of this
            grid trained with other settings, data or control set (before any training).
    """
    specs = [p if isinstance(p, ProbeSpec) else ProbeSpec.parse(p) for p in probes]
    base = protocol or ProtocolConfig()
    configs = [spec.protocol(base) for spec in specs]
    fingerprint = ""
    control = {h: control_fingerprint((controls or {}).get(h)) for h in activations}
    if out is not None and activations:
        fingerprint = data_fingerprint(next(iter(activations.values())))
        check_folder(out, dataset, base, fingerprint)  # before any training
    done: dict[tuple[str, int], Cell] = {}
    if out is not None:  # every saved cell is read and checked before any training
        done = _saved_cells(out, dataset, specs, configs, fingerprint, control)
    for cell in done.values():
        _finished(cell, on_row)

    def trained(hook: str, i: int, result: ProtocolResult) -> None:
        cell = Cell(dataset=dataset, hook=hook, probe=specs[i].label, result=result)
        if entropy and result.probe.attends:
            ent = attention_entropy(result.probe, activations[hook], rows=result.test_rows)
            cell.extra["entropy_ratio"] = float(ent.summary()["mean_ratio"])
        cell.fingerprint, cell.control_fingerprint = fingerprint, control[hook]
        if out is not None:
            save_cell(cell, out)
        done[hook, i] = cell
        _finished(cell, on_row)

    todo = [(h, i) for h in activations for i in range(len(specs)) if (h, i) not in done]
    if todo:
        run_sweep(
            activations,
            configs,
            cells=todo,
            progress=progress,
            max_memory=max_memory,
            on_result=trained,
            controls=controls,
        )
    return [done[h, i] for h in activations for i in range(len(specs))]


def sweep(
    activations: Mapping[str, Any],
    probes: Sequence[ProbeSpec | str] = ("attention-8", "attention-1", "mean", "last"),
    *,
    seeds: Sequence[int] | int | None = None,
    dataset: str = "data",
    protocol: ProtocolConfig | None = None,
    out: str | Path | None = None,
    entropy: bool = False,
    progress: bool | None = None,
    max_memory: int | float | str | None = None,
    controls: Mapping[str, Any] | None = None,
) -> Grid:
    """Train every probe at every hook in one pass and compare them: the typed grid result.

    Every cell uses each seed's same split, so layers and probe kinds are compared on the same
    rows; each hook is read once; the AdamW members of every hook of a probe train as one
    batched model. Each probe's layer is chosen per split by CV on that split's training part
    (:attr:`Grid.choices`), and every two probes are compared at their chosen layers, Holm-
    adjusted over the grid (:attr:`Grid.comparisons`).

    Args:
        activations: Hook name -> ``Activations`` of the same texts, e.g. ``lp.capture(...)``
            or a store opened with :func:`lensprobe.storage.load` (streamed, never padded whole).
        probes: Probe specs (``"attention-8"``, ``"mean"``, ``"last-adamw"``, ...).
        seeds: The splits, or how many (``3``: seeds 0, 1, 2; default: ``protocol``'s, one
            split).
        dataset: Name recorded in every cell.
        protocol: Base protocol settings.
        out: A results folder: cells saved as they finish, a rerun resumes, and the index
            (``results.json`` / ``.csv``) holds these cells and those earlier runs left there.
        entropy: Add each attention cell's entropy ratio on its test rows.
        progress: Show a progress bar per probe (None: in a terminal or a notebook only).
        max_memory: Most memory a fit may hold (default 80% of the memory available).
        controls: Binary tasks: hook name -> negatives (e.g. ordinary chat) at that hook on
            which each cell's 1% / 5% / 0.1% FPR thresholds are fixed, instead of the training
            part's out-of-fold logits.

    Example:
        >>> acts = lp.capture(model, texts, hooks=[f"blocks.{i}.hook_resid_post" for i in
        ...                   range(0, 18, 3)], labels=labels)  # doctest: +SKIP
        >>> grid = lp.sweep(acts, ["attention-8", "mean"], seeds=(0, 1, 2))  # doctest: +SKIP
        >>> print(format_table(grid))  # doctest: +SKIP
    """
    base = protocol or ProtocolConfig()
    if seeds is not None:
        base = replace(base, seeds=seed_tuple(seeds))
    cells = run_grid(
        activations,
        probes,
        dataset=dataset,
        protocol=base,
        out=out,
        entropy=entropy,
        progress=progress,
        max_memory=max_memory,
        controls=controls,
    )
    if out is None:
        return Grid.build(cells)
    grid = Grid.build(with_saved(cells, out), folder=out)
    save(grid, out)
    return grid


def _saved_cells(
    out: str | Path,
    dataset: str,
    specs: list[ProbeSpec],
    configs: list[ProtocolConfig],
    fingerprint: str,
    control: Mapping[str, str],
) -> dict[tuple[str, int], Cell]:
    """The cells of this grid an earlier run saved in ``out``, each checked to be resumable.

    ``control``: hook -> this run's control set fingerprint there ("" for none).
    """
    done = {}
    for hook in control:
        for i, spec in enumerate(specs):
            path = cell_path(out, dataset, hook, spec.label)
            if (path / CELL_JSON).is_file():
                done[hook, i] = cell = load_cell(path)
                check_resumable(cell, configs[i], fingerprint, path, control[hook])
    return done


def _finished(cell: Cell, on_row: Callable[[Cell], None] | None) -> None:
    """Log a finished (or resumed) cell and hand it to ``on_row``."""
    logger.info(
        "%s %s %s: accuracy %.4f%s",
        cell.dataset,
        cell.hook,
        cell.probe,
        cell.result.metrics["accuracy"],
        " (saved earlier)" if cell.resumed else "",
    )
    if on_row is not None:
        on_row(cell)


TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("dataset", "dataset", "s"),
    ("hook", "hook", "s"),
    ("probe", "probe", "s"),
    ("chosen", "CV picks", "s"),
    ("cv_accuracy", "cv acc", ".3f"),
    ("accuracy", "acc", ".3f"),
    ("accuracy_low", "acc 95% low", ".3f"),
    ("accuracy_high", "high", ".3f"),
    ("cv_far", "cv!", "s"),
    ("auroc", "auroc", ".3f"),
    ("entropy_ratio", "H/H_unif", ".2f"),
    ("weight_decay", "wd", "g"),
    ("n_test", "n_test", "d"),
    ("accuracy_interval", "interval", "s"),
    ("seconds", "s", ".1f"),
)
"""(record key, header, format) of the plain-text results table. ``accuracy_low`` / ``_high``
show the record's interval (corrected t over seeds, or with one seed Wilson); ``interval`` says
which and over how many splits; ``chosen`` says how many splits :func:`choose_layer` picked the
hook in (e.g. ``2/3``); ``cv!`` flags a CV accuracy far from the test accuracy
(:data:`CV_FAR_NOTE`)."""

CV_FAR_NOTE = (
    "cv!: the CV accuracy (training part) lies outside the test accuracy's 95% interval: the "
    "training and test parts disagree more than sampling explains (a shift between them, "
    "leakage, or an unstable fit); read that cell's choice with care"
)
"""The legend printed under a table that flags a cell."""


def cv_far(record: Mapping[str, Any]) -> bool:
    """Whether a record's CV accuracy lies outside its test accuracy's 95% interval."""
    ci, cv = interval(record, "accuracy"), record.get("cv_accuracy")
    return ci is not None and cv is not None and not ci[0] <= float(cv) <= ci[1]


def _table_values(
    records: Sequence[Mapping[str, Any]], choices: Sequence[LayerChoice]
) -> list[dict[str, Any]]:
    """Records with the derived table columns (``chosen``, interval ends and kind) filled in."""
    picked: dict[tuple[Any, Any, Any], str] = {}
    for c in choices:
        if len(c.hooks) > 1:
            for h in c.hooks:
                picked[(c.dataset, c.probe, h)] = f"{c.count(h)}/{c.seeds}" if c.count(h) else ""
    out = []
    for r in records:
        v = dict(r)
        ci = interval(r, "accuracy")
        v["accuracy_low"], v["accuracy_high"] = (ci[0], ci[1]) if ci else (None, None)
        if "n_test" in r:
            v["accuracy_interval"] = f"{ci[2] if ci else 'none'}, {splits_text(r)}"
        if picked:
            v["chosen"] = picked.get((r.get("dataset"), r.get("probe"), r.get("hook")), "")
        if "cv_accuracy" in r:
            v["cv_far"] = "!" if cv_far(r) else ""
        out.append(v)
    return out


def format_table(grid: Grid) -> str:
    """A plain-text table of a grid, one line per cell (missing values shown as ``-``).

    Every accuracy is shown with ``n_test`` and its 95% interval (corrected t over seeds, or
    Wilson over the test rows of a single split); with several hooks, ``CV picks`` says in how
    many splits each probe's cross-validation accuracy chose the hook (:attr:`Grid.choices`).
    """
    values = _table_values(grid.records(), grid.choices)
    cols = [c for c in TABLE_COLUMNS if any(c[0] in v for v in values)]

    def cell(record: Mapping[str, Any], key: str, fmt: str) -> str:
        v = record.get(key)
        if v is None or v == "":
            return "" if key in ("chosen", "cv_far") else "-"
        return format(float(v), fmt) if fmt != "s" and isinstance(v, str) else format(v, fmt)

    body = [[cell(r, k, f) for k, _, f in cols] for r in values]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h)
        for i, (_, h, _) in enumerate(cols)
    ]
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    if any(v.get("cv_far") for v in values):
        lines.append(CV_FAR_NOTE)
    return "\n".join(line.rstrip() for line in lines)


def format_row(record: Mapping[str, Any]) -> str:
    """One finished grid cell on one line: CV accuracy, then test accuracy and AUROC with intervals."""
    auroc = record.get("auroc")
    auc = "-" if auroc is None else f"{auroc:.3f}"
    ci = interval(record, "auroc")
    if ci is not None:
        auc += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    cv = record.get("cv_accuracy")
    return (
        f"  {record['hook']}  {record['probe']:<14} cv acc {'-' if cv is None else f'{cv:.3f}'}  "
        f"test acc {describe(record, 'accuracy')}  auroc {auc}  ({record['seconds']:.1f} s)"
    )


def format_choices(choices: Sequence[LayerChoice], comparisons: Sequence[Comparison] = ()) -> str:
    """The layer each split's cross-validation picks per probe, the test score, the comparisons.

    One line per (dataset, probe) choice (each split chooses on its own training part's CV
    accuracy; the test accuracy is the mean over splits at their own picks, with its interval
    and ``n_test``), then one line per paired comparison with its raw and Holm-adjusted
    verdicts (e.g. :meth:`lensprobe.grid.Grid.of`).
    """
    several = any(len(c.hooks) > 1 for c in choices)
    title = (
        "layer chosen per split by cross-validation accuracy on that split's training part "
        "(its test part is scored once, at its pick):"
        if several
        else "test accuracy (one hook: no layer to choose):"
    )
    lines = [title]
    datasets = list(dict.fromkeys(c.dataset for c in choices))
    for c in choices:
        prefix = f"{c.dataset} " if len(datasets) > 1 else ""
        lines.append(f"  {prefix}{c}")
    if comparisons:
        where = "at each split's chosen layer, " if several else ""
        family = max(c.family for c in comparisons)
        decided = sum(c.verdict != "undecided" for c in comparisons)
        holm_decided = sum(c.holm_verdict not in (None, "undecided") for c in comparisons)
        lines.append(
            f"paired comparisons ({where}same splits; undecided when the interval holds 0): "
            f"{len(comparisons)} made, {decided} decided raw, {holm_decided} after Holm's "
            f"adjustment for {family}:"
        )
        lines += [f"  {c}" for c in comparisons]
    return "\n".join(lines)


def write_report(
    grid: Grid,
    dataset: str,
    activations: Mapping[str, Any] | None,
    path: str | Path,
    *,
    title: str,
    description: str | None = None,
) -> Path:
    """One HTML report for one dataset of a grid (trained now or read back by ``grid.load_results``).

    Args:
        grid: The grid.
        dataset: Which of its datasets.
        activations: Hook name -> the activations the cells were trained on; the cells of other
            hooks (or all, when None) show their metrics without attention views or examples.
        path: The HTML file.
        title: Page title.
        description: A line under the title.
    """
    from lensprobe.viz import ReportEntry, report

    activations = activations or {}
    cells, _, comparisons = grid.of(dataset)
    if not cells:
        raise InputError(f"no cells of dataset {dataset!r}; the grid holds {grid.datasets}")
    entries = [
        ReportEntry.from_result(
            c.result, activations.get(c.hook), label=c.probe, hook=c.hook, record=c.record()
        )
        for c in cells
    ]
    return report(entries, path, title=title, description=description, comparisons=comparisons)


__all__ = [
    "CV_FAR_NOTE",
    "TABLE_COLUMNS",
    "LayerChoice",
    "choose_layer",
    "choose_layers",
    "cv_far",
    "describe",
    "format_choices",
    "format_row",
    "format_table",
    "run_grid",
    "write_report",
]
