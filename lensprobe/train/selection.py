"""Choosing a layer per split on its training part, and the flat result records the choice reads.

A grid of hooks x probe kinds gives one protocol result per cell. Which hook is "best" for a
probe kind is a choice, and like the weight decay it is made by cross-validation on the training
part, never by the test metrics, and **per split**: with repeated random splits, one split's test
rows lie in another split's training part, so a choice pooled over splits would read test labels.
:func:`choose_layer` lets every split pick the hook with the best CV score of its own training
part (at the weight decay that split chose) and reports the mean over splits of each split's test
metrics at its own pick, with a corrected resampled t interval; which hook each split picked is
recorded (:attr:`LayerChoice.picks`).

The choice reads flat records (:func:`result_record`): one JSON-ready dict per cell with the test
metrics (mean over seeds), their intervals, ``n_test``, the seeds, the CV scores (``cv_accuracy``,
...: mean over seeds) and ``splits``, each split's CV scores and test metrics
(:func:`split_scores`). :func:`compare_choices` compares the probes at their chosen hooks, split
by split, with :func:`lensprobe.train.compare.compare_runs`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lensprobe.errors import InputError
from lensprobe.metrics import (
    BINARY_METRIC_NAMES,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    Estimate,
    estimate,
)
from lensprobe.train.compare import Comparison, compare_runs, holm
from lensprobe.train.result import ProtocolResult

logger = logging.getLogger(__name__)

__all__ = [
    "CV_METRICS",
    "HEADLINE_METRICS",
    "LayerChoice",
    "choose_layer",
    "choose_layers",
    "compare_choices",
    "compare_family",
    "cv_at_choice",
    "describe",
    "interval",
    "record_estimate",
    "result_record",
    "split_scores",
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


def split_scores(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Each split's CV scores at the weight decay it chose, and its test metrics.

    Args:
        runs: :attr:`ProtocolResult.runs` (:class:`~lensprobe.train.result.SeedRun`), or their
            ``to_dict()`` form as saved in ``results.json``.

    Returns:
        Per split ``{"split_seed", "weight_decay", "n_train", "n_test", "cv": {...},
        "test": {...}}``; ``cv`` holds :data:`CV_METRICS` averaged over the split's folds
        (JSON-ready: an unavailable value is ``None``).
    """
    if not runs:
        raise InputError("no seed runs to read CV scores from; pass ProtocolResult.runs")
    out = []
    for run in runs:
        chosen = _get(run, "weight_decay")
        rows = [r for r in _get(run, "cv_summary") if r["weight_decay"] == chosen]
        if not rows:
            raise InputError(
                f"seed run has no CV row at its chosen weight decay {chosen}; pass the runs of "
                "one protocol result"
            )
        n_train = _get(run, "n_train") if isinstance(run, Mapping) else run.train_rows.numel()
        out.append(
            {
                "split_seed": int(_get(run, "split_seed")),
                "weight_decay": chosen,
                "n_train": int(n_train),
                "n_test": int(_get(run, "n_test")),
                "cv": {k: _json(rows[0].get(k)) for k in CV_METRICS if k in rows[0]},
                "test": {k: _json(v) for k, v in _get(run, "metrics").items()},
            }
        )
    return out


def _json(v: Any) -> float | None:
    """A metric value for a JSON file: NaN (or missing) as ``None``."""
    v = _number(v)
    return None if math.isnan(v) else v


def _score(scores: Mapping[str, Any], name: str) -> float:
    """A per-split score as a float (``None`` or missing: NaN)."""
    return _number(scores.get(name))


def cv_at_choice(runs: Sequence[Any]) -> dict[str, float]:
    """Each CV score at each split's chosen decay, averaged over the splits (NaN skipped)."""
    per_split = split_scores(runs)
    out = {}
    for name in CV_METRICS:
        if any(name in s["cv"] for s in per_split):
            values = [_score(s["cv"], name) for s in per_split]
            values = [v for v in values if not math.isnan(v)]
            out[name] = sum(values) / len(values) if values else math.nan
    return out


