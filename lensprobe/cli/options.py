"""The options of every ``lensprobe`` command: one frozen dataclass per command, one field per flag.

The parser is generated from these classes (:mod:`lensprobe.cli.parsing`): a field's docstring is
its flag's help, its default the flag's default, its type the flag's kind. Flags shared by several
commands are defined once, in the small classes the commands' options inherit from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lensprobe.cli.parsing import flag
from lensprobe.models import Backend
from lensprobe.specs import CAPTURE_BATCH_SIZE, CAPTURE_MAX_LENGTH, DEFAULT_PROBES, Keep

__all__ = [
    "DATA_DIR_ENV",
    "DEMO_HOOKS",
    "DEMO_TASKS",
    "CaptureOptions",
    "DatasetsOptions",
    "DemoOptions",
    "ReportOptions",
    "RunOptions",
    "SourceOptions",
    "TrainOptions",
]

DATA_DIR_ENV = "LENSPROBE_DATA_DIR"
"""Environment variable the command line reads when ``--data-dir`` is not given."""

DEMO_TASKS: tuple[str, ...] = ("facts", "needle", "topics")
"""Built-in tasks ``lensprobe demo`` runs."""

DEMO_HOOKS: tuple[str, ...] = (
    "blocks.4.hook_resid_post",
    "blocks.9.hook_resid_post",
    "blocks.13.hook_resid_post",
)
"""Three layers of the bundled Gemma 3 270M (18 layers): early, middle, late."""


@dataclass(frozen=True)
class DatasetsOptions:
    """Options of ``lensprobe datasets``."""

    data_dir: str | None = flag(None, env=DATA_DIR_ENV)
    """Folder of the offline data collection (default: $LENSPROBE_DATA_DIR); without it only
    built-in tasks and hub datasets are listed."""

    count: bool = True
    """Read each local copy to count its rows and classes."""


# --- flags shared by several commands ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The model and where it is read (``run``, ``capture``)."""

    model: str = "gemma-3-270m"
    """Bundled model name, local model directory, or hub id."""
    backend: Backend = "transformer_lens"
    """How the model is run for capture."""
    hooks: tuple[str, ...] = DEMO_HOOKS
    """Comma-separated hook names, e.g. blocks.9.hook_resid_post (default: layers 4, 9, 13)."""
    layers: str | None = None
    """The residual stream after these layers instead of --hooks: all, a range such as 0-17:2
    (first-last:step), or a list such as 4,9,13 (blocks.N.hook_resid_post)."""
    device: str | None = None
    """Where the model runs: cpu, cuda, cuda:1, mps (default: cpu)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The model's compute dtype: auto is bfloat16 where the hardware is fast at it (CUDA, CPUs
    with AMX or AVX-512 BF16), float32 elsewhere. Activations are stored in bfloat16, or in
    float32 when float32 is given."""


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """Where the texts come from (``run``, ``capture``)."""

    dataset: str
    """Registry name (see ``lensprobe datasets``), built-in task, hub id, or local file."""
    data_dir: str | None = flag(None, env=DATA_DIR_ENV)
    """Folder of the offline data collection (default: $LENSPROBE_DATA_DIR)."""
    n_texts: int | None = flag(None, short="--n")
    """Subsample to N texts (stratified); --n is the same flag, but torchrun's own parser stops
    at it ("ambiguous option"), so write --n-texts after torchrun."""
    seed: int = 0
    """Seed of the --n-texts subsample (the splits' seeds are --seeds)."""
    split: str | None = None
    """Dataset split (default: all local splits, pooled and split at random by the protocol)."""
    test_split: str | None = None
    """A split to test on as given (e.g. --split train --test-split test; run only): the probes
    train on --split and are tested once on this split, instead of random splits of the rows."""
    text_column: str | None = None
    """Text column of a hub id or file not in the registry; several, comma-separated
    (title,description), are joined with one space."""
    label_column: str | None = None
    """Label column of a hub id or file not in the registry."""
    classes: tuple[str, ...] = ()
    """Every class name, comma-separated, in the order probe outputs number them (default: the
    dataset's order, else sorted)."""


