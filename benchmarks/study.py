"""The attention-probes study at a size that decides, on Gemma 3 270M over the offline datasets.

For each classification dataset of ``../shared/data`` (one entry per folder, up to ``--n`` texts,
stratified), the residual stream of the bundled Gemma 3 270M is captured once, after every second
layer (``blocks.1, 3, ..., 17.hook_resid_post``), into an activation store (bfloat16, texts cut at
``--max-length`` tokens, rows in order of token length so that batches pad little). Every probe
then trains through one ``lp.sweep`` per dataset: all hooks and probe kinds on the same
``--seeds`` stratified 80/20 splits, each split with its own 5-fold CV choice of weight decay,
refit and a single test. Each split picks each probe's layer by its own CV accuracy on its own
training part (never a test row). Attention, MultiMax, rolling and ``-adamw`` probes train with
AdamW, ``mean`` / ``last`` / ``max`` with L-BFGS.

Controls on the same protocol (Hewitt & Liang 2019):
- shuffled labels (``--controls``): every probe kind through the same sweep and layer choice, on
  labels permuted once with a fixed seed; it must sit at chance;
- TF-IDF: a bag-of-words logistic regression on the raw texts, on exactly the splits the probes
  use (its C chosen by 5-fold CV log loss on each training part), to show what reading the
  residual stream adds beyond surface words.

    python benchmarks/study.py                          # the README's run (resumes)
    python benchmarks/study.py --datasets sst2,sms_spam --probes attention-8,mean --seeds 5
    python benchmarks/study.py --report-only            # tables and plots from what is there

Resumable: stores under ``OUT/acts`` (large, not versioned) resume by themselves, each finished
(dataset, hook, probe) cell is saved under ``OUT/grid`` (lensprobe's results folder, not
versioned) and a rerun trains only the missing cells. Every run rebuilds ``OUT/results.csv``,
``results.md``, ``claims.csv``, ``comparisons.csv``, ``entropy.csv`` and the plots from what is
there (``benchmarks/study_report.py``), so a partial study still reports, and says what it lacks.
"""

from __future__ import annotations

import argparse
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
    "max",
    "multimax-8",
    "rolling-8",
)
"""Every probe of the study (specs of ``lensprobe.probes.ProbeSpec``), in table order."""

LAYERS: tuple[int, ...] = tuple(range(1, 18, 2))
"""The residual stream after every second layer of Gemma 3 270M's 18."""

DEFAULT_CONTROLS: tuple[str, ...] = ("geometry_of_truth/cities", "massive_scenario")
"""Datasets whose shuffled-label control runs by default (the two cheapest: binary, 18 classes)."""

SHUFFLED = " (shuffled labels)"
"""Suffix of a shuffled-label control's dataset name in the grid."""

SHUFFLE_SEED = 1234
"""Seed of the one label permutation of a shuffled-label control."""

MIN_PER_CLASS = 8
"""Fewest rows a class may keep in a subsample: 5-fold CV needs 5 in the 80 % training part."""

BATCH_TOKENS = 4096
"""Capture batches hold about this many tokens (texts per batch = this / mean length)."""


@dataclass(frozen=True)
class Task:
    """One dataset of the study: a registry entry and how it is subsampled."""

    name: str
    """Registry name passed to ``lensprobe.data.load_dataset``."""
    folder: str
    """Folder of ``../shared/data`` it comes from."""
    balance: bool = False
    """Draw the same number of rows per class instead of keeping the classes' shares."""
    star: bool = False
    """It stands for one of the study's own datasets (the catalog's star): the MOSAIC-style set
    of the mean-versus-last claim."""
    note: str = ""
    """Why this entry stands for its folder, for the results page."""

    @property
    def slug(self) -> str:
        """File-system name (``geometry_of_truth/cities`` -> ``geometry_of_truth-cities``)."""
        return self.name.replace("/", "-")


TASKS: tuple[Task, ...] = (
    Task("massive_scenario", "massive_intent_en", star=True, note="18 scenarios"),
    Task("geometry_of_truth/cities", "geometry_of_truth", note="the cities file of 11"),
    Task("sst2", "sst2"),
    Task("banking77", "banking77", star=True, note="77 intents"),
    Task(
        "refusal_harmful_harmless",
        "refusal_harmful_harmless",
        balance=True,
        note="balanced: 871 harmful vs 31,323 harmless",
    ),
    Task("tweet_eval_emotion", "tweet_eval_emotion"),
    Task("sms_spam", "sms_spam"),
    Task("tweet_eval_stance_abortion", "tweet_eval_stance_abortion", star=True),
    Task("ag_news", "ag_news", star=True),
    Task("jailbreak_classification", "jailbreak_classification", star=True),
    Task("amazon_reviews_1and5", "amazon_reviews_1and5", star=True),
    Task("github_code_lang", "github_code_lang", star=True, note="3 classes: C / Python / HTML"),
)
"""Every classification folder of the offline collection, one entry each, cheapest first (mean
tokens per text), which is the order the study runs them in."""