def _round(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(v, 5) if isinstance(v, float) else v


def result_record(
    result: ProtocolResult, *, bootstrap_resamples: int | None = None
) -> dict[str, Any]:
    """A flat, JSON-ready summary of one protocol result (floats rounded to 5 digits).

    Keys: every test metric (mean over seeds); ``weight_decay`` (the first seed's choice),
    ``n_train``, ``n_test`` (rows per seed), ``seeds`` (splits), ``seconds``; ``cv_<metric>``
    for :data:`CV_METRICS` (:func:`cv_at_choice`); ``splits`` (:func:`split_scores`, what the
    per-split layer choice reads; a list, left out of CSV files); and for each of
    :data:`HEADLINE_METRICS` a 95% interval ``<metric>_low``, ``<metric>_high`` made as
    ``<metric>_interval`` says (:data:`lensprobe.metrics.IntervalMethod`): the corrected t over
    two or more seeds, Wilson for one seed's accuracy, a percentile bootstrap over one seed's test
    rows for the others (test sampling only); ``<metric>_std`` over seeds.

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
        precision=r.precision,
    )
    row.update({f"cv_{k}": _round(v) for k, v in cv_at_choice(r.runs).items()})
    for name in HEADLINE_METRICS:
        est = r.summary.get(name)
        if est is None:
            continue
        if est.method == "none" and len(r.runs) == 1 and bootstrap_resamples > 0:
            est = r.bootstrap(name, n_resamples=bootstrap_resamples)
        row.update(
            {
                f"{name}_std": _round(est.std),
                f"{name}_low": _round(est.low),
                f"{name}_high": _round(est.high),
                f"{name}_interval": est.method if est.has_interval else "none",
            }
        )
    row["splits"] = split_scores(r.runs)
    return row


def _number(v: Any) -> float:
    """A record value as a float (CSV strings read back; empty or missing: NaN)."""
    if v is None or v == "":
        return math.nan
    return float(v)


def record_estimate(record: Mapping[str, Any], metric: str = "accuracy") -> Estimate:
    """A record's test metric with the interval it carries, as an :class:`Estimate`."""
    low, high = _number(record.get(f"{metric}_low")), _number(record.get(f"{metric}_high"))
    method = str(record.get(f"{metric}_interval") or "none")
    if method == "none" or math.isnan(low) or math.isnan(high):
        low = high = math.nan
        method = "none"
    return Estimate(
        metric=metric,
        mean=_number(record.get(metric)),
        std=_number(record.get(f"{metric}_std")),
        low=low,
        high=high,
        confidence=0.95,
        method=method,  # type: ignore[arg-type]
        n_seeds=_seeds(record),
        n_test=int(_number(record.get("n_test"))) if record.get("n_test") not in (None, "") else 0,
        n_train=int(_number(record.get("n_train")))
        if record.get("n_train") not in (None, "")
        else 0,
    )


def interval(
    record: Mapping[str, Any], metric: str = "accuracy"
) -> tuple[float, float, str] | None:
    """The 95% interval a record carries for a test metric: ``(low, high, method)`` or None.

    ``method`` is one of :data:`lensprobe.metrics.IntervalMethod` (``corrected_t`` over seeds,
    ``wilson`` or ``bootstrap`` over one split's test rows).
    """
    est = record_estimate(record, metric)
    return (est.low, est.high, est.method) if est.has_interval else None


def splits_text(record: Mapping[str, Any]) -> str:
    """``1 split`` or ``3 splits`` (each seed is an independent split)."""
    seeds = _seeds(record)
    return f"{seeds} split" + ("" if seeds == 1 else "s")


def _seeds(record: Mapping[str, Any]) -> int:
    """The seeds (splits) behind a record's test metrics (1 when it names none)."""
    return int(_number(record.get("seeds")) if record.get("seeds") not in (None, "") else 1)


def describe(record: Mapping[str, Any], metric: str = "accuracy", digits: int = 3) -> str:
    """A test metric with its interval and sample size, e.g.

    ``0.750 [0.583, 0.917] (95% corrected t over 3 splits, n_test=12)`` or
    ``0.750 [0.468, 0.911] (95% Wilson, test rows of 1 split, n_test=12)``.
    """
    return record_estimate(record, metric).text(digits)


@dataclass(frozen=True)
class LayerChoice:
    """The hook each split's cross-validation picks for one probe kind, and the test metrics."""

    dataset: str | None
    """Dataset of the records (None when they name none)."""
    probe: str
    """Probe spec label, e.g. ``attention-8``."""
    picks: tuple[str, ...]
    """The hook each split picked, in split order."""
    split_seeds: tuple[int, ...]
    """The split seed of each split."""
    by: str
    """The CV score that chose, e.g. ``cv_accuracy``."""
    cv_score: float
    """Mean over splits of each pick's CV score (training parts only)."""
    test: dict[str, float]
    """Test metrics: mean over splits of each split's metric at its own pick, scored once."""
    estimates: dict[str, Estimate]
    """Each of :data:`HEADLINE_METRICS` of :attr:`test` with its interval over the splits."""
    n_test: int
    """Test rows per split."""
    n_train: int
    """Training rows per split."""
    hooks: tuple[str, ...]
    """Every hook the choice was made among, in record order."""

    @property
    def seeds(self) -> int:
        """Splits behind :attr:`test`."""
        return len(self.picks)

    @property
    def hook(self) -> str:
        """The hook most splits picked (ties: the one picked first)."""
        counts = Counter(self.picks)
        return max(self.picks, key=lambda h: (counts[h], -self.picks.index(h)))

    def count(self, hook: str) -> int:
        """How many splits picked ``hook``."""
        return self.picks.count(hook)

    def picks_text(self) -> str:
        """``blocks.9 (3 of 3 splits)`` or ``per split: blocks.4, blocks.9, blocks.9``."""
        if len(set(self.picks)) == 1:
            n = len(self.picks)
            return f"{self.picks[0]} ({'the one split' if n == 1 else f'all {n} splits'})"
        return "per split: " + ", ".join(self.picks)

    def __str__(self) -> str:
        name = self.by.removeprefix("cv_")
        among = f"among {len(self.hooks)} hooks" if len(self.hooks) > 1 else "the only hook"
        return (
            f"{self.probe}: {self.picks_text()} ({among}, each split by its own CV {name}, "
            f"mean {self.cv_score:.3f}); test accuracy {self.estimates['accuracy'].text()}"
        )


def choose_layer(
    records: Sequence[Mapping[str, Any]],
    *,
    by: str = "cv_accuracy",
    probe: str | None = None,
    dataset: str | None = None,
) -> LayerChoice:
    """Let every split pick the hook of one probe kind by its own cross-validation score.

    Split ``j`` picks the hook whose CV score on split ``j``'s training part (at the weight decay
    split ``j`` chose there) is best; ties go to the lower CV log loss, then to the earlier
    record. Its test metrics at that hook are what it reports; the choice's metrics are their
    mean over splits, with a corrected resampled t interval (Wilson for one split's accuracy).
    No split's choice reads any test row of its own split or of another.

    Args:
        records: Flat result records (``lensprobe.grid.Cell.record()``, ``Grid.records()``, or
            the ``records`` of ``results.json``), one per hook, run on the same splits.
        by: A CV column: ``cv_accuracy`` (default), ``cv_balanced_accuracy``, ``cv_macro_f1``,
            ``cv_auroc`` or ``cv_log_loss`` (lower is better).
        probe: Keep only records of this probe label (needed when the records hold several).
        dataset: Keep only records of this dataset (needed when they hold several).

    Returns:
        Each split's hook, the mean CV score of the picks and the test metrics with intervals.

    Raises:
        InputError: ``by`` is not a CV score, no or several (dataset, probe) groups remain, a
            hook appears twice, the records carry no per-split scores, or their splits differ.
    """
    if not by.startswith("cv_"):
        raise InputError(
            f"by={by!r} is not a cross-validation score: a layer is chosen on the training part, "
            f"pass by='cv_{by}' (one of {', '.join('cv_' + m for m in CV_METRICS)})"
        )
    rows = _one_group(records, probe, dataset)
    hooks = _hooks_with_scores(rows, by)
    splits = _aligned_splits(rows, hooks)
    metric = by.removeprefix("cv_")
    picks = [_best_hook([s[j] for s in splits], metric) for j in range(len(splits[0]))]
    picked = [splits[i][j] for j, i in enumerate(picks)]
    names = [n for n in (*METRIC_NAMES, *BINARY_METRIC_NAMES) if n in picked[0]["test"]]
    test = {n: sum(_score(p["test"], n) for p in picked) / len(picked) for n in names}
    n_test, n_train = int(picked[0]["n_test"]), int(picked[0]["n_train"])
    estimates = {
        n: estimate(n, [_score(p["test"], n) for p in picked], n_test, n_train)
        for n in HEADLINE_METRICS
        if n in test
    }
    return LayerChoice(
        dataset=rows[0].get("dataset"),
        probe=str(rows[0].get("probe")),
        picks=tuple(hooks[i] for i in picks),
        split_seeds=tuple(p["split_seed"] for p in picked),
        by=by,
        cv_score=sum(_score(p["cv"], metric) for p in picked) / len(picked),
        test=test,
        estimates=estimates,
        n_test=n_test,
        n_train=n_train,
        hooks=tuple(hooks),
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
    """The hook of each record; an error for a hook recorded twice or a record without scores."""
    hooks = [str(r.get("hook")) for r in rows]
    twice = sorted({h for h in hooks if hooks.count(h) > 1})
    if twice:
        raise InputError(f"hooks {twice} appear in more than one record; pass one record per hook")
    missing = [h for h, r in zip(hooks, rows, strict=True) if not r.get("splits")]
    if missing:
        raise InputError(
            f"the records of hooks {missing} carry no per-split scores ('splits'); read the "
            "results folder back with lensprobe.grid.load_results (results.csv has none)"
        )
    metric = by.removeprefix("cv_")
    lacking = [h for h, r in zip(hooks, rows, strict=True) if metric not in r["splits"][0]["cv"]]
    if lacking:
        raise InputError(f"the records of hooks {lacking} have no CV {metric!r}; pass another by=")
    return hooks


def _aligned_splits(
    rows: Sequence[Mapping[str, Any]], hooks: Sequence[str]
) -> list[list[dict[str, Any]]]:
    """Each record's per-split scores; an error unless every hook was run on the same splits."""
    splits = [list(r["splits"]) for r in rows]
    seeds = [[s["split_seed"] for s in per] for per in splits]
    if any(s != seeds[0] for s in seeds):
        bad = {h: s for h, s in zip(hooks, seeds, strict=True) if s != seeds[0]}
        raise InputError(
            f"hooks were run on different splits (split seeds {seeds[0]} vs {bad}): run every "
            "hook with the same seeds on the same data"
        )
    return splits


def _best_hook(candidates: Sequence[Mapping[str, Any]], metric: str) -> int:
    """Index of the best CV score (ties: lower CV log loss, then the earlier candidate)."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def key(i: int) -> tuple[float, float, int]:
        score = _score(candidates[i]["cv"], metric)
        tie = _score(candidates[i]["cv"], "log_loss")
        return (
            math.inf if math.isnan(score) else round(sign * score, 12),
            math.inf if math.isnan(tie) else tie,
            i,
        )

    return min(range(len(candidates)), key=key)


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
    """Paired comparisons of every two probes of a dataset, each split at its own pick.

    Split ``j`` of probe ``a`` is the run of split ``j`` at the hook split ``j`` picked for
    ``a``; likewise for ``b``; the per-split differences go through
    :func:`lensprobe.train.compare.compare_runs` (corrected t over the splits, or with one split
    a paired bootstrap over its test rows; :data:`BOOTSTRAP_RESAMPLES` resamples). The names read
    ``probe @ hook`` when every split picked that hook, ``probe @ CV pick`` otherwise. Adjust the
    family with :func:`lensprobe.train.compare.holm`.

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
            runs_a = [results[(a.dataset, h, a.probe)].runs[j] for j, h in enumerate(a.picks)]
            runs_b = [results[(b.dataset, h, b.probe)].runs[j] for j, h in enumerate(b.picks)]
            try:
                c = compare_runs(
                    runs_a,
                    runs_b,
                    metric,
                    names=(_choice_name(a, b), _choice_name(b, a)),
                    n_resamples=BOOTSTRAP_RESAMPLES,
                )
            except InputError as err:
                logger.warning("%s vs %s not compared: %s", a.probe, b.probe, err)
                continue
            out.append(c)
    return out


def _choice_name(c: LayerChoice, other: LayerChoice) -> str:
    """``probe``, ``probe @ hook`` (one hook for every split) or ``probe @ CV pick``."""
    if len(c.hooks) == 1 and c.picks == other.picks:
        return c.probe
    if len(set(c.picks)) == 1:
        return f"{c.probe} @ {c.picks[0]}"
    return f"{c.probe} @ CV pick"


def compare_family(
    choices: Sequence[LayerChoice],
    results: Mapping[tuple[Any, str, str], ProtocolResult],
    *,
    metric: str = "accuracy",
) -> list[Comparison]:
    """:func:`compare_choices` over every dataset of ``choices``, Holm-adjusted as one family."""
    return holm(compare_choices(choices, results, metric=metric))