@dataclass(frozen=True, kw_only=True)
class SizeOptions:
    """How many tokens and texts go through the model at once."""

    max_length: int = CAPTURE_MAX_LENGTH
    """Tokens kept per text, BOS included (as in lp.capture)."""
    batch_size: int = CAPTURE_BATCH_SIZE
    """Texts per forward pass during capture (as in lp.capture)."""


@dataclass(frozen=True, kw_only=True)
class SourceOptions(SizeOptions, DataOptions, ModelOptions):
    """A model, hooks and texts to capture (shared by ``run`` and ``capture``)."""


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """Which probes are trained, and how long (``demo``, ``run``, ``train``)."""

    probes: tuple[str, ...] = DEFAULT_PROBES
    """Comma-separated probe specs KIND[-HEADS][-OPTIMIZER][:NAME=VALUE]: attention-8, mean, last,
    max, mean-adamw, and the long-context kinds multimax-4, rolling-4:window=16, ema:halflife=16."""
    seeds: str = "1"
    """Splits per probe: a count (3 means seeds 0,1,2) or a list of seeds such as 0,4,7; metrics
    are averaged with a corrected interval."""
    max_steps: int | None = None
    """Most AdamW steps per fit (default: the protocol's, 1500)."""
    max_memory: str | None = None
    """Most memory one probe's training may hold, e.g. 4GB or 512MiB (default: 0.8 x the memory
    available); a probe estimated above it stops the run before any training."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """What AdamW probes' products over the activations compute in: fp32, bf16, or auto (bf16
    on CUDA and on CPUs with AMX / AVX-512 BF16); recorded in the results."""


# --- the commands --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DemoOptions(SizeOptions, TrainingOptions):
    """Options of ``lensprobe demo``."""

    out: str = "lensprobe-demo"
    """Directory for results, probes and reports."""
    quick: bool = False
    """A one-minute run (80 texts per task, 300 AdamW steps, one layer)."""
    n_texts: int | None = flag(None, short="--n")
    """Texts per task (default: 240; 80 with --quick)."""
    tasks: tuple[str, ...] = DEMO_TASKS
    """Comma-separated built-in tasks."""
    hooks: tuple[str, ...] = DEMO_HOOKS
    """Comma-separated hook names (default: layers 4, 9, 13)."""
    backend: Backend = "transformer_lens"
    """How the bundled model is run for capture."""


@dataclass(frozen=True, kw_only=True)
class RunOptions(TrainingOptions, SourceOptions):
    """Options of ``lensprobe run`` (capture, then train, then report)."""

    out: str = "lensprobe-run"
    """Directory for the activation store, results, probes and the report."""


@dataclass(frozen=True, kw_only=True)
class CaptureOptions(SourceOptions):
    """Options of ``lensprobe capture``."""

    out: str
    """Directory of the activation store (a killed capture resumes when rerun)."""
    keep: Keep = "tokens"
    """What the store keeps per text: every token (tokens), or only the pooled vectors the
    mean / max / last probes read, at a few KB per text: last (the last token) or pooled (mean,
    max and last)."""


@dataclass(frozen=True, kw_only=True)
class TrainOptions(TrainingOptions):
    """Options of ``lensprobe train``."""

    acts: str
    """Activation store written by ``lensprobe capture`` (or ``run``)."""
    out: str = "lensprobe-train"
    """Directory for results, probes and the report."""
    hooks: tuple[str, ...] = ()
    """Comma-separated hooks of the store to train on (default: all)."""
    name: str | None = None
    """Dataset name recorded in the results (default: the store's directory name)."""


@dataclass(frozen=True)
class ReportOptions:
    """Options of ``lensprobe report``."""

    results: str
    """Directory written by ``lensprobe train`` or ``run`` (results.json and probes/)."""
    acts: str | None = None
    """Activation store the probes were trained on (default: the one recorded in the results)."""
    out: str | None = None
    """HTML file to write (default: RESULTS/report.html, or RESULTS/report-DATASET.html for each
    dataset of a folder that holds several)."""
    dataset: str | None = None
    """Report only this dataset of a results folder that holds several (default: all)."""
