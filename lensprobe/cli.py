"""The ``lensprobe`` command line.

Each subcommand is one :class:`Command`: a frozen options dataclass (one field per flag), a
function that adds its flags to an ``argparse`` parser, and a function that runs it and returns
an exit status. Adding ``demo``, ``run``, ``capture``, ``train`` or ``report`` means adding one
entry to :data:`COMMANDS`. The command line may print; the library never does.

Example:
    $ lensprobe datasets --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensprobe.errors import InputError, LensprobeError

__all__ = ["COMMANDS", "Command", "DatasetsOptions", "format_datasets_table", "main"]

DATA_DIR_ENV = "LENSPROBE_DATA_DIR"
"""Environment variable the command line reads when ``--data-dir`` is not given."""


@dataclass(frozen=True)
class Command:
    """A subcommand of ``lensprobe``."""

    name: str
    """Name typed after ``lensprobe``."""

    help: str
    """One line shown by ``lensprobe --help``."""

    options: type
    """Frozen dataclass of the subcommand's options; its fields are the parsed flags."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the flags; each flag's ``dest`` is a field of ``options``."""

    run: Callable[[Any], int]
    """Runs the subcommand on its options and returns the exit status."""


# --- lensprobe datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetsOptions:
    """Options of ``lensprobe datasets``."""

    data_dir: str | None = None
    """Folder of the offline data collection (default: ``$LENSPROBE_DATA_DIR``); without it only
    built-in tasks and hub datasets are listed."""

    count: bool = True
    """Read each local copy to count its rows and classes."""


def _datasets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        default=os.environ.get(DATA_DIR_ENV) or None,
        help=f"folder of the offline data collection (default: ${DATA_DIR_ENV})",
    )
    parser.add_argument(
        "--no-count",
        dest="count",
        action="store_false",
        help="list without reading any file (no row or class counts for local copies)",
    )


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


def _say(text: str, *, err: bool = False) -> None:
    """Write one line of command output (the command line's only way of printing)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")


def run_datasets(options: DatasetsOptions) -> int:
    """List built-in tasks, local copies found in ``data_dir``, and hub datasets."""
    from lensprobe.data import list_datasets

    infos = list_datasets(options.data_dir, count=options.count)
    _say(format_datasets_table(infos))
    if options.data_dir is None:
        _say(
            f"\nNo --data-dir (or ${DATA_DIR_ENV}): datasets that exist only as local copies are "
            "not listed."
        )
    else:
        n_local = sum(info.origin == "local" for info in infos)
        _say(f"\n{n_local} local copies found under {options.data_dir}.")
    return 0


# --- shared pieces of demo / run / capture / train / report ---------------------------------------

DEMO_TASKS: tuple[str, ...] = ("facts", "needle", "topics")
"""Built-in tasks ``lensprobe demo`` runs."""

DEMO_HOOKS: tuple[str, ...] = (
    "blocks.4.hook_resid_post",
    "blocks.9.hook_resid_post",
    "blocks.13.hook_resid_post",
)
"""Three layers of the bundled Gemma 3 270M (18 layers): early, middle, late."""


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="gemma-3-270m",
        help="bundled model name, local model directory, or hub id (default: gemma-3-270m)",
    )
    parser.add_argument(
        "--backend",
        default="transformer_lens",
        choices=["transformer_lens", "nnsight", "hf"],
        help="how the model is run for capture (default: transformer_lens)",
    )
    parser.add_argument(
        "--hooks",
        default=",".join(DEMO_HOOKS),
        help="comma-separated hook names, e.g. blocks.9.hook_resid_post (default: layers 4, 9, 13)",
    )


def _add_data_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--dataset",
        required=required,
        help="registry name (see `lensprobe datasets`), built-in task, hub id, or local file",
    )
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        default=os.environ.get(DATA_DIR_ENV) or None,
        help=f"folder of the offline data collection (default: ${DATA_DIR_ENV})",
    )
    parser.add_argument("--n", type=int, default=None, help="subsample to N texts (stratified)")
    parser.add_argument("--split", default=None, help="dataset split (default: all local splits)")
    parser.add_argument(
        "--text-column",
        dest="text_column",
        default=None,
        help="text column of a hub id or file not in the registry",
    )
    parser.add_argument(
        "--label-column",
        dest="label_column",
        default=None,
        help="label column of a hub id or file not in the registry",
    )
    _add_capture_arguments(parser, max_length=256)


