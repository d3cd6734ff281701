"""Tables, claims and plots of ``benchmarks/study.py``, rebuilt from its results folder.

Reads ``OUT/grid`` (lensprobe's results folder: every cell with each split's rows, test logits and
refit probe), ``OUT/captures``, ``OUT/controls`` and ``OUT/cost.json``; writes ``results.csv``
(one row per cell and split), ``comparisons.csv`` (each claim's per-dataset paired differences),
``claims.csv``, ``entropy.csv``, ``results.md``, ``study.png`` and ``study_layers.png``.

Every choice reads training parts only: each split picks each probe's layer by its own CV
accuracy (``lp.choose_layer``). A claim is tested twice: on each dataset, by the paired
difference over that dataset's splits at each split's pick (corrected resampled t); across the
datasets, by a t interval over the per-dataset mean differences (the datasets are the units).
Both families are Holm-adjusted; raw verdicts stand beside the adjusted ones.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from study import PROBES, SHUFFLED, TASKS, hook_of, read_json, task_for, write_atomic

log = logging.getLogger("study")

ALPHA = 0.05
"""Family-wise error rate of the Holm adjustments."""

ENTROPY_PROBES: tuple[str, ...] = ("attention-1", "attention-2", "attention-8")
"""Probes whose attention entropy the study reports (softmax attention over tokens)."""

TFIDF = "tfidf"
"""Probe name of the TF-IDF control in the tables and ``results.csv``."""


@dataclass(frozen=True)
class Claim:
    """One claim of the attention-probes study, as a paired difference ``a - b``."""

    text: str
    a: str
    b: str
    expect: str
    """``>``: a is better; ``>=``: a is not worse (decided only when better); ``mixed``: a is
    better on some datasets and worse on others."""
    metric: str = "accuracy"
    """``accuracy`` (test) or ``entropy_ratio`` (attention entropy / uniform, test rows)."""
    star_only: bool = False
    """Only the MOSAIC-style datasets (``Task.star``)."""


CLAIMS: tuple[Claim, ...] = (
    Claim("8 heads >= mean (AdamW)", "attention-8", "mean-adamw", ">="),
    Claim("8 heads >= mean (L-BFGS)", "attention-8", "mean", ">="),
    Claim("1 head is mixed against mean (L-BFGS)", "attention-1", "mean", "mixed"),
    Claim("2 heads >= 1 head", "attention-2", "attention-1", ">="),
    Claim("8 heads >= 2 heads", "attention-8", "attention-2", ">="),
    Claim("entropy grows: 2 heads > 1 head", "attention-2", "attention-1", ">", "entropy_ratio"),
    Claim("entropy grows: 8 heads > 2 heads", "attention-8", "attention-2", ">", "entropy_ratio"),
    Claim("L-BFGS helps mean: mean > mean (AdamW)", "mean", "mean-adamw", ">"),
    Claim("L-BFGS helps last: last > last (AdamW)", "last", "last-adamw", ">"),
    Claim("mean > last on the MOSAIC-style sets", "mean", "last", ">", star_only=True),
)
"""The study's claims (EleutherAI, "Attention Probes"), each a paired difference."""


# --- reading the folder --------------------------------------------------------------------------


@dataclass
class Data:
    """Everything the tables read."""

    grid: Any
    """The :class:`lensprobe.grid.Grid` of ``OUT/grid``."""
    records: dict[tuple[str, str, str], dict[str, Any]]
    """(dataset, hook, probe) -> the cell's record."""
    choices: dict[tuple[str, str], Any]
    """(dataset, probe) -> :class:`lensprobe.train.selection.LayerChoice`, where every hook of
    the study has a cell."""
    datasets: list[str]
    """Datasets with cells (real labels), in study order."""
    hooks: list[str]
    probes: list[str]
    captures: dict[str, dict[str, Any]]
    tfidf: dict[str, dict[str, Any]]
    cost: dict[str, dict[str, float]]
    entropy: list[dict[str, Any]] = field(default_factory=list)


def _order(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(names))
    return [p for p in preferred if p in seen] + sorted(p for p in seen if p not in preferred)


