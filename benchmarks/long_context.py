"""Train short, test long: do probes trained on short texts find the same signal in long ones?

For each task, probes are trained on SHORT texts (``lensprobe.run_protocol`` on the residual
stream of the bundled Gemma 3 270M at ``blocks.9.hook_resid_post``, ``--seeds`` stratified splits
of the short set, each with its own 5-fold CV choice of weight decay and refit), and each seed's
refit probe then scores every text of a separate LONG set (about 1k-3k tokens each):

- ``needle``: the built-in needle task (``lensprobe.data.builtin.make_needle``; is the one
  special word in neutral filler an animal (1) or an instrument (0)?). Short: the default
  60-110 words (``seed=0``). Long: ``--needle-words`` words (``seed=1``), the word buried anywhere.
- ``amazon``: ``amazon_reviews_1and5`` of ``../shared/data``, relabelled so that a 1-star review
  is the flagged class (1) and a 5-star review 0. Short: single reviews (``--n-train``, balanced),
  cut at ``--train-max-length`` tokens. Long, from reviews the short set does not use (and of at
  most ``--review-max-tokens`` tokens, so nothing is cut): each negative joins ``--reviews``
  (a range) 5-star reviews with blank lines and inserts one more 5-star review at a random
  position; the first half of the negatives each get a positive twin, the same text with that
  inserted review replaced by a 1-star review (so a pair differs in one review, of the same
  slot). 5-star reviews are distinct within a text and may recur across texts; the 1-star
  reviews are distinct. Everything is drawn from ``--data-seed``.

Metrics on the long set, per seed, then mean over seeds with a 95% interval: AUROC; TPR at 1% FPR
with the threshold fixed on the long set itself (optimistic; needs >= 100 long negatives); and
the monitoring view: the threshold of 1% FPR fixed on the training part's out-of-fold logits
(``SeedRun.thresholds``), its false-negative rate on the long positives and the FPR it reaches
on the long negatives. The interval is ``lensprobe.metrics.estimate`` (corrected resampled t
over the seeds with the short split's n_train / n_test, 2 df at 3 seeds, so wide): it covers
the variability of training on different splits of the short set only; the long set is the
same for every seed and its own sampling noise is not in it.

    nice python benchmarks/long_context.py           # about 30 minutes on a shared 2-core CPU
    python benchmarks/long_context.py --tasks needle --probes mean,multimax-8 --n-long 120

Resumable: each capture is a store under ``--cache`` (default: a folder in the system temp dir,
keyed by a hash of its texts and settings), and each (task, probe) result is a JSON file there;
a rerun reuses them. ``--out`` gets only ``long_context.md`` and ``long_context.json``. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "long_context"
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lensprobe-long_context"
OVERHEAD = REPO / "benchmarks" / "results" / "monitor_overhead" / "monitor_overhead.json"
HOOK = "blocks.9.hook_resid_post"
PROBES = ("mean", "last", "attention-8", "multimax-8", "rolling-8", "ema")
TASKS = ("needle", "amazon")
FPR = 0.01
METRICS = ("auroc", "tpr_at_1pct_fpr", "fnr", "fpr")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _range(text: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in text.split("-"))
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= LO <= HI, got {text}")
    return lo, hi


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default=",".join(TASKS), help="needle, amazon")
    ap.add_argument("--probes", default=",".join(PROBES), help="probe specs")
    ap.add_argument("--n-train", type=int, default=320, help="short texts per task (balanced)")
    ap.add_argument(
        "--n-long", type=int, default=150, help="long texts per task (2/3 negatives, 1/3 positives)"
    )
    ap.add_argument("--seeds", type=int, default=3, help="splits of the short set (default 3)")
    ap.add_argument(
        "--max-steps", type=int, default=150, help="most AdamW steps per fit (default 150)"
    )
    ap.add_argument("--train-max-length", type=int, default=128, help="tokens per short text")
    ap.add_argument("--max-length", type=int, default=4096, help="tokens per long text (cap)")
    ap.add_argument("--needle-words", type=_range, default=(600, 2000), help="long needle words")
    ap.add_argument(
        "--reviews",
        type=_range,
        default=(5, 11),
        help="5-star reviews per long text, before the inserted one (default 5-11)",
    )
    ap.add_argument(
        "--review-max-tokens", type=int, default=250, help="longest review in a long text"
    )
    ap.add_argument("--data-seed", type=int, default=0, help="seed of every draw of texts")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="captures and per-probe results")
    ap.add_argument("--backend", default="hf", choices=["hf", "transformer_lens", "nnsight"])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--batch-size", type=int, default=16, help="short texts per forward")
    ap.add_argument(
        "--long-batch-size",
        type=int,
        default=1,
        help="long texts per forward (default 1: on "
        "a CPU, batches of long texts were slower per token)",
    )
    ap.add_argument("--score-batch", type=int, default=4, help="long texts per probe forward")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared CPU two threads spin-wait on each other; a "
        "long capture ran at 431 tokens/s with 1 and 192 with 2 beside other jobs; 0: torch's)",
    )
    args = ap.parse_args(argv)
    args.tasks, args.probes = _csv(args.tasks), _csv(args.probes)
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        ap.error(f"unknown tasks {bad}; choose from {TASKS}")
    if args.n_train < 20 or args.n_long < 4 or args.seeds < 1:
        ap.error("need --n-train >= 20, --n-long >= 4, --seeds >= 1")
    return args


# --- files ---------------------------------------------------------------------------------------


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.integer | np.floating):
        return _json_ready(obj.item())
    return obj


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(_json_ready(obj), indent=indent, allow_nan=False) + "\n")


def digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


# --- tasks ---------------------------------------------------------------------------------------


def monitor_overhead() -> float | None:
    """The largest per-token overhead of ``lp.monitor`` of any kind (None: not measured yet).

    As ``benchmarks/monitor_overhead.py`` last measured it, against plain ``generate``.
    """
    if not OVERHEAD.is_file():
        return None
    return float(json.loads(OVERHEAD.read_text())["monitor_overhead_max"])


@dataclass
class Task:
    """One task: short training texts and long test texts, with how they were made."""

    name: str
    train_texts: list[str]
    train_labels: list[int]
    long_texts: list[str]
    long_labels: list[int]
    description: str
    details: dict[str, Any] = field(default_factory=dict)


def long_split(n_long: int) -> tuple[int, int]:
    """(negatives, positives) of a long set: 2/3 negatives, so 150 texts give the 100 negatives
    a threshold at 1% FPR needs on the long set itself."""
    n_pos = n_long // 3
    return n_long - n_pos, n_pos


def needle_task(args: argparse.Namespace) -> Task:
    from lensprobe.data.builtin import make_needle

    short = make_needle(args.n_train, seed=args.data_seed)
    lo, hi = args.needle_words
    n_neg, n_pos = long_split(args.n_long)
    # make_needle balances its classes: draw enough of both, then keep n_neg / n_pos in order
    pool = make_needle(2 * max(n_neg, n_pos), seed=args.data_seed + 1, min_words=lo, max_words=hi)
    neg = [t for t, y in zip(pool.texts, pool.labels, strict=True) if y == 0][:n_neg]
    pos = [t for t, y in zip(pool.texts, pool.labels, strict=True) if y == 1][:n_pos]
    return Task(
        name="needle",
        train_texts=list(short.texts),
        train_labels=[int(y) for y in short.labels],
        long_texts=neg + pos,
        long_labels=[0] * len(neg) + [1] * len(pos),
        description=(
            f"built-in needle (animal = 1, instrument = 0). Short: make_needle({args.n_train}, "
            f"seed={args.data_seed}), 60-110 words. Long: make_needle(seed={args.data_seed + 1}, "
            f"min_words={lo}, max_words={hi}), the first {n_neg} instruments and {n_pos} animals."
        ),
    )


def amazon_task(args: argparse.Namespace, tokenizer: Any) -> Task:
    from lensprobe.data import load_dataset

    ds = load_dataset("amazon_reviews_1and5", data_dir=args.data_dir)
    ds = ds.with_class_order(["5 stars", "1 star"])  # flag 1-star reviews: 1 star = 1
    texts, labels = list(ds.texts), np.asarray(ds.labels)
    rng = np.random.default_rng(args.data_seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)]
    n0 = args.n_train // 2
    train_idx = np.concatenate([per_class[0][:n0], per_class[1][: args.n_train - n0]])
    train_idx = train_idx[rng.permutation(len(train_idx))]
    rest = [per_class[0][n0:], per_class[1][args.n_train - n0 :]]  # never in the short set
    n_tokens = {
        int(i): len(tokenizer(texts[i], add_special_tokens=False)["input_ids"])
        for i in np.concatenate(rest)
    }
    pool5 = [int(i) for i in rest[0] if n_tokens[int(i)] <= args.review_max_tokens]
    pool1 = [int(i) for i in rest[1] if n_tokens[int(i)] <= args.review_max_tokens]
    n_neg, n_pos = long_split(args.n_long)
    if n_pos > len(pool1):
        raise SystemExit(f"only {len(pool1)} unused 1-star reviews for {n_pos} positives")
    lo, hi = args.reviews
    ones = rng.permutation(pool1)[:n_pos].tolist()
    neg, pos, composition = [], [], []
    for i in range(n_neg):
        k = int(rng.integers(lo, hi + 1))
        chosen = rng.choice(pool5, size=k + 1, replace=False).tolist()
        base, extra = chosen[:k], chosen[k]
        slot = int(rng.integers(0, k + 1))
        neg.append("\n\n".join(texts[j] for j in [*base[:slot], extra, *base[slot:]]))
        if i < n_pos:
            pos.append("\n\n".join(texts[j] for j in [*base[:slot], ones[i], *base[slot:]]))
        composition.append({"reviews": k + 1, "slot": slot})
    return Task(
        name="amazon",
        train_texts=[texts[i] for i in train_idx],
        train_labels=[int(labels[i]) for i in train_idx],
        long_texts=neg + pos,
        long_labels=[0] * len(neg) + [1] * len(pos),
        description=(
            "amazon_reviews_1and5, 1-star review = 1 (flag), 5-star = 0. Short: "
            f"{args.n_train} single reviews (balanced, seed {args.data_seed}), cut at "
            f"{args.train_max_length} tokens. Long: from the other reviews of at most "
            f"{args.review_max_tokens} tokens, {n_neg} negatives each of {lo}-{hi} 5-star reviews "
            "joined by blank lines plus one more 5-star review inserted at a uniform random slot; "
            f"the first {n_pos} negatives each have a positive twin with that inserted review "
            "replaced by a 1-star review (a pair differs in one review, same slot). 5-star reviews "
            "are distinct within a text, may recur across texts; the 1-star reviews are distinct."
        ),
        details={
            "pool_5star": len(pool5),
            "pool_1star": len(pool1),
            "reviews_per_text_mean": float(np.mean([c["reviews"] for c in composition])),
        },
    )


# --- capture -------------------------------------------------------------------------------------


class ModelHolder:
    """Loads the model the first time a capture needs it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self._model, self.seconds = args, None, 0.0

    def get(self) -> Any:
        if self._model is None:
            from lensprobe.models import load_model

            t = time.perf_counter()
            self._model = load_model(self.args.model, backend=self.args.backend)
            self.seconds = time.perf_counter() - t
            print(
                f"loaded {self.args.model} ({self.args.backend}) in {self.seconds:.1f} s",
                flush=True,
            )
        return self._model