def _add_capture_arguments(parser: argparse.ArgumentParser, *, max_length: int) -> None:
    parser.add_argument(
        "--max-length",
        dest="max_length",
        type=int,
        default=max_length,
        help=f"tokens kept per text, BOS included (default: {max_length})",
    )
    parser.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=16,
        help="texts per forward pass during capture (default: 16)",
    )


def _add_train_arguments(parser: argparse.ArgumentParser, default_probes: str) -> None:
    parser.add_argument(
        "--probes",
        default=default_probes,
        help="comma-separated probe specs KIND[-HEADS][-OPTIMIZER]: attention-8, mean, last, "
        f"max, mean-adamw, ... (default: {default_probes})",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds per probe; metrics are averaged (default: 1)"
    )
    parser.add_argument(
        "--max-steps",
        dest="max_steps",
        type=int,
        default=None,
        help="most AdamW steps per fit (default: the protocol's, 1500)",
    )


def _protocol(seeds: int, max_steps: int | None) -> Any:
    from lensprobe.train import ProtocolConfig, TrainConfig

    train = TrainConfig() if max_steps is None else TrainConfig(max_steps=max_steps)
    return ProtocolConfig(seeds=tuple(range(seeds)), train=train)


def _hooks(text: str | None) -> list[str]:
    hooks = _csv(text)
    if not hooks:
        raise InputError("--hooks is empty; pass hook names, e.g. blocks.9.hook_resid_post")
    return hooks


def _out_folder(path: str, flag: str = "--out") -> Path:
    """Check that output can go to folder ``path`` (created when written), before any work."""
    from lensprobe.errors import OutputPathError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder; pass a folder")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {path} cannot be created: {parent} is a file; pass a folder")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{flag} {path}: {parent} is not writable; pass another folder")
    return out


def _check_model(name: str) -> None:
    """Fail before any work when ``--model`` names nothing loadable (offline hub ids included)."""
    from lensprobe.errors import ModelNotFoundError
    from lensprobe.models import BUNDLED_MODELS

    path = Path(name).expanduser()
    if name in BUNDLED_MODELS or path.is_dir():
        return
    fix = (
        f"pass a bundled name ({', '.join(BUNDLED_MODELS)}), a local model folder, or a hub id "
        "(downloaded unless HF_HUB_OFFLINE=1)"
    )
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"--model {name}: no such model folder; {fix}")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers brings huggingface_hub
        return
    if constants.HF_HUB_OFFLINE and not isinstance(
        try_to_load_from_cache(name, "config.json"), str
    ):
        raise ModelNotFoundError(
            f"--model {name} is not bundled, not a local folder, and not in the Hugging Face "
            f"cache, and HF_HUB_OFFLINE=1 forbids downloading it; {fix}"
        )


def _load_model(name: str, backend: str) -> Any:
    import lensprobe as lp
    from lensprobe.errors import ModelNotFoundError

    try:
        return lp.load_model(name, backend=backend)  # type: ignore[arg-type]
    except OSError as err:
        raise ModelNotFoundError(
            f"--model {name} cannot be loaded ({' '.join(str(err).split())[:300]}); pass a "
            "bundled name, a local model folder, or a hub id"
        ) from err


def _min_rows_per_class(protocol: Any) -> int:
    """Fewest rows of a class the protocol can split: test rows, then one per CV fold."""
    c = 1
    while True:
        held = min(max(round(protocol.test_fraction * c), 1), c - 1) if c >= 2 else 0
        if c - held >= protocol.n_folds:
            return c
        c += 1


