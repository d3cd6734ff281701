"""Coverage of the intervals over repeated random splits: plain t against corrected t.

lensprobe puts a corrected resampled t interval (Nadeau & Bengio 2003,
``lensprobe.metrics.corrected_t_interval``) around the mean of a metric, or of a paired difference
of two probes, over J stratified 80/20 splits of the same rows (split seeds ``0..J-1``,
``lensprobe.train.split.stratified_split``). This script measures how often that interval, and
the plain Student-t interval ``mean +- t(J-1) * s / sqrt(J)``, contain what they estimate.

The simulation: a Gaussian binary task (classes ``N(+-mu, I)`` in ``--dim`` dimensions, the
signal spread evenly over the features, Bayes accuracy ``Phi(--separation / 2)``); each simulated
dataset has 160 rows (80 per class), split J = 10 ways (the J = 3 intervals use the first three
of the same splits: 128 training rows, 32 test rows each). On each split two probes train on the
training part (scikit-learn ``LogisticRegression``, L-BFGS, C = 1): probe A on all features,
probe B on the first ``--subset`` features; each is scored by accuracy on the test part
(``decision > 0``). The single metric is A's accuracy, the paired difference A - B.

The target of both is a population quantity: the expected accuracy (difference) of a probe
trained on 128 rows (64 per class) drawn from the population. It is computed once from
``--target-sets`` independent training sets, each probe's accuracy exactly (for a linear rule on
Gaussian classes it is ``Phi``), so the only Monte Carlo error is over training sets (reported).

An interval whose J values have no spread (``lensprobe.metrics.no_spread``) is NaN in lensprobe;
it is counted as not covering, for both methods, and the count is reported (``nan``).

    python benchmarks/interval_coverage.py              # 1000 datasets, about 45 s
    python benchmarks/interval_coverage.py --quick      # 100 datasets, a smoke run

Prints a table, writes it to ``benchmarks/results/interval_coverage.md`` (``--out``), and the last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression

from lensprobe.metrics import corrected_t_interval, no_spread
from lensprobe.train.split import stratified_split

REPO = Path(__file__).resolve().parent.parent
N_ROWS, TEST_FRACTION, C, CONFIDENCE = 160, 0.2, 1.0, 0.95
J_VALUES = (3, 10)
TARGET_RANGE = (0.93, 0.97)
BOUNDS = {"accuracy": (0.0, 1.0), "difference": (-1.0, 1.0)}


def class_means(dim: int, separation: float) -> np.ndarray:
    """``mu``: the classes are ``N(-mu, I)`` and ``N(+mu, I)``, ``|2 mu| = separation``."""
    return np.full(dim, separation / 2 / math.sqrt(dim))


def sample(rng: np.random.Generator, labels: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Rows ``x = (2y - 1) mu + noise`` for the given labels."""
    sign = 2.0 * labels - 1.0
    return rng.standard_normal((labels.size, mu.size)) + sign[:, None] * mu


def fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    """The probe: L2 logistic regression with a fixed C."""
    return LogisticRegression(C=C, solver="lbfgs").fit(x, y)


def population_accuracy(model: LogisticRegression, mu: np.ndarray) -> float:
    """Exact accuracy of ``decision > 0`` on the balanced population (features ``[:len(mu)]``)."""
    w, b = model.coef_[0], float(model.intercept_[0])
    norm = float(np.linalg.norm(w))
    if norm == 0.0:
        return 0.5
    margin = float(w @ mu)
    return 0.5 * (stats.norm.cdf((margin + b) / norm) + stats.norm.cdf((margin - b) / norm))


