"""Paired comparison of two probes run on the same splits, and families of comparisons.

``lp.compare(attention, mean, metric="accuracy")`` says "attention-8 beats mean by X [low, high]"
or that the difference is undecided: each split's difference is paired (same train and test rows,
same labels). Over two or more splits the interval is the corrected resampled t (Nadeau & Bengio
2003: repeated random splits share rows, so the plain t interval covers too little); with one
split it is a paired bootstrap over the shared test rows, which covers the test sample only.
:func:`holm` adjusts the verdicts of a family of comparisons (a table, a study) for their number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from lensprobe.errors import InputError
from lensprobe.metrics import (
    INTERVAL_TEXT,
    LOWER_IS_BETTER,
    bootstrap_values,
    corrected_t_interval,
    corrected_t_p_value,
    holm_adjust,
    metric_range,
    percentile_interval,
)
from lensprobe.probes.spec import ProbeSpec
from lensprobe.train.result import ProtocolResult, SeedRun, mean_metric

Verdict = Literal["a better", "b better", "undecided"]


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
    """Mean over splits of ``metric(a) - metric(b)``."""
    low: float
    """Lower end of the interval of the difference (NaN: no interval, e.g. no spread)."""
    high: float
    """Upper end of the interval of the difference."""
    confidence: float
    """Coverage of the interval, e.g. 0.95."""
    method: Literal["corrected_t", "bootstrap"]
    """``corrected_t``: corrected resampled t over the per-split differences (each seed its own
    split); ``bootstrap``: paired percentile bootstrap over the shared test rows (both probes
    scored on the same resampled rows; covers the test sample only)."""
    differences: tuple[float, ...]
    """The difference at each split."""
    n_seeds: int
    """Splits paired."""
    n_test: int
    """Test rows per split."""
    p_value: float
    """Two-sided p-value of "no difference" by the same method (NaN: no spread to test)."""
    verdict: Verdict
    """``undecided`` when the interval contains 0 or there is none; otherwise which probe is
    better (for ``log_loss`` and the calibration errors lower is better)."""
    n_train: int = 0
    """Training rows per split."""
    family: int = 1
    """Comparisons in the family this one was adjusted with (:func:`holm`; 1: none)."""
    holm_verdict: Verdict | None = None
    """The verdict after Holm's adjustment for :attr:`family` comparisons (None: not adjusted)."""

    def how(self) -> str:
        """What the interval is, e.g. ``95% corrected t over 3 splits, n_test=32``."""
        splits = f"{self.n_seeds} split" + ("" if self.n_seeds == 1 else "s")
        if math.isnan(self.low) or math.isnan(self.high):
            return f"no interval: no spread over {splits}, n_test={self.n_test}"
        text = INTERVAL_TEXT[self.method].format(splits=splits)
        if self.method == "bootstrap" and self.n_seeds > 1:
            text = f"paired bootstrap over the test rows of {splits}: ignores training variability"
        return f"{self.confidence:.0%} {text}, n_test={self.n_test}"

    def verdict_text(self, verdict: Verdict | None = None) -> str:
        """``attention-8 better`` / ``undecided`` for a verdict (default: :attr:`verdict`)."""
        who = {"a better": self.a, "b better": self.b}.get(verdict or self.verdict)
        return f"{who} better" if who else "undecided"

    def __str__(self) -> str:
        interval = (
            f" [{self.low:+.4f}, {self.high:+.4f}]"
            if not (math.isnan(self.low) or math.isnan(self.high))
            else ""
        )
        text = (
            f"{self.a} - {self.b} {self.metric}: {self.difference:+.4f}{interval} ({self.how()}): "
            f"{self.verdict_text()}"
        )
        if self.holm_verdict is not None:
            text += f"; Holm over {self.family}: {self.verdict_text(self.holm_verdict)}"
        return text


def probe_name(result: ProtocolResult) -> str:
    """A short name of a result's probe: ``attention-8``, ``mean``, ``last-adamw``."""
    return ProbeSpec.of(result.config).label


