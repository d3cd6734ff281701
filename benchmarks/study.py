"""The attention-probes study's comparison, rerun on Gemma 3 270M over the offline datasets.

For each classification dataset of ``../shared/data`` (one per folder, stratified subsample of
``--n`` texts), the residual stream of the bundled Gemma 3 270M is captured once at several
layers, and each probe goes through the protocol (``lensprobe.run_protocol``) with ``--seeds``
seeds, each an independent stratified 80/20 split with its own 5-fold CV choice of weight decay,
refit and test. Attention probes and ``-adamw`` probes train with AdamW, ``mean`` / ``last`` with
L-BFGS.

The tables never choose anything on the test part: each split picks each probe's layer by its
own CV accuracy on its own training part (``lp.choose_layer``), and probe kinds are compared on
the same splits, each split at its own picks (a paired corrected resampled t interval over the
splits, ``undecided`` when it contains 0), with Holm-adjusted verdicts over every comparison of
the page beside the raw ones. Every accuracy is printed with its interval and ``n_test``.

    python benchmarks/study.py                      # the README's run: 6 datasets, 6 probes
    python benchmarks/study.py --datasets all --probes attention-1,attention-2,attention-8,mean,last
    python benchmarks/study.py --datasets sst2 --layers 9 --probes attention-8,mean --seeds 3

Resumable: each dataset is captured once into ``OUT/acts/<dataset>`` (a store that resumes by
itself), each (dataset, layer, probe) cell is written to ``OUT/cells/<dataset>/<hook>/<probe>.json``
as soon as it is done (with each seed's split, test labels and test logits, which is what the
paired comparisons read), and a rerun skips the cells whose file exists. Every run rebuilds, from
all cell files, ``OUT/results.csv``, ``OUT/comparisons.csv``, ``OUT/results.md``,
``OUT/entropy.csv`` and ``OUT/study.png``. Only ``OUT/acts`` is large; it is not meant for version
control.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "study"
DEFAULT_DATA = REPO.parent / "shared" / "data"

PROBES: tuple[str, ...] = (
    "attention-1",
    "attention-2",
    "attention-8",
    "mean",
    "last",
    "mean-adamw",
    "last-adamw",
)
"""The probes of the comparison (specs of ``lensprobe.probes.ProbeSpec``)."""

DEFAULT_PROBES: tuple[str, ...] = (
    "attention-1",
    "attention-8",
    "mean",
    "last",
    "mean-adamw",
    "last-adamw",
)
"""The probes of the README's run (attention-2 left out for time on a 2-core CPU)."""

DEFAULT_DATASETS: tuple[str, ...] = (
    "geometry_of_truth/cities",
    "sst2",
    "massive_scenario",
    "refusal_harmful_harmless",
    "sms_spam",
    "tweet_eval_emotion",
)
"""The README's run: the first six entries of :data:`TASKS` (the shortest texts)."""

MIN_PER_CLASS = 8
"""Fewest rows a class may keep in a subsample: 5-fold CV needs 5 in the 80 % training part."""


@dataclass(frozen=True)
class Task:
    """One dataset of the comparison: a registry entry and how it is subsampled."""

    name: str
    """Registry name passed to ``lensprobe.data.load_dataset``."""
    folder: str
    """Folder of ``../shared/data`` it comes from."""
    balance: bool = False
    """Draw the same number of rows per class instead of keeping the classes' shares."""
    note: str = ""
    """Why this entry stands for its folder, for the results page."""

    @property
    def slug(self) -> str:
        """File-system name (``geometry_of_truth/cities`` -> ``geometry_of_truth-cities``)."""
        return self.name.replace("/", "-")


TASKS: tuple[Task, ...] = (
    Task("geometry_of_truth/cities", "geometry_of_truth", note="the cities file of 11"),
    Task("sst2", "sst2"),
    Task("massive_scenario", "massive_intent_en", note="18 scenarios (60 intents are too many)"),
    Task(
        "refusal_harmful_harmless",
        "refusal_harmful_harmless",
        balance=True,
        note="balanced: 871 harmful vs 31,323 harmless",
    ),
    Task("sms_spam", "sms_spam"),
    Task("tweet_eval_emotion", "tweet_eval_emotion"),
    Task("tweet_eval_stance_abortion", "tweet_eval_stance_abortion"),
    Task("ag_news", "ag_news"),
    Task("banking77", "banking77", note="77 intents; classes kept at >= 8 rows each"),
    Task("jailbreak_classification", "jailbreak_classification"),
    Task("amazon_reviews_1and5", "amazon_reviews_1and5"),
    Task("github_code_lang", "github_code_lang", note="the 3-class task: C / Python / HTML"),
)
"""Every classification folder of the offline collection, one entry each (short texts first)."""