def read(out: Path, layers: Sequence[int]) -> Data | None:
    """The study's results under ``out`` (None: no cell yet)."""
    import lensprobe as lp

    if not (out / "grid").is_dir():
        return None
    grid = lp.load_results(out / "grid")
    if not grid.cells:
        return None
    records = {c.key: c.record() for c in grid.cells}
    study_hooks = [hook_of(la) for la in layers]
    hooks = [h for h in study_hooks if any(k[1] == h for k in records)]
    names = [c.dataset for c in grid.cells]
    datasets = _order([d for d in names if not d.endswith(SHUFFLED)], [t.name for t in TASKS])
    shuffled = _order(
        [d for d in names if d.endswith(SHUFFLED)], [t.name + SHUFFLED for t in TASKS]
    )
    probes = _order([c.probe for c in grid.cells], PROBES)
    choices = {}
    rows = list(records.values())
    for d in datasets + shuffled:
        for p in probes:
            if all((d, h, p) in records for h in study_hooks):
                choices[d, p] = lp.choose_layer(rows, dataset=d, probe=p, by="cv_accuracy")
    captures = {
        read_json(f)["dataset"]: read_json(f) for f in sorted((out / "captures").glob("*.json"))
    }
    tfidf = {
        read_json(f)["dataset"]: read_json(f)
        for f in sorted((out / "controls").glob("*.tfidf.json"))
    }
    cost = read_json(out / "cost.json") if (out / "cost.json").exists() else {}
    return Data(grid, records, choices, datasets, hooks, probes, captures, tfidf, cost)


def runs_at_picks(data: Data, dataset: str, probe: str) -> list[Any]:
    """Each split's run at the hook that split picked for ``probe``."""
    choice = data.choices[dataset, probe]
    return [data.grid.cell(dataset, h, probe).result.runs[j] for j, h in enumerate(choice.picks)]


def tfidf_runs(data: Data, dataset: str, like: Sequence[Any]) -> list[Any] | None:
    """The TF-IDF control's splits as seed runs paired with ``like`` (a probe's runs), or None.

    Raises:
        SystemExit: The control's test rows differ from the probes' (not the same splits).
    """
    import torch

    from lensprobe.metrics import accuracy

    control = data.tfidf.get(dataset)
    if control is None or len(control["runs"]) != len(like):
        return None
    out = []
    for run, c in zip(like, control["runs"], strict=True):
        if run.test_rows.tolist() != c["test_rows"]:
            raise SystemExit(f"{dataset}: the TF-IDF control was split otherwise; delete it")
        logits = torch.tensor(c["test_logits"], dtype=torch.float64)
        if run.test_logits.shape[1] == 1:  # binary: the probes' one logit, log p1 - log p0
            logits = logits[:, 1:] - logits[:, :1]
        out.append(
            replace(
                run, test_logits=logits, metrics={"accuracy": accuracy(logits, run.test_labels)}
            )
        )
    return out


# --- entropy -------------------------------------------------------------------------------------


ENTROPY_KEYS = ("dataset", "hook", "probe", "seed", "n_test", "n_heads", "mean_ratio")


def entropy_rows(data: Data, out: Path) -> list[dict[str, Any]]:
    """Each attention cell's entropy ratio per split (on its test rows), cached in entropy.csv.

    A missing row is computed from the split's saved probe and the dataset's store; without the
    store (a fresh clone) only the cached rows are there.
    """
    import lensprobe as lp
    from lensprobe.grid import probe_path
    from lensprobe.storage import load as load_store

    path = out / "entropy.csv"
    have = {}
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for r in csv.DictReader(f):
                have[r["dataset"], r["hook"], r["probe"], int(r["seed"])] = r
    stores: dict[str, Any] = {}
    for cell in data.grid.cells:
        if cell.probe not in ENTROPY_PROBES or cell.dataset.endswith(SHUFFLED):
            continue
        for j, run in enumerate(cell.result.runs):
            key = (cell.dataset, cell.hook, cell.probe, run.seed)
            if key in have:
                continue
            store = out / "acts" / task_for(cell.dataset).slug
            if not (store / "manifest.json").exists():
                continue
            if cell.dataset not in stores:
                stores[cell.dataset] = load_store(store)
            probe = lp.load_probe(probe_path(out / "grid", cell.dataset, cell.hook, cell.probe, j))
            ent = lp.attention_entropy(probe, stores[cell.dataset][cell.hook], rows=run.test_rows)
            summary = ent.summary()
            have[key] = {
                "dataset": cell.dataset,
                "hook": cell.hook,
                "probe": cell.probe,
                "seed": run.seed,
                "n_test": run.n_test,
                "n_heads": summary["n_heads"],
                "mean_ratio": round(float(summary["mean_ratio"]), 5),
            }
    rows = [have[k] for k in sorted(have, key=lambda k: (k[0], k[2], _layer(k[1]), k[3]))]
    write_csv(path, rows, ENTROPY_KEYS)
    return rows