SETTINGS_KEYS = ("n", "max_length", "seeds", "layers", "backend", "model", "max_steps")
"""Settings the saved stores and cells depend on; other values need another ``--out``."""

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
    ap.add_argument("--n", type=int, default=2000, help="most texts per dataset (default 2000)")
    ap.add_argument(
        "--layers",
        default=",".join(map(str, LAYERS)),
        help="layers i of blocks.{i}.hook_resid_post (default every second: 1,3,...,17)",
    )
    ap.add_argument(
        "--seeds", type=int, default=3, help="splits per cell (default 3; 5 where time allows)"
    )
    ap.add_argument("--datasets", default="all", help="registry names, or 'all' (default)")
    ap.add_argument("--probes", default=",".join(PROBES), help="probe specs (default: all)")
    ap.add_argument(
        "--controls",
        default=",".join(DEFAULT_CONTROLS),
        help="datasets whose shuffled-label control runs ('none' for none, 'all' for every one)",
    )
    ap.add_argument("--max-length", type=int, default=256, help="tokens per text, BOS included")
    ap.add_argument("--backend", default="hf", choices=["transformer_lens", "nnsight", "hf"])
    ap.add_argument("--model", default="gemma-3-270m", help="bundled model name or local dir")
    ap.add_argument(
        "--max-steps", type=int, default=None, help="most AdamW steps (default: the protocol's)"
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)"
    )
    ap.add_argument("--capture-only", action="store_true", help="capture the stores, train nothing")
    ap.add_argument("--report-only", action="store_true", help="rebuild the tables and plots")
    args = ap.parse_args(argv)
    args.layers = [int(x) for x in _csv_list(args.layers)]
    args.probes = _csv_list(args.probes)
    names = [t.name for t in TASKS]
    args.datasets = names if args.datasets == "all" else _csv_list(args.datasets)
    args.controls = {"none": [], "all": names}.get(args.controls, _csv_list(args.controls))
    if args.n < 1 or args.seeds < 1 or args.max_length < 2 or not args.layers:
        ap.error("--n and --seeds must be positive, --max-length at least 2, --layers not empty")
    return args


def task_for(name: str) -> Task:
    """The :data:`TASKS` entry of a registry name, or a plain stratified entry for another one."""
    for task in TASKS:
        if task.name == name:
            return task
    return Task(name, name.split("/")[0])


