"""Choosing a layer on the training part, and the flat result records the choice reads.

A grid of hooks x probe kinds gives one protocol result per cell. Which hook is "best" for a
probe kind is a choice, and like the weight decay it is made by cross-validation on the training
part, never by the test metrics: :func:`choose_layer` picks the hook with the best CV score (each
seed's CV metrics at the weight decay that seed chose, averaged over its folds and then over the
seeds) and reports the test metrics of the pick, with their sample size and interval.

The choice reads flat records (:func:`result_record`): one JSON/CSV-ready dict per cell with the
test metrics (mean over seeds), their intervals, ``n_test``, the seeds and the CV scores
(``cv_accuracy``, ...). Records are what results files hold, so the choice can be redone from
``results.json`` or ``results.csv`` without the probes. :func:`compare_choices` compares the
probes at their chosen hooks with :func:`lensprobe.train.compare.compare` (paired, same splits).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lensprobe.errors import InputError
from lensprobe.metrics import BINARY_METRIC_NAMES, LOWER_IS_BETTER, METRIC_NAMES
from lensprobe.train.compare import Comparison, compare
from lensprobe.train.result import ProtocolResult

logger = logging.getLogger(__name__)

__all__ = [
    "CV_METRICS",
    "HEADLINE_METRICS",
    "LayerChoice",
    "choose_layer",
    "choose_layers",
    "compare_choices",
    "cv_at_choice",
    "describe",
    "interval",
    "result_record",
    "splits_text",
]

CV_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss")
"""CV metrics a record carries, as ``cv_<name>`` (the scores :func:`choose_layer` can use)."""

HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "auroc")
"""Test metrics a record carries an interval for."""

BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the bootstrap intervals of one-seed records and of :func:`compare_choices`
(about 0.1 s per metric and cell at a few dozen test rows)."""


def _get(run: Any, key: str) -> Any:
    return run[key] if isinstance(run, Mapping) else getattr(run, key)


def cv_at_choice(runs: Sequence[Any]) -> dict[str, float]:
    """The CV score of what the protocol chose: per seed at its chosen decay, mean over seeds.

    Each seed chooses its weight decay by its own cross-validation; its CV metrics at that decay
    (averaged over its folds) are the CV score of that seed's probe. The result is their mean
    over seeds (NaN values skipped).

    Args:
        runs: :attr:`ProtocolResult.runs` (:class:`~lensprobe.train.result.SeedRun`), or their
            ``to_dict()`` form as saved in ``results.json``.

    Returns:
        Metric name -> mean CV value, for each name of :data:`CV_METRICS` the runs have.
    """
    if not runs:
        raise InputError("no seed runs to read CV scores from; pass ProtocolResult.runs")
    per_seed = []
    for run in runs:
        chosen = _get(run, "weight_decay")
        rows = [r for r in _get(run, "cv_summary") if r["weight_decay"] == chosen]
        if not rows:
            raise InputError(
                f"seed run has no CV row at its chosen weight decay {chosen}; pass the runs of "
                "one protocol result"
            )
        per_seed.append(rows[0])
    out = {}
    for name in CV_METRICS:
        values = [_number(r.get(name)) for r in per_seed]
        values = [v for v in values if not math.isnan(v)]
        if any(name in r for r in per_seed):
            out[name] = sum(values) / len(values) if values else math.nan
    return out


