"""The steps the ``lensprobe`` commands share: checks before any work, loading, capture, training.

Every check that can fail on the user's input runs before a model loads or a file is written,
and names the fix. The command line may print (through :func:`say`); the library never does.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensprobe.errors import InputError, ModelNotFoundError, OutputPathError

__all__ = [
    "ReportJob",
    "capture_texts",
    "check_capture_out",
    "check_classes",
    "check_model",
    "check_out_folder",
    "describe_dataset",
    "finish",
    "hooks_flag",
    "load_model",
    "load_text_dataset",
    "memory_flag",
    "model_hooks",
    "n_fix",
    "open_store",
    "protocol",
    "record_store",
    "recorded_store",
    "run_store",
    "say",
    "slug",
    "train_grid",
    "write_report",
]


def say(text: str, *, err: bool = False) -> None:
    """Write one line of command output (the command line's only way of printing).

    Under torchrun only rank 0 prints to stdout: the ranks of one command would say the same.
    """
    from lensprobe.hardware import torchrun_place

    if not err and torchrun_place()[0] != 0:
        return
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")


def slug(text: str) -> str:
    """``text`` as a file-name part: anything but letters, digits and ``-_.`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# --- checks before any work -----------------------------------------------------------------------


def model_hooks(options: Any) -> list[str]:
    """The hooks of ``--layers`` (expanded with the model's layer count) or else ``--hooks``."""
    if options.layers is None:
        return hooks_flag(options.hooks)
    return [f"blocks.{i}.hook_resid_post" for i in layers_flag(options.layers, options.model)]


def layers_flag(text: str, model: str) -> list[int]:
    """``--layers``: ``all``, ``first-last[:step]`` or ``i,j,k``, checked against the model."""
    n_layers = model_layer_count(model)
    spec = text.strip().lower()
    try:
        if spec == "all":
            layers = list(range(n_layers))
        elif "-" in spec:
            span, _, step = spec.partition(":")
            first, last = (int(v) for v in span.split("-"))
            layers = list(range(first, last + 1, int(step or 1)))
        else:
            layers = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise InputError(f"--layers {text!r}: pass all, a range such as 0-17:2, or 4,9,13")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise InputError(f"--layers {text!r}: {model} has layers 0-{n_layers - 1}, not {bad}")
    return layers


def model_layer_count(model: str) -> int:
    """Transformer blocks of ``--model``, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    from lensprobe.models import BUNDLED_MODELS, bundled_model_dir

    path = bundled_model_dir(model) if model in BUNDLED_MODELS else Path(model).expanduser()
    config = AutoConfig.from_pretrained(str(path) if path.is_dir() else model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def hooks_flag(hooks: Sequence[str]) -> list[str]:
    """The ``--hooks`` list, refused when empty."""
    if not hooks:
        raise InputError("--hooks is empty; pass hook names, e.g. blocks.9.hook_resid_post")
    return list(hooks)


def check_out_folder(path: str, flag: str = "--out") -> Path:
    """Check that output can go to folder ``path`` (created when written), before any work."""
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
    from lensprobe.grid import ensure_folder

    ensure_folder(out)
    return out


def check_model(name: str) -> None:
    """Fail before any work when ``--model`` names nothing loadable (offline hub ids included)."""
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


def memory_flag(max_memory: str | None) -> None:
    """Refuse a ``--max-memory`` that is not a size, before any work."""
    if max_memory is not None:
        from lensprobe.train.budget import parse_memory

        parse_memory(max_memory)


def protocol(options: Any, test_rows: Sequence[int] | None = None) -> Any:
    """The protocol of ``--seeds``, ``--max-steps`` and ``--precision`` (else the defaults).

    ``test_rows``: the rows of ``--test-split`` (a given test part, one split).
    """
    from lensprobe.train import ProtocolConfig, TrainConfig

    train = TrainConfig(precision=options.precision)
    if options.max_steps is not None:
        train = dataclasses.replace(train, max_steps=options.max_steps)
    seeds = seeds_flag(options.seeds)
    if test_rows is not None and len(seeds) > 1:
        raise InputError(
            f"--test-split gives one split, but --seeds {options.seeds} asks for {len(seeds)}: "
            "pass --seeds 1 with --test-split, or leave --test-split out for random splits"
        )
    rows = None if test_rows is None else tuple(test_rows)
    return ProtocolConfig(seeds=seeds, train=train, test_rows=rows)


def seeds_flag(text: str) -> tuple[int, ...]:
    """``--seeds``: a count (``3``: seeds 0, 1, 2) or comma-separated seeds (``0,4,7``)."""
    from lensprobe.train.config import seed_tuple

    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"--seeds {text!r}: pass a count (3) or comma-separated seeds (0,4,7)")
    return seed_tuple(values[0] if "," not in str(text) else values)


def _min_rows_per_class(protocol: Any) -> int:
    """Fewest rows of a class the protocol can split: test rows, then one per CV fold."""
    if protocol.test_rows is not None:  # a given test part: the training part needs the folds
        return protocol.n_folds
    c = 1
    while True:
        held = min(max(round(protocol.test_fraction * c), 1), c - 1) if c >= 2 else 0
        if c - held >= protocol.n_folds:
            return c
        c += 1


def check_classes(labels: Any, class_names: Any, protocol: Any, where: str, fix: str) -> None:
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
        why = (
            f"{protocol.n_folds}-fold cross-validation of the training split"
            if protocol.test_rows is not None
            else f"a {protocol.test_fraction:.0%} test split, then {protocol.n_folds}-fold "
            "cross-validation on the rest"
        )
        raise InputError(
            f"{where}: class {name(c)} has {int(counts[c])} text(s); every class needs at least "
            f"{need} ({why}): {fix}"
        )


def n_fix(options: Any, n_classes: int, protocol: Any) -> str:
    """What to do about too few texts of a class: a larger ``--n-texts`` if one was given."""
    if getattr(options, "n_texts", None):
        return (
            f"pass a larger --n-texts (at least {_min_rows_per_class(protocol) * n_classes} for "
            f"balanced classes) or leave --n-texts out"
        )
    return "use a dataset with more texts of every class"


def check_capture_out(ds: Any, hooks: list[str], options: Any, out: str) -> None:
    """Refuse a store folder that holds another capture, before the model loads."""
    from lensprobe.capturing import check_capture_out

    check_capture_out(
        out,
        list(ds.texts),
        hooks,
        ds.label_tensor(),
        class_names=ds.class_names,
        max_length=options.max_length,
    )


# --- loading and capture --------------------------------------------------------------------------


def load_model(name: str, backend: str, device: str | None = None, dtype: str = "auto") -> Any:
    """The model of ``--model`` run by ``--backend`` (on ``--device``, in ``--dtype``).

    A failed load names the fix.
    """
    import torch

    from lensprobe import models

    if device is not None:
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise InputError(
                f"--device {device}: {' '.join(str(err).split())[:200]}; pass cpu, or a device "
                "this machine has"
            ) from None
    try:
        model = models.load_model(name, backend=backend, device=device, dtype=dtype)  # type: ignore[arg-type]
    except OSError as err:
        raise ModelNotFoundError(
            f"--model {name} cannot be loaded ({' '.join(str(err).split())[:300]}); pass a "
            "bundled name, a local model folder, or a hub id"
        ) from err
    computes = str(models.compute_dtype(dtype, device)).removeprefix("torch.")
    why = ""
    if dtype == "auto":
        fast = computes == "bfloat16"
        why = f" (--dtype auto: bfloat16 is {'fast' if fast else 'emulated, so slower'} here)"
    say(f"model: {name} ({backend}), computing in {computes}{why}")
    return model


def load_text_dataset(options: Any, n: int | None = None) -> Any:
    """The dataset of ``--dataset`` and its column, split and size flags."""
    from lensprobe.data import load_dataset

    return load_dataset(
        options.dataset,
        data_dir=options.data_dir,
        split=options.split,
        n=n if n is not None else options.n_texts,
        seed=options.seed,
        text_column=text_columns(options.text_column),
        label_column=options.label_column,
        classes=options.classes or None,
    )


def text_columns(text: str | None) -> tuple[str, ...] | None:
    """``--text-column``: one column, or several comma-separated (joined with one space)."""
    if text is None:
        return None
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise InputError(f"--text-column {text!r}: name a column, or several: title,description")
    return columns


def load_split_dataset(options: Any) -> tuple[Any, list[int] | None]:
    """``--dataset`` with ``--split``, and with ``--test-split`` its test split appended.

    Returns the texts to capture and, with ``--test-split``, the rows of the test split (every
    row before them is the training split, as given). ``--n`` caps each split (stratified).
    """
    if not options.test_split:
        return load_text_dataset(options), None
    from lensprobe.data import TextDataset

    if not options.split or options.split == options.test_split:
        raise InputError(
            f"--test-split {options.test_split} needs the training split as --split (another "
            "split of the same dataset), e.g. --split train --test-split test"
        )
    train = load_text_dataset(options)
    test = load_text_dataset(dataclasses.replace(options, split=options.test_split))
    if set(test.class_names) - set(train.class_names):
        extra = sorted(set(test.class_names) - set(train.class_names))
        raise InputError(
            f"--test-split {options.test_split} has classes {extra} that --split "
            f"{options.split} lacks: a probe cannot learn a class it never sees"
        )
    if test.class_names != train.class_names:
        missing = [c for c in train.class_names if c not in test.class_names]
        test = TextDataset(
            test.name,
            test.texts,
            [train.class_names.index(test.class_names[i]) for i in test.labels],
            train.class_names,
            test.source,
        )
        if missing:
            say(f"  note: the test split has no text of {missing}")
    ds = TextDataset(
        train.name,
        train.texts + test.texts,
        [*train.labels.tolist(), *test.labels.tolist()],
        train.class_names,
        f"{train.source}; test: {test.source}",
    )
    return ds, list(range(len(train), len(ds)))


def describe_dataset(ds: Any) -> str:
    """Where a dataset's texts came from and how many of each class (shown before capture)."""
    counts = ", ".join(f"{name} {count}" for name, count in ds.class_counts().items())
    return f"  {ds.name}: {len(ds)} texts from {ds.source}; classes (in label order): {counts}"


def describe_tokens(model: Any, texts: Sequence[str], max_length: int | None) -> str | None:
    """Token counts of the texts and how many ``--max-length`` cuts (None without a tokenizer)."""
    from lensprobe.batching import tokenize

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None
    lengths = sorted(tokenize(tokenizer, texts, max_length=None).lengths)
    cut = sum(n > max_length for n in lengths) if max_length is not None else 0
    line = f"  tokens per text (BOS included): median {lengths[len(lengths) // 2]}, "
    line += f"longest {lengths[-1]}; "
    if not cut:
        return line + f"none is cut (--max-length {max_length})"
    return line + (
        f"{cut} of {len(lengths)} texts are cut to their first {max_length} tokens "
        "(--max-length to change)"
    )


def capture_texts(model: Any, ds: Any, hooks: list[str], options: Any, out: str | None) -> Any:
    """Capture ``ds`` at ``hooks`` (into store ``out`` when given) and print the capture's stats.

    How many texts ``--max-length`` cuts is printed before the capture starts.
    """
    import torch

    from lensprobe.capturing import capture

    tokens = describe_tokens(model, ds.texts, options.max_length)
    if tokens:
        say(tokens)

    result = capture(
        model,
        list(ds.texts),
        hooks,
        labels=ds.label_tensor(),
        class_names=ds.class_names,
        max_length=options.max_length,
        batch_size=options.batch_size,
        dtype=torch.float32 if getattr(options, "dtype", None) == "float32" else torch.bfloat16,
        out=out,
        keep=getattr(options, "keep", "tokens"),
    )
    stats = getattr(result, "stats", None)
    if stats is not None:
        say(f"  captured at {len(hooks)} hook(s): {stats}")
    return result


# --- activation stores: where run writes one, where train records one, how report finds it ---------

STORE_RECORD = "store.txt"
"""File of a ``train`` output folder naming the activation store it trained on."""


def run_store(out: str | Path) -> str:
    """The activation store inside the output folder of ``lensprobe run``."""
    return os.path.join(out, "activations")


def record_store(out: Path, acts: str) -> None:
    """Write which store the results in ``out`` were trained on (read by :func:`recorded_store`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / STORE_RECORD).write_text(os.path.abspath(acts) + "\n")


def recorded_store(results: Path) -> str | None:
    """The store a results folder was trained on: recorded by ``train``, or the one ``run`` wrote."""
    if (results / STORE_RECORD).is_file():
        return (results / STORE_RECORD).read_text().strip()
    if os.path.isdir(run_store(results)):
        return run_store(results)
    return None


def open_store(path: str, hooks: Sequence[str] = ()) -> dict[str, Any]:
    """The activations of ``hooks`` (default: all) in the store at ``path``, every file checked."""
    from lensprobe.storage import load

    store = load(path, verify="full")  # every file is read anyway: check them all first
    wanted = list(hooks) or list(store)
    missing = [h for h in wanted if h not in store]
    if missing:
        raise InputError(f"hooks {missing} are not in the store {path}; it has {list(store)}")
    return {h: store[h] for h in wanted}


# --- training, the report and the results ---------------------------------------------------------


def train_grid(
    activations: Any, dataset: str, options: Any, test_rows: Sequence[int] | None = None
) -> list[Any]:
    """Run one dataset's grid into ``--out``, printing a line per cell.

    Each cell is saved as it finishes; finished cells of an earlier run are read back, not
    trained again. ``test_rows``: the rows of ``--test-split``.
    """
    from lensprobe import experiment
    from lensprobe.probes.spec import parse_probes

    def show(cell: Any) -> None:
        line = experiment.format_row(cell.record())
        say(line + ("  [saved earlier: resumed]" if cell.resumed else ""))

    return experiment.run_grid(
        activations,
        parse_probes(options.probes),  # already checked by the command; cheap
        dataset=dataset,
        protocol=protocol(options, test_rows),
        out=options.out,
        entropy=True,
        on_row=show,
        progress=None,  # at a terminal; not in a log
        max_memory=options.max_memory,
    )


@dataclass(frozen=True)
class ReportJob:
    """What one dataset's HTML report is drawn from."""

    dataset: str
    activations: Any
    description: str


def finish(cells: list[Any], reports: Sequence[ReportJob], out: str) -> Any:
    """Build the grid, save its index, print the table and the choices, then write the reports.

    The grid holds this run's cells and the cells earlier runs left in ``out`` (other probes,
    hooks or datasets); every paired comparison of it forms one family (Holm-adjusted together).
    Each cell is on disk since it finished, and the index before any report renders, so a
    failed render loses nothing.
    """
    from lensprobe.experiment import format_choices, format_table
    from lensprobe.grid import Grid, save, with_saved

    every = with_saved(cells, out)
    grid = Grid.build(every, folder=out)
    save(grid, out)
    say("")
    if len(every) > len(cells):
        say(f"(with {len(every) - len(cells)} cell(s) of earlier runs kept in {out})")
    say(format_table(grid))
    for dataset in grid.datasets:
        _, choices, comparisons = grid.of(dataset)
        say(f"\n{dataset}: " + format_choices(choices, comparisons))
    for job in reports:
        write_report(grid, job, out)
    pages = {d: os.path.join(out, f"report-{slug(d)}.html") for d in grid.datasets}
    pages = {d: p for d, p in pages.items() if os.path.isfile(p)}  # this run's and earlier ones
    if reports and len(pages) > 1:
        from lensprobe.viz.index import write_index

        say(f"  index: {write_index(grid, pages, os.path.join(out, 'index.html'))}")
    say(
        f"\nresults: {os.path.join(out, 'results.csv')} (and .json); each cell with its probes "
        f"under {os.path.join(out, 'cells')}"
    )
    return grid


def write_report(grid: Any, job: ReportJob, out: str) -> None:
    """Write one dataset's HTML report from the grid."""
    from lensprobe import experiment

    path = experiment.write_report(
        grid,
        job.dataset,
        job.activations,
        os.path.join(out, f"report-{slug(job.dataset)}.html"),
        title=f"lensprobe: {job.dataset}",
        description=job.description,
    )
    say(f"  report: {path}")
