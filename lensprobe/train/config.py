"""The settings of training, as frozen configs.

:class:`TrainConfig`: how one fit optimises (both optimizers). :class:`ProtocolConfig`: the
protocol that splits, cross-validates, chooses the weight decay, refits and tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch

from lensprobe._records import check_keys
from lensprobe.errors import InputError
from lensprobe.hardware import bf16_is_fast
from lensprobe.probes import probe_class
from lensprobe.specs import check_heads

Optimizer = Literal["adamw", "lbfgs"]
Decay = Literal["decoupled", "l2"]
Precision = Literal["auto", "fp32", "bf16"]


def seed_tuple(seeds: int | Iterable[int]) -> tuple[int, ...]:
    """Seeds as a tuple: an integer ``k`` is ``k`` seeds ``(0, ..., k - 1)``, else the seeds given.

    Raises:
        InputError: A count below 1 (the seeds themselves are checked by the config).
    """
    if isinstance(seeds, bool):
        raise InputError(f"seeds must be a count or seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise InputError(f"seeds={seeds}: need at least one seed (a count >= 1, or seeds)")
        return tuple(range(seeds))
    return tuple(int(s) for s in seeds)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one fit (every member of a sweep shares them).

    Weight decay is not here: it is what a sweep varies. It applies to the probe's weight
    matrices only (an attention probe's ``query`` and ``value``, a pooled probe's ``weight``), never
    to biases or the position slope. With L-BFGS it is always an L2 penalty ``wd / 2 * ||W||^2``
    added to the mean loss over the ``n_train`` training rows, on the inputs the fit sees. The
    protocol divides activations by a token scale ``s`` (:attr:`ProtocolConfig.normalize`,
    recorded as ``SeedRun.input_scale``), so there ``wd`` matches scikit-learn's
    ``LogisticRegression(C=1 / (n_train * wd * s**2))`` on the raw pooled features, or
    ``C=1 / (n_train * wd)`` on the features divided by ``s`` (tested). With AdamW,
    :attr:`decay` chooses between
    that same penalty (``l2``, the default) and decoupled decay (``decoupled``,
    ``p <- p * (1 - lr * wd)`` each step).
    """

    optimizer: Optimizer = "adamw"
    """``adamw``: minibatches with early stopping. ``lbfgs``: full batch, float64, each member of a
    sweep with its own curvature history, backtracking line search and stopping test."""
    lr: float = 2e-3
    """AdamW learning rate."""
    batch_size: int = 32
    """AdamW minibatch size (sequences)."""
    max_steps: int = 1500
    """AdamW: most optimizer steps (minibatches), whatever the data size."""
    eval_every: int = 50
    """AdamW: steps between early-stopping evaluations (rounded up to whole epochs)."""
    patience: int = 4
    """AdamW: stop a member after this many evaluations without a better early-stopping loss."""
    min_delta: float = 1e-3
    """AdamW: an evaluation counts as better when the early-stopping loss (mean log loss, nats)
    drops by more than this (a loss creeping towards 0 on separable data stops the member)."""
    early_stop_fraction: float = 0.15
    """AdamW: share of the training rows held out (stratified) to early-stop on; 0 disables."""
    lbfgs_max_iter: int = 500
    """L-BFGS: most iterations (per member)."""
    lbfgs_tolerance: float = 1e-7
    """L-BFGS: a member stops when the Euclidean norm of its gradient is at most this (or when
    its objective or its step changes by less than 1e-12, or its line search finds no decrease).
    Euclidean, so the stopping point does not depend on the basis the fit is solved in."""
    decay: Decay = "l2"
    """How AdamW applies a member's weight decay ``wd`` (L-BFGS always uses ``l2``).
    ``l2`` (default): ``wd / 2 * ||W||^2`` is added to each member's mean minibatch loss, the
    objective L-BFGS minimises, so a decay means the same in both optimizers and shrinks the
    weights towards the penalised optimum. ``decoupled``: ``p <- p * (1 - lr * wd)`` each step
    (AdamW as published); at the default ``lr`` and at most 1500 steps the factor
    ``(1 - lr * wd) ** steps`` stays near 1, so the protocol's grid barely changes the probe:
    on four shared datasets (``benchmarks/results/decay_modes.md``) decoupled decay moved an
    attention probe's value weights by 0.02-0.08% at ``1e-3`` and 2-10% at ``1e-1`` against
    decay 0, and the CV accuracy over the grid spread by at most 0.005; the L2 penalty moved
    them 5-30% and 81-90%, with a CV spread of 0.011-0.155."""
    seed: int = 0
    """Data order and the early-stopping slice."""
    precision: Precision = "fp32"
    """AdamW: the dtype of the members' products over the activations. ``auto``: bfloat16 where
    the hardware is fast at it (:func:`lensprobe.hardware.bf16_is_fast`: CUDA, CPUs with AMX or
    AVX-512 BF16), float32 elsewhere; ``fp32`` (the default) / ``bf16`` force one. On three real
    datasets bf16 training left every paired test metric undecided against fp32 and 99.5-100% of
    predictions unchanged (``benchmarks/results/bf16_fidelity/``), but on a CPU without AMX it
    is not faster end to end, hence the default. Early-stopping losses always use float32
    products. Parameters, optimizer state
    and losses stay float32, predictions and metrics are computed in float32 / float64; L-BFGS
    always runs in float64. The result records what was used
    (:attr:`~lensprobe.train.result.ProtocolResult.precision`)."""

    def precision_on(self, device: torch.device | str, *, pooled: bool = False) -> str:
        """What a fit on ``device`` computes in: ``bf16``, ``fp32`` (AdamW) or ``fp64`` (L-BFGS).

        ``pooled``: a pooled probe, whose AdamW products read ``n x d_model`` pooled features
        (small: always float32).
        """
        if self.optimizer == "lbfgs":
            return "fp64"
        if pooled:
            return "fp32"
        if self.precision == "auto":
            return "bf16" if bf16_is_fast(device) else "fp32"
        return self.precision

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "lbfgs"):
            raise InputError(f"optimizer must be 'adamw' or 'lbfgs', got {self.optimizer!r}")
        if self.decay not in ("decoupled", "l2"):
            raise InputError(f"decay must be 'decoupled' or 'l2', got {self.decay!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.min_delta < 0:
            raise InputError(f"min_delta must be non-negative, got {self.min_delta}")
        if not 0.0 <= self.early_stop_fraction < 1.0:
            raise InputError(
                f"early_stop_fraction must be in [0, 1), got {self.early_stop_fraction}"
            )
        if min(self.lr, self.batch_size, self.max_steps, self.eval_every, self.patience) <= 0:
            raise InputError("lr, batch_size, max_steps, eval_every and patience must be positive")
        if self.lbfgs_max_iter < 1 or self.lbfgs_tolerance <= 0:
            raise InputError("lbfgs_max_iter and lbfgs_tolerance must be positive")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output."""
        check_keys(cls, d, "train config keys")
        return cls(**d)


SelectBy = Literal["accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss"]


@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of :func:`~lensprobe.train.protocol.run_protocol` (defaults: the study's protocol)."""

    probe: str = "attention"
    """Probe kind: ``attention``, ``mean``, ``last``, ``max`` or any other of
    :func:`~lensprobe.probes.probe_kinds`."""
    n_heads: int = 1
    """Probe heads (kinds that have heads)."""
    position: Literal["last", "first"] = "last"
    """Kinds with a position bias (attention probes): its anchor."""
    optimizer: Literal["auto", "adamw", "lbfgs"] = "auto"
    """``auto``: the kind's default: AdamW for attention probes, L-BFGS for pooled probes (as in
    the study)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The kind's own settings (e.g. ``{"window": 8}`` for ``rolling``); the others at their
    defaults."""
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)
    """The grid cross-validation chooses from. Each decay is an L2 penalty ``wd / 2 * ||W||^2``
    on the (normalised) loss for both optimizers by default; AdamW's decoupled decay is
    ``train.decay="decoupled"``, under which this grid barely moves the weights (see
    :attr:`TrainConfig.decay`). The study's attention and ``-adamw`` columns use the default."""
    n_folds: int = 5
    """Cross-validation folds of the training part."""
    test_fraction: float = 0.2
    """Share of the sequences held out for the test metrics (unless ``test_rows`` gives them)."""
    test_rows: tuple[int, ...] | None = None
    """A given test part, e.g. a dataset's official test split: these rows are the test part and
    every other row the training part, as given (``test_fraction`` is not used). A given split
    is one split: ``seeds`` must name one seed, and intervals are over its test rows."""
    seeds: tuple[int, ...] | int = (0,)
    """Repeated random splits: each seed is a full, independent run of the protocol (its own
    stratified split, folds, weight-decay choice, initialisation and data order, as one batched
    sweep); metrics are averaged over seeds, with a corrected resampled t interval. Seeds must
    differ (a repeated seed repeats its split). An integer ``k`` means ``k`` seeds,
    ``(0, ..., k - 1)``, as ``--seeds k`` on the command line; the config holds a tuple."""
    split_seed: int = 0
    """Seed of the first split: seed ``s`` draws its train/test split, folds and early-stopping
    slice with ``split_seed + s``."""
    select_by: SelectBy = "log_loss"
    """CV metric that picks the weight decay. ``log_loss`` (default) is a proper score: it
    tells a probe whose separable training folds drive decay 0 to huge weights (and test log
    losses of tens of nats) from a regularised one that classifies as well; ``accuracy`` and the
    others on request (ties go to the lower CV log loss, then the smaller decay)."""
    normalize: Literal["token_norm", "none"] = "token_norm"
    """``token_norm``: train on activations divided by one scalar, the median token norm of the
    training part over sqrt(d_model) (the returned probe reads raw activations; weight decay acts
    in the normalised units, so one grid suits every model and layer). ``none``: raw units."""
    bos: Literal["auto", "drop", "keep"] = "auto"
    """``auto``: drop each sequence's first token when the capture prepended BOS (recorded in the
    Activations), keep it otherwise. The probe remembers the choice (``exclude_bos``)."""
    execution: Literal["batched", "sequential"] = "batched"
    """``batched``: all members of a seed as one model. ``sequential``: one member at a time."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimiser settings; its ``optimizer`` field is overridden by ``optimizer`` unless auto."""

    def __post_init__(self) -> None:
        cls = probe_class(self.probe)  # validates the kind
        if not cls.has_heads and self.n_heads != 1:
            raise InputError(f"a {self.probe} probe has no heads; leave n_heads at 1")
        object.__setattr__(self, "options", cls.check_options(self.options))
        check_heads(self.n_heads, "n_heads")
        if self.n_folds < 2:
            raise InputError(f"n_folds must be at least 2, got {self.n_folds}")
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.weight_decays or any(w < 0 for w in self.weight_decays):
            raise InputError(f"weight_decays must be non-negative, got {self.weight_decays}")
        object.__setattr__(self, "seeds", seed_tuple(self.seeds))
        if not self.seeds:
            raise InputError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(
                f"seeds={tuple(self.seeds)} repeats a seed: a repeated seed draws the same split "
                "again and shrinks the interval without new evidence; pass distinct seeds, e.g. "
                f"seeds=range({len(self.seeds)})"
            )
        object.__setattr__(self, "weight_decays", tuple(float(w) for w in self.weight_decays))
        if self.test_rows is not None:
            rows = tuple(int(r) for r in self.test_rows)
            if not rows or min(rows) < 0 or len(set(rows)) != len(rows):
                raise InputError(
                    "test_rows must name distinct row indices >= 0 (at least one), e.g. the "
                    "rows of a dataset's test split"
                )
            if len(self.seeds) > 1:
                raise InputError(
                    f"a given test split (test_rows) is one split, but seeds={self.seeds}: pass "
                    "one seed (its interval is over the test rows), or drop test_rows to draw "
                    "several random splits"
                )
            object.__setattr__(self, "test_rows", tuple(sorted(rows)))

    @property
    def resolved_train(self) -> TrainConfig:
        """The train config with the optimizer this protocol uses."""
        opt = self.optimizer
        if opt == "auto":
            opt = probe_class(self.probe).default_optimizer
        return replace(self.train, optimizer=opt)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["weight_decays"] = list(self.weight_decays)
        d["seeds"] = list(self.seeds)
        d["test_rows"] = None if self.test_rows is None else list(self.test_rows)
        if not self.options:  # kinds without options: as written before options existed
            del d["options"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProtocolConfig:
        """Rebuild from :meth:`to_dict` output."""
        check_keys(cls, d, "protocol keys")
        d = dict(d)
        for key in ("weight_decays", "seeds", "test_rows"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        if isinstance(d.get("train"), Mapping):
            d["train"] = TrainConfig.from_dict(dict(d["train"]))
        return cls(**d)