def _round(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(v, 5) if isinstance(v, float) else v


def result_record(
    result: ProtocolResult, *, bootstrap_resamples: int | None = None
) -> dict[str, Any]:
    """A flat, JSON/CSV-ready summary of one protocol result (floats rounded to 5 digits).

    Keys: every test metric (mean over seeds); ``weight_decay`` (the first seed's choice),
    ``n_train``, ``n_test`` (rows per seed), ``seeds`` (splits), ``seconds``; ``cv_<metric>``
    for :data:`CV_METRICS` (:func:`cv_at_choice`); and for each of :data:`HEADLINE_METRICS` an
    interval: with two or more seeds ``<metric>_std``, ``<metric>_low``, ``<metric>_high`` (95%
    Student-t over seeds, ``interval`` = ``"t"``); with one seed ``<metric>_boot_low``,
    ``<metric>_boot_high`` (95% percentile bootstrap over that split's test rows, which covers
    the test sample only; ``interval`` = ``"bootstrap"``).

    Args:
        result: What :func:`lensprobe.run_protocol` returned.
        bootstrap_resamples: Resamples of the one-seed bootstrap interval (0: none; default
            :data:`BOOTSTRAP_RESAMPLES`).
    """
    if bootstrap_resamples is None:
        bootstrap_resamples = BOOTSTRAP_RESAMPLES
    r = result
    row: dict[str, Any] = {k: _round(v) for k, v in r.metrics.items()}
    row.update(
        weight_decay=r.weight_decay,
        n_train=int(r.train_rows.numel()),
        n_test=r.n_test,
        seeds=len(r.runs),
        seconds=round(r.seconds, 2),
    )
    row.update({f"cv_{k}": _round(v) for k, v in cv_at_choice(r.runs).items()})
    if len(r.runs) > 1:
        row["interval"] = "t"
        for name in HEADLINE_METRICS:
            est = r.summary.get(name)
            if est is not None:
                row.update(
                    {
                        f"{name}_std": _round(est.std),
                        f"{name}_low": _round(est.low),
                        f"{name}_high": _round(est.high),
                    }
                )
    elif bootstrap_resamples > 0:
        row["interval"] = "bootstrap"
        for name in HEADLINE_METRICS:
            if name in r.metrics:
                est = r.bootstrap(name, n_resamples=bootstrap_resamples)
                row.update(
                    {f"{name}_boot_low": _round(est.low), f"{name}_boot_high": _round(est.high)}
                )
    return row


def _number(v: Any) -> float:
    """A record value as a float (CSV strings read back; empty or missing: NaN)."""
    if v is None or v == "":
        return math.nan
    return float(v)


def interval(
    record: Mapping[str, Any], metric: str = "accuracy"
) -> tuple[float, float, str] | None:
    """The 95% interval a record carries for a test metric: ``(low, high, method)`` or None.

    ``method`` is ``"t"`` (over seeds) or ``"bootstrap"`` (one split, over its test rows).
    """
    for method, low, high in (
        ("t", f"{metric}_low", f"{metric}_high"),
        ("bootstrap", f"{metric}_boot_low", f"{metric}_boot_high"),
    ):
        lo, hi = _number(record.get(low)), _number(record.get(high))
        if not (math.isnan(lo) or math.isnan(hi)):
            return lo, hi, method
    return None


def splits_text(record: Mapping[str, Any]) -> str:
    """``1 split`` or ``3 splits`` (each seed is an independent split)."""
    seeds = _seeds(record)
    return f"{seeds} split" + ("" if seeds == 1 else "s")


def _seeds(record: Mapping[str, Any]) -> int:
    """The seeds (splits) behind a record's test metrics (1 when it names none)."""
    return int(_number(record.get("seeds")) if record.get("seeds") not in (None, "") else 1)


def describe(record: Mapping[str, Any], metric: str = "accuracy", digits: int = 3) -> str:
    """A test metric with its interval and sample size, e.g.

    ``0.750 [0.583, 0.917] (95% t over 3 splits, n_test=12)`` or
    ``0.750 [0.583, 0.917] (95% bootstrap, 1 split, n_test=12)`` or
    ``0.750 (1 split, n_test=12)`` when the record has no interval.
    """
    value = _number(record.get(metric))
    text = "–" if math.isnan(value) else f"{value:.{digits}f}"
    n = record.get("n_test")
    ci = interval(record, metric)
    if ci is None:
        return f"{text} ({splits_text(record)}, n_test={n})"
    low, high, method = ci
    how = f"t over {splits_text(record)}" if method == "t" else f"bootstrap, {splits_text(record)}"
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}] (95% {how}, n_test={n})"