SETTINGS_KEYS = ("n", "max_length", "seeds", "backend", "model", "max_steps", "decay")
"""Settings a finished cell depends on; a rerun with other values needs another ``--out``."""

log = logging.getLogger("study")


# --- arguments -----------------------------------------------------------------------------------


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="offline data collection")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (resumable)")
    ap.add_argument(
        "--n", type=int, default=160, help="texts per dataset, stratified subsample (default 160)"
    )
    ap.add_argument("--layers", default="4,9,13", help="layers i of blocks.{i}.hook_resid_post")
    ap.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds per probe, each an independent split (default 3; at least 2 for intervals)",
    )
    ap.add_argument(
        "--datasets",
        default=",".join(DEFAULT_DATASETS),
        help="registry names, or 'all' (one per classification folder of --data-dir); default: "
        "the first six",
    )
    ap.add_argument("--probes", default=",".join(DEFAULT_PROBES), help="probe specs")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text, BOS included")
    ap.add_argument(
        "--backend", default="transformer_lens", choices=["transformer_lens", "nnsight", "hf"]
    )
    ap.add_argument("--model", default="gemma-3-270m", help="bundled model name or local dir")
    ap.add_argument("--batch-size", type=int, default=16, help="texts per forward in capture")
    ap.add_argument(
        "--max-steps", type=int, default=None, help="most AdamW steps (default: protocol's)"
    )
    ap.add_argument(
        "--decay",
        default=None,
        choices=["decoupled", "l2"],
        help="how AdamW applies weight decay (default: TrainConfig's)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared CPU, more threads spin-wait on each other; "
        "0 keeps torch's own default)",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="rebuild the tables and plot from cell files"
    )
    args = ap.parse_args(argv)
    args.layers = [int(x) for x in _csv_list(args.layers)]
    args.datasets = _csv_list(args.datasets)
    args.probes = _csv_list(args.probes)
    if args.datasets == ["all"]:
        args.datasets = [t.name for t in TASKS]
    if args.decay is None:
        from lensprobe.train import TrainConfig

        args.decay = TrainConfig().decay
    if args.n < 1 or args.seeds < 1 or args.max_length < 2:
        ap.error("--n and --seeds must be positive and --max-length at least 2")
    return args


def task_for(name: str) -> Task:
    """The :data:`TASKS` entry of a registry name, or a plain stratified entry for another one."""
    for task in TASKS:
        if task.name == name:
            return task
    return Task(name, name.split("/")[0])


def hook_of(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


# --- files ---------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_ready(obj: Any) -> Any:
    """``obj`` with every NaN float as None (strict JSON; an unavailable metric is null)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_json_ready(obj), indent=1, allow_nan=False) + "\n")


def cell_path(out: Path, task: Task, layer: int, probe: str) -> Path:
    return out / "cells" / task.slug / hook_of(layer) / f"{probe}.json"


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record the settings cells depend on; refuse to mix cells of different settings."""
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), settings[k]) for k in SETTINGS_KEYS if old.get(k) != settings[k]}
        if diff:
            changes = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
            raise SystemExit(
                f"{out} holds cells of other settings ({changes}); pass another --out, or delete "
                f"{out}/cells and {path} to start over"
            )
        return
    write_json(path, settings)


# --- data and capture ------------------------------------------------------------------------------


def load_task(task: Task, data_dir: str, n: int) -> tuple[Any, str, int]:
    """The subsample, how it was drawn (``stratified`` or ``balanced``), the full size.

    A stratified draw that would leave a class with fewer than :data:`MIN_PER_CLASS` rows is
    replaced by a balanced one of ``max(n, MIN_PER_CLASS * classes)`` rows.
    """
    from lensprobe.data import load_dataset

    full = load_dataset(task.name, data_dir=data_dir)
    if task.balance:
        return full.subsample(n, seed=0, balance=True), "balanced", len(full)
    ds = full.subsample(n, seed=0)
    if min(ds.class_counts().values()) < MIN_PER_CLASS:
        n_balanced = max(n, MIN_PER_CLASS * full.n_classes)
        return full.subsample(n_balanced, seed=0, balance=True), "balanced", len(full)
    return ds, "stratified", len(full)


