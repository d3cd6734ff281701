"""Paired comparison of two protocol results run on the same splits.

``lp.compare(attention, mean, metric="accuracy")`` says "attention-8 beats mean by X [low, high]"
or that the difference is undecided: each seed's difference is paired (same train and test rows,
same labels), and the interval is a Student-t interval over seeds, or with one seed a paired
bootstrap over the shared test rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lensprobe.errors import InputError
from lensprobe.metrics import LOWER_IS_BETTER, bootstrap_interval, t_interval
from lensprobe.train.result import ProtocolResult, mean_metric


@dataclass(frozen=True)
class Comparison:
    """The paired difference ``a - b`` of one test metric, with its interval and a verdict."""

    metric: str
    """The metric compared, e.g. ``accuracy``."""
    a: str
    """Name of the first probe (e.g. ``attention-8``)."""
    b: str
    """Name of the second probe."""
    difference: float
    """Mean over seeds of ``metric(a) - metric(b)``."""
    low: float
    """Lower end of the interval of the difference."""
    high: float
    """Upper end of the interval of the difference."""
    confidence: float
    """Coverage of the interval, e.g. 0.95."""
    method: Literal["t", "bootstrap"]
    """``t``: Student-t interval over the per-seed differences (each seed its own split);
    ``bootstrap``: paired percentile bootstrap over the shared test rows (both probes scored
    on the same resampled rows)."""
    differences: tuple[float, ...]
    """The difference at each seed."""
    n_seeds: int
    """Seeds (splits) paired."""
    n_test: int
    """Test rows per seed."""
    verdict: Literal["a better", "b better", "undecided"]
    """``undecided`` when the interval contains 0; otherwise which probe is better (for
    ``log_loss`` and ``ece`` lower is better)."""

    def __str__(self) -> str:
        how = f"t over {self.n_seeds} seeds" if self.method == "t" else "paired bootstrap"
        who = {"a better": self.a, "b better": self.b}.get(self.verdict)
        verdict = f"{who} better" if who else "undecided"
        return (
            f"{self.a} - {self.b} {self.metric}: {self.difference:+.4f} "
            f"[{self.low:+.4f}, {self.high:+.4f}] ({self.confidence:.0%} {how}, "
            f"n_test={self.n_test}): {verdict}"
        )


def probe_name(result: ProtocolResult) -> str:
    """A short name of a result's probe: ``attention-8``, ``mean``, ``last-adamw``."""
    cfg = result.config
    text = f"attention-{cfg.n_heads}" if cfg.probe == "attention" else cfg.probe
    return text if cfg.optimizer == "auto" else f"{text}-{cfg.optimizer}"


def _check_paired(a: ProtocolResult, b: ProtocolResult) -> None:
    """Refuse results whose splits differ (errors name the fix)."""
    fix = "rerun both with the same seeds, split_seed and test_fraction on the same data"
    if [r.split_seed for r in a.runs] != [r.split_seed for r in b.runs]:
        raise InputError(
            f"the results were run on different splits (split seeds "
            f"{[r.split_seed for r in a.runs]} vs {[r.split_seed for r in b.runs]}): {fix}"
        )
    for ra, rb in zip(a.runs, b.runs, strict=True):
        same = (
            torch.equal(ra.train_rows, rb.train_rows)
            and torch.equal(ra.test_rows, rb.test_rows)
            and torch.equal(ra.test_labels, rb.test_labels)
        )
        if not same:
            raise InputError(
                f"seed {ra.seed}: the two results have different train/test rows or test labels "
                f"(different data or test_fraction): {fix}"
            )


def compare(
    a: ProtocolResult,
    b: ProtocolResult,
    metric: str = "accuracy",
    *,
    method: Literal["auto", "t", "bootstrap"] = "auto",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two probe kinds run on the same splits: paired difference with its interval.

    Args:
        a: A :func:`~lensprobe.run_protocol` result.
        b: Another, run with the same seeds and split settings on the same data.
        metric: A test metric both results have (``accuracy``, ``auroc``, ``log_loss``, ...).
        method: ``t``: Student-t interval over the per-seed differences (needs two or more
            seeds; covers the variation of the split and the initialisation). ``bootstrap``:
            paired bootstrap over the test rows, the same resampled rows for both probes (covers
            the test sample only). ``auto``: ``t`` with two or more seeds whose differences
            vary, else ``bootstrap`` (``t`` over identical differences has zero width: its
            verdict is ``undecided``).
        confidence: Coverage of the interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        The mean difference ``a - b``, its interval and a verdict (``undecided`` when the
        interval contains 0).

    Raises:
        InputError: The results' splits differ, or a metric is missing.
    """
    _check_paired(a, b)
    diffs = _differences(a, b, metric)
    # Identical per-seed differences give a t-interval of zero width: no estimate of the spread
    # at all, not certainty. ``auto`` then uses the paired bootstrap over the test rows.
    degenerate = len(diffs) >= 2 and float(np.ptp(diffs)) == 0.0
    if method == "auto":
        method = "t" if len(diffs) >= 2 and not degenerate else "bootstrap"
    low, high = _interval(a, b, metric, diffs, method, confidence, n_resamples, seed)
    return Comparison(
        metric=metric,
        a=probe_name(a),
        b=probe_name(b),
        difference=float(diffs.mean()),
        low=low,
        high=high,
        confidence=confidence,
        method=method,
        differences=tuple(float(d) for d in diffs),
        n_seeds=len(diffs),
        n_test=a.n_test,
        verdict=_verdict(metric, low, high, decides=not (method == "t" and degenerate)),
    )


def _differences(a: ProtocolResult, b: ProtocolResult, metric: str) -> np.ndarray:
    """``metric(a) - metric(b)`` at each seed; an error when a result lacks the metric."""
    for res in (a, b):
        if metric not in res.metrics:
            raise InputError(f"no test metric {metric!r}; choose one of {sorted(res.metrics)}")
    return np.array(
        [ra.metrics[metric] - rb.metrics[metric] for ra, rb in zip(a.runs, b.runs, strict=True)]
    )


def _interval(
    a: ProtocolResult,
    b: ProtocolResult,
    metric: str,
    diffs: np.ndarray,
    method: str,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    """The interval of the difference ``a - b`` by ``method``.

    ``t``: Student-t over the seeds' ``diffs``. ``bootstrap``: paired percentile bootstrap over
    the shared test rows (both probes scored on the same resampled rows).
    """
    if method == "t":
        if len(diffs) < 2:
            raise InputError(
                "a t-interval needs two or more seeds: run seeds=(0, 1, ...) or use "
                "method='bootstrap'"
            )
        return t_interval(diffs, confidence)
    if method == "bootstrap":
        return bootstrap_interval(
            lambda idx: mean_metric(a.runs, metric, idx) - mean_metric(b.runs, metric, idx),
            [r.test_labels for r in a.runs],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
    raise InputError(f"method must be 'auto', 't' or 'bootstrap', got {method!r}")


def _verdict(
    metric: str, low: float, high: float, *, decides: bool = True
) -> Literal["a better", "b better", "undecided"]:
    """Which probe the interval of ``a - b`` favours.

    ``undecided`` when the interval contains 0, is NaN, or cannot decide (``decides`` False: a
    zero-width t-interval over identical differences).
    """
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    if not decides or math.isnan(low) or math.isnan(high):
        return "undecided"
    if sign * low > 0 and sign * high > 0:
        return "a better"
    if sign * low < 0 and sign * high < 0:
        return "b better"
    return "undecided"