def _check_classes(labels: Any, class_names: Any, protocol: Any, where: str, fix: str) -> None:
    """Refuse, before any model loads, labels the protocol cannot split (``fix`` says what to do)."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    present = np.flatnonzero(counts)

    def name(c: int) -> str:
        return repr(class_names[c]) if class_names is not None and c < len(class_names) else str(c)

    if len(present) < 2:
        only = name(int(present[0])) if len(present) else "none"
        raise InputError(
            f"{where}: all {int(counts.sum())} texts are of one class ({only}); a probe needs at "
            f"least two classes: {fix}"
        )
    need = _min_rows_per_class(protocol)
    rare = [int(c) for c in present if counts[c] < need]
    if rare:
        c = min(rare, key=lambda k: counts[k])
        raise InputError(
            f"{where}: class {name(c)} has {int(counts[c])} text(s); every class needs at least "
            f"{need} (a {protocol.test_fraction:.0%} test split, then {protocol.n_folds}-fold "
            f"cross-validation on the rest): {fix}"
        )


def _n_fix(options: Any, n_classes: int, protocol: Any) -> str:
    if getattr(options, "n", None):
        return (
            f"pass a larger --n (at least {_min_rows_per_class(protocol) * n_classes} for "
            f"balanced classes) or leave --n out"
        )
    return "use a dataset with more texts of every class"


def _load_text_dataset(options: Any, n: int | None = None) -> Any:
    from lensprobe.data import load_dataset

    return load_dataset(
        options.dataset,
        data_dir=options.data_dir,
        split=options.split,
        n=n if n is not None else options.n,
        text_column=options.text_column,
        label_column=options.label_column,
    )


def _check_capture_out(ds: Any, hooks: list[str], options: Any, out: str) -> None:
    from lensprobe.capturing import check_capture_out

    check_capture_out(
        out,
        list(ds.texts),
        hooks,
        ds.label_tensor(),
        class_names=ds.class_names,
        max_length=options.max_length,
    )


def _capture(model: Any, ds: Any, hooks: list[str], options: Any, out: str | None) -> Any:
    from lensprobe.capturing import capture

    result = capture(
        model,
        list(ds.texts),
        hooks,
        labels=ds.label_tensor(),
        class_names=ds.class_names,
        max_length=options.max_length,
        batch_size=options.batch_size,
        out=out,
    )
    stats = getattr(result, "stats", None)
    if stats is not None:
        _say(f"  captured at {len(hooks)} hook(s): {stats}")
    return result


def _row_line(record: Any) -> str:
    """One finished grid cell: CV accuracy, then the test accuracy with its interval and n."""
    from lensprobe.experiment import describe
    from lensprobe.train.selection import interval

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


def _train_and_report(
    activations: Any, dataset: str, options: Any, out: str, *, description: str
) -> tuple[list[Any], dict[str, list[Any]]]:
    """Run the grid of one dataset, print a line per cell, write its report.

    Returns:
        The rows and the paired comparisons at the CV-chosen layers (dataset -> comparisons).
    """
    from lensprobe.experiment import (
        add_entropy,
        compare_rows,
        parse_probes,
        run_grid,
        write_report,
    )

    specs = parse_probes(options.probes)  # already checked by the command; cheap

    rows = run_grid(
        activations,
        specs,
        dataset=dataset,
        protocol=_protocol(options.seeds, options.max_steps),
        on_row=lambda row: _say(_row_line(row.record())),
        progress=True,
    )
    add_entropy(rows, activations)
    comparisons = compare_rows(rows)
    path = write_report(
        rows,
        activations,
        os.path.join(out, f"report-{_slug(dataset)}.html"),
        title=f"lensprobe: {dataset}",
        description=description,
        comparisons=comparisons.get(dataset, []),
    )
    _say(f"  report: {path}")
    return rows, comparisons


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _finish(rows: list[Any], comparisons: dict[str, list[Any]], out: str) -> None:
    """Save the results; print the table, the layer choices and the paired comparisons."""
    from lensprobe.experiment import format_choices, format_table, save_rows

    save_rows(rows, out, comparisons=comparisons)
    records = [r.record() for r in rows]
    _say("")
    _say(format_table(records))
    for dataset in dict.fromkeys(r.dataset for r in rows):
        mine = [r for r in records if r["dataset"] == dataset]
        _say(f"\n{dataset}: " + format_choices(mine, comparisons.get(dataset, [])))
    _say(
        f"\nresults: {os.path.join(out, 'results.csv')} (and .json); probes under "
        f"{os.path.join(out, 'probes')}"
    )


# --- lensprobe demo ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    """Options of ``lensprobe demo``."""

    out: str = "lensprobe-demo"
    """Directory for results, probes and reports."""
    quick: bool = False
    """A one-minute run: fewer texts, fewer steps."""
    n: int | None = None
    """Texts per task (default 240; 80 with --quick)."""
    tasks: str = ",".join(DEMO_TASKS)
    """Comma-separated built-in tasks."""
    hooks: str = ",".join(DEMO_HOOKS)
    """Comma-separated hook names."""
    backend: str = "transformer_lens"
    """Backend the bundled model is loaded with."""
    probes: str = "attention-1,attention-2,attention-8,mean,last"
    """Probe specs."""
    seeds: int = 1
    """Seeds per probe."""
    max_steps: int | None = None
    """Most AdamW steps per fit."""
    max_length: int = 160
    """Tokens kept per text."""
    batch_size: int = 16
    """Texts per forward pass."""


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="lensprobe-demo", help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a one-minute run (80 texts per task, 300 AdamW steps, one layer)",
    )
    parser.add_argument("--n", type=int, default=None, help="texts per task (default: 240)")
    parser.add_argument(
        "--tasks",
        default=",".join(DEMO_TASKS),
        help=f"built-in tasks (default: {','.join(DEMO_TASKS)})",
    )
    parser.add_argument(
        "--hooks", default=",".join(DEMO_HOOKS), help="hook names (default: layers 4, 9, 13)"
    )
    parser.add_argument(
        "--backend",
        default="transformer_lens",
        choices=["transformer_lens", "nnsight", "hf"],
        help="how the bundled model is run for capture (default: transformer_lens)",
    )
    _add_train_arguments(parser, "attention-1,attention-2,attention-8,mean,last")
    _add_capture_arguments(parser, max_length=160)


def run_demo(options: DemoOptions) -> int:
    """The bundled Gemma 3 270M on the built-in tasks: capture, train, table, reports."""
    from lensprobe.experiment import parse_probes

    parse_probes(options.probes)  # a bad spec fails before any model is loaded
    from lensprobe.data import load_dataset

    quick = options.quick
    n = options.n or (80 if quick else 240)
    hooks = _hooks(options.hooks)
    if quick and options.hooks == ",".join(DEMO_HOOKS):
        hooks = [DEMO_HOOKS[1]]
    max_steps = options.max_steps or (300 if quick else None)
    options = dataclasses.replace(options, max_steps=max_steps)
    protocol = _protocol(options.seeds, options.max_steps)
    _out_folder(options.out)
    tasks = {task: load_dataset(task, n=n) for task in _csv(options.tasks)}
    if not tasks:
        raise InputError(f"--tasks is empty; pass some of {', '.join(DEMO_TASKS)}")
    for task, ds in tasks.items():
        fix = _n_fix(options, len(ds.class_names), protocol)
        _check_classes(ds.labels, ds.class_names, protocol, task, fix)
    _say(
        f"lensprobe demo: Gemma 3 270M ({options.backend}), tasks {options.tasks}, {n} texts "
        f"each, hooks {', '.join(hooks)}"
    )
    model = _load_model("gemma-3-270m", options.backend)
    rows: list[Any] = []
    comparisons: dict[str, list[Any]] = {}
    for task, ds in tasks.items():
        _say(f"\n{task}: {len(ds)} texts, classes {', '.join(ds.class_names)}")
        acts = _capture(model, ds, hooks, options, None)
        task_rows, task_comparisons = _train_and_report(
            acts, task, options, options.out, description=f"built-in task {task!r}: {len(ds)} texts"
        )
        rows += task_rows
        comparisons.update(task_comparisons)
    _finish(rows, comparisons, options.out)
    return 0


# --- lensprobe run / capture / train / report ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """Where texts come from and how they are captured (shared by ``run`` and ``capture``)."""

    dataset: str
    """Registry name, built-in task, hub id or local file."""
    model: str = "gemma-3-270m"
    """Bundled model name, local directory or hub id."""
    backend: str = "transformer_lens"
    """Backend for capture."""
    hooks: str = ",".join(DEMO_HOOKS)
    """Comma-separated hook names."""
    data_dir: str | None = None
    """Folder of the offline data collection."""
    n: int | None = None
    """Subsample to this many texts."""
    split: str | None = None
    """Dataset split."""
    text_column: str | None = None
    """Text column for unregistered data."""
    label_column: str | None = None
    """Label column for unregistered data."""
    max_length: int = 256
    """Tokens kept per text."""
    batch_size: int = 16
    """Texts per forward pass."""


@dataclass(frozen=True, kw_only=True)
class RunOptions(SourceOptions):
    """Options of ``lensprobe run`` (capture, then train, then report)."""

    out: str = "lensprobe-run"
    """Directory for the activation store, results, probes and the report."""
    probes: str = "attention-1,attention-2,attention-8,mean,last"
    """Probe specs."""
    seeds: int = 1
    """Seeds per probe."""
    max_steps: int | None = None
    """Most AdamW steps per fit."""


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_data_arguments(parser, required=True)
    _add_train_arguments(parser, "attention-1,attention-2,attention-8,mean,last")
    parser.add_argument("--out", default="lensprobe-run", help="output directory")


def run_run(options: RunOptions) -> int:
    """Capture a dataset at hooks, train the probes, write results and a report."""
    from lensprobe.experiment import parse_probes

    parse_probes(options.probes)  # a bad spec fails before any model is loaded
    hooks = _hooks(options.hooks)
    protocol = _protocol(options.seeds, options.max_steps)
    _out_folder(options.out)
    store = os.path.join(options.out, "activations")
    ds = _load_text_dataset(options)
    fix = _n_fix(options, len(ds.class_names), protocol)
    _check_classes(ds.labels, ds.class_names, protocol, ds.name, fix)
    _check_capture_out(ds, hooks, options, store)
    _check_model(options.model)
    _say(
        f"lensprobe run: {options.model} ({options.backend}), {ds.name}: {len(ds)} texts, "
        f"hooks {', '.join(hooks)}"
    )
    model = _load_model(options.model, options.backend)
    acts = _capture(model, ds, hooks, options, store)
    rows, comparisons = _train_and_report(
        acts, ds.name, options, options.out, description=f"{ds.name}: {len(ds)} texts ({ds.source})"
    )
    _finish(rows, comparisons, options.out)
    return 0


@dataclass(frozen=True, kw_only=True)
class CaptureOptions(SourceOptions):
    """Options of ``lensprobe capture``."""

    out: str
    """Directory of the activation store (a killed capture resumes when rerun)."""


def _capture_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_data_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="directory of the activation store")


def run_capture(options: CaptureOptions) -> int:
    """Capture a dataset at hooks into an on-disk store (train on it many times later)."""
    from lensprobe.store import check_store_target

    hooks = _hooks(options.hooks)
    check_store_target(options.out)  # a file or a folder of other things: before reading data
    ds = _load_text_dataset(options)
    _check_capture_out(ds, hooks, options, options.out)
    _check_model(options.model)
    model = _load_model(options.model, options.backend)
    _capture(model, ds, hooks, options, options.out)
    _say(f"store: {options.out} ({ds.name}, {len(ds)} texts, hooks {', '.join(hooks)})")
    return 0


@dataclass(frozen=True)
class TrainOptions:
    """Options of ``lensprobe train``."""

    acts: str
    """Activation store written by ``lensprobe capture`` (or ``run``)."""
    out: str = "lensprobe-train"
    """Directory for results, probes and the report."""
    hooks: str | None = None
    """Comma-separated hooks of the store to train on (default: all)."""
    probes: str = "attention-1,attention-2,attention-8,mean,last"
    """Probe specs."""
    seeds: int = 1
    """Seeds per probe."""
    max_steps: int | None = None
    """Most AdamW steps per fit."""
    name: str | None = None
    """Dataset name for the results (default: the store's directory name)."""


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--acts", required=True, help="activation store (lensprobe capture --out)")
    parser.add_argument("--out", default="lensprobe-train", help="output directory")
    parser.add_argument("--hooks", default=None, help="hooks of the store (default: all)")
    parser.add_argument("--name", default=None, help="dataset name recorded in the results")
    _add_train_arguments(parser, "attention-1,attention-2,attention-8,mean,last")


def _open_store(path: str, hooks: str | None) -> dict[str, Any]:
    from lensprobe.store import load_store

    store = load_store(path, verify="full")  # every file is read anyway: check them all first
    wanted = _csv(hooks) or list(store)
    missing = [h for h in wanted if h not in store]
    if missing:
        raise InputError(f"hooks {missing} are not in the store {path}; it has {list(store)}")
    return {h: store[h] for h in wanted}


def run_train(options: TrainOptions) -> int:
    """Train probes on a stored capture; write results, probes and a report."""
    from lensprobe.experiment import parse_probes

    parse_probes(options.probes)  # a bad spec fails before any model is loaded
    protocol = _protocol(options.seeds, options.max_steps)
    out = _out_folder(options.out)  # before training: a bad --out must not cost the work
    acts = _open_store(options.acts, options.hooks)
    name = options.name or os.path.basename(os.path.normpath(options.acts))
    first = next(iter(acts.values()))
    if first.labels is None:
        raise InputError(f"the store {options.acts} has no labels; capture with a dataset")
    _check_classes(
        first.labels.numpy(),
        first.class_names,
        protocol,
        f"the store {options.acts}",
        "capture more texts of every class",
    )
    _say(f"lensprobe train: {name}: {len(first)} sequences, hooks {', '.join(acts)}")
    rows, comparisons = _train_and_report(
        acts,
        name,
        options,
        options.out,
        description=f"{name}: {len(first)} sequences from {options.acts}",
    )
    _finish(rows, comparisons, options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store.txt").write_text(os.path.abspath(options.acts) + "\n")
    return 0


@dataclass(frozen=True)
class ReportOptions:
    """Options of ``lensprobe report``."""

    results: str
    """Directory written by ``lensprobe train`` or ``run`` (results.json and probes/)."""
    acts: str | None = None
    """Activation store the probes were trained on (default: the one recorded in results)."""
    out: str | None = None
    """HTML file to write (default: RESULTS/report.html, or one RESULTS/report-DATASET.html per
    dataset when the results hold several)."""
    dataset: str | None = None
    """Report only this dataset of a results folder that holds several (as ``demo`` writes)."""


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="directory of lensprobe train/run")
    parser.add_argument("--acts", default=None, help="activation store (default: recorded)")
    parser.add_argument(
        "--out",
        default=None,
        help="HTML file (default: RESULTS/report.html, or RESULTS/report-DATASET.html for each "
        "dataset of a folder that holds several)",
    )
    parser.add_argument(
        "--dataset", default=None, help="report only this dataset of the results (default: all)"
    )


def run_report(options: ReportOptions) -> int:
    """Rebuild the HTML report from saved results, probes and the activation store.

    The layer choice is redone from the records' CV scores; the comparisons are the ones stored
    with the results (computed by ``lp.compare`` when the probes were trained).
    """
    import torch

    from lensprobe.experiment import format_choices, load_results
    from lensprobe.probes import load_probe
    from lensprobe.viz import ReportEntry, report

    results_dir = Path(options.results)
    if options.out and Path(options.out).is_dir():
        raise InputError(f"--out {options.out} is a folder; pass the HTML file to write")
    saved = load_results(results_dir)
    store = options.acts
    if store is None:
        recorded = results_dir / "store.txt"
        if recorded.is_file():
            store = recorded.read_text().strip()
        elif (results_dir / "activations").is_dir():
            store = str(results_dir / "activations")
    results = saved.results
    records = {(r["dataset"], r["hook"], r["probe"]): r for r in saved.records}
    datasets = sorted({r["dataset"] for r in results})
    if options.dataset is not None:
        if options.dataset not in datasets:
            raise ValueError(
                f"no results for dataset {options.dataset!r} in {results_dir}; it holds "
                f"{', '.join(datasets)}"
            )
        datasets = [options.dataset]
    if len(datasets) > 1 and options.out:
        raise ValueError(
            f"{results_dir} holds {len(datasets)} datasets ({', '.join(datasets)}); pass "
            "--dataset NAME with --out, or leave --out out for one report per dataset"
        )
    if len(datasets) > 1 and options.acts:
        raise ValueError(
            "an activation store holds one dataset; pass --dataset NAME with --acts "
            f"(the results hold {', '.join(datasets)})"
        )
    # A store belongs to one dataset: attach it only when the report covers one.
    acts = _open_store(store, None) if store and len(datasets) == 1 else {}
    for dataset in datasets:
        entries = []
        for res in (r for r in results if r["dataset"] == dataset):
            probe_dir = results_dir / "probes" / res["dataset"] / res["hook"] / res["probe"]
            entries.append(
                ReportEntry(
                    label=res["probe"],
                    probe=load_probe(probe_dir),
                    metrics=res["metrics"],
                    acts=acts.get(res["hook"]),
                    rows=torch.tensor(res["test_rows"]) if res["hook"] in acts else None,
                    hook=res["hook"],
                    weight_decay=res["weight_decay"],
                    cv_summary=tuple(res["cv_summary"]),
                    n_train=res["n_train"],
                    n_test=res["n_test"],
                    record=records.get((res["dataset"], res["hook"], res["probe"])),
                )
            )
        if options.out:
            out = Path(options.out)
        elif len(datasets) == 1 and options.dataset is None:
            out = results_dir / "report.html"
        else:
            out = results_dir / f"report-{_slug(dataset)}.html"
        report(
            entries,
            out,
            title=f"lensprobe: {dataset}",
            description=None if acts else "metrics only: no activation store found (--acts)",
            comparisons=saved.comparisons.get(dataset, []),
        )
        mine = [r for r in saved.records if r.get("dataset") == dataset]
        _say(f"{dataset}: " + format_choices(mine, saved.comparisons.get(dataset, [])))
        _say(f"report: {out}")
    return 0


# --- the command table and the entry point --------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "datasets": Command(
        "datasets",
        "list built-in tasks and datasets, with sizes and classes",
        DatasetsOptions,
        _datasets_arguments,
        run_datasets,
    ),
    "demo": Command(
        "demo",
        "the bundled Gemma 3 270M on the built-in tasks: probes, table and HTML report",
        DemoOptions,
        _demo_arguments,
        run_demo,
    ),
    "run": Command(
        "run",
        "capture any model at hooks on a dataset, train probes, write results and a report",
        RunOptions,
        _run_arguments,
        run_run,
    ),
    "capture": Command(
        "capture",
        "capture a dataset at hooks into an on-disk activation store",
        CaptureOptions,
        _capture_arguments,
        run_capture,
    ),
    "train": Command(
        "train",
        "train probes on a stored capture (results, probes, report)",
        TrainOptions,
        _train_arguments,
        run_train,
    ),
    "report": Command(
        "report",
        "rebuild the HTML report from saved results and the activation store",
        ReportOptions,
        _report_arguments,
        run_report,
    ),
}
"""Every subcommand by name."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensprobe", description="Attention probes at TransformerLens / nnsight hook names."
    )
    debug_help = "show the full traceback of an error instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        subparser = sub.add_parser(command.name, help=command.help)
        command.add_arguments(subparser)
        # also accepted after the command name; SUPPRESS keeps a top-level --debug
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help
        )
    return parser


USER_ERRORS: tuple[type[BaseException], ...] = (LensprobeError, ValueError, OSError, ImportError)
"""Errors the command line reports as one line (``--debug`` shows the traceback); any other
exception is a bug and keeps its traceback."""


def main(args: list[str] | None = None) -> int:
    """Run the ``lensprobe`` command line.

    Args:
        args: Arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when the command failed, 2 for a usage error, 130 when
        interrupted.
    """
    parser = _parser()
    try:
        namespace = parser.parse_args(args)
    except SystemExit as exit_:  # argparse exits on --help (0) and on usage errors (2)
        return int(exit_.code or 0)
    if namespace.command is None:
        parser.print_help()
        return 2
    command = COMMANDS[namespace.command]
    debug = bool(getattr(namespace, "debug", False))
    fields = {f.name for f in dataclasses.fields(command.options)}
    try:
        options = command.options(**{k: v for k, v in vars(namespace).items() if k in fields})
        return command.run(options)
    except KeyboardInterrupt:
        if debug:
            raise
        _say(
            f"lensprobe {command.name}: interrupted; rerun the same command to resume (finished "
            "capture shards are kept)",
            err=True,
        )
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        _say(f"lensprobe {command.name}: error: {text}", err=True)
        return 1