def _check_paired(a: Sequence[SeedRun], b: Sequence[SeedRun]) -> None:
    """Refuse runs whose splits differ (errors name the fix)."""
    fix = "rerun both with the same seeds, split_seed and test_fraction on the same data"
    if [r.split_seed for r in a] != [r.split_seed for r in b]:
        raise InputError(
            f"the results were run on different splits (split seeds "
            f"{[r.split_seed for r in a]} vs {[r.split_seed for r in b]}): {fix}"
        )
    for ra, rb in zip(a, b, strict=True):
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
    method: Literal["auto", "corrected_t", "bootstrap"] = "auto",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two probe kinds run on the same splits: paired difference with its interval.

    Args:
        a: A :func:`~lensprobe.run_protocol` result.
        b: Another, run with the same seeds and split settings on the same data.
        metric: A test metric both results have (``accuracy``, ``auroc``, ``log_loss``, ...).
        method: ``corrected_t``: the corrected resampled t over the per-split differences
            (needs two or more splits; covers the split and the initialisation). ``bootstrap``:
            paired bootstrap over the test rows, the same resampled rows for both probes (covers
            the test sample only). ``auto``: ``corrected_t`` with two or more splits, else
            ``bootstrap``. Differences that are the same on every split (or every resample)
            give no interval and an ``undecided`` verdict, never a zero-width interval.
        confidence: Coverage of the interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        The mean difference ``a - b``, its interval, p-value and verdict.

    Raises:
        InputError: The results' splits differ, or a metric is missing.
    """
    return compare_runs(
        a.runs,
        b.runs,
        metric,
        names=(probe_name(a), probe_name(b)),
        method=method,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )


def compare_runs(
    a: Sequence[SeedRun],
    b: Sequence[SeedRun],
    metric: str = "accuracy",
    *,
    names: tuple[str, str] = ("a", "b"),
    method: Literal["auto", "corrected_t", "bootstrap"] = "auto",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """:func:`compare` on two lists of seed runs paired split by split.

    The runs of one side may come from different cells (each split's probe at the layer that
    split chose), as long as split ``j`` of both sides is the same split.
    """
    if not a or len(a) != len(b):
        raise InputError(f"need the same number of splits on both sides, got {len(a)} and {len(b)}")
    _check_paired(a, b)
    diffs = _differences(a, b, metric)
    if method == "auto":
        method = "corrected_t" if len(diffs) >= 2 else "bootstrap"
    n_train = int(a[0].train_rows.numel())
    bounds = metric_range(metric, difference=True)
    if method == "corrected_t":
        if len(diffs) < 2:
            raise InputError(
                "a corrected t interval needs two or more splits: run seeds=(0, 1, ...) or use "
                "method='bootstrap'"
            )
        low, high = corrected_t_interval(diffs, n_train, a[0].n_test, confidence, bounds=bounds)
        p = corrected_t_p_value(diffs, n_train, a[0].n_test)
    elif method == "bootstrap":
        low, high, p = _bootstrap(a, b, metric, confidence, n_resamples, seed, bounds)
    else:
        raise InputError(f"method must be 'auto', 'corrected_t' or 'bootstrap', got {method!r}")
    return Comparison(
        metric=metric,
        a=names[0],
        b=names[1],
        difference=float(diffs.mean()),
        low=low,
        high=high,
        confidence=confidence,
        method=method,
        differences=tuple(float(d) for d in diffs),
        n_seeds=len(diffs),
        n_test=a[0].n_test,
        p_value=p,
        verdict=_verdict(metric, low, high),
        n_train=n_train,
    )


def _differences(a: Sequence[SeedRun], b: Sequence[SeedRun], metric: str) -> np.ndarray:
    """``metric(a) - metric(b)`` at each split; an error when a run lacks the metric."""
    for runs in (a, b):
        if metric not in runs[0].metrics:
            raise InputError(f"no test metric {metric!r}; choose one of {sorted(runs[0].metrics)}")
    return np.array([ra.metrics[metric] - rb.metrics[metric] for ra, rb in zip(a, b, strict=True)])


def _bootstrap(
    a: Sequence[SeedRun],
    b: Sequence[SeedRun],
    metric: str,
    confidence: float,
    n_resamples: int,
    seed: int,
    bounds: tuple[float, float],
) -> tuple[float, float, float]:
    """Paired percentile bootstrap over the shared test rows: ``(low, high, p-value)``."""
    values = bootstrap_values(
        lambda idx: mean_metric(list(a), metric, idx) - mean_metric(list(b), metric, idx),
        [r.test_labels for r in a],
        n_resamples=n_resamples,
        seed=seed,
    )
    low, high = percentile_interval(values, n_resamples, confidence, bounds)
    if math.isnan(low):
        return math.nan, math.nan, math.nan
    p = min(1.0, 2.0 * min(float((values <= 0).mean()), float((values >= 0).mean())))
    return low, high, p


def _verdict(metric: str, low: float, high: float) -> Verdict:
    """Which probe the interval of ``a - b`` favours (``undecided`` when it holds 0 or is NaN)."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    if sign * low > 0 and sign * high > 0:
        return "a better"
    if sign * low < 0 and sign * high < 0:
        return "b better"
    return "undecided"


def holm(comparisons: Sequence[Comparison], *, alpha: float | None = None) -> list[Comparison]:
    """The comparisons of one family with Holm-adjusted verdicts beside the raw ones.

    Every comparison with a p-value counts towards the family size (those without one stay
    undecided). A comparison is decided after adjustment when its raw verdict is decided and
    its Holm-adjusted p-value is below ``alpha`` (default: ``1 - confidence``).
    """
    comparisons = list(comparisons)
    adjusted = holm_adjust([c.p_value for c in comparisons])
    family = sum(not math.isnan(c.p_value) for c in comparisons)
    out = []
    for c, p in zip(comparisons, adjusted, strict=True):
        level = alpha if alpha is not None else 1.0 - c.confidence
        decided = c.verdict != "undecided" and not math.isnan(p) and p < level
        out.append(replace(c, family=family, holm_verdict=c.verdict if decided else "undecided"))
    return out


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    """A JSON-ready dict of a comparison (NaN as ``None``)."""
    d = {k: getattr(c, k) for k in c.__dataclass_fields__}
    d["differences"] = list(c.differences)
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def comparison_from_dict(d: dict[str, Any]) -> Comparison:
    """Rebuild a comparison from :func:`comparison_to_dict` output."""
    d = dict(d)
    d["differences"] = tuple(d["differences"])
    for k in ("low", "high", "difference", "p_value"):
        d[k] = math.nan if d.get(k) is None else d[k]
    if d.get("method") == "t":  # written before the corrected t
        d["method"] = "corrected_t"
    return Comparison(**d)