def targets(mu: np.ndarray, subset: int, n_sets: int, rng: np.random.Generator) -> dict[str, Any]:
    """Expected population accuracy of A and of A - B over training sets of 128 rows."""
    n_train = N_ROWS - round(TEST_FRACTION * N_ROWS)
    y = np.repeat([0, 1], n_train // 2)
    acc_a, diff = np.empty(n_sets), np.empty(n_sets)
    for i in range(n_sets):
        x = sample(rng, y, mu)
        acc_a[i] = population_accuracy(fit(x, y), mu)
        diff[i] = acc_a[i] - population_accuracy(fit(x[:, :subset], y), mu[:subset])
    return {
        "n_train": n_train,
        "training_sets": n_sets,
        "accuracy": float(acc_a.mean()),
        "accuracy_mc_se": float(acc_a.std(ddof=1) / math.sqrt(n_sets)),
        "difference": float(diff.mean()),
        "difference_mc_se": float(diff.std(ddof=1) / math.sqrt(n_sets)),
        "bayes_accuracy": float(stats.norm.cdf(float(np.linalg.norm(mu)))),
    }


def split_values(
    x: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], subset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per split: A's test accuracy and A's minus B's (paired on the same test rows)."""
    acc_a, diff = np.empty(len(splits)), np.empty(len(splits))
    for j, (train, test) in enumerate(splits):
        a = fit(x[train], y[train]).decision_function(x[test]) > 0
        b = fit(x[train][:, :subset], y[train]).decision_function(x[test][:, :subset]) > 0
        acc_a[j] = np.mean(a == y[test])
        diff[j] = acc_a[j] - np.mean(b == y[test])
    return acc_a, diff


def plain_t_interval(values: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    """``mean +- t(J-1) * s / sqrt(J)``, clipped to ``bounds``; NaN ends when no spread."""
    if no_spread(values):
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, values.size - 1) * values.std(ddof=1)
    half /= math.sqrt(values.size)
    mean = float(values.mean())
    return max(mean - half, bounds[0]), min(mean + half, bounds[1])


def intervals(values: np.ndarray, n_train: int, n_test: int, kind: str) -> dict[str, tuple]:
    """Both intervals of one dataset's J values of one quantity."""
    bounds = BOUNDS[kind]
    return {
        "plain_t": plain_t_interval(values, bounds),
        "corrected_t": corrected_t_interval(values, n_train, n_test, CONFIDENCE, bounds=bounds),
    }


def summarise(
    values: np.ndarray, n_train: int, n_test: int, kind: str, target: float
) -> dict[str, dict[str, float]]:
    """Per method: coverage (NaN counts as a miss), its MC s.e., mean width, NaN count.

    ``needed_factor`` is what ``n_test / n_train`` would have to be for the corrected variance
    ``s^2 * (1/J + factor)`` to match, on average, the squared error of the J-split mean:
    ``mean((mean_J - target)^2) / mean(s^2) - 1/J``.
    """
    ends = {m: [] for m in ("plain_t", "corrected_t")}
    for v in values:
        for method, interval in intervals(v, n_train, n_test, kind).items():
            ends[method].append(interval)
    means, s2 = values.mean(axis=1), values.var(axis=1, ddof=1)
    shared = {
        "datasets": len(values),
        "n_train": n_train,
        "n_test": n_test,
        "rmse_of_mean": float(np.sqrt(np.mean((means - target) ** 2))),
        "mean_of_mean_minus_target": float(means.mean() - target),
        "needed_factor": float(np.mean((means - target) ** 2) / s2.mean() - 1 / values.shape[1]),
    }
    out = {}
    for method, e in ends.items():
        e = np.array(e, dtype=float)
        nan = np.isnan(e).any(axis=1)
        covered = ~nan & (e[:, 0] <= target) & (target <= e[:, 1])
        p, n_ok = float(covered.mean()), int((~nan).sum())
        width = float(np.mean(e[~nan, 1] - e[~nan, 0])) if (~nan).any() else math.nan
        out[method] = {
            "coverage": p,
            "coverage_se": math.sqrt(p * (1 - p) / len(e)),
            "mean_width": width,
            "nan": int(nan.sum()),
            "coverage_without_nan": float(covered.sum() / n_ok) if n_ok else math.nan,
        } | shared
    return out


def simulate(
    args: argparse.Namespace, mu: np.ndarray, target: dict[str, Any], rng: np.random.Generator
) -> list[dict]:
    """Every (J, quantity, method) cell over ``args.datasets`` simulated datasets."""
    y = np.repeat([0, 1], N_ROWS // 2)
    splits = [
        tuple(r.numpy() for r in stratified_split(torch.as_tensor(y), TEST_FRACTION, seed=s))
        for s in range(max(J_VALUES))
    ]
    n_train, n_test = len(splits[0][0]), len(splits[0][1])
    per_split = [
        split_values(sample(rng, y, mu), y, splits, args.subset) for _ in range(args.datasets)
    ]
    values = {
        "accuracy": np.array([a for a, _ in per_split]),
        "difference": np.array([d for _, d in per_split]),
    }
    cells = []
    for j in J_VALUES:
        for kind, v in values.items():
            for method, c in summarise(v[:, :j], n_train, n_test, kind, target[kind]).items():
                cells.append({"J": j, "quantity": kind, "method": method} | c)
    return cells


def table(cells: list[dict], target: dict[str, Any]) -> str:
    """The results as a markdown table with a line on the targets."""
    lines = [
        "| J | quantity | interval | coverage | MC s.e. | mean width | NaN (miss) |"
        " coverage without NaN | RMSE of J-mean | needed n_test/n_train |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['J']} | {c['quantity']} | {c['method']} | {c['coverage']:.3f} | "
            f"{c['coverage_se']:.3f} | {c['mean_width']:.4f} | {c['nan']} / {c['datasets']} | "
            f"{c['coverage_without_nan']:.3f} | "
            f"{c['rmse_of_mean']:.4f} | {c['needed_factor']:.3f} |"
        )
    lines.append("")
    lines.append(
        "Coverage: share of datasets whose interval contains the target (a NaN interval, no "
        "spread over the J values, counts as a miss; NaN column; coverage without NaN: among "
        "the other datasets). MC s.e.: sqrt(p(1-p)/N). Mean width over the non-NaN intervals. "
        "RMSE of J-mean: root mean squared error of the mean over the J splits about the "
        "target. Needed n_test/n_train: mean((mean_J - target)^2) / mean(s^2) - 1/J, the "
        "factor the corrected variance s^2 (1/J + n_test/n_train) would need to match that "
        "error on average (it uses n_test/n_train = 32/128 = 0.25)."
    )
    lines.append("")
    lines.append(
        f"Targets (expected over training sets of {target['n_train']} rows, "
        f"{target['training_sets']} Monte Carlo training sets, exact population accuracy each): "
        f"accuracy of A {target['accuracy']:.4f} (MC s.e. {target['accuracy_mc_se']:.5f}), "
        f"difference A - B {target['difference']:.4f} (MC s.e. {target['difference_mc_se']:.5f}); "
        f"Bayes accuracy {target['bayes_accuracy']:.4f}."
    )
    return "\n".join(lines)


def write_markdown(path: Path, text: str, args: argparse.Namespace, seconds: float) -> None:
    """The table with the command, date and machine note."""
    command = shlex.join(["python", "benchmarks/interval_coverage.py", *sys.argv[1:]])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Coverage of plain t and corrected t intervals over repeated random splits\n\n"
        f"Command: `{command}`; {date.today().isoformat()}; 2-core CPU, shared "
        f"({platform.machine()}, Python {platform.python_version()}); {seconds:.0f} s.\n\n"
        f"Gaussian binary task, dim {args.dim}, separation {args.separation}; "
        f"{N_ROWS} rows per dataset, {args.datasets} datasets, stratified 80/20 splits with "
        f"seeds 0..J-1 (J = 3 uses the first 3 of the J = 10 splits); probe A: logistic "
        f"regression (C = {C}) on all features, probe B on the first {args.subset}. Nominal "
        f"coverage {CONFIDENCE:.0%}; a NaN interval (no spread) counts as a miss.\n\n"
        f"{text}\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=1000, help="simulated datasets")
    parser.add_argument("--quick", action="store_true", help="100 datasets, 500 target sets")
    parser.add_argument("--target-sets", type=int, default=5000, help="training sets for targets")
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--separation", type=float, default=1.8, help="|mean_1 - mean_0|")
    parser.add_argument("--subset", type=int, default=7, help="features probe B sees")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/interval_coverage.md"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.target_sets = 100, 500

    start = time.perf_counter()
    target_seed, data_seed = np.random.SeedSequence(args.seed).spawn(2)
    mu = class_means(args.dim, args.separation)
    target = targets(mu, args.subset, args.target_sets, np.random.default_rng(target_seed))
    cells = simulate(args, mu, target, np.random.default_rng(data_seed))
    seconds = time.perf_counter() - start
    text = table(cells, target)
    print(text, f"\n{seconds:.0f} s", sep="\n")
    write_markdown(args.out, text, args, seconds)
    corrected = [c["coverage"] for c in cells if c["method"] == "corrected_t"]
    report = {
        "datasets": args.datasets,
        "seconds": round(seconds, 1),
        "target": target,
        "cells": cells,
        "target_range": list(TARGET_RANGE),
        "corrected_in_target": all(TARGET_RANGE[0] <= p <= TARGET_RANGE[1] for p in corrected),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