class ModelHolder:
    """Loads the model the first time a capture needs it (a finished study never loads it)."""

    def __init__(self, name: str, backend: str) -> None:
        self.name, self.backend, self._model = name, backend, None

    def get(self) -> Any:
        if self._model is None:
            from lensprobe.models import load_model

            t = time.perf_counter()
            self._model = load_model(self.name, backend=self.backend)  # type: ignore[arg-type]
            log.info("loaded %s (%s) in %.1f s", self.name, self.backend, time.perf_counter() - t)
        return self._model


def activations_for(
    task: Task, args: argparse.Namespace, out: Path, model: ModelHolder
) -> dict[str, Any]:
    """Hook -> Activations of a dataset, from its store (captured first if needed)."""
    from lensprobe.capturing import capture
    from lensprobe.storage import load as load_store

    store = out / "acts" / task.slug
    hooks = [hook_of(layer) for layer in args.layers]
    info_path = out / "cells" / task.slug / "capture.json"
    manifest = store / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text(encoding="utf-8")).get("complete"):
        acts = load_store(store)
        missing = [h for h in hooks if h not in acts]
        if missing:
            raise SystemExit(
                f"the store {store} lacks {missing} (captured at {list(acts)}); delete it to "
                "capture these layers too"
            )
        return dict(acts)
    ds, draw, n_rows = load_task(task, args.data_dir, args.n)
    t = time.perf_counter()
    result = capture(
        model.get(),
        list(ds.texts),
        hooks,
        labels=ds.label_tensor(),
        class_names=ds.class_names,
        max_length=args.max_length,
        batch_size=args.batch_size,
        out=store,
        progress=False,
    )
    seconds = time.perf_counter() - t
    first = result[hooks[0]]
    write_json(
        info_path,
        {
            "dataset": task.name,
            "folder": task.folder,
            "source": ds.source,
            "n": len(ds),
            "n_rows": n_rows,
            "draw": draw,
            "class_counts": ds.class_counts(),
            "n_tokens": first.n_tokens,
            "n_truncated": first.meta.n_truncated,
            "capture_seconds": round(seconds, 1),
            "hooks": hooks,
        },
    )
    log.info("%s: captured %d texts in %.1f s", task.name, len(ds), seconds)
    return dict(result)


# --- cells -----------------------------------------------------------------------------------------


def entropy_summary(result: Any, acts: Any) -> dict[str, Any]:
    """Per-head attention entropy of every seed's refit probe on the test rows."""
    from lensprobe.analysis import attention_entropy

    per_seed = []
    for run in result.runs:  # each seed: its own split, its own test rows
        seed = run.seed
        ent = attention_entropy(run.probe, acts, rows=run.test_rows)
        heads = [
            {k: _finite(row[k]) for k in ("head", "mean_entropy", "mean_uniform", "mean_ratio")}
            for row in ent.per_head()
        ]
        summary = ent.summary()
        per_seed.append(
            {"seed": seed, "mean_ratio": _finite(summary["mean_ratio"]), "per_head": heads}
        )
    ratios = [s["mean_ratio"] for s in per_seed if s["mean_ratio"] is not None]
    return {"mean_ratio": sum(ratios) / len(ratios) if ratios else None, "per_seed": per_seed}


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 5)
    return v


def run_cell(task: Task, layer: int, spec: Any, acts: Any, base: Any) -> dict[str, Any]:
    """One (dataset, layer, probe) cell: the protocol, its record, entropy for attention probes."""
    from lensprobe.grid import Cell
    from lensprobe.train import run_protocol

    result = run_protocol(acts, config=spec.protocol(base))
    row = Cell(dataset=task.name, hook=hook_of(layer), probe=spec.label, result=result)
    cell: dict[str, Any] = {"record": row.record(), "layer": layer}
    if spec.kind == "attention":
        cell["entropy"] = entropy_summary(result, acts)
        cell["record"]["entropy_ratio"] = _finite(cell["entropy"]["mean_ratio"])
    summary = result.to_dict()
    cell["metrics_per_seed"] = summary["metrics_per_seed"]
    cell["cv_summary"] = summary["cv_summary"]
    steps = [int(r["steps"]) for r in result.cv_table if "steps" in r]
    if steps:
        cell["record"]["mean_steps"] = round(sum(steps) / len(steps), 1)
    cell["config"] = summary["config"]
    cell["input_scale"] = summary["input_scale"]
    cell["classes"] = summary["classes"]
    cell["runs"] = [run_payload(run) for run in result.runs]
    return cell