def hook_of(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def protocol_for(args: argparse.Namespace) -> Any:
    """The protocol every cell of the study runs (the defaults, with the study's splits)."""
    from dataclasses import replace

    from lensprobe.train import ProtocolConfig

    base = ProtocolConfig(seeds=tuple(range(args.seeds)))
    if args.max_steps is not None:
        base = replace(base, train=replace(base.train, max_steps=args.max_steps))
    return base


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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_settings(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Record the settings; refuse a folder of other settings; add this command to the list."""
    path = out / "settings.json"
    if path.exists():
        old = read_json(path)
        diff = {k: (old.get(k), settings[k]) for k in SETTINGS_KEYS if old.get(k) != settings[k]}
        if diff:
            changes = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
            raise SystemExit(
                f"{out} holds a study of other settings ({changes}); pass another --out, or "
                f"delete {out}/grid, {out}/acts and {path} to start over"
            )
        for key in ("commands", "machines"):
            seen = old.setdefault(key, [])
            seen += [v for v in settings[key] if v not in seen]
        settings = old
    write_json(path, settings)
    return settings


def machine() -> str:
    """This machine in words, for the cost lines (the cells' wall times are its)."""
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}"


def add_cost(out: Path, dataset: str, part: str, seconds: float) -> None:
    """Add ``seconds`` of ``part`` (``controls``: the TF-IDF fits) to
    ``OUT/cost.json`` (training time is in each cell)."""
    path = out / "cost.json"
    cost = read_json(path) if path.exists() else {}
    row = cost.setdefault(dataset, {})
    row[part] = round(row.get(part, 0.0) + seconds, 1)
    write_json(path, cost)


# --- data and capture ----------------------------------------------------------------------------


def load_task(task: Task, data_dir: str, n: int) -> tuple[Any, str, int]:
    """The subsample, how it was drawn (``stratified``, ``balanced`` or ``all``), the full size.

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
    return ds, "all" if len(ds) == len(full) else "stratified", len(full)


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


def _complete(store: Path) -> bool:
    manifest = store / "manifest.json"
    return manifest.exists() and bool(read_json(manifest).get("complete"))


def capture_task(
    task: Task, args: argparse.Namespace, out: Path, model: ModelHolder
) -> dict[str, Any]:
    """Hook -> Activations of a dataset, from its store (captured first if needed).

    The texts are stored in order of token length (the labels with them), so that a batch holds
    texts of about one length and pads little; splits are drawn per class with a seed, so the
    order changes which rows a seed picks, not how. Capture facts go to
    ``OUT/captures/<dataset>.json`` (small, versioned).
    """
    import torch

    from lensprobe.capturing import capture
    from lensprobe.models import compute_dtype
    from lensprobe.storage import load as load_store

    store = out / "acts" / task.slug
    hooks = [hook_of(layer) for layer in args.layers]
    if _complete(store):
        acts = load_store(store)
        missing = [h for h in hooks if h not in acts]
        if missing:
            raise SystemExit(
                f"the store {store} lacks {missing} (captured at {list(acts)}); delete it to "
                "capture these layers too"
            )
        return {h: acts[h] for h in hooks}
    ds, draw, n_rows = load_task(task, args.data_dir, args.n)
    tokenizer = model.get().tokenizer
    raw = [len(ids) for ids in tokenizer(list(ds.texts))["input_ids"]]
    order = sorted(range(len(ds)), key=lambda i: (raw[i], i))
    kept = sum(min(n, args.max_length) for n in raw)
    batch = max(8, min(128, BATCH_TOKENS * len(order) // max(kept, 1)))
    t = time.perf_counter()
    result = capture(
        model.get(),
        [ds.texts[i] for i in order],
        hooks,
        labels=ds.label_tensor()[torch.tensor(order)],
        class_names=ds.class_names,
        max_length=args.max_length,
        batch_size=batch,
        out=store,
        progress=args.progress,
    )
    seconds = time.perf_counter() - t
    first = result[hooks[0]]
    info = {
        "dataset": task.name,
        "folder": task.folder,
        "source": ds.source,
        "n": len(ds),
        "n_rows": n_rows,
        "draw": draw,
        "class_counts": ds.class_counts(),
        "n_tokens": first.n_tokens,
        "n_truncated": first.meta.n_truncated,
        "max_length": args.max_length,
        "store_dtype": str(first.dtype).removeprefix("torch."),
        "compute_dtype": str(compute_dtype()).removeprefix("torch."),
        "batch_size": batch,
        "capture_seconds": round(seconds, 1),
        "hooks": hooks,
    }
    write_json(out / "captures" / f"{task.slug}.json", info)
    log.info(
        "%s: captured %d texts (%d tokens) in %.1f s", task.name, len(ds), info["n_tokens"], seconds
    )
    return dict(result)


# --- training and controls -----------------------------------------------------------------------


def shuffled(acts: dict[str, Any], seed: int = SHUFFLE_SEED) -> dict[str, Any]:
    """The same activations with the labels permuted once (the same permutation at every hook)."""
    import torch

    labels = next(iter(acts.values())).labels
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    return {h: a.with_labels(labels[perm]) for h, a in acts.items()}


def train_task(
    name: str, acts: dict[str, Any], probes: Sequence[str], base: Any, out: Path, progress: bool
) -> None:
    """Every probe at every hook of one dataset in one sweep (resumes saved cells)."""
    import lensprobe as lp

    lp.sweep(acts, list(probes), dataset=name, protocol=base, out=out / "grid", progress=progress)


def splits_of(labels: Any, base: Any) -> list[tuple[Any, Any]]:
    """Each seed's (train rows, test rows): the protocol's own stratified split."""
    from lensprobe.train import stratified_split

    seeds = base.seeds if isinstance(base.seeds, tuple) else tuple(range(base.seeds))
    return [stratified_split(labels, base.test_fraction, seed=base.split_seed + s) for s in seeds]


TFIDF_CS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
"""Inverse regularisation strengths the TF-IDF control's CV chooses among."""


def _tfidf_fit(texts: list[str], labels: Any, c: float) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=c, max_iter=3000),
    )
    return model.fit(texts, labels)