@dataclass(frozen=True)
class LayerChoice:
    """The hook cross-validation picks for one probe kind, and the test metrics of the pick."""

    dataset: str | None
    """Dataset of the records (None when they name none)."""
    probe: str
    """Probe spec label, e.g. ``attention-8``."""
    hook: str
    """The chosen hook."""
    by: str
    """The CV score that chose it, e.g. ``cv_accuracy``."""
    cv_score: float
    """The chosen hook's CV score (training part only)."""
    test: dict[str, float]
    """Test metrics of the chosen hook's probe (mean over seeds), scored once."""
    n_test: int
    """Test rows per seed behind :attr:`test`."""
    seeds: int
    """Seeds (independent splits) behind :attr:`test`."""
    hooks: tuple[str, ...]
    """Every hook the choice was made among, in record order."""
    record: Mapping[str, Any]
    """The chosen hook's record (intervals included)."""

    def __str__(self) -> str:
        name = self.by.removeprefix("cv_")
        among = f"among {len(self.hooks)} hooks" if len(self.hooks) > 1 else "the only hook"
        return (
            f"{self.probe}: {self.hook} ({among}, chosen by CV {name} {self.cv_score:.3f}); "
            f"test accuracy {describe(self.record, 'accuracy')}"
        )


def choose_layer(
    records: Sequence[Mapping[str, Any]],
    *,
    by: str = "cv_accuracy",
    probe: str | None = None,
    dataset: str | None = None,
) -> LayerChoice:
    """Pick the hook of one probe kind by its cross-validation score, not its test score.

    The test part plays no role in the choice; the chosen hook's test metrics are what to report.
    Ties go to the lower ``cv_log_loss``, then to the earlier record.

    Args:
        records: Flat result records (:func:`result_record` via ``GridRow.record()``, the
            ``records`` of ``results.json`` or the rows of ``results.csv``), one per hook.
        by: A CV column: ``cv_accuracy`` (default), ``cv_balanced_accuracy``, ``cv_macro_f1``,
            ``cv_auroc`` or ``cv_log_loss`` (lower is better).
        probe: Keep only records of this probe label (needed when the records hold several).
        dataset: Keep only records of this dataset (needed when they hold several).

    Returns:
        The chosen hook, its CV score and its test metrics with ``n_test`` and seeds.

    Raises:
        InputError: ``by`` is not a CV score, no or several (dataset, probe) groups remain, a
            hook appears twice, or the records carry no CV score.
    """
    if not by.startswith("cv_"):
        raise InputError(
            f"by={by!r} is not a cross-validation score: a layer is chosen on the training part, "
            f"pass by='cv_{by}' (one of {', '.join('cv_' + m for m in CV_METRICS)})"
        )
    rows = _one_group(records, probe, dataset)
    hooks = _hooks_with_scores(rows, by)
    best = _best_row(rows, by)
    rec = rows[best]
    names = [*METRIC_NAMES, *BINARY_METRIC_NAMES]
    return LayerChoice(
        dataset=rec.get("dataset"),
        probe=str(rec.get("probe")),
        hook=hooks[best],
        by=by,
        cv_score=_number(rec[by]),
        test={k: _number(rec[k]) for k in names if k in rec},
        n_test=int(_number(rec.get("n_test"))),
        seeds=_seeds(rec),
        hooks=tuple(hooks),
        record=dict(rec),
    )


