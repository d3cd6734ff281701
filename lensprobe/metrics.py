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

Intervals: :func:`t_interval` over repeated runs (seeds), :func:`bootstrap_interval` over the rows
of one test set (or several, resampled independently).
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

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auroc",
    "log_loss",
    "ece",
)
"""Metrics of every task."""

BINARY_METRIC_NAMES: tuple[str, ...] = ("tpr_at_1pct_fpr", "tpr_at_5pct_fpr")
"""Metrics only binary (one-logit) tasks have."""

MONITORING_FPRS: dict[str, float] = {"tpr_at_1pct_fpr": 0.01, "tpr_at_5pct_fpr": 0.05}
"""The false-positive rate behind each TPR metric."""

LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "ece"})
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
        raise ValueError(
            f"expected logits (batch, n_outputs) and labels (batch,), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("no examples to score")
    n_classes = 2 if logits.shape[1] == 1 else logits.shape[1]
    labels = labels.detach().cpu().long()
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(
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
    """Expected calibration error over ``n_bins`` equal-width probability bins.

    ``sum over bins of (rows in bin / rows) * |observed frequency - mean predicted probability|``.
    Binary (one logit): the reliability of ``p(class 1)`` against the frequency of class 1 (the
    bins of ``sklearn.calibration.calibration_curve``; a bin holds ``(lo, hi]``, the first also 0).
    k classes: top-label calibration, the probability of the predicted class against how often
    the prediction is right.
    """
    labels, _ = _check(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    probs = log_probabilities(logits).exp()
    if logits.shape[1] == 1:
        conf, hit = probs[:, 1], (labels == 1).double()
    else:
        conf, pred = probs.max(dim=-1)
        hit = (pred == labels).double()
    edges = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    bins = torch.bucketize(
        conf.contiguous(), edges
    )  # (lo, hi]: the same bins as np.searchsorted(side=left)
    count = torch.bincount(bins, minlength=n_bins).double()
    gap = torch.bincount(bins, weights=hit, minlength=n_bins) - torch.bincount(
        bins, weights=conf, minlength=n_bins
    )
    return float(gap.abs().sum() / count.sum())


def _binary_scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    labels, _ = _check(logits, labels)
    if logits.shape[1] != 1:
        raise ValueError(
            f"TPR at a fixed FPR is defined for binary (one-logit) probes; these logits have "
            f"{logits.shape[1]} outputs: score one class against the rest yourself"
        )
    return _as_logits(logits)[:, 0], labels == 1


def fpr_threshold(
    logits: Float[Tensor, "batch n_outputs"], labels: Int[Tensor, " batch"], fpr: float
) -> float:
    """The lowest logit threshold whose false-positive rate on these rows is at most ``fpr``.

    A row is flagged (predicted positive) when its logit is strictly above the threshold. With
    ``n`` negatives at most ``floor(fpr * n)`` of them lie above it; with fewer than ``1 / fpr``
    negatives that means none. Returns ``-inf`` when every negative may be flagged.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    scores, positive = _binary_scores(logits, labels)
    neg = scores[~positive].sort(descending=True).values
    if neg.numel() == 0:
        raise ValueError("no negative (class 0) rows to fix a false-positive rate on")
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
    them to :func:`classification_metrics` for the test part: a monitoring-style result.
    """
    return {name: fpr_threshold(logits, labels, fpr) for name, fpr in MONITORING_FPRS.items()}


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
                return tpr_at_fpr(logits, labels, fpr, threshold=thresholds[tpr_name])
            has_negative = bool((labels.detach().cpu() == 0).any())
            return tpr_at_fpr(logits, labels, fpr) if has_negative else math.nan
        if name == realised_fpr_name(tpr_name) and tpr_name in thresholds:
            return false_positive_rate(logits, labels, thresholds[tpr_name])
    known = [*METRIC_NAMES, *BINARY_METRIC_NAMES]
    raise KeyError(f"unknown metric {name!r}; choose one of {known}")


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


def student_t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Bisection on the CDF, which is integrated numerically (Simpson's rule); accurate to ~1e-8.
    """
    if not 0.0 < q < 1.0 or df < 1:
        raise ValueError(f"need 0 < q < 1 and df >= 1, got q={q}, df={df}")
    if q < 0.5:
        return -student_t_quantile(1.0 - q, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # for t >= 0
        x = np.linspace(0.0, t, 4001)
        pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        h = t / 4000
        return 0.5 + h / 3 * float(pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def t_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (e.g. one metric over seeds).

    ``mean +- t(confidence, n - 1) * sd / sqrt(n)`` with the sample standard deviation; NaN ends
    for fewer than two values or any NaN value.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or np.isnan(v).any():
        return math.nan, math.nan
    half = student_t_quantile(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def stratified_resample(labels: Int[Tensor, " batch"], generator: torch.Generator) -> Tensor:
    """Row indices drawn with replacement within each class (class counts kept)."""
    parts = []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        parts.append(rows[torch.randint(rows.numel(), (rows.numel(),), generator=generator)])
    return torch.cat(parts)


def bootstrap_interval(
    statistic: Callable[[list[Tensor]], float],
    labels: Sequence[Tensor],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of one or more test sets.

    Each resample draws, for every test set, its rows with replacement within each class (the
    test sets are stratified, so class counts stay fixed), and calls ``statistic`` with one index
    tensor per test set. A paired comparison computes both probes' metrics on the same indices
    inside ``statistic``. Resamples where the statistic is NaN are dropped.

    Args:
        statistic: Index tensors (one per test set) -> a number.
        labels: The labels of each test set.
        n_resamples: Bootstrap resamples.
        confidence: Coverage of the interval.
        seed: Seed of the resampling (the same seed gives the same interval).

    Returns:
        ``(low, high)``.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = [torch.as_tensor(y).cpu() for y in labels]
    values = []
    for _ in range(n_resamples):
        value = statistic([stratified_resample(y, gen) for y in labels])
        if not math.isnan(value):
            values.append(value)
    if len(values) < n_resamples / 2:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return float(low), float(high)


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
    method: Literal["t", "bootstrap", "none"]
    """``t``: Student-t interval over seeds (each seed its own split); ``bootstrap``: percentile
    bootstrap over the test rows; ``none``: one seed, no interval asked for."""
    n_seeds: int
    """Seeds (independent splits) behind the mean."""
    n_test: int
    """Test rows each seed's value is scored on."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as ``None``)."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in asdict(self).items()
        }

    def __str__(self) -> str:
        if math.isnan(self.low):
            return f"{self.metric} {self.mean:.4f} (n_test={self.n_test}, {self.n_seeds} seed(s))"
        how = f"t over {self.n_seeds} seeds" if self.method == "t" else "bootstrap"
        return (
            f"{self.metric} {self.mean:.4f} [{self.low:.4f}, {self.high:.4f}] "
            f"({self.confidence:.0%} {how}, n_test={self.n_test})"
        )


def estimate(
    metric: str, values: Sequence[float], n_test: int, confidence: float = 0.95
) -> Estimate:
    """Mean, standard deviation and t-interval of one metric over seeds."""
    v = np.asarray(values, dtype=np.float64)
    low, high = t_interval(v, confidence)
    return Estimate(
        metric=metric,
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if v.size > 1 else math.nan,
        low=low,
        high=high,
        confidence=confidence,
        method="t" if v.size > 1 else "none",
        n_seeds=int(v.size),
        n_test=n_test,
    )
