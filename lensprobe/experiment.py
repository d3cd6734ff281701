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
from pathlib import Path
from typing import Any

from lensprobe.errors import InputError
from lensprobe.grid import (
    CELL_JSON,
    Cell,
    Grid,
    cell_path,
    check_folder,
    check_resumable,
    data_fingerprint,
    load_cell,
    save_cell,
)
from lensprobe.specs import ProbeSpec
from lensprobe.train.budget import check_budget
from lensprobe.train.compare import Comparison
from lensprobe.train.config import ProtocolConfig
from lensprobe.train.protocol import memory_estimate, run_protocol
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
    progress: bool = False,
    max_memory: int | float | str | None = None,
) -> list[Cell]:
    """Run the protocol for every hook and probe; with ``out``, save and resume cell by cell.

    Args:
        activations: Hook name -> ``Activations`` (with labels), e.g. the result of
            ``lp.capture``.
        probes: Probe specs (``"attention-8"``) or :class:`ProbeSpec`.
        dataset: Name recorded in every cell.
        protocol: Base protocol settings; each spec sets probe kind, heads and optimizer.
        out: A results folder. Each cell is written there atomically as soon as it finishes
            (:func:`lensprobe.grid.save_cell`); a cell already there is read back instead of
            trained (``cell.resumed``), after checking it was trained with the same settings on
            the same data.
        entropy: Add ``entropy_ratio`` (mean attention entropy / uniform on the test rows) to
            attention cells.
        on_row: Called with each finished (or resumed) cell.
        progress: Show a progress bar over each fit's optimisation steps.
        max_memory: Most memory a cell may hold (bytes or e.g. ``"4GB"``; default 80% of the
            memory available); every cell is checked against it before the first one trains.

    Returns:
        One :class:`~lensprobe.grid.Cell` per (hook, probe), hooks in the given order.

    Raises:
        MemoryBudgetError: A cell would need more than ``max_memory`` (before any training).
        OutputPathError: ``out`` holds cells of this dataset split otherwise, or a cell of this
            grid trained with other settings or on other data (checked before any training for
            the splits and the data, before each resumed cell for its settings).
    """
    specs = [p if isinstance(p, ProbeSpec) else ProbeSpec.parse(p) for p in probes]
    base = protocol or ProtocolConfig()
    fingerprint = ""
    if out is not None and activations:
        fingerprint = data_fingerprint(next(iter(activations.values())))
        check_folder(out, dataset, base, fingerprint)  # before any training
    for acts in activations.values():  # every cell's memory, before any cell trains
        for spec in specs:
            config = spec.protocol(base)
            check_budget(memory_estimate(acts, None, config, config.resolved_train), max_memory)
    cells = []
    for hook, acts in activations.items():
        for spec in specs:
            config = spec.protocol(base)
            cell = None
            if out is not None:
                path = cell_path(out, dataset, hook, spec.label)
                if (path / CELL_JSON).is_file():
                    cell = load_cell(path)
                    check_resumable(cell, config, fingerprint, path)
            if cell is None:
                cell = _train_cell(acts, config, dataset, hook, spec, progress, entropy, max_memory)
                cell.fingerprint = fingerprint
                if out is not None:
                    save_cell(cell, out)
            logger.info(
                "%s %s %s: accuracy %.4f%s",
                dataset,
                hook,
                spec.label,
                cell.result.metrics["accuracy"],
                " (saved earlier)" if cell.resumed else "",
            )
            cells.append(cell)
            if on_row is not None:
                on_row(cell)
    return cells


def _train_cell(
    acts: Any,
    config: ProtocolConfig,
    dataset: str,
    hook: str,
    spec: ProbeSpec,
    progress: bool,
    entropy: bool,
    max_memory: int | float | str | None,
) -> Cell:
    """One cell trained now (with its attention entropy when asked and the probe attends)."""
    label = f"{hook} {spec.label}" if progress else False
    result = run_protocol(acts, config=config, progress=label, max_memory=max_memory)
    cell = Cell(dataset=dataset, hook=hook, probe=spec.label, result=result)
    if entropy and result.probe.config.kind == "attention":
        from lensprobe.analysis import attention_entropy

        ent = attention_entropy(result.probe, acts, rows=result.test_rows)
        cell.extra["entropy_ratio"] = float(ent.summary()["mean_ratio"])
    return cell


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
    """One HTML report for one dataset of a grid (trained now or read back by ``grid.load``).

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