def captured(
    name: str,
    texts: list[str],
    labels: list[int],
    max_length: int,
    batch_size: int,
    args: argparse.Namespace,
    model: ModelHolder,
) -> tuple[Any, dict[str, Any]]:
    """The activations at HOOK of ``texts`` (a store under the cache), and capture facts."""
    import torch

    from lensprobe.capturing import capture
    from lensprobe.storage import load

    key = digest([texts, labels, max_length, args.model, args.backend, HOOK])
    store = Path(args.cache) / "acts" / f"{name}-{key}"
    info_path = store.with_suffix(".json")
    manifest = store / "manifest.json"
    done = manifest.exists() and json.loads(manifest.read_text()).get("complete")
    if done and info_path.exists():
        acts = load(store)[HOOK]
        info = {**json.loads(info_path.read_text()), "resumed": True}
    else:
        t = time.perf_counter()
        result = capture(
            model.get(),
            texts,
            HOOK,
            labels=torch.tensor(labels),
            max_length=max_length,
            batch_size=batch_size,
            dtype=torch.bfloat16,
            out=store,
            progress=False,
        )
        seconds = time.perf_counter() - t
        acts = result[HOOK]
        info = {
            "capture_seconds": round(seconds, 1),
            "tokens_per_s": round(acts.n_tokens / seconds, 1),
            "n_truncated": int(acts.meta.n_truncated),
        }
        write_json(info_path, info)
        info["resumed"] = False
    lengths = acts.lengths.numpy()
    info.update(
        n=len(acts),
        n_tokens=int(acts.n_tokens),
        tokens_min=int(lengths.min()),
        tokens_median=float(np.median(lengths)),
        tokens_mean=round(float(lengths.mean()), 1),
        tokens_max=int(lengths.max()),
        max_length=max_length,
    )
    print(
        f"{name}: {info['n']} texts, {info['n_tokens']:,} tokens "
        f"({info['tokens_min']}-{info['tokens_max']}, median {info['tokens_median']:.0f}), "
        f"{info['n_truncated']} cut at {max_length}, "
        + ("from the cache" if info["resumed"] else f"captured in {info['capture_seconds']} s"),
        flush=True,
    )
    return acts, info