def run_payload(run: Any) -> dict[str, Any]:
    """What a paired comparison needs of one seed: its split, test labels and test logits."""
    d = run.to_dict()
    d.update(
        train_rows=run.train_rows.tolist(),
        test_rows=run.test_rows.tolist(),
        test_labels=run.test_labels.tolist(),
        test_logits=[[round(float(v), 6) for v in row] for row in run.test_logits.tolist()],
    )
    return d


def run_study(args: argparse.Namespace, out: Path, settings: dict[str, Any]) -> None:
    import torch

    from lensprobe.probes.spec import parse_probes
    from lensprobe.train import ProtocolConfig, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = parse_probes(args.probes)
    train = TrainConfig(decay=args.decay)
    if args.max_steps is not None:
        train = replace(train, max_steps=args.max_steps)
    base = ProtocolConfig(seeds=tuple(range(args.seeds)), train=train)
    model = ModelHolder(args.model, args.backend)
    tasks = [task_for(name) for name in args.datasets]
    total = len(tasks) * len(args.layers) * len(specs)
    done = 0
    for task in tasks:
        todo = [
            (layer, spec)
            for layer in args.layers
            for spec in specs
            if not cell_path(out, task, layer, spec.label).exists()
        ]
        done += len(args.layers) * len(specs) - len(todo)
        if not todo:
            continue
        acts = activations_for(task, args, out, model)
        for layer, spec in todo:
            t = time.perf_counter()
            cell = run_cell(task, layer, spec, acts[hook_of(layer)], base)
            write_json(cell_path(out, task, layer, spec.label), cell)
            done += 1
            rec = cell["record"]
            log.info(
                "[%d/%d] %s layer %d %s: accuracy %.3f (%.1f s)",
                done,
                total,
                task.name,
                layer,
                spec.label,
                rec["accuracy"],
                time.perf_counter() - t,
            )
        del acts
        write_outputs(out, settings)  # partial tables while the study runs


# --- tables and plot -------------------------------------------------------------------------------


