"""Classification metrics from logits, intervals and paired comparisons.

Every metric takes a probe's logits ``(batch, n_outputs)`` and computes in float64 from them:
a one-logit (binary) probe's logit ``z`` means ``p(class 1) = sigmoid(z)``, a k-logit probe's
logits mean a softmax. Nothing goes through float32 probabilities, so nothing saturates: the log
loss comes from ``logsigmoid`` / ``log_softmax`` (a logit of 40 on the wrong side costs 40 nats,
not the 34.5 of a clipped probability), and AUROC ranks the logits (or log-probabilities)
themselves, so confident predictions do not tie. Predictions are the most probable class: for a
binary probe, ``z > 0``.

Binary tasks add what monitoring work reports: the TPR at 1% and 5% FPR (see
:func:`tpr_at_fpr` for how the threshold is fixed) and every task the expected calibration error
(:func:`expected_calibration_error`).

Intervals: :func:`corrected_t_interval` over repeated random splits (seeds), :func:`wilson_interval`
for one split's accuracy, :func:`bootstrap_interval` over the rows of one test set (or several,
resampled independently); :func:`holm_adjust` for a family of comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.errors import InputError, InsufficientNegatives, UnknownNameError

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auroc",
    "log_loss",
    "top_label_ece",
)
"""Metrics of every task."""

BINARY_METRIC_NAMES: tuple[str, ...] = (
    "ece",
    "tpr_at_1pct_fpr",
    "tpr_at_5pct_fpr",
    "tpr_at_0.1pct_fpr",
)
"""Metrics only binary (one-logit) tasks have."""

MONITORING_FPRS: dict[str, float] = {
    "tpr_at_1pct_fpr": 0.01,
    "tpr_at_5pct_fpr": 0.05,
    "tpr_at_0.1pct_fpr": 0.001,
}
"""The false-positive rate behind each TPR metric (0.1% needs 1,000 negatives to fix)."""

LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "ece", "top_label_ece"})
"""Metrics where smaller is better (every other metric: larger is better)."""


# -- from logits ---------------------------------------------------------------------------------


def _as_logits(logits: Tensor) -> Tensor:
    return logits.detach().cpu().to(torch.float64)


def log_probabilities(
    logits: Float[Tensor, "batch n_outputs"],
) -> Float[Tensor, "batch n_classes"]:
    """Class log-probabilities in float64: ``[logsigmoid(-z), logsigmoid(z)]`` or log-softmax."""
    z = _as_logits(logits)
    if z.shape[-1] == 1:
        return torch.cat([F.logsigmoid(-z), F.logsigmoid(z)], dim=-1)
    return z.log_softmax(dim=-1)


def probabilities(logits: Float[Tensor, "batch n_outputs"]) -> Float[Tensor, "batch n_classes"]:
    """Class probabilities ``(batch, n_classes)``: ``[1 - p, p]`` for one logit, else softmax.

    For display; float32 unless the logits are float64. Metrics never use it.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(dtype)
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return logits.softmax(dim=-1)


def predictions(logits: Float[Tensor, "batch n_outputs"]) -> Int[Tensor, " batch"]:
    """The most probable class: ``z > 0`` for one logit, else the arg-max."""
    z = logits.detach().cpu()
    if z.shape[-1] == 1:
        return (z[:, 0] > 0).long()
    return z.argmax(dim=-1)