# --- train and score -----------------------------------------------------------------------------


def score(probe: Any, acts: Any, batch: int) -> Any:
    """One logit per text (float64), in row order; batches of similar length."""
    import torch

    order = torch.argsort(acts.lengths)
    out = torch.empty(len(acts), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            x, mask = acts.pad(rows)
            out[rows] = probe(x.float(), mask)[:, 0].double()
    return out


def seed_metrics(logits: Any, labels: Any, threshold: float) -> dict[str, float]:
    """The long-set metrics of one seed's probe."""
    from lensprobe.errors import InsufficientNegatives
    from lensprobe.metrics import auroc, false_positive_rate, tpr_at_fpr

    lg = logits[:, None]
    try:
        tpr = tpr_at_fpr(lg, labels, FPR)
    except InsufficientNegatives:
        tpr = math.nan
    if math.isnan(threshold):
        fnr = fpr = math.nan
    else:
        fnr = 1.0 - tpr_at_fpr(lg, labels, FPR, threshold=threshold)
        fpr = false_positive_rate(lg, labels, threshold)
    return {"auroc": auroc(lg, labels), "tpr_at_1pct_fpr": tpr, "fnr": fnr, "fpr": fpr}


def run_cell(
    task: Task, spec: Any, train: Any, long: Any, args: argparse.Namespace, base: Any, key: str
) -> dict[str, Any]:
    """One (task, probe): the protocol on the short set, each seed's probe on the long set."""
    from lensprobe.train import run_protocol

    path = Path(args.cache) / "cells" / key / task.name / f"{spec.label}.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    result = run_protocol(train, config=spec.protocol(base), progress=False)
    train_s = time.perf_counter() - t
    labels = long.labels
    seeds, score_s = [], 0.0
    for run in result.runs:
        t = time.perf_counter()
        logits = score(run.probe, long, args.score_batch)
        score_s += time.perf_counter() - t
        threshold = float(run.thresholds.get("tpr_at_1pct_fpr", math.nan))
        seeds.append(
            {
                "seed": run.seed,
                "weight_decay": run.weight_decay,
                "threshold": threshold,
                "n_train": int(run.train_rows.numel()),
                "n_test": run.n_test,
                "short_test": {
                    k: run.metrics.get(k) for k in ("auroc", "accuracy", "tpr_at_1pct_fpr")
                },
                "long": seed_metrics(logits, labels, threshold),
                "long_logits": [round(float(v), 5) for v in logits],
            }
        )
    steps = [int(r["steps"]) for r in result.cv_table if "steps" in r]
    cell = {
        "task": task.name,
        "probe": spec.label,
        "seconds": {"train": round(train_s, 1), "score": round(score_s, 1)},
        "mean_steps": round(sum(steps) / len(steps), 1) if steps else None,
        "long_labels": [int(v) for v in labels],
        "seeds": seeds,
    }
    write_json(path, cell)
    return cell


def summarise(cell: dict[str, Any]) -> dict[str, Any]:
    """Mean and 95% interval of each long metric over the seeds, and the short test AUROC."""
    from lensprobe.metrics import estimate

    seeds = cell["seeds"]
    n_train, n_test = seeds[0]["n_train"], seeds[0]["n_test"]
    out: dict[str, Any] = {}
    for m in METRICS:
        values = [math.nan if s["long"][m] is None else s["long"][m] for s in seeds]
        est = estimate(m, values, n_test=n_test, n_train=n_train)
        out[m] = est.mean
        out[f"{m}_ci"] = [est.low, est.high]
        out[f"{m}_per_seed"] = values
    short = [s["short_test"]["auroc"] for s in seeds]
    out["short_auroc"] = float(np.mean([math.nan if v is None else v for v in short]))
    out["weight_decays"] = [s["weight_decay"] for s in seeds]
    out["thresholds"] = [s["threshold"] for s in seeds]
    out["mean_steps"] = cell.get("mean_steps")
    out["seconds"] = cell["seconds"]
    return out


# --- report --------------------------------------------------------------------------------------


def _fmt(mean: float, ci: list[float]) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    lo, hi = ci
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{mean:.3f} (no spread)"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def task_table(name: str, rows: dict[str, dict[str, Any]], n: dict[str, Any]) -> list[str]:
    head = [
        "probe",
        "AUROC",
        "TPR@1%FPR (long-set thr.)",
        "FNR @ train thr.",
        "FPR reached",
        "short AUROC",
        "n long (pos)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for probe, r in rows.items():
        lines.append(
            "| "
            + " | ".join(
                [
                    probe,
                    _fmt(r["auroc"], r["auroc_ci"]),
                    _fmt(r["tpr_at_1pct_fpr"], r["tpr_at_1pct_fpr_ci"]),
                    _fmt(r["fnr"], r["fnr_ci"]),
                    _fmt(r["fpr"], r["fpr_ci"]),
                    f"{r['short_auroc']:.3f}",
                    f"{n['long']['n']} ({n['long_pos']})",
                ]
            )
            + " |"
        )
    return lines


def write_report(out: Path, record: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Train short, test long",
        "",
        f"Gemma 3 270M (bundled, {args.backend} backend), `{HOOK}`, activations stored in bfloat16. "
        f"Each probe goes through `lensprobe.run_protocol` on the SHORT texts with {args.seeds} "
        "seeds (stratified 80/20 splits, 5-fold CV over weight decays {0, 1e-3, 1e-2, 1e-1} by "
        f"log loss, refit on the training part; AdamW kinds at most {args.max_steps} steps "
        "(`TrainConfig(max_steps=...)`, early stopping otherwise as default); mean / last / ema "
        "with L-BFGS); each seed's refit probe then scores every LONG text once.",
        "",
        "Columns (long set, mean over seeds [95% interval]): **AUROC**; **TPR@1%FPR** with the "
        "threshold fixed on the long set itself (optimistic: it reads the long labels); **FNR @ "
        "train thr.**: share of long positives whose logit is not above the threshold of 1% FPR "
        "fixed on the training part's out-of-fold logits (`SeedRun.thresholds`, >= 100 training "
        "negatives), and **FPR reached**: the share of long negatives above that threshold "
        "(the monitoring view: how a threshold set on short texts behaves on long ones); "
        "**short AUROC**: the protocol's own short test part, for reference. Intervals: "
        "`lensprobe.metrics.estimate` (corrected resampled t over the seeds with the short "
        f"split's n_train / n_test; {args.seeds - 1} df, so wide); they cover training on "
        "different splits of the short set only, not the sampling of the long set, which is "
        "the same for every seed. 'no spread': every seed gave the same value.",
        "",
        f"Run: `{record['command']}` ({record['seconds']['total']:.0f} s in all).",
        "",
    ]
    for task, rows in record["long_context"].items():
        n = record["n"][task]
        lines += [
            f"## {task}",
            "",
            record["tasks"][task]["description"],
            "",
            f"Tokens (BOS included): short {n['train']['tokens_min']}-{n['train']['tokens_max']} "
            f"(median {n['train']['tokens_median']:.0f}, {n['train']['n_truncated']} of "
            f"{n['train']['n']} cut at {n['train']['max_length']}); long "
            f"{n['long']['tokens_min']}-{n['long']['tokens_max']} (median "
            f"{n['long']['tokens_median']:.0f}, {n['long']['n_truncated']} of {n['long']['n']} cut "
            f"at {n['long']['max_length']}). Long set: {n['long']['n']} texts, {n['long_pos']} "
            "positive.",
            "",
            *task_table(task, rows, n),
            "",
        ]
    s = record["seconds"]
    lines += [
        "## Time",
        "",
        f"Model load {s['model_load']:.0f} s, capture {s['capture']:.0f} s, training "
        f"{s['train']:.0f} s, scoring {s['score']:.0f} s, total {s['total']:.0f} s (shared 2-core "
        "CPU; captures and fits read from the cache count the seconds they took when computed; "
        f"this invocation took {s['this_run']:.0f} s).",
        "",
        "| task | probe | train s | score s | mean steps (AdamW) / iterations (L-BFGS) |",
        "|---|---|---|---|---|",
    ]
    for task, rows in record["long_context"].items():
        for probe, r in rows.items():
            steps = "–" if r["mean_steps"] is None else f"{r['mean_steps']:.0f}"
            lines.append(
                f"| {task} | {probe} | {r['seconds']['train']:.1f} | {r['seconds']['score']:.1f} "
                f"| {steps} |"
            )
    text = "\n".join(lines) + "\n"
    write_atomic(out / "long_context.md", text)
    return text


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch
    from transformers import AutoTokenizer

    from lensprobe.models import bundled_model_dir
    from lensprobe.probes.spec import parse_probes
    from lensprobe.train import ProtocolConfig, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = parse_probes(args.probes)
    base = ProtocolConfig(
        seeds=tuple(range(args.seeds)), train=replace(TrainConfig(), max_steps=args.max_steps)
    )
    settings = {
        k: getattr(args, k)
        for k in (
            "n_train",
            "n_long",
            "seeds",
            "max_steps",
            "train_max_length",
            "max_length",
            "needle_words",
            "reviews",
            "review_max_tokens",
            "data_seed",
            "backend",
            "model",
        )
    }
    key = digest(settings)
    model = ModelHolder(args)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_dir(args.model)))
    record: dict[str, Any] = {
        "long_context": {},
        "monitor_overhead": monitor_overhead(),
        "n": {},
        "seconds": {"capture": 0.0, "train": 0.0, "score": 0.0},
        "tasks": {},
        "settings": settings,
        "command": "python benchmarks/long_context.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    for name in args.tasks:
        task = needle_task(args) if name == "needle" else amazon_task(args, tokenizer)
        train, info_train = captured(
            f"{name}-short",
            task.train_texts,
            task.train_labels,
            args.train_max_length,
            args.batch_size,
            args,
            model,
        )
        long, info_long = captured(
            f"{name}-long",
            task.long_texts,
            task.long_labels,
            args.max_length,
            args.long_batch_size,
            args,
            model,
        )
        for info in (info_train, info_long):  # as first computed, also when read from the cache
            record["seconds"]["capture"] += info["capture_seconds"]
        record["n"][name] = {
            "train": info_train,
            "long": info_long,
            "long_pos": int(sum(task.long_labels)),
            "long_neg": int(len(task.long_labels) - sum(task.long_labels)),
        }
        record["tasks"][name] = {"description": task.description, **task.details}
        rows = {}
        for spec in specs:
            cell = run_cell(task, spec, train, long, args, base, key)
            rows[spec.label] = summarise(cell)
            record["seconds"]["train"] += cell["seconds"]["train"]
            record["seconds"]["score"] += cell["seconds"]["score"]
            r = rows[spec.label]
            print(
                f"{name} {spec.label}: long AUROC {_fmt(r['auroc'], r['auroc_ci'])}, FNR@train thr "
                f"{_fmt(r['fnr'], r['fnr_ci'])}, FPR {_fmt(r['fpr'], r['fpr_ci'])} "
                f"(train {cell['seconds']['train']} s, score {cell['seconds']['score']} s)",
                flush=True,
            )
        record["long_context"][name] = rows
        del train, long
    record["seconds"]["model_load"] = round(model.seconds, 1)
    parts = ("model_load", "capture", "train", "score")
    record["seconds"]["total"] = round(sum(record["seconds"][k] for k in parts), 1)
    record["seconds"]["this_run"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    text = write_report(out, record, args)
    write_json(out / "long_context.json", record)
    print(text)
    compact = {
        "long_context": {
            task: {
                probe: {
                    k: r[k]
                    for k in (
                        "auroc",
                        "tpr_at_1pct_fpr",
                        "fnr",
                        "fpr",
                        "auroc_ci",
                        "tpr_at_1pct_fpr_ci",
                        "fnr_ci",
                        "fpr_ci",
                        "short_auroc",
                    )
                }
                for probe, r in rows.items()
            }
            for task, rows in record["long_context"].items()
        },
        "monitor_overhead": record["monitor_overhead"],
        "n": {
            task: {
                "train": n["train"]["n"],
                "long": n["long"]["n"],
                "long_pos": n["long_pos"],
                "long_tokens": [n["long"]["tokens_min"], n["long"]["tokens_max"]],
                "long_tokens_median": n["long"]["tokens_median"],
                "long_truncated": n["long"]["n_truncated"],
            }
            for task, n in record["n"].items()
        },
        "seconds": {k: round(v, 1) for k, v in record["seconds"].items()},
    }
    print(json.dumps(_json_ready(compact), allow_nan=False))


if __name__ == "__main__":
    main()