def entropy_at_picks(data: Data, dataset: str, probe: str) -> list[float] | None:
    """Each split's entropy ratio at its pick (None when a split's row is missing)."""
    by = {
        (r["hook"], int(r["seed"])): float(r["mean_ratio"])
        for r in data.entropy
        if r["dataset"] == dataset and r["probe"] == probe
    }
    runs = runs_at_picks(data, dataset, probe)
    choice = data.choices[dataset, probe]
    vals = [by.get((h, run.seed)) for h, run in zip(choice.picks, runs, strict=True)]
    return None if any(v is None for v in vals) else vals  # type: ignore[misc]


# --- comparisons and claims ----------------------------------------------------------------------


def holm_flags(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected at family-wise error ``alpha`` (NaN: no)."""
    order = sorted(
        (i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i]
    )
    m = len(order)
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def holm_mark(rows: list[dict[str, Any]]) -> None:
    """Holm over the rows' p-values: each row's ``holm_rejects``, and its raw verdict as its
    ``holm_verdict`` where rejected ("undecided" elsewhere)."""
    for r, rejected in zip(rows, holm_flags([r["p_value"] for r in rows]), strict=True):
        r["holm_rejects"] = rejected
        r["holm_verdict"] = r["verdict"] if rejected else "undecided"


def _verdict(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return "undecided"
    return "a better" if low > 0 else "b better"


def paired(data: Data, claim: Claim, dataset: str) -> dict[str, Any] | None:
    """One dataset's paired difference for a claim, over its splits (None: a side is missing)."""
    import numpy as np

    from lensprobe.metrics import corrected_t_interval, corrected_t_p_value
    from lensprobe.train.compare import compare_runs

    if (dataset, claim.a) not in data.choices or (dataset, claim.b) not in data.choices:
        return None
    runs_a, runs_b = runs_at_picks(data, dataset, claim.a), runs_at_picks(data, dataset, claim.b)
    n_train, n_test = int(runs_a[0].train_rows.numel()), runs_a[0].n_test
    if claim.metric == "accuracy":
        c = compare_runs(runs_a, runs_b, "accuracy", names=(claim.a, claim.b))
        diffs, low, high, p = np.array(c.differences), c.low, c.high, c.p_value
    else:
        ea, eb = entropy_at_picks(data, dataset, claim.a), entropy_at_picks(data, dataset, claim.b)
        if ea is None or eb is None:
            return None
        diffs = np.array(ea) - np.array(eb)
        low, high = corrected_t_interval(diffs, n_train, n_test, bounds=(-1.0, 1.0))
        p = corrected_t_p_value(diffs, n_train, n_test)
    return {
        "claim": claim.text,
        "dataset": dataset,
        "a": claim.a,
        "b": claim.b,
        "metric": claim.metric,
        "difference": float(diffs.mean()),
        "low": low,
        "high": high,
        "p_value": p,
        "verdict": _verdict(low, high),
        "n_splits": len(diffs),
        "n_test": n_test,
        "picks_a": _picks(data.choices[dataset, claim.a]),
        "picks_b": _picks(data.choices[dataset, claim.b]),
    }


def over_datasets(diffs: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, 95% t interval and two-sided p of per-dataset differences (the datasets the units)."""
    import numpy as np
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    k = len(d)
    if k < 2 or float(d.std(ddof=1)) == 0.0:
        return float(d.mean()) if k else math.nan, math.nan, math.nan, math.nan
    se = float(d.std(ddof=1)) / math.sqrt(k)
    q = float(stats.t.ppf(0.975, k - 1))
    p = float(2 * stats.t.sf(abs(float(d.mean())) / se, k - 1))
    return float(d.mean()), float(d.mean()) - q * se, float(d.mean()) + q * se, p


def claim_verdict(claim: Claim, low: float, high: float, rows: Sequence[dict[str, Any]]) -> str:
    """``holds``, ``does not hold`` or ``undecided`` from the interval over datasets.

    ``mixed`` holds when datasets decided both ways, and does not hold when the interval over
    datasets is decided (one probe better across datasets).
    """
    if claim.expect == "mixed":
        ways = {r["verdict"] for r in rows} - {"undecided"}
        if len(ways) == 2:
            return "holds"
        return "undecided" if _verdict(low, high) == "undecided" else "does not hold"
    v = _verdict(low, high)
    return {"a better": "holds", "b better": "does not hold"}.get(v, "undecided")


def summary_row(claim: Claim, family: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One claim across datasets from its per-dataset rows: counts, t interval, raw verdict."""
    mean, low, high, p = over_datasets([r["difference"] for r in rows])
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("a better", "b better")}
    return {
        "family": family,
        "claim": claim.text,
        "a": claim.a,
        "b": claim.b,
        "metric": claim.metric,
        "datasets": len(rows),
        "a_better": counts["a better"],
        "b_better": counts["b better"],
        "undecided": len(rows) - sum(counts.values()),
        "difference": mean,
        "low": low,
        "high": high,
        "p_value": p,
        "verdict": claim_verdict(claim, low, high, rows),
        "_claim": claim,
        "_rows": rows,
    }


def claims(data: Data) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-dataset comparisons and one row per claim, each family Holm-adjusted."""
    star = {t.name for t in TASKS if t.star}
    per: list[dict[str, Any]] = []
    summary = []
    for claim in CLAIMS:
        sets = [d for d in data.datasets if d in star or not claim.star_only]
        rows = [r for d in sets if (r := paired(data, claim, d)) is not None]
        per += rows
        summary.append(summary_row(claim, "claim", rows))
    holm_mark(per)
    holm_mark(summary)
    for s in summary:
        if s["_claim"].expect == "mixed":
            adjusted = [dict(r, verdict=r["holm_verdict"]) for r in s["_rows"]]
            low, high = (s["low"], s["high"]) if s["holm_rejects"] else (math.nan, math.nan)
            s["holm_verdict"] = claim_verdict(s["_claim"], low, high, adjusted)
        s["holm_family"] = len(summary)
    return per, summary


def tfidf_comparisons(data: Data) -> list[dict[str, Any]]:
    """Per dataset: attention-8 and mean against the TF-IDF control, paired, Holm-adjusted."""
    from lensprobe.train.compare import compare_runs

    rows = []
    for d in data.datasets:
        for probe in ("attention-8", "mean"):
            if (d, probe) not in data.choices:
                continue
            runs = runs_at_picks(data, d, probe)
            other = tfidf_runs(data, d, runs)
            if other is None:
                continue
            c = compare_runs(runs, other, "accuracy", names=(probe, TFIDF))
            rows.append(
                {
                    "claim": f"{probe} vs TF-IDF",
                    "dataset": d,
                    "a": probe,
                    "b": TFIDF,
                    "metric": "accuracy",
                    "difference": c.difference,
                    "low": c.low,
                    "high": c.high,
                    "p_value": c.p_value,
                    "verdict": _verdict(c.low, c.high),
                    "n_splits": c.n_seeds,
                    "n_test": c.n_test,
                    "picks_a": _picks(data.choices[d, probe]),
                    "picks_b": "text",
                }
            )
    holm_mark(rows)
    return rows


def tfidf_summary(versus: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Across datasets: each probe against the TF-IDF control (t over the per-dataset mean
    differences), Holm-adjusted over the probes; rows shaped like :func:`claims`' summary."""
    summary = []
    for probe in dict.fromkeys(r["a"] for r in versus):
        claim = Claim(f"{probe} > TF-IDF (beyond surface words)", probe, TFIDF, ">")
        summary.append(summary_row(claim, "control", [r for r in versus if r["a"] == probe]))
    holm_mark(summary)
    for s in summary:
        s["holm_family"] = len(summary)
    return summary


# --- files ---------------------------------------------------------------------------------------


def _layer(hook: str) -> int:
    return int(hook.removeprefix("blocks.").split(".")[0])


def _picks(choice: Any) -> str:
    """``L9`` when every split picked layer 9, else each split's layer: ``L5/9/9``."""
    layers = [str(_layer(h)) for h in choice.picks]
    return f"L{layers[0]}" if len(set(layers)) == 1 else "L" + "/".join(layers)


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 5)
    return v


