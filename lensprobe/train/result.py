"""What a protocol run found: one :class:`SeedRun` per seed, and their :class:`ProtocolResult`.

Each seed is a full, independent run of the protocol on its own stratified split, so the spread
of the test metrics over seeds estimates their variability: :class:`ProtocolResult` reports each
metric's mean, standard deviation and a corrected resampled t interval over seeds (the splits
share rows, see :func:`lensprobe.metrics.corrected_t_interval`), and with one seed a Wilson
interval for the accuracy and a bootstrap interval over the test rows
(:meth:`ProtocolResult.bootstrap`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensprobe.errors import UnknownNameError
from lensprobe.metrics import Estimate, bootstrap_interval, metric, metric_range
from lensprobe.probes import Probe
from lensprobe.train.config import ProtocolConfig


@dataclass(frozen=True)
class SeedRun:
    """One seed of a protocol run: a full, independent run of the protocol on its own split."""

    seed: int
    """Seed of the probe initialisation and the data order (``TrainConfig.seed + seed``)."""
    split_seed: int
    """Seed of this run's train/test split, folds and early-stopping slice
    (``ProtocolConfig.split_seed + seed``)."""
    train_rows: Int[Tensor, " n_train"]
    """Indices of the training part."""
    test_rows: Int[Tensor, " n_test"]
    """Indices of the test part."""
    weight_decay: float
    """The weight decay this run's cross-validation chose."""
    metrics: dict[str, float]
    """Test metrics of the refit probe; the TPRs at a fixed FPR use thresholds fixed on the
    cross-validated (out-of-fold) logits of the training part."""
    cv_summary: list[dict[str, float]]
    """One row per weight decay: this run's CV metrics averaged over its folds."""
    test_logits: Float[Tensor, "n_test n_outputs"]
    """Logits of :attr:`probe` on the test part."""
    test_labels: Int[Tensor, " n_test"]
    """Class ids of the test part."""
    cv_logits: Float[Tensor, "n_train n_outputs"]
    """Out-of-fold logits of the training part (rows in :attr:`train_rows` order) at the chosen
    weight decay: each row scored by the fold member that did not train on it."""
    thresholds: dict[str, float]
    """Binary tasks: the logit threshold of each TPR metric (``tpr_at_1pct_fpr``, ...), fixed on
    :attr:`cv_logits` (training data only; see :func:`lensprobe.metrics.fpr_threshold`); empty
    for k classes."""
    input_scale: float
    """The scalar the activations were divided by during training (1.0 without ``normalize``)."""
    probe: Probe
    """The refit probe (eval mode)."""

    @property
    def n_test(self) -> int:
        """Test rows."""
        return int(self.test_rows.numel())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors, no weights; the rows follow from the split seed)."""
        return {
            "seed": self.seed,
            "split_seed": self.split_seed,
            "weight_decay": self.weight_decay,
            "metrics": self.metrics,
            "n_train": int(self.train_rows.numel()),
            "n_test": self.n_test,
            "input_scale": self.input_scale,
            "thresholds": self.thresholds,
            "cv_summary": self.cv_summary,
        }


@dataclass(frozen=True)
class ProtocolResult:
    """What :func:`~lensprobe.train.protocol.run_protocol` found: one :class:`SeedRun` per seed, and their summary.

    Each seed is a full, independent run of the protocol on its own stratified split (repeated
    random splits): it chooses its own weight decay by cross-validation on its own training part
    and is scored once on its own test part. So the spread over seeds estimates how much the
    result varies with the split and the initialisation, and :attr:`summary` gives each metric's
    mean, standard deviation and a corrected resampled t interval over seeds. With one seed,
    the accuracy has a Wilson interval and :meth:`bootstrap` gives an interval over the test rows
    of any metric (test sampling only). :func:`~lensprobe.train.compare.compare` pairs two
    results run on the same splits.

    The single-probe fields (:attr:`probe`, :attr:`weight_decay`, :attr:`train_rows`,
    :attr:`test_rows`, :attr:`test_logits`, :attr:`input_scale`) describe the first seed's run;
    :attr:`metrics` is the mean over seeds.
    """

    config: ProtocolConfig
    """The settings used."""
    runs: list[SeedRun]
    """One run per seed of ``config.seeds``, in that order."""
    classes: tuple[Any, ...]
    """The original label of each class id (``classes[i]`` is class ``i``), e.g. ``(1, 2)`` or
    ``("neg", "pos")``."""
    metrics: dict[str, float]
    """Test metrics averaged over seeds."""
    summary: dict[str, Estimate]
    """Each metric of :attr:`metrics` with its standard deviation, 95% interval (corrected t over
    seeds; Wilson for one seed's accuracy) and the rows per seed (``n_test``, ``n_train``)."""
    cv_table: list[dict[str, Any]]
    """One row per (seed, weight decay, fold): CV metrics and optimizer steps taken."""
    cv_summary: list[dict[str, float]]
    """One row per weight decay: CV metrics averaged over folds and seeds (each seed chose its
    decay from its own folds: see :attr:`SeedRun.cv_summary`)."""
    seconds: float
    """Wall time of the protocol."""
    precision: str = "fp32"
    """What the fits computed in: ``bf16`` or ``fp32`` (AdamW products over the activations),
    ``fp64`` (L-BFGS); see :attr:`TrainConfig.precision`."""

    @property
    def metrics_per_seed(self) -> list[dict[str, float]]:
        """Test metrics of each seed's refit probe."""
        return [r.metrics for r in self.runs]

    @property
    def probes(self) -> list[Probe]:
        """The refit probe of every seed."""
        return [r.probe for r in self.runs]

    @property
    def probe(self) -> Probe:
        """The refit probe of the first seed (eval mode)."""
        return self.runs[0].probe

    @property
    def weight_decay(self) -> float:
        """The weight decay the first seed's cross-validation chose (each seed chooses its own)."""
        return self.runs[0].weight_decay

    @property
    def weight_decays_chosen(self) -> list[float]:
        """The weight decay each seed chose."""
        return [r.weight_decay for r in self.runs]

    @property
    def train_rows(self) -> Int[Tensor, " n_train"]:
        """Indices of the first seed's training part."""
        return self.runs[0].train_rows

    @property
    def test_rows(self) -> Int[Tensor, " n_test"]:
        """Indices of the first seed's test part."""
        return self.runs[0].test_rows

    @property
    def test_logits(self) -> Float[Tensor, "n_test n_outputs"]:
        """Logits of :attr:`probe` on the first seed's test part."""
        return self.runs[0].test_logits

    @property
    def input_scale(self) -> float:
        """The first seed's input scale (see :attr:`SeedRun.input_scale`)."""
        return self.runs[0].input_scale

    @property
    def n_test(self) -> int:
        """Test rows per seed (the same for every seed: the split is stratified)."""
        return self.runs[0].n_test

    def bootstrap(
        self,
        metric: str = "accuracy",
        *,
        n_resamples: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> Estimate:
        """Percentile-bootstrap interval of a test metric over the test rows.

        For one seed, the interval of that seed's metric on its single test set; for several,
        the interval of the mean over seeds when each seed's test rows are resampled
        (stratified, independently). It covers the sampling of the test rows only, not of the
        training part or the initialisation; the t-interval of :attr:`summary` covers all three.

        Args:
            metric: A key of :attr:`metrics`.
            n_resamples: Bootstrap resamples.
            confidence: Coverage of the interval.
            seed: Seed of the resampling.
        """
        if metric not in self.metrics:
            raise UnknownNameError(f"no metric {metric!r}; choose one of {sorted(self.metrics)}")
        low, high = bootstrap_interval(
            lambda idx: mean_metric(self.runs, metric, idx),
            [r.test_labels for r in self.runs],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            bounds=metric_range(metric),
        )
        base = self.summary[metric]
        return replace(base, low=low, high=high, confidence=confidence, method="bootstrap")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors, no probe weights)."""
        return {
            "config": self.config.to_dict(),
            "probe_config": self.probe.config.to_dict(),
            "classes": list(self.classes),
            "metrics": self.metrics,
            "summary": {k: v.to_dict() for k, v in self.summary.items()},
            "metrics_per_seed": self.metrics_per_seed,
            "weight_decay": self.weight_decay,
            "weight_decays_chosen": self.weight_decays_chosen,
            "runs": [r.to_dict() for r in self.runs],
            "cv_summary": self.cv_summary,
            "cv_table": self.cv_table,
            "n_train": int(self.train_rows.numel()),
            "n_test": self.n_test,
            "input_scale": self.input_scale,
            "seconds": self.seconds,
            "precision": self.precision,
        }


def mean_metric(runs: list[SeedRun], name: str, rows: list[Tensor] | None = None) -> float:
    """A test metric averaged over runs, each on some of its test rows (all by default)."""
    values = []
    for i, r in enumerate(runs):
        idx = rows[i] if rows is not None else torch.arange(r.n_test)
        values.append(metric(name, r.test_logits[idx], r.test_labels[idx], thresholds=r.thresholds))
    return sum(values) / len(values)


@dataclass(frozen=True)
class AllRowsFit:
    """What :func:`~lensprobe.train.protocol.fit_all_rows` trained: one probe on every row.

    No test part: the probe is the refit member at the chosen weight decay (chosen by
    cross-validation over all rows, or the one decay given), as the protocol's step 4 trains it.
    """

    probe: Probe
    """The trained probe (reads raw activations), in eval mode."""
    classes: tuple[Any, ...]
    """The original label of each class id, sorted (``classes[i]`` is class ``i``)."""
    weight_decay: float
    """The weight decay the probe trained with."""
    cv_summary: list[dict[str, float]]
    """One row per weight decay: the CV metrics averaged over folds (empty without CV)."""
    input_scale: float
    """The scale the activations were divided by during training."""
    precision: str
    """The precision of the AdamW products (``fp32`` or ``bf16``)."""
