"""How probes are optimised: one frozen config for both optimizers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Optimizer = Literal["adamw", "lbfgs"]
Decay = Literal["decoupled", "l2"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one fit (every member of a sweep shares them).

    Weight decay is not here: it is what a sweep varies. It applies to the probe's weight
    matrices only (an attention probe's ``query`` and ``value``, a pooled probe's ``weight``), never
    to biases or the position slope. With L-BFGS it is always an L2 penalty ``wd / 2 * ||W||^2``
    added to the mean loss (so ``wd`` matches scikit-learn's
    ``LogisticRegression(C=1 / (n_train * wd))``). With AdamW, :attr:`decay` chooses between
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
    """L-BFGS: a member stops when its largest gradient entry is at most this (or when its
    objective or its step changes by less than 1e-12, or its line search finds no decrease)."""
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

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "lbfgs"):
            raise ValueError(f"optimizer must be 'adamw' or 'lbfgs', got {self.optimizer!r}")
        if self.decay not in ("decoupled", "l2"):
            raise ValueError(f"decay must be 'decoupled' or 'l2', got {self.decay!r}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be non-negative, got {self.min_delta}")
        if not 0.0 <= self.early_stop_fraction < 1.0:
            raise ValueError(
                f"early_stop_fraction must be in [0, 1), got {self.early_stop_fraction}"
            )
        if min(self.lr, self.batch_size, self.max_steps, self.eval_every, self.patience) <= 0:
            raise ValueError("lr, batch_size, max_steps, eval_every and patience must be positive")
        if self.lbfgs_max_iter < 1 or self.lbfgs_tolerance <= 0:
            raise ValueError("lbfgs_max_iter and lbfgs_tolerance must be positive")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output."""
        check_keys(cls, d, "train config")
        return cls(**d)


def check_keys(cls: type, d: Mapping[str, Any], what: str) -> None:
    """Raise a ``ValueError`` naming the keys of ``d`` that are no field of dataclass ``cls``.

    Args:
        cls: The dataclass ``d`` should rebuild.
        d: A dict read back from ``to_dict`` output.
        what: How the error names the dict, e.g. ``"train config"``.
    """
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known: {sorted(known)}")