def write_csv(
    path: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str] | None = None
) -> None:
    """Rows as CSV (private ``_`` keys and list values left out), written atomically."""
    rows = [
        {
            k: _round(v)
            for k, v in r.items()
            if not k.startswith("_") and not isinstance(v, list | dict)
        }
        for r in rows
    ]
    keys = list(keys or dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


INTERVAL_KEYS = (
    "accuracy_std",
    "accuracy_low",
    "accuracy_high",
    "accuracy_interval",
    "auroc_low",
    "auroc_high",
)
"""A cell's interval columns (over its splits), repeated on each of its split rows."""


def split_rows(data: Data) -> list[dict[str, Any]]:
    """``results.csv``: one row per cell and split (TF-IDF rows as probe ``tfidf``)."""
    rows = []
    n_of = {d: c["n"] for d, c in data.captures.items()}
    for cell in data.grid.cells:
        rec = data.records[cell.key]
        base = cell.dataset.removesuffix(SHUFFLED)
        choice = data.choices.get((cell.dataset, cell.probe))
        for j, run in enumerate(cell.result.runs):
            row = {
                "dataset": cell.dataset,
                "n": n_of.get(base),
                "n_train": int(run.train_rows.numel()),
                "n_test": run.n_test,
                "hook": cell.hook,
                "layer": _layer(cell.hook),
                "probe": cell.probe,
                "seed": run.seed,
                "split_seed": run.split_seed,
                "picked": None if choice is None else choice.picks[j] == cell.hook,
                "weight_decay": run.weight_decay,
                "cv_accuracy": rec["splits"][j]["cv"].get("accuracy"),
                **run.metrics,
                "cell_accuracy": rec.get("accuracy"),
                **{k: rec.get(k) for k in INTERVAL_KEYS},
                "cell_seconds": rec.get("seconds"),
            }
            rows.append(row)
    for d, control in data.tfidf.items():
        for run in control["runs"]:
            rows.append(
                {
                    "dataset": d,
                    "n": n_of.get(d),
                    "n_train": run["n_train"],
                    "n_test": run["n_test"],
                    "hook": "raw text",
                    "probe": TFIDF,
                    "seed": run["seed"],
                    "split_seed": run["split_seed"],
                    "accuracy": run["accuracy"],
                    **dict(
                        zip(("accuracy_low", "accuracy_high"), tfidf_interval(control), strict=True)
                    ),
                }
            )
    return rows


def tfidf_interval(control: dict[str, Any]) -> tuple[float, float]:
    """Corrected t interval over the control's splits of its test accuracy."""
    from lensprobe.metrics import corrected_t_interval

    runs = control["runs"]
    if len(runs) < 2:
        return math.nan, math.nan
    accs = [r["accuracy"] for r in runs]
    return corrected_t_interval(accs, runs[0]["n_train"], runs[0]["n_test"], bounds=(0.0, 1.0))


def write_outputs(out: Path, settings: dict[str, Any], args: Any) -> None:
    """Rebuild every table and plot from ``out`` (a partial study reports what it has)."""
    from study_tables import markdown, plot_layers, plot_picks

    layers = settings.get("layers") or args.layers
    data = read(out, layers)
    if data is None:
        log.warning("no finished cells under %s/grid yet", out)
        return
    data.entropy = entropy_rows(data, out)
    per, summary = claims(data)
    versus = tfidf_comparisons(data)
    beyond = tfidf_summary(versus)
    write_csv(out / "results.csv", split_rows(data))
    write_csv(out / "comparisons.csv", per + versus)
    write_csv(out / "claims.csv", summary + beyond)
    planned = list(dict.fromkeys([*getattr(args, "probes", PROBES), *data.probes]))
    page = markdown(data, settings, per, summary, versus, beyond, planned)
    write_atomic(out / "results.md", page)
    plot_picks(data, out / "study.png")
    plot_layers(data, out / "study_layers.png")
    log.info("wrote %s/results.{csv,md}, claims.csv, comparisons.csv, entropy.csv, plots", out)
