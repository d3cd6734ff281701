"""What each ``lensprobe`` command does, given its options (:mod:`lensprobe.cli.options`).

Each ``run_*`` function checks its inputs before any model loads or any file is written, then
runs the command and returns the exit status.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lensprobe.cli import steps
from lensprobe.cli.options import (
    DATA_DIR_ENV,
    DEMO_HOOKS,
    DEMO_TASKS,
    CaptureOptions,
    DatasetsOptions,
    DemoOptions,
    ReportOptions,
    RunOptions,
    TrainOptions,
)
from lensprobe.cli.steps import say
from lensprobe.errors import InputError

__all__ = [
    "format_datasets_table",
    "run_capture",
    "run_datasets",
    "run_demo",
    "run_report",
    "run_run",
    "run_train",
]


# --- lensprobe datasets --------------------------------------------------------------------------


def _classes_cell(info: Any, width: int) -> str:
    names = info.class_names
    if names is None:
        return "from the data"
    if info.class_counts is not None:
        parts = [f"{c} {k:,}" for c, k in zip(names, info.class_counts, strict=True)]
    else:
        parts = list(names)
    cell = f"{len(names)}: " + ", ".join(parts)
    return cell if len(cell) <= width else cell[: width - 3] + "..."


def format_datasets_table(infos: Sequence[Any], classes_width: int = 60) -> str:
    """The ``lensprobe datasets`` table: one row per dataset, plain text.

    Args:
        infos: ``DatasetInfo`` records from ``lensprobe.data.list_datasets``.
        classes_width: Widest the classes column may get before it is cut with ``...``.

    Returns:
        The table, lines joined with newlines (no trailing newline).
    """
    header = ("NAME", "FROM", "ROWS", "CLASSES", "HUB ID")
    rows = [
        (
            info.name,
            info.origin,
            "-" if info.n_rows is None else f"{info.n_rows:,}",
            _classes_cell(info, classes_width),
            info.hub_id or "-",
        )
        for info in infos
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(w) if i == 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def run_datasets(options: DatasetsOptions) -> int:
    """List built-in tasks, local copies found in ``data_dir``, and hub datasets."""
    from lensprobe.data import list_datasets

    infos = list_datasets(options.data_dir, count=options.count)
    say(format_datasets_table(infos))
    if options.data_dir is None:
        say(
            f"\nNo --data-dir (or ${DATA_DIR_ENV}): datasets that exist only as local copies are "
            "not listed."
        )
    else:
        n_local = sum(info.origin == "local" for info in infos)
        say(f"\n{n_local} local copies found under {options.data_dir}.")
    return 0


# --- lensprobe demo ------------------------------------------------------------------------------


def _demo_settings(options: DemoOptions) -> tuple[DemoOptions, int, list[str]]:
    """``--quick``'s smaller settings where the flags were left at their defaults.

    Returns:
        The options (``max_steps`` set for ``--quick``), the texts per task, and the hooks.
    """
    quick = options.quick
    hooks = steps.hooks_flag(options.hooks)
    if quick and options.hooks == DEMO_HOOKS:
        hooks = [DEMO_HOOKS[1]]
    max_steps = options.max_steps or (300 if quick else None)
    n = options.n_texts or (80 if quick else 240)
    return dataclasses.replace(options, max_steps=max_steps), n, hooks


DEMO_SECONDS = {"quick": 60.0, "full": 365.0}
"""Wall time of ``lensprobe demo --quick`` and ``lensprobe demo`` on a quiet 2-core CPU (this
project's machine, model conversion cached), for the expected time the demo states first."""


def _demo_expected(options: DemoOptions, hooks: list[str]) -> str:
    """The demo's expected wall time: the nearer measured preset, scaled by the work asked for.

    Training dominates, and it grows with tasks x hooks x probes x AdamW steps; the presets are
    3 tasks x 1 hook x 5 probes x 300 steps (``--quick``) and 3 x 3 x 5 x 1500.
    """
    steps = options.max_steps or 1500
    preset, work = ("quick", 3 * 1 * 5 * 300) if steps <= 600 else ("full", 3 * 3 * 5 * 1500)
    asked = len(options.tasks) * len(hooks) * len(options.probes) * steps
    seconds = DEMO_SECONDS[preset] * asked / work
    when = f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"
    return (
        f"  expected time: {when} on a quiet 2-core CPU (measured for the defaults); a busy "
        "machine can take several times longer"
    )


def run_demo(options: DemoOptions) -> int:
    """The bundled Gemma 3 270M on the built-in tasks: capture, train, table, reports."""
    from lensprobe.data import load_dataset
    from lensprobe.probes.spec import parse_probes

    parse_probes(options.probes)  # a bad spec fails before any model is loaded
    steps.memory_flag(options.max_memory)
    options, n, hooks = _demo_settings(options)
    protocol = steps.protocol(options)
    steps.check_out_folder(options.out)
    tasks = {task: load_dataset(task, n=n) for task in options.tasks}
    if not tasks:
        raise InputError(f"--tasks is empty; pass some of {', '.join(DEMO_TASKS)}")
    for task, ds in tasks.items():
        fix = steps.n_fix(options, len(ds.class_names), protocol)
        steps.check_classes(ds.labels, ds.class_names, protocol, task, fix)
    say(
        f"lensprobe demo: Gemma 3 270M ({options.backend}), tasks {','.join(options.tasks)}, "
        f"{n} texts each, hooks {', '.join(hooks)}"
    )
    say(_demo_expected(options, hooks))
    model = steps.load_model("gemma-3-270m", options.backend)
    rows: list[Any] = []
    reports: list[steps.ReportJob] = []
    for task, ds in tasks.items():
        say(f"\n{task}: {len(ds)} texts, classes {', '.join(ds.class_names)}")
        acts = steps.capture_texts(model, ds, hooks, options, None)
        rows += steps.train_grid(acts, task, options)
        reports.append(steps.ReportJob(task, acts, f"built-in task {task!r}: {len(ds)} texts"))
    steps.finish(rows, reports, options.out)
    return 0


# --- lensprobe run / capture / train -------------------------------------------------------------


def run_run(options: RunOptions) -> int:
    """Capture a dataset at hooks, train the probes, write results and a report."""
    from lensprobe.probes.spec import parse_probes

    parse_probes(options.probes)  # a bad spec fails before any model is loaded
    steps.memory_flag(options.max_memory)
    steps.check_model(options.model)
    hooks = steps.model_hooks(options)
    steps.protocol(options)  # bad --seeds / --precision fail before any data is read
    steps.check_out_folder(options.out)
    store = steps.run_store(options.out)
    ds, test_rows = steps.load_split_dataset(options)
    protocol = steps.protocol(options, test_rows)
    fix = steps.n_fix(options, len(ds.class_names), protocol)
    train_labels = ds.labels if test_rows is None else ds.labels[: test_rows[0]]
    steps.check_classes(train_labels, ds.class_names, protocol, ds.name, fix)
    steps.check_capture_out(ds, hooks, options, store)
    say(
        f"lensprobe run: {options.model} ({options.backend}), {ds.name}: {len(ds)} texts, "
        f"hooks {', '.join(hooks)}"
    )
    say(steps.describe_dataset(ds))
    model = steps.load_model(options.model, options.backend, options.device, options.dtype)
    acts = steps.capture_texts(model, ds, hooks, options, store)
    description = f"{ds.name}: {len(ds)} texts ({ds.source})"
    rows = steps.train_grid(acts, ds.name, options, test_rows)
    steps.finish(rows, [steps.ReportJob(ds.name, acts, description)], options.out)
    return 0


def run_capture(options: CaptureOptions) -> int:
    """Capture a dataset at hooks into an on-disk store (train on it many times later)."""
    from lensprobe.storage import check_store_target

    steps.check_model(options.model)
    if options.test_split:
        raise InputError(
            "--test-split applies to lensprobe run (a store keeps no split): run it, or capture "
            "each split into its own store"
        )
    hooks = steps.model_hooks(options)
    check_store_target(options.out)  # a file or a folder of other things: before reading data
    ds = steps.load_text_dataset(options)
    say(steps.describe_dataset(ds))
    steps.check_capture_out(ds, hooks, options, options.out)
    model = steps.load_model(options.model, options.backend, options.device, options.dtype)
    steps.capture_texts(model, ds, hooks, options, options.out)
    say(f"store: {options.out} ({ds.name}, {len(ds)} texts, hooks {', '.join(hooks)})")
    return 0


def run_train(options: TrainOptions) -> int:
    """Train probes on a stored capture; write results, probes and a report."""
    from lensprobe.probes.spec import parse_probes

    parse_probes(options.probes)  # a bad spec fails before any model is loaded
    steps.memory_flag(options.max_memory)
    protocol = steps.protocol(options)
    out = steps.check_out_folder(options.out)  # before training: a bad --out must not cost work
    acts = steps.open_store(options.acts, options.hooks)
    name = options.name or os.path.basename(os.path.normpath(options.acts))
    first = next(iter(acts.values()))
    if first.labels is None:
        raise InputError(f"the store {options.acts} has no labels; capture with a dataset")
    where = f"the store {options.acts}"
    fix = "capture more texts of every class"
    steps.check_classes(first.labels.numpy(), first.class_names, protocol, where, fix)
    say(f"lensprobe train: {name}: {len(first)} sequences, hooks {', '.join(acts)}")
    description = f"{name}: {len(first)} sequences from {options.acts}"
    rows = steps.train_grid(acts, name, options)
    steps.finish(rows, [steps.ReportJob(name, acts, description)], options.out)
    steps.record_store(out, options.acts)
    return 0


# --- lensprobe report ----------------------------------------------------------------------------


def _report_datasets(options: ReportOptions, datasets: list[str], results_dir: Path) -> list[str]:
    """The datasets to report, refusing flags that fit only one when the results hold several."""
    if options.dataset is not None:
        if options.dataset not in datasets:
            raise InputError(
                f"no results for dataset {options.dataset!r} in {results_dir}; it holds "
                f"{', '.join(datasets)}"
            )
        return [options.dataset]
    if len(datasets) > 1 and options.out:
        raise InputError(
            f"{results_dir} holds {len(datasets)} datasets ({', '.join(datasets)}); pass "
            "--dataset NAME with --out, or leave --out out for one report per dataset"
        )
    if len(datasets) > 1 and options.acts:
        raise InputError(
            "an activation store holds one dataset; pass --dataset NAME with --acts "
            f"(the results hold {', '.join(datasets)})"
        )
    return datasets


def _report_path(options: ReportOptions, dataset: str, several: bool, results_dir: Path) -> Path:
    """``--out``, else ``report.html`` for a folder of one dataset, else ``report-DATASET.html``."""
    if options.out:
        return Path(options.out)
    if not several and options.dataset is None:
        return results_dir / "report.html"
    return results_dir / f"report-{steps.slug(dataset)}.html"


NO_STORE = (
    "no activation store: the report shows metrics only; pass --acts STORE for attention views "
    "and examples"
)
"""What ``lensprobe report`` prints when it has no activations to analyse."""


def _report_acts(store: str | None, datasets: list[str], grid: Any) -> dict[str, Any]:
    """The store's activations when the report covers one dataset; say what is left out."""
    if not store:
        say(NO_STORE)
        return {}
    if len(datasets) > 1:  # a store belongs to one dataset: attach it only to a report of one
        say(
            f"{store} holds one dataset and the results hold {len(datasets)}: the reports show "
            "metrics only; pass --dataset NAME --acts STORE for attention views and examples"
        )
        return {}
    acts = steps.open_store(store)
    cells, _, _ = grid.of(datasets[0])
    absent = sorted({c.hook for c in cells} - set(acts))
    if absent:
        say(
            f"the activation store {store} lacks hooks {', '.join(absent)}: their probes show "
            "metrics only"
        )
    return acts


def run_report(options: ReportOptions) -> int:
    """Rebuild the HTML report from saved results, probes and the activation store.

    The grid is read back from its cell folders (``lensprobe.grid.load_results``): the layer choices
    and comparisons are the same functions of the same cells as when it was trained. With several
    datasets, ``index.html`` beside their reports links them.
    """
    from lensprobe import grid as grids
    from lensprobe.experiment import format_choices, write_report
    from lensprobe.viz.index import write_index

    results_dir = Path(options.results)
    if options.out and Path(options.out).is_dir():
        raise InputError(f"--out {options.out} is a folder; pass the HTML file to write")
    grid = grids.load_results(results_dir)
    store = options.acts or steps.recorded_store(results_dir)
    datasets = _report_datasets(options, grid.datasets, results_dir)
    acts = _report_acts(store, datasets, grid)
    pages = {}
    for dataset in datasets:
        out = _report_path(options, dataset, len(datasets) > 1, results_dir)
        pages[dataset] = write_report(grid, dataset, acts, out, title=f"lensprobe: {dataset}")
        _, choices, comparisons = grid.of(dataset)
        say(f"{dataset}: " + format_choices(choices, comparisons))
        say(f"report: {out}")
    if len(pages) > 1:
        say(f"index: {write_index(grid, pages, results_dir / 'index.html')}")
    return 0