def _one_group(
    records: Sequence[Mapping[str, Any]], probe: str | None, dataset: str | None
) -> list[Mapping[str, Any]]:
    """The records of ``probe`` and ``dataset``; an error unless they form one group."""
    rows = [
        r
        for r in records
        if (probe is None or r.get("probe") == probe)
        and (dataset is None or r.get("dataset") == dataset)
    ]
    if not rows:
        have = sorted({(str(r.get("dataset")), str(r.get("probe"))) for r in records})
        raise InputError(
            f"no records for dataset={dataset!r}, probe={probe!r}; the records hold "
            f"(dataset, probe) {have}"
        )
    groups = sorted({(str(r.get("dataset")), str(r.get("probe"))) for r in rows})
    if len(groups) > 1:
        raise InputError(
            f"the records hold {len(groups)} (dataset, probe) groups {groups}; pass dataset= and "
            "probe=, or use choose_layers for one choice per group"
        )
    return rows


def _hooks_with_scores(rows: Sequence[Mapping[str, Any]], by: str) -> list[str]:
    """The hook of each record; an error for a hook recorded twice or a record without ``by``."""
    hooks = [str(r.get("hook")) for r in rows]
    twice = sorted({h for h in hooks if hooks.count(h) > 1})
    if twice:
        raise InputError(f"hooks {twice} appear in more than one record; pass one record per hook")
    missing = [h for h, r in zip(hooks, rows, strict=True) if by not in r]
    if missing:
        raise InputError(
            f"the records of hooks {missing} have no {by!r} (results written before lensprobe "
            "recorded CV scores); rerun lensprobe train"
        )
    return hooks


def _best_row(rows: Sequence[Mapping[str, Any]], by: str) -> int:
    """Index of the best CV score ``by`` (ties: lower ``cv_log_loss``, then the earlier row)."""
    sign = 1.0 if by.removeprefix("cv_") in LOWER_IS_BETTER else -1.0

    def key(i: int) -> tuple[float, float, int]:
        score = _number(rows[i][by])
        tie = _number(rows[i].get("cv_log_loss"))
        return (
            math.inf if math.isnan(score) else sign * score,
            math.inf if math.isnan(tie) else tie,
            i,
        )

    return min(range(len(rows)), key=key)


def choose_layers(
    records: Sequence[Mapping[str, Any]], *, by: str = "cv_accuracy"
) -> list[LayerChoice]:
    """:func:`choose_layer` for every (dataset, probe) of the records, in order of appearance."""
    groups = list(dict.fromkeys((r.get("dataset"), r.get("probe")) for r in records))
    return [choose_layer(records, by=by, dataset=d, probe=p) for d, p in groups]


def compare_choices(
    choices: Sequence[LayerChoice],
    results: Mapping[tuple[Any, str, str], ProtocolResult],
    *,
    metric: str = "accuracy",
) -> list[Comparison]:
    """Paired comparisons of every two probes of a dataset, each at its chosen hook.

    Each pair goes through :func:`lensprobe.train.compare.compare` (the same splits, a t-interval
    over seeds or with one seed a paired bootstrap, and a verdict that is ``undecided`` when the
    interval contains 0; :data:`BOOTSTRAP_RESAMPLES` resamples). The names read ``probe @ hook``
    when the two hooks differ.

    Args:
        choices: From :func:`choose_layers`.
        results: ``(dataset, hook, probe)`` -> the protocol result of that cell.
        metric: The test metric compared.

    Returns:
        One comparison per pair (in the order of ``choices``); pairs whose splits differ are
        left out with a warning.
    """
    out = []
    for i, a in enumerate(choices):
        for b in choices[i + 1 :]:
            if a.dataset != b.dataset:
                continue
            ra = results[(a.dataset, a.hook, a.probe)]
            rb = results[(b.dataset, b.hook, b.probe)]
            try:
                c = compare(ra, rb, metric, n_resamples=BOOTSTRAP_RESAMPLES)
            except InputError as err:
                logger.warning("%s vs %s not compared: %s", a.probe, b.probe, err)
                continue
            if a.hook != b.hook:
                c = replace(c, a=f"{a.probe} @ {a.hook}", b=f"{b.probe} @ {b.hook}")
            else:
                c = replace(c, a=a.probe, b=b.probe)
            out.append(c)
    return out