def _check(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Labels on the CPU as int64 and the class count; errors name the mismatch."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise InputError(
            f"expected logits (batch, n_outputs) and labels (batch,), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise InputError("no examples to score")
    n_classes = 2 if logits.shape[1] == 1 else logits.shape[1]
    labels = labels.detach().cpu().long()
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise InputError(
            f"labels must lie in [0, {n_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels, n_classes


def accuracy(logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"]) -> float:
    """Fraction of examples whose most probable class is the label."""
    labels, _ = _check(logits, labels)
    return float((predictions(logits) == labels).double().mean())


def balanced_accuracy(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"]
) -> float:
    """Mean over the classes present in ``labels`` of the recall of that class."""
    labels, _ = _check(logits, labels)
    pred = predictions(logits)
    recalls = [float((pred[labels == c] == c).double().mean()) for c in labels.unique().tolist()]
    return sum(recalls) / len(recalls)


def macro_f1(logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"]) -> float:
    """Unweighted mean of per-class F1 over the classes in labels or predictions."""
    labels, _ = _check(logits, labels)
    pred = predictions(logits)
    classes = torch.cat([labels, pred]).unique().tolist()
    scores = []
    for c in classes:
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def binary_auroc(scores: Float[Tensor, " batch"], positive: Bool[Tensor, " batch"]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    Returns NaN when only one class is present.
    """
    positive = positive.detach().cpu().bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    scores = scores.detach().cpu().double()
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    # average the ranks of tied scores
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).to(scores.dtype)
    mean_rank = ends - (counts.to(scores.dtype) - 1) / 2
    ranks[order] = mean_rank[inverse]
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc(logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"]) -> float:
    """AUROC from the logits (no saturation ties).

    Binary: the ranking of the logit. k classes: one-vs-rest on each class's log-probability,
    macro-averaged over the classes present.
    """
    labels, _ = _check(logits, labels)
    if logits.shape[1] == 1:
        return binary_auroc(_as_logits(logits)[:, 0], labels == 1)
    logp = log_probabilities(logits)
    per_class = [binary_auroc(logp[:, c], labels == c) for c in range(logp.shape[1])]
    valid = [a for a in per_class if not math.isnan(a)]
    return sum(valid) / len(valid) if valid else math.nan


def log_loss(logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"]) -> float:
    """Mean negative log-likelihood of the labels (nats), from log-sigmoid / log-softmax."""
    labels, _ = _check(logits, labels)
    return float(-log_probabilities(logits).gather(1, labels[:, None]).mean())


def expected_calibration_error(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"], *, n_bins: int = 10
) -> float:
    """``ece``: the class-1 calibration error of a binary (one-logit) probe.

    ``sum over bins of (rows in bin / rows) * |frequency of class 1 - mean p(class 1)|`` over
    ``n_bins`` equal-width bins of ``p(class 1)`` (the bins of
    ``sklearn.calibration.calibration_curve``; a bin holds ``(lo, hi]``, the first also 0).
    k-class probes have no class 1 to speak of: see :func:`top_label_calibration_error`.
    """
    labels, _ = _check(logits, labels)
    if logits.shape[1] != 1:
        raise InputError(
            f"ece is the class-1 calibration error of a binary (one-logit) probe; these logits "
            f"have {logits.shape[1]} outputs: use top_label_ece"
        )
    return _binned_gap(log_probabilities(logits).exp()[:, 1], (labels == 1).double(), n_bins)


def top_label_calibration_error(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"], *, n_bins: int = 10
) -> float:
    """``top_label_ece``: the probability of the predicted class against how often it is right.

    Binned as :func:`expected_calibration_error`; defined for every task (for a binary probe the
    predicted class's probability is at least 0.5, so it differs from ``ece``).
    """
    labels, _ = _check(logits, labels)
    conf, pred = log_probabilities(logits).exp().max(dim=-1)
    return _binned_gap(conf, (pred == labels).double(), n_bins)


def _binned_gap(conf: Tensor, hit: Tensor, n_bins: int) -> float:
    """``sum over bins of (rows in bin / rows) * |mean hit - mean conf|``, bins ``(lo, hi]``."""
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    edges = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    bins = torch.bucketize(conf.contiguous(), edges)  # (lo, hi]: np.searchsorted(side=left)
    count = torch.bincount(bins, minlength=n_bins).double()
    gap = torch.bincount(bins, weights=hit, minlength=n_bins) - torch.bincount(
        bins, weights=conf, minlength=n_bins
    )
    return float(gap.abs().sum() / count.sum())


def _binary_scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    labels, _ = _check(logits, labels)
    if logits.shape[1] != 1:
        raise InputError(
            f"TPR at a fixed FPR is defined for binary (one-logit) probes; these logits have "
            f"{logits.shape[1]} outputs: score one class against the rest yourself"
        )
    return _as_logits(logits)[:, 0], labels == 1


def fpr_threshold(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"], fpr: float
) -> float:
    """The lowest logit threshold whose false-positive rate on these rows is at most ``fpr``.

    A row is flagged (predicted positive) when its logit is strictly above the threshold. With
    ``n`` negatives at most ``floor(fpr * n)`` of them lie above it. Returns ``-inf`` when every
    negative may be flagged.

    Raises:
        InsufficientNegatives: Fewer than ``1 / fpr`` negatives: no threshold can be fixed at
            that FPR (the largest negative would stand in for it, and on new rows its FPR
            reaches several times ``fpr``).
    """
    if not 0.0 < fpr <= 1.0:
        raise InputError(f"fpr must be in (0, 1], got {fpr}")
    scores, positive = _binary_scores(logits, labels)
    neg = scores[~positive].sort(descending=True).values
    needed = math.ceil(1.0 / fpr - 1e-9)
    if neg.numel() < needed:
        raise InsufficientNegatives(
            f"{neg.numel()} negative (class 0) rows cannot fix a threshold at {fpr * 100:g}% FPR: "
            f"it needs at least {needed}; collect more negatives (or report a larger FPR)"
        )
    allowed = math.floor(fpr * neg.numel() * (1 + 1e-12))
    return -math.inf if allowed >= neg.numel() else float(neg[allowed])


def tpr_at_fpr(
    logits: Float[Tensor, "batch n_outputs"],
    labels: Int[Tensor, " batch"],
    fpr: float,
    *,
    threshold: float | None = None,
) -> float:
    """True-positive rate of a binary probe at a fixed false-positive rate.

    Args:
        logits: One logit per row; class 1 is the positive class.
        labels: Class ids 0/1.
        fpr: The false-positive rate, e.g. 0.01.
        threshold: Flag rows whose logit is above this (from :func:`fpr_threshold` on training
            data: the honest, monitoring-style number, whose FPR on these rows is only near
            ``fpr``). ``None``: fix it on these same rows, the largest TPR at an FPR of at most
            ``fpr`` on the ROC curve of these scores (no interpolation; what
            ``sklearn.metrics.roc_curve`` gives), which is optimistic.

    Returns:
        The TPR (NaN without positive rows).
    """
    scores, positive = _binary_scores(logits, labels)
    if threshold is None:
        threshold = fpr_threshold(logits, labels, fpr)
    pos = scores[positive]
    return float((pos > threshold).double().mean()) if pos.numel() else math.nan


def false_positive_rate(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"], threshold: float
) -> float:
    """Share of negative (class 0) rows whose logit is above ``threshold`` (NaN without any)."""
    scores, positive = _binary_scores(logits, labels)
    neg = scores[~positive]
    return float((neg > threshold).double().mean()) if neg.numel() else math.nan


def monitoring_thresholds(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"]
) -> dict[str, float]:
    """The threshold of each TPR metric (:data:`MONITORING_FPRS`), fixed on these rows.

    Fix them on training data (e.g. the cross-validated logits of the training part) and pass
    them to :func:`classification_metrics` for the test part: a monitoring-style result. A rate
    these rows have too few negatives for (fewer than ``1 / fpr``) gets a NaN threshold, and its
    TPR and realised FPR are then NaN (unavailable, :func:`unavailable_reason` says why).
    """
    out = {}
    for name, fpr in MONITORING_FPRS.items():
        try:
            out[name] = fpr_threshold(logits, labels, fpr)
        except InsufficientNegatives:
            out[name] = math.nan
    return out


def unavailable_reason(name: str, n_negatives: int) -> str | None:
    """Why a TPR metric fixed on ``n_negatives`` training negatives is unavailable (or None)."""
    fpr = MONITORING_FPRS.get(name)
    if fpr is None or n_negatives >= math.ceil(1.0 / fpr - 1e-9):
        return None
    return (
        f"{name}: {n_negatives} training negatives, a {fpr * 100:g}% FPR threshold needs "
        f"{math.ceil(1.0 / fpr - 1e-9)}"
    )


def realised_fpr_name(name: str) -> str:
    """``tpr_at_1pct_fpr`` -> ``fpr_at_1pct_threshold``: the FPR its fixed threshold reaches."""
    return name.replace("tpr_at_", "fpr_at_", 1).removesuffix("_fpr") + "_threshold"


_METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "macro_f1": macro_f1,
    "auroc": auroc,
    "log_loss": log_loss,
    "ece": expected_calibration_error,
    "top_label_ece": top_label_calibration_error,
}


def metric(
    name: str,
    logits: Float[Tensor, "batch n_outputs"],
    labels: Int[Tensor, " batch"],
    *,
    thresholds: Mapping[str, float] | None = None,
) -> float:
    """One metric of :func:`classification_metrics` by name (same arguments)."""
    if name in _METRICS:
        return _METRICS[name](logits, labels)
    thresholds = thresholds or {}
    for tpr_name, fpr in MONITORING_FPRS.items():
        if name == tpr_name:
            if tpr_name in thresholds:
                if math.isnan(thresholds[tpr_name]):
                    return math.nan
                return tpr_at_fpr(logits, labels, fpr, threshold=thresholds[tpr_name])
            try:
                return tpr_at_fpr(logits, labels, fpr)
            except InsufficientNegatives:
                return math.nan
        if name == realised_fpr_name(tpr_name) and tpr_name in thresholds:
            if math.isnan(thresholds[tpr_name]):
                return math.nan
            return false_positive_rate(logits, labels, thresholds[tpr_name])
    known = [*METRIC_NAMES, *BINARY_METRIC_NAMES]
    raise UnknownNameError(f"unknown metric {name!r}; choose one of {known}")


def classification_metrics(
    logits: Float[Tensor, "batch n_outputs"],
    labels: Int[Tensor, " batch"],
    *,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """All metrics of a probe's logits: :data:`METRIC_NAMES`, plus for a binary probe the TPRs.

    Args:
        logits: ``(batch, n_outputs)``: one logit for a binary task, k for k classes.
        labels: Class ids ``0..k-1``.
        thresholds: Binary probes: the threshold of each TPR metric, fixed on other rows with
            :func:`monitoring_thresholds` (e.g. on training data); the result then also holds
            ``fpr_at_1pct_threshold`` and ``fpr_at_5pct_threshold``, the false-positive rates
            those thresholds reach on these rows. ``None``: each threshold is read off these
            rows' own ROC curve (optimistic; see :func:`tpr_at_fpr`).

    Returns:
        Metric name -> value (NaN where undefined, e.g. AUROC with one class present).
    """
    labels, _ = _check(logits, labels)
    names = list(METRIC_NAMES)
    if logits.shape[1] == 1:
        for name in BINARY_METRIC_NAMES:
            names.append(name)
            if thresholds is not None and name in thresholds:
                names.append(realised_fpr_name(name))
    return {name: metric(name, logits, labels, thresholds=thresholds) for name in names}


# -- intervals -----------------------------------------------------------------------------------


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    if not 0.0 < q < 1.0 or df <= 0:
        raise InputError(f"need 0 < q < 1 and df > 0, got q={q}, df={df}")
    return float(stats.t.ppf(q, df))


METRIC_RANGES: dict[str, tuple[float, float]] = {"log_loss": (0.0, math.inf)}
"""The range of a metric whose values are not in ``[0, 1]`` (every other metric's is)."""


def metric_range(name: str, *, difference: bool = False) -> tuple[float, float]:
    """The values a metric (or, with ``difference``, a difference of two of it) can take."""
    lo, hi = METRIC_RANGES.get(name, (0.0, 1.0))
    return (lo - hi, hi - lo) if difference else (lo, hi)


def no_spread(values: Sequence[float] | np.ndarray) -> bool:
    """Whether values agree up to rounding (e.g. ``k / 31`` from different sums).

    Repeated splits whose metric (or paired difference) is the same on every split give no
    estimate of the spread at all; such values must not produce a zero-width interval.
    """
    v = np.asarray(values, dtype=np.float64)
    return bool(v.size >= 2 and np.ptp(v) <= 1e-9 * max(1.0, float(np.abs(v).max())))


def corrected_t_interval(
    values: Sequence[float] | np.ndarray,
    n_train: int,
    n_test: int,
    confidence: float = 0.95,
    *,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float]:
    """Corrected resampled t interval of a mean over repeated random splits.

    Repeated random splits of the same rows share most of their training and test rows, so
    their values are correlated and the plain t interval ``mean +- t * s / sqrt(J)`` covers
    less than it claims (about 92% at 3 splits and 77% at 10, ``benchmarks/interval_coverage.py``).
    Nadeau & Bengio (2003) inflate the variance of the mean from ``s^2 / J`` to
    ``s^2 * (1 / J + n_test / n_train)``; the quantile stays ``t(J - 1)``.

    Args:
        values: One value per split (a metric, or a paired difference of two).
        n_train: Training rows per split.
        n_test: Test rows per split.
        confidence: Coverage of the interval.
        bounds: The range of the quantity (the interval is clipped to it).

    Returns:
        ``(low, high)``; NaN ends for fewer than two values, a NaN value, or no spread at all
        (:func:`no_spread`: identical values estimate nothing, see the callers' fallbacks).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or np.isnan(v).any() or no_spread(v):
        return math.nan, math.nan
    se = corrected_standard_error(v, n_train, n_test)
    half = t_quantile(0.5 + confidence / 2, v.size - 1) * se
    return _clip(float(v.mean()) - half, float(v.mean()) + half, bounds)


def corrected_standard_error(
    values: Sequence[float] | np.ndarray, n_train: int, n_test: int
) -> float:
    """``sqrt(s^2 * (1 / J + n_test / n_train))`` of :func:`corrected_t_interval`."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or n_train < 1:
        return math.nan
    return math.sqrt(float(v.var(ddof=1)) * (1.0 / v.size + n_test / n_train))


def corrected_t_p_value(values: Sequence[float] | np.ndarray, n_train: int, n_test: int) -> float:
    """Two-sided p-value of "the mean is 0" under the corrected resampled t (NaN: no spread)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or np.isnan(v).any() or no_spread(v):
        return math.nan
    t = float(v.mean()) / corrected_standard_error(v, n_train, n_test)
    return float(2 * stats.t.sf(abs(t), v.size - 1))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (inside ``[0, 1]``, never empty).

    Unlike a percentile bootstrap it has width at 0 and 1: ``16 / 16`` gives ``[0.806, 1]``.
    """
    if n < 1:
        return math.nan, math.nan
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return _clip(centre - half, centre + half, (0.0, 1.0))


def _clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float]:
    return max(low, bounds[0]), min(high, bounds[1])


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test).

    Reject hypothesis ``i`` at level ``alpha`` when its adjusted p-value is below ``alpha``: the
    chance of any false rejection in the family stays at most ``alpha``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, math.nan)
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out.tolist()


def stratified_resample(labels: Int[Tensor, " batch"], generator: torch.Generator) -> Tensor:
    """Row indices drawn with replacement within each class (class counts kept)."""
    parts = []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        parts.append(rows[torch.randint(rows.numel(), (rows.numel(),), generator=generator)])
    return torch.cat(parts)


def bootstrap_values(
    statistic: Callable[[list[Tensor]], float],
    labels: Sequence[Tensor],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """The statistic on stratified bootstrap resamples of one or more test sets (NaNs dropped).

    Each resample draws, for every test set, its rows with replacement within each class (the
    test sets are stratified, so class counts stay fixed), and calls ``statistic`` with one index
    tensor per test set. A paired comparison computes both probes' metrics on the same indices
    inside ``statistic``.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = [torch.as_tensor(y).cpu() for y in labels]
    values = []
    for _ in range(n_resamples):
        value = statistic([stratified_resample(y, gen) for y in labels])
        if not math.isnan(value):
            values.append(value)
    return np.asarray(values, dtype=np.float64)


def bootstrap_interval(
    statistic: Callable[[list[Tensor]], float],
    labels: Sequence[Tensor],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of one or more test sets.

    The resamples are :func:`bootstrap_values`'. It covers the sampling of the test rows only,
    not of the training part or the initialisation (the probe is not retrained): with one split
    it is narrower than the uncertainty of the result. A bootstrap whose resamples all agree
    gives NaN ends (no estimate of the spread), never a zero-width interval.

    Args:
        statistic: Index tensors (one per test set) -> a number.
        labels: The labels of each test set.
        n_resamples: Bootstrap resamples.
        confidence: Coverage of the interval.
        seed: Seed of the resampling (the same seed gives the same interval).
        bounds: The range of the statistic (the interval is clipped to it).

    Returns:
        ``(low, high)``.
    """
    values = bootstrap_values(statistic, labels, n_resamples=n_resamples, seed=seed)
    return percentile_interval(values, n_resamples, confidence, bounds)


def percentile_interval(
    values: np.ndarray,
    n_resamples: int,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float]:
    """The percentile interval of bootstrap ``values``, clipped to ``bounds``.

    NaN ends when fewer than half of the ``n_resamples`` were finite, or when they all agree.
    """
    if len(values) < n_resamples / 2 or no_spread(values):
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return _clip(float(low), float(high), bounds)


IntervalMethod = Literal["corrected_t", "wilson", "bootstrap", "none"]
"""How an interval was made: ``corrected_t`` over repeated splits (:func:`corrected_t_interval`),
``wilson`` for an accuracy from one split's test rows (:func:`wilson_interval`), ``bootstrap``
over one split's test rows (:func:`bootstrap_interval`: test sampling only), ``none``."""

INTERVAL_TEXT: dict[str, str] = {
    "corrected_t": "corrected t over {splits}",
    "wilson": "Wilson, test rows of 1 split",
    "bootstrap": "bootstrap over test rows, 1 split: ignores training variability",
    "none": "no interval",
}
"""How each interval method is described where it is printed."""


@dataclass(frozen=True)
class Estimate:
    """One metric with its spread and interval, and the sample sizes behind it."""

    metric: str
    """Metric name, e.g. ``accuracy``."""
    mean: float
    """Mean over seeds (the metric itself for one seed)."""
    std: float
    """Sample standard deviation over seeds (``ddof=1``; NaN for one seed)."""
    low: float
    """Lower end of the interval (NaN when there is none)."""
    high: float
    """Upper end of the interval."""
    confidence: float
    """Coverage of the interval, e.g. 0.95."""
    method: IntervalMethod
    """How the interval was made (:data:`IntervalMethod`)."""
    n_seeds: int
    """Seeds (independent splits) behind the mean."""
    n_test: int
    """Test rows each seed's value is scored on."""
    n_train: int = 0
    """Training rows of each seed (the corrected t needs it; 0: unknown)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as ``None``)."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        """Rebuild from :meth:`to_dict` output (``None`` as NaN)."""
        d = {
            k: math.nan if v is None and k in ("mean", "std", "low", "high") else v
            for k, v in d.items()
        }
        if d.get("method") == "t":  # written before the corrected t
            d["method"] = "corrected_t"
        return cls(**d)

    @property
    def has_interval(self) -> bool:
        """Whether :attr:`low` and :attr:`high` are numbers."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def how(self) -> str:
        """What the interval is, e.g. ``95% corrected t over 3 splits, n_test=32``."""
        splits = f"{self.n_seeds} split" + ("" if self.n_seeds == 1 else "s")
        if not self.has_interval:
            why = "no spread over " + splits if self.n_seeds > 1 else splits
            return f"no interval: {why}, n_test={self.n_test}"
        text = INTERVAL_TEXT[self.method].format(splits=splits)
        return f"{self.confidence:.0%} {text}, n_test={self.n_test}"

    def text(self, digits: int = 3) -> str:
        """``0.750 [0.583, 0.917] (95% corrected t over 3 splits, n_test=12)``."""
        value = "–" if math.isnan(self.mean) else f"{self.mean:.{digits}f}"
        if not self.has_interval:
            return f"{value} ({self.how()})"
        return f"{value} [{self.low:.{digits}f}, {self.high:.{digits}f}] ({self.how()})"

    def __str__(self) -> str:
        return f"{self.metric} {self.text(4)}"


def estimate(
    metric: str,
    values: Sequence[float],
    n_test: int,
    n_train: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Mean, standard deviation and interval of one metric over repeated splits.

    Two or more splits: the corrected resampled t (:func:`corrected_t_interval`). An accuracy
    with one split, or the same accuracy on every split: the Wilson interval of one split's
    ``n_test`` rows (conservative for several splits, which share rows). Otherwise no interval
    (``method="none"``; one split: :meth:`ProtocolResult.bootstrap` gives the test-row bootstrap).
    """
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    low = high = math.nan
    method: IntervalMethod = "none"
    if np.isnan(v).any():
        pass  # e.g. a TPR with too few negatives: unavailable, no interval
    elif v.size > 1 and n_train > 0 and not no_spread(v):
        low, high = corrected_t_interval(
            v, n_train, n_test, confidence, bounds=metric_range(metric)
        )
        method = "corrected_t"
    elif metric == "accuracy" and n_test > 0 and (v.size == 1 or no_spread(v)):
        low, high = wilson_interval(round(mean * n_test), n_test, confidence)
        method = "wilson"
    return Estimate(
        metric=metric,
        mean=mean,
        std=float(v.std(ddof=1)) if v.size > 1 else math.nan,
        low=low,
        high=high,
        confidence=confidence,
        method=method,
        n_seeds=int(v.size),
        n_test=n_test,
        n_train=n_train,
    )