def _log_probs(model: Any, texts: list[str], n_classes: int) -> Any:
    """Log-probabilities over all ``n_classes``, floored at -50 (a class the fit never saw)."""
    import numpy as np
    import torch

    out = np.full((len(texts), n_classes), -50.0)
    out[:, model.classes_] = np.maximum(model.predict_log_proba(texts), -50.0)
    return torch.from_numpy(out)


def tfidf_control(
    texts: list[str], labels: Any, base: Any, n_classes: int, n_folds: int = 5
) -> list[dict[str, Any]]:
    """Per split: TF-IDF + logistic regression, C by CV log loss on the training part, test once.

    The vectoriser is fitted inside each fold (and on the whole training part for the refit),
    so no test or held-out text shapes the vocabulary or its weights.
    """
    from lensprobe.metrics import accuracy, log_loss
    from lensprobe.train import stratified_folds

    runs = []
    for s, (train, test) in enumerate(splits_of(labels, base)):
        y = labels[train]
        folds = stratified_folds(y, n_folds, seed=base.split_seed + s)
        tr_texts = [texts[i] for i in train.tolist()]
        scores = {}
        for c in TFIDF_CS:
            losses = []
            for f in range(n_folds):
                inner, held = (folds != f).nonzero().flatten(), (folds == f).nonzero().flatten()
                model = _tfidf_fit([tr_texts[i] for i in inner.tolist()], y[inner].numpy(), c)
                lp_held = _log_probs(model, [tr_texts[i] for i in held.tolist()], n_classes)
                losses.append(log_loss(lp_held, y[held]) * held.numel())
            scores[c] = sum(losses) / len(y)
        best = min(TFIDF_CS, key=lambda c: (scores[c], c))
        model = _tfidf_fit(tr_texts, y.numpy(), best)
        logits = _log_probs(model, [texts[i] for i in test.tolist()], n_classes)
        runs.append(
            {
                "seed": s,
                "split_seed": base.split_seed + s,
                "C": best,
                "cv_log_loss": scores[best],
                "test_rows": test.tolist(),
                "test_logits": [[round(float(v), 5) for v in row] for row in logits.tolist()],
                "accuracy": accuracy(logits, labels[test]),
                "n_train": int(train.numel()),
                "n_test": int(test.numel()),
            }
        )
    return runs


def run_controls(task: Task, acts: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """The TF-IDF control (every dataset) and, where asked, the shuffled-label sweep."""
    base = protocol_for(args)
    path = out / "controls" / f"{task.slug}.tfidf.json"
    first = next(iter(acts.values()))
    if not path.exists():
        t = time.perf_counter()
        n_classes = len(first.class_names or ()) or int(first.labels.max()) + 1
        runs = tfidf_control(list(first.texts), first.labels, base, n_classes)
        write_json(path, {"dataset": task.name, "Cs": list(TFIDF_CS), "runs": runs})
        add_cost(out, task.name, "controls", time.perf_counter() - t)
    if task.name in args.controls:
        train_task(task.name + SHUFFLED, shuffled(acts), args.probes, base, out, args.progress)


# --- the run -------------------------------------------------------------------------------------


def run_study(args: argparse.Namespace, out: Path) -> None:
    """Capture, train and control every dataset in turn; a progress line with an ETA after each."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = ModelHolder(args.model, args.backend)
    tasks = [task_for(name) for name in args.datasets]
    base = protocol_for(args)
    started = time.perf_counter()
    for i, task in enumerate(tasks):
        acts = capture_task(task, args, out, model)
        if args.capture_only:
            continue
        train_task(task.name, acts, args.probes, base, out, args.progress)
        run_controls(task, acts, args, out)
        del acts
        elapsed = time.perf_counter() - started
        left = elapsed / (i + 1) * (len(tasks) - i - 1)
        log.info(
            "[%d/%d datasets] %s done; %.1f min so far, about %.0f min left (from this run's pace)",
            i + 1,
            len(tasks),
            task.name,
            elapsed / 60,
            left / 60,
        )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    args.progress = sys.stderr.isatty()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SETTINGS_KEYS}
    settings["commands"] = [shlex.join(["python", "benchmarks/study.py", *raw])]
    if not args.report_only:
        settings["machines"] = [machine()]
        settings = check_settings(out, settings)
        t = time.perf_counter()
        run_study(args, out)
        log.info("study run finished in %.1f min", (time.perf_counter() - t) / 60)
    elif (out / "settings.json").exists():
        settings = read_json(out / "settings.json")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_report import write_outputs

    write_outputs(out, settings, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
