"""The attention-probes study's comparison, rerun on Gemma 3 270M over the offline datasets.

For every classification dataset of ``../shared/data`` (one per folder, stratified subsample of
``--n`` texts), the residual stream of the bundled Gemma 3 270M is captured once at three layers,
and seven probes go through the study's protocol (80/20 split, weight decay by 5-fold CV, refit,
test) with several seeds: attention probes with 1, 2 and 8 heads (AdamW), mean and last-token
probes with L-BFGS (the study's choice) and with AdamW.

    python benchmarks/study.py                           # the default run (about 40 min, 2 CPUs)
    python benchmarks/study.py --datasets sst2,ag_news --layers 9 --seeds 1 --n 200

Resumable: each dataset is captured once into ``OUT/acts/<dataset>`` (a store that resumes by
itself), each (dataset, layer, probe) cell is written to ``OUT/cells/<dataset>/<hook>/<probe>.json``
as soon as it is done, and a rerun skips the cells whose file exists. Every run rebuilds, from all
cell files, ``OUT/results.csv``, ``OUT/results.md``, ``OUT/entropy.csv`` and ``OUT/study.png``.
Only ``OUT/acts`` is large; it is not meant for version control.
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
from dataclasses import dataclass
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
"""The probes of the comparison (specs of ``lensprobe.experiment.ProbeSpec``)."""

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

SETTINGS_KEYS = ("n", "max_length", "seeds", "backend", "model", "max_steps")
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
    ap.add_argument("--seeds", type=int, default=2, help="seeds per probe (default 2)")
    ap.add_argument(
        "--datasets",
        default=",".join(t.name for t in TASKS),
        help="registry names (default: one per classification folder of --data-dir)",
    )
    ap.add_argument("--probes", default=",".join(PROBES), help="probe specs")
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


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


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
    from lensprobe.store import load_store

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
    from lensprobe.experiment import GridRow
    from lensprobe.train import run_protocol

    result = run_protocol(acts, config=spec.protocol(base))
    row = GridRow(dataset=task.name, hook=hook_of(layer), probe=spec.label, result=result)
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
    return cell


def run_study(args: argparse.Namespace, out: Path, settings: dict[str, Any]) -> None:
    import torch

    from lensprobe.experiment import parse_probes
    from lensprobe.train import ProtocolConfig, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = parse_probes(args.probes)
    train = TrainConfig() if args.max_steps is None else TrainConfig(max_steps=args.max_steps)
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


def read_cells(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Result records, entropy rows and capture infos of every cell file under ``out``."""
    records, entropy, captures = [], [], {}
    cells = out / "cells"
    for info in sorted(cells.glob("*/capture.json")):
        data = json.loads(info.read_text(encoding="utf-8"))
        captures[data["dataset"]] = data
    for path in sorted(cells.glob("*/*/*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        rec = dict(cell["record"])
        rec = {"dataset": rec.pop("dataset"), "layer": cell["layer"], **rec}
        records.append(rec)
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
    return records, entropy, captures


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
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


def _grid(records: list[dict[str, Any]]) -> tuple[dict, dict, list, list, list, list]:
    """Accuracy and entropy ratio by (dataset, layer, probe); datasets, layers and probes in
    display order; the datasets with every cell."""
    acc = {(r["dataset"], r["layer"], r["probe"]): r["accuracy"] for r in records}
    ent = {(r["dataset"], r["layer"], r["probe"]): r.get("entropy_ratio") for r in records}
    datasets = _order(records, "dataset", [t.name for t in TASKS])
    layers = sorted({r["layer"] for r in records})
    probes = _order(records, "probe", PROBES)
    complete = [d for d in datasets if all((d, la, p) in acc for la in layers for p in probes)]
    return acc, ent, datasets, layers, probes, complete


def markdown(
    records: list[dict[str, Any]],
    captures: dict[str, Any],
    settings: dict[str, Any],
) -> str:
    """The results page: sizes, per-dataset best-layer accuracy, summaries, head-to-heads."""
    acc, ent, datasets, layers, probes, complete = _grid(records)
    lines = [
        "# The attention-probes study on Gemma 3 270M",
        "",
        f"Command: `{settings.get('command', '')}`",
        "",
        f"Model {settings.get('model')} ({settings.get('backend')}), residual stream after "
        f"layers {', '.join(map(str, layers))} (`blocks.{{i}}.hook_resid_post`), texts cut at "
        f"{settings.get('max_length')} tokens, {settings.get('n')} texts per dataset "
        f"(stratified subsample; see sizes), protocol: 80/20 stratified split, weight decay in "
        f"{{0, 1e-3, 1e-2, 1e-1}} by 5-fold CV, refit, test; metrics averaged over "
        f"{settings.get('seeds')} seeds. `mean` / `last`: L-BFGS; `-adamw`: the same probe "
        "trained with AdamW; attention probes: AdamW.",
        "",
        "## Test accuracy per dataset (best of the layers for each probe)",
        "",
        "Each probe's best layer is picked on the test accuracy, which flatters every probe "
        "alike; `results.csv` has every layer.",
        "",
    ]
    rows = []
    for d in datasets:
        info = captures.get(d, {})
        k = len(info.get("class_counts", {})) or "?"
        best = [
            max((acc[(d, la, p)] for la in layers if (d, la, p) in acc), default=None)
            for p in probes
        ]
        top = max((b for b in best if b is not None), default=None)
        cells = ["–" if b is None else (f"**{b:.3f}**" if b == top else f"{b:.3f}") for b in best]
        rows.append([d, str(info.get("n", "?")), str(k), *cells])
    lines += _table(["dataset", "n", "classes", *probes], rows)
    lines += [
        "",
        f"## Mean test accuracy over the {len(complete)} datasets with every cell",
        "",
    ]
    rows = []
    for la in layers:
        rows.append(
            [f"layer {la}"] + [_fmt(_mean([acc[(d, la, p)] for d in complete])) for p in probes]
        )
    rows.append(
        ["best layer"]
        + [_fmt(_mean([max(acc[(d, la, p)] for la in layers) for d in complete])) for p in probes]
    )
    lines += _table(["", *probes], rows)
    attn = [p for p in probes if p.startswith("attention")]
    if attn:
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
            + [_fmt(_mean([ent[(d, la, p)] for d in complete]), ".2f") for p in attn]
            for la in layers
        ]
        lines += _table(["", *attn], rows)
    pairs = [
        ("attention-8", "mean"),
        ("attention-8", "last"),
        ("attention-8", "attention-1"),
        ("attention-2", "attention-1"),
        ("mean", "mean-adamw"),
        ("last", "last-adamw"),
    ]
    pairs = [(a, b) for a, b in pairs if a in probes and b in probes]
    if pairs:
        lines += [
            "",
            "## Head to head, over every (dataset, layer) cell",
            "",
            "Wins / ties / losses of the first probe (a tie: within 0.005), and the mean "
            "difference in test accuracy.",
            "",
        ]
        rows = []
        for a, b in pairs:
            diffs = [acc[(d, la, a)] - acc[(d, la, b)] for d in complete for la in layers]
            w = sum(x > 0.005 for x in diffs)
            lo = sum(x < -0.005 for x in diffs)
            mean_diff = _mean(diffs)
            rows.append(
                [
                    f"{a} vs {b}",
                    f"{w} / {len(diffs) - w - lo} / {lo}",
                    "–" if mean_diff is None else f"{mean_diff:+.3f}",
                ]
            )
        lines += _table(["comparison", "W / T / L", "mean diff"], rows)
    lines += ["", "## Sizes", ""]
    rows = []
    for d in datasets:
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
    seconds = sum(r.get("seconds", 0.0) for r in records)
    capture_s = sum(c.get("capture_seconds", 0.0) for c in captures.values())
    lines += [
        "",
        f"Training time summed over cells: {seconds / 60:.1f} min; capture: {capture_s / 60:.1f} "
        "min (a shared 2-core CPU).",
        "",
    ]
    return "\n".join(lines)


def _range_text(k: int, lo: int, hi: int) -> str:
    return f"{k} classes, {lo} each" if lo == hi else f"{k} classes, {lo}-{hi} each"


def plot(records: list[dict[str, Any]], captures: dict[str, Any], path: Path) -> None:
    """Mean accuracy per layer, entropy ratio per layer, and best-layer accuracy per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, ent, datasets, layers, probes, complete = _grid(records)
    base = [p for p in probes if not p.endswith("-adamw")]
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(base)}
    for i, p in enumerate(p for p in probes if p.endswith("-adamw")):  # same hue, hatched
        colors[p] = colors.get(
            p.removesuffix("-adamw"), plt.get_cmap("tab10")((len(base) + i) % 10)
        )
    styles = {p: "--" if p.endswith("-adamw") else "-" for p in probes}

    fig = plt.figure(figsize=(14, 9), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.1])
    ax = fig.add_subplot(grid[0, 0])
    for p in probes:
        ys = [_mean([acc[(d, la, p)] for d in complete]) for la in layers]
        ax.plot(layers, ys, styles[p], marker="o", color=colors[p], label=p)
    ax.set(
        xlabel="layer",
        ylabel="test accuracy",
        title=f"mean over {len(complete)} datasets",
        xticks=layers,
    )
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[0, 1])
    for p in [p for p in probes if p.startswith("attention")]:
        ys = [_mean([ent[(d, la, p)] for d in complete]) for la in layers]
        ax.plot(layers, ys, marker="o", color=colors[p], label=p)
    ax.set(
        xlabel="layer",
        ylabel="entropy / uniform entropy",
        title="attention entropy (test rows)",
        xticks=layers,
        ylim=(0, 1.05),
    )
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    width = 0.8 / max(len(probes), 1)
    for i, p in enumerate(probes):
        xs = [j + (i - (len(probes) - 1) / 2) * width for j in range(len(datasets))]
        ys = [
            max((acc[(d, la, p)] for la in layers if (d, la, p) in acc), default=math.nan)
            for d in datasets
        ]
        hatch = "//" if p.endswith("-adamw") else None
        alpha = 0.55 if p.endswith("-adamw") else 1.0
        ax.bar(xs, ys, width, color=colors[p], alpha=alpha, label=p, hatch=hatch, lw=0)
    for j, d in enumerate(datasets):  # majority-class share: what a constant guess scores
        counts = list(captures.get(d, {}).get("class_counts", {}).values())
        if counts:
            share = max(counts) / sum(counts)
            label = "majority class" if j == 0 else None
            ax.plot([j - 0.45, j + 0.45], [share, share], "k:", lw=1.2, label=label)
    ax.set_xticks(range(len(datasets)), datasets, rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (best layer)", ylim=(0, 1.12), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1])
    ax.legend(fontsize=8, ncol=len(probes) + 1, loc="upper center")
    fig.suptitle("Attention probes vs mean / last-token probes, Gemma 3 270M")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(out: Path, settings: dict[str, Any]) -> None:
    records, entropy, captures = read_cells(out)
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
    write_csv(out / "results.csv", records)
    if entropy:
        write_csv(out / "entropy.csv", entropy)
    write_atomic(out / "results.md", markdown(records, captures, settings))
    plot(records, captures, out / "study.png")
    log.info("wrote %s/results.{csv,md}, entropy.csv and study.png", out)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "n": args.n,
        "max_length": args.max_length,
        "seeds": args.seeds,
        "backend": args.backend,
        "model": args.model,
        "max_steps": args.max_steps,
        "command": shlex.join(["python", "benchmarks/study.py", *raw]),
    }
    if args.report_only:
        path = out / "settings.json"
        if path.exists():
            settings = json.loads(path.read_text(encoding="utf-8"))
    else:
        check_settings(out, settings)
        settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
        t = time.perf_counter()
        run_study(args, out, settings)
        log.info("study finished in %.1f min", (time.perf_counter() - t) / 60)
    write_outputs(out, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