def read_cells(
    out: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], dict[tuple, Any]]:
    """Records, entropy rows, capture infos and the cells by (dataset, hook, probe), under ``out``."""
    records, entropy, captures, cells_by_key = [], [], {}, {}
    cells = out / "cells"
    for info in sorted(cells.glob("*/capture.json")):
        data = json.loads(info.read_text(encoding="utf-8"))
        captures[data["dataset"]] = data
    for path in sorted(cells.glob("*/*/*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        rec = dict(cell["record"])
        rec = {"dataset": rec.pop("dataset"), "layer": cell["layer"], **rec}
        records.append(rec)
        cells_by_key[(rec["dataset"], rec["hook"], rec["probe"])] = cell
        for seed in (cell.get("entropy") or {}).get("per_seed", []):
            for head in seed["per_head"]:
                entropy.append(
                    {
                        "dataset": rec["dataset"],
                        "layer": cell["layer"],
                        "probe": rec["probe"],
                        "seed": seed["seed"],
                        **head,
                    }
                )
    return records, entropy, captures, cells_by_key


def result_of(cell: dict[str, Any]) -> Any:
    """A cell's protocol result, rebuilt from its file for :func:`lensprobe.compare`.

    It holds what a paired comparison reads (each seed's split, test labels, test logits and
    metrics); the probes and the out-of-fold logits are not stored.
    """
    import torch

    from lensprobe.train.config import ProtocolConfig
    from lensprobe.train.result import ProtocolResult, SeedRun

    if "runs" not in cell:
        raise SystemExit(
            "a cell file has no per-seed runs (written by an older study.py); rerun it"
        )
    runs = [
        SeedRun(
            seed=r["seed"],
            split_seed=r["split_seed"],
            train_rows=torch.tensor(r["train_rows"]),
            test_rows=torch.tensor(r["test_rows"]),
            weight_decay=r["weight_decay"],
            metrics={k: math.nan if v is None else v for k, v in r["metrics"].items()},
            cv_summary=r["cv_summary"],
            test_logits=torch.tensor(r["test_logits"], dtype=torch.float64),
            test_labels=torch.tensor(r["test_labels"]),
            cv_logits=torch.empty(0, 1),
            thresholds=r["thresholds"],
            input_scale=r["input_scale"],
            probe=None,  # type: ignore[arg-type]
        )
        for r in cell["runs"]
    ]
    metrics = {k: sum(r.metrics[k] for r in runs) / len(runs) for k in runs[0].metrics}
    return ProtocolResult(
        config=ProtocolConfig.from_dict(cell["config"]),
        runs=runs,
        classes=tuple(cell.get("classes", ())),
        metrics=metrics,
        summary={},
        cv_table=[],
        cv_summary=cell["cv_summary"],
        seconds=float(cell["record"].get("seconds", 0.0)),
    )


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV; list values (a record's per-split ``splits``) are left to the cell files."""
    rows = [{k: v for k, v in r.items() if not isinstance(v, list | dict)} for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _order(records: list[dict[str, Any]], key: str, preferred: Sequence[Any]) -> list[Any]:
    seen = list(dict.fromkeys(r[key] for r in records))
    return [p for p in preferred if p in seen] + sorted(p for p in seen if p not in preferred)


@dataclass
class Study:
    """Everything the tables read: the records, the CV layer choices and the paired comparisons."""

    records: list[dict[str, Any]]
    datasets: list[str]
    layers: list[int]
    probes: list[str]
    choices: dict[tuple[str, str], Any]
    """(dataset, probe) -> :class:`lensprobe.train.selection.LayerChoice` (every layer present)."""
    comparisons: list[tuple[str, Any]]
    """(dataset, comparison), each probe at each split's own CV pick: corrected resampled t over
    the splits, Holm-adjusted over the whole family (every pair of :data:`PAIRS` on every
    dataset)."""


def analyse(records: list[dict[str, Any]], cells: dict[tuple, Any]) -> Study:
    """Let each split choose each probe's layer by CV; compare :data:`PAIRS` on the same splits."""
    import lensprobe as lp
    from lensprobe.train.compare import compare_runs, holm

    datasets = _order(records, "dataset", [t.name for t in TASKS])
    layers = sorted({r["layer"] for r in records})
    probes = _order(records, "probe", PROBES)
    have = {(r["dataset"], r["layer"], r["probe"]) for r in records}
    choices = {}
    for d in datasets:
        for p in probes:
            if all((d, la, p) in have for la in layers):  # a choice among every layer only
                choices[(d, p)] = lp.choose_layer(records, dataset=d, probe=p, by="cv_accuracy")
    raw = []
    for a, b in PAIRS:
        for d in datasets:
            if (d, a) not in choices or (d, b) not in choices:
                continue
            ca, cb = choices[(d, a)], choices[(d, b)]
            runs_a = [result_of(cells[(d, h, a)]).runs[j] for j, h in enumerate(ca.picks)]
            runs_b = [result_of(cells[(d, h, b)]).runs[j] for j, h in enumerate(cb.picks)]
            raw.append((d, compare_runs(runs_a, runs_b, "accuracy", names=(a, b))))
    adjusted = holm([c for _, c in raw])
    comparisons = [(d, c) for (d, _), c in zip(raw, adjusted, strict=True)]
    return Study(records, datasets, layers, probes, choices, comparisons)


PAIRS: tuple[tuple[str, str], ...] = (
    ("attention-8", "mean"),
    ("attention-8", "last"),
    ("attention-1", "mean"),
    ("attention-8", "attention-1"),
    ("mean", "mean-adamw"),
    ("last", "last-adamw"),
)
"""The comparisons reported (first minus second), where both probes were run."""


def _layer_of(hook: str) -> str:
    return hook.removeprefix("blocks.").split(".")[0]


def _picks(choice: Any) -> str:
    """``L9`` when every split picked layer 9, else each split's layer: ``L4/9/9``."""
    layers = [_layer_of(h) for h in choice.picks]
    return f"L{layers[0]}" if len(set(layers)) == 1 else "L" + "/".join(layers)


def _with_interval(choice: Any) -> str:
    """``0.781 [0.70, 0.86]`` (corrected t over splits) or ``0.781 (no spread)``."""
    est = choice.estimates["accuracy"]
    if not est.has_interval:
        return f"{_fmt(est.mean)} (no spread)"
    return f"{_fmt(est.mean)} [{est.low:.2f}, {est.high:.2f}]"


def markdown(
    study: Study,
    captures: dict[str, Any],
    settings: dict[str, Any],
    entropy: dict[tuple[str, int, str], Any],
) -> str:
    """The results page: settings, CV-chosen-layer accuracy, paired comparisons, sizes, cost."""
    s = study
    seeds = settings.get("seeds")
    n_tests = sorted({int(r["n_test"]) for r in s.records})
    commands = settings.get("commands") or [settings.get("command", "")]
    lines = [
        "# The attention-probes study on Gemma 3 270M",
        "",
        "Commands (in order; each resumes the same folder):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Model {settings.get('model')} ({settings.get('backend')}), residual stream after "
        f"layers {', '.join(map(str, s.layers))} (`blocks.{{i}}.hook_resid_post`), texts cut at "
        f"{settings.get('max_length')} tokens, {settings.get('n')} texts per dataset (see sizes). "
        f"Protocol: {seeds} seeds, each an independent stratified 80/20 split (its own folds and "
        "its own weight-decay choice); weight decay in {0, 1e-3, 1e-2, 1e-1} by 5-fold CV on the "
        "training part, refit, test once. `mean` / `last`: L-BFGS; `-adamw` and attention "
        f"probes: AdamW with weight decay as `{settings.get('decay')}` "
        "(`TrainConfig.decay`). Test rows per split: "
        f"n_test = {', '.join(map(str, n_tests))}.",
        "",
        "## Test accuracy at the layer chosen by cross-validation",
        "",
        "Each split picks each probe's layer by its own CV accuracy on its own training part "
        "(`lp.choose_layer`; never a test row of any split); the test accuracy shown is the mean "
        f"over the {seeds} splits of each split's test accuracy at its own pick [95% corrected "
        "resampled t interval over the splits (Nadeau & Bengio: variance x (1/J + n_test/n_train)), "
        "clipped to [0, 1]], then the layer picked (`L9`: every split picked layer 9; `L4/9/9`: "
        "each split's pick). `no spread`: every split scored the same, no interval. `–`: not run.",
        "",
    ]
    rows = []
    for d in s.datasets:
        info = captures.get(d, {})
        k = len(info.get("class_counts", {})) or "?"
        n_test = {int(r["n_test"]) for r in s.records if r["dataset"] == d}
        cells = []
        for p in s.probes:
            ch = s.choices.get((d, p))
            cells.append("–" if ch is None else f"{_with_interval(ch)} ({_picks(ch)})")
        rows.append([d, str(info.get("n", "?")), str(k), "/".join(map(str, n_test)), *cells])
    lines += _table(["dataset", "n", "classes", "n_test", *s.probes], rows)
    complete = [d for d in s.datasets if all((d, p) in s.choices for p in s.probes)]
    if complete:
        means = [_mean([s.choices[(d, p)].test["accuracy"] for d in complete]) for p in s.probes]
        lines += [
            "",
            f"Mean of the above over the {len(complete)} datasets with every probe "
            f"({', '.join(complete)}): "
            + ", ".join(f"{p} {_fmt(m)}" for p, m in zip(s.probes, means, strict=True))
            + ". Plain means of per-dataset point estimates, with no interval; only the paired "
            "comparisons below decide anything.",
        ]
    if s.comparisons:
        family = s.comparisons[0][1].family
        lines += [
            "",
            "## Paired comparisons (each probe at each split's own CV pick)",
            "",
            f"Difference in test accuracy, first minus second, on the same {seeds} splits: mean "
            "[95% corrected resampled t interval over the splits], its two-sided p-value and "
            "verdict (`undecided` when the interval contains 0 or the splits show no spread), "
            f"and the verdict after Holm's adjustment over all {family} comparisons of this "
            f"page (family-wise error 5%). With {seeds} splits the t interval has {seeds - 1} "
            "degree(s) of freedom: only large, consistent differences are decided.",
            "",
        ]
        rows = []
        for d, c in s.comparisons:
            interval = (
                "no spread"
                if math.isnan(c.low)
                else f"{c.difference + 0.0:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
            )
            p_value = "–" if math.isnan(c.p_value) else f"{c.p_value:.3f}"
            rows.append(
                [
                    f"{c.a} vs {c.b}",
                    d,
                    interval,
                    p_value,
                    c.verdict_text(),
                    c.verdict_text(c.holm_verdict),
                    str(c.n_test),
                ]
            )
        lines += _table(
            [
                "comparison",
                "dataset",
                "difference [95% corrected t]",
                "p",
                "verdict",
                f"Holm ({family})",
                "n_test per split",
            ],
            rows,
        )
        lines += ["", "Verdicts per comparison, over the datasets (raw / Holm):", ""]
        rows = []
        for a, b in PAIRS:
            cs = [c for _, c in s.comparisons if (c.a, c.b) == (a, b)]
            if not cs:
                continue

            def count(verdict: str, cs: list[Any] = cs) -> str:
                raw = sum(c.verdict == verdict for c in cs)
                return f"{raw} / {sum(c.holm_verdict == verdict for c in cs)}"

            rows.append(
                [
                    f"{a} vs {b}",
                    str(len(cs)),
                    count("a better"),
                    count("b better"),
                    count("undecided"),
                    f"{_mean([c.difference for c in cs]):+.3f}",
                ]
            )
        lines += _table(
            [
                "comparison",
                "datasets",
                "first better",
                "second better",
                "undecided",
                "mean diff",
            ],
            rows,
        )
    lines += [
        "",
        "## Every layer (for reference; the layer used above is chosen by CV)",
        "",
        "Test accuracy, mean over splits and over the datasets with every cell; CV accuracy "
        "(training parts) in brackets.",
        "",
    ]
    full = [
        d
        for d in s.datasets
        if all(any(r["dataset"] == d and r["probe"] == p for r in s.records) for p in s.probes)
    ]
    by = {(r["dataset"], r["layer"], r["probe"]): r for r in s.records}
    rows = []
    for la in s.layers:
        row = [f"layer {la}"]
        for p in s.probes:
            test = _mean([by[(d, la, p)]["accuracy"] for d in full if (d, la, p) in by])
            cv = _mean([by[(d, la, p)].get("cv_accuracy") for d in full if (d, la, p) in by])
            row.append(f"{_fmt(test)} ({_fmt(cv)})")
        rows.append(row)
    lines += _table(["", *s.probes], rows)
    attn = [p for p in s.probes if p.startswith("attention")]
    if attn and entropy:
        lines += [
            "",
            "## Attention entropy / uniform entropy (test rows, mean over heads, seeds, datasets)",
            "",
            "1.0: as spread as a uniform average over the valid tokens (a mean probe); 0.0: one "
            "token (a last-token probe).",
            "",
        ]
        rows = [
            [f"layer {la}"]
            + [
                _fmt(
                    _mean([entropy.get((d, la, p)) for d in s.datasets if (d, la, p) in by]), ".2f"
                )
                for p in attn
            ]
            for la in s.layers
        ]
        lines += _table(["", *attn], rows)
    lines += ["", "## Sizes", ""]
    rows = []
    for d in s.datasets:
        info = captures.get(d, {})
        task = task_for(d)
        counts = info.get("class_counts", {})
        rows.append(
            [
                d,
                task.folder,
                f"{info.get('n', '?')} of {info.get('n_rows', '?')} ({info.get('draw', '?')})",
                ", ".join(f"{c} {v}" for c, v in counts.items())
                if len(counts) <= 4
                else _range_text(len(counts), min(counts.values()), max(counts.values())),
                str(info.get("n_tokens", "?")),
                str(info.get("n_truncated", "?")),
                task.note,
            ]
        )
    lines += _table(["dataset", "folder", "n", "classes", "tokens", "truncated", "note"], rows)
    lines += ["", "## Cost", ""]
    rows = []
    for p in s.probes:
        secs = [float(r.get("seconds", 0.0)) for r in s.records if r["probe"] == p]
        rows.append([p, str(len(secs)), f"{sum(secs) / 60:.1f}"])
    lines += _table(["probe", "cells", "training min (summed)"], rows)
    seconds = sum(float(r.get("seconds", 0.0)) for r in s.records)
    capture_s = sum(c.get("capture_seconds", 0.0) for c in captures.values())
    lines += [
        "",
        f"{len(s.records)} cells ({seeds} splits each): training {seconds / 60:.1f} min summed "
        f"over cells, capture {capture_s / 60:.1f} min, on a 2-core CPU shared with other jobs "
        "(its load is not recorded here), one torch thread per process.",
        "",
    ]
    return "\n".join(lines)


def _range_text(k: int, lo: int, hi: int) -> str:
    return f"{k} classes, {lo} each" if lo == hi else f"{k} classes, {lo}-{hi} each"


def plot(study: Study, captures: dict[str, Any], path: Path) -> None:
    """Per dataset: each probe's test accuracy at its CV-chosen layer, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = study
    fig, ax = plt.subplots(figsize=(12, 5), layout="constrained")
    width = 0.8 / max(len(s.probes), 1)
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(s.probes):
        xs, ys, err = [], [], [[], []]
        for j, d in enumerate(s.datasets):
            ch = s.choices.get((d, p))
            if ch is None:
                continue
            est = ch.estimates["accuracy"]
            acc = est.mean
            low, high = (est.low, est.high) if est.has_interval else (acc, acc)
            xs.append(j + (i - (len(s.probes) - 1) / 2) * width)
            ys.append(acc)
            err[0].append(acc - max(low, 0.0))
            err[1].append(min(high, 1.0) - acc)
        hatch = "//" if p.endswith("-adamw") else None
        ax.bar(xs, ys, width, color=cmap(i % 10), label=p, hatch=hatch, lw=0)
        ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor="k", lw=0.8, capsize=2)
    for j, d in enumerate(s.datasets):  # majority-class share: what a constant guess scores
        counts = list(captures.get(d, {}).get("class_counts", {}).values())
        if counts:
            label = "majority class" if j == 0 else None
            share = max(counts) / sum(counts)
            ax.plot([j - 0.45, j + 0.45], [share, share], "k:", lw=1.2, label=label)
    ax.set_xticks(range(len(s.datasets)), s.datasets, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (layer chosen by CV)", ylim=(0, 1.12))
    ax.legend(fontsize=8, ncol=len(s.probes) + 1, loc="upper center")
    ax.set_title(
        "Gemma 3 270M: test accuracy at each split's CV-chosen layer, 95% corrected t over splits"
    )
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(out: Path, settings: dict[str, Any]) -> None:
    records, entropy, captures, cells = read_cells(out)
    if not records:
        log.warning("no finished cells under %s", out)
        return
    order = {name: i for i, name in enumerate(t.name for t in TASKS)}
    probe_order = {p: i for i, p in enumerate(PROBES)}
    records.sort(
        key=lambda r: (
            order.get(r["dataset"], 99),
            r["dataset"],
            r["layer"],
            probe_order.get(r["probe"], 99),
        )
    )
    study = analyse(records, cells)
    write_csv(out / "results.csv", records)
    if entropy:
        write_csv(out / "entropy.csv", entropy)
    comparisons = [
        {
            "dataset": d,
            "a": c.a,
            "b": c.b,
            "metric": c.metric,
            "difference": round(c.difference, 5),
            "low": round(c.low, 5),
            "high": round(c.high, 5),
            "n_seeds": c.n_seeds,
            "n_test": c.n_test,
            "p_value": None if math.isnan(c.p_value) else round(c.p_value, 5),
            "verdict": c.verdict,
            "holm_verdict": c.holm_verdict,
            "family": c.family,
            "picks_a": "/".join(_layer_of(h) for h in study.choices[(d, c.a)].picks),
            "picks_b": "/".join(_layer_of(h) for h in study.choices[(d, c.b)].picks),
        }
        for d, c in study.comparisons
    ]
    if comparisons:
        write_csv(out / "comparisons.csv", comparisons)
    ratios = {
        (r["dataset"], r["layer"], r["probe"]): r.get("entropy_ratio")
        for r in records
        if r.get("entropy_ratio") is not None
    }
    write_atomic(out / "results.md", markdown(study, captures, settings, ratios))
    plot(study, captures, out / "study.png")
    log.info("wrote %s/results.{csv,md}, comparisons.csv, entropy.csv and study.png", out)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/study.py", *raw])
    settings = {
        "n": args.n,
        "max_length": args.max_length,
        "seeds": args.seeds,
        "backend": args.backend,
        "model": args.model,
        "max_steps": args.max_steps,
        "decay": args.decay,
        "command": command,
    }
    path = out / "settings.json"
    if args.report_only:
        if path.exists():
            settings = json.loads(path.read_text(encoding="utf-8"))
    else:
        check_settings(out, settings)
        settings = json.loads(path.read_text(encoding="utf-8"))
        commands = settings.setdefault("commands", [settings["command"]])
        if command not in commands:  # every command that wrote cells here, in order
            commands.append(command)
            write_json(path, settings)
        t = time.perf_counter()
        run_study(args, out, settings)
        log.info("study finished in %.1f min", (time.perf_counter() - t) / 60)
    write_outputs(out, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
