"""Minibatch AdamW for a sweep, with per-member early stopping.

All members read the same minibatch in the same order and each member's loss counts only its
own rows, so a member ends exactly where the same probe trained alone on the same rows (with the
same data order) ends, but the activations are read once for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.train.config import TrainConfig
from lensprobe.train.members import (
    FitData,
    FitResult,
    HookData,
    Members,
    Problem,
    decay_penalty,
    member_mean,
    member_sum,
    nonfinite_error,
    per_example_loss,
)

logger = logging.getLogger(__name__)


def fit_adamw(
    problem: Problem,
    params: dict[str, Tensor],
    train: TrainConfig,
    order_rows: Tensor,
    eval_batch_size: int,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Minibatch AdamW with per-member early stopping on each member's held-out rows.

    Weight decay follows ``train.decay``: ``l2`` adds ``wd / 2 * ||W||^2`` to each member's
    minibatch loss (the L-BFGS objective); ``decoupled`` shrinks ``W`` by ``1 - lr * wd`` each step.

    The early-stopping loss is evaluated at the end of the first epoch that completes
    ``eval_every`` steps since the last evaluation. A member whose loss has not dropped by more
    than ``min_delta`` for ``patience`` evaluations is finished: its best parameters are frozen,
    it is no longer computed, and the fit ends when every member is finished (or after
    ``max_steps``).

    A member whose training loss on a minibatch or whose early-stopping loss is NaN/inf is an
    error naming it (checked at each evaluation and at the end, so the loop never waits on the
    device for it).
    """
    m, device = problem.wd.shape[0], problem.wd.device
    opt = torch.optim.Adam(list(params.values()), lr=train.lr)
    gen = torch.Generator().manual_seed(train.seed)
    early_stop = bool(problem.stop_w.bool().any())
    state = _EarlyStop.start(params, problem.wd)
    steps = torch.zeros(m, dtype=torch.long, device=device)
    # first step at which each member's training loss was NaN/inf (-1: never)
    bad_step = torch.full((m,), -1, dtype=torch.long, device=device)
    step = last_eval = 0
    while step < train.max_steps and bool(state.active.any()):
        perm = order_rows[torch.randperm(order_rows.numel(), generator=gen).to(device)]
        # Finished members keep their best parameters; only the active ones are computed, so the
        # sweep gets cheaper as members stop. (Adam still moves finished members' parameters from
        # its momentum, which is harmless: they are never read again.)
        live = None if bool(state.active.all()) else state.active.nonzero().flatten()
        step, bad_step = _adamw_epoch(
            problem, params, opt, train, perm, live, step, bad_step, on_step
        )
        steps = torch.where(state.active, step, steps)
        if not early_stop or (step - last_eval < train.eval_every and step < train.max_steps):
            continue
        last_eval = step
        _raise_if_bad(problem.members, bad_step)
        losses = _early_stop_losses(problem, params, state.active, step, eval_batch_size)
        state.update(losses, params, step, train)
    _raise_if_bad(problem.members, bad_step)
    logger.debug("AdamW fit: %d members, steps %s", m, steps.tolist())
    best, best_step, best_loss = state.best, state.best_step, state.best_loss
    if not early_stop:
        best = {k: v.detach() for k, v in params.items()}
        best_step, best_loss = steps.clone(), torch.full((m,), float("nan"), device=device)
    return FitResult(
        params=best, steps=steps.cpu(), best_step=best_step.cpu(), stop_loss=best_loss.cpu()
    )


def _adamw_epoch(
    problem: Problem,
    params: dict[str, Tensor],
    opt: torch.optim.Optimizer,
    train: TrainConfig,
    perm: Tensor,
    live: Tensor | None,
    step: int,
    bad_step: Tensor,
    on_step: Callable[[int], None] | None,
) -> tuple[int, Tensor]:
    """One epoch: minibatches of the shuffled rows ``perm``, until ``max_steps`` at most.

    Returns:
        The steps taken so far, and each member's first step with a NaN/inf training loss
        (``bad_step`` updated; -1: none yet).
    """
    for start in range(0, perm.numel(), train.batch_size):
        if step >= train.max_steps:
            break
        rows = perm[start : start + train.batch_size]
        went_bad = _adamw_step(problem, params, opt, train, rows, live)
        bad_step = torch.where(went_bad & (bad_step < 0), step + 1, bad_step)
        step += 1
        if on_step is not None:
            on_step(step)
    return step, bad_step


def _adamw_step(
    problem: Problem,
    params: dict[str, Tensor],
    opt: torch.optim.Optimizer,
    train: TrainConfig,
    rows: Tensor,
    live: Tensor | None,
) -> Bool[Tensor, " member"]:
    """One optimizer step of the live members (all when ``live`` is None) on one minibatch.

    Each member's loss is its mean over its own rows of the minibatch, plus the L2 penalty with
    ``decay="l2"``; with ``decay="decoupled"`` the decayed weights shrink before the step.

    Returns:
        Which members' training loss on this minibatch is NaN/inf.
    """
    opt.zero_grad(set_to_none=True)
    if live is None:
        w, wd, member_params = problem.train_w[:, rows], problem.wd, params
    else:
        w, wd = problem.train_w[live][:, rows], problem.wd[live]
        member_params = {k: v[live] for k, v in params.items()}
    logits = problem.data.logits(member_params, rows, live)
    loss = per_example_loss(logits, problem.labels[rows])
    member_loss = member_mean(loss, w)
    went_bad = ~torch.isfinite(member_loss.detach())
    if train.decay == "l2":  # wd / 2 * ||W||^2 in each member's loss, as L-BFGS
        member_loss = member_loss + decay_penalty(problem.probe_cls, member_params, wd)
    if live is not None:
        all_members = torch.zeros(problem.wd.shape[0], dtype=torch.bool, device=live.device)
        went_bad = all_members.index_put_((live,), went_bad)
    member_loss.sum().backward()
    if train.decay == "decoupled":
        with torch.no_grad():  # decoupled weight decay, per member
            for name in problem.probe_cls.decay_params:
                p = params[name]
                p.mul_((1 - train.lr * problem.wd).reshape(-1, *([1] * (p.ndim - 1))))
    opt.step()
    return went_bad


def _raise_if_bad(members: Members, bad_step: Tensor) -> None:
    """Raise for the member(s) whose training loss went NaN/inf first (``bad_step`` >= 0)."""
    went = bad_step >= 0
    if bool(went.any()):
        first = int(bad_step[went].min())
        raise nonfinite_error(members, (bad_step == first).cpu(), f"training loss at step {first}")


def _early_stop_losses(
    problem: Problem, params: dict[str, Tensor], active: Tensor, step: int, batch: int
) -> Float[Tensor, " member"]:
    """Each active member's early-stopping loss (inf for finished members).

    Raises:
        FloatingPointError: An active member's early-stopping loss is NaN/inf (named).
    """
    m = problem.wd.shape[0]
    losses = torch.full((m,), float("inf"), dtype=problem.wd.dtype, device=problem.wd.device)
    idx = active.nonzero().flatten()
    losses[idx] = _stop_losses(
        problem.data,
        {k: v[idx] for k, v in params.items()},
        idx,
        problem.labels,
        problem.stop_w[idx],
        batch,
    )
    if not bool(torch.isfinite(losses[idx]).all()):
        bad = torch.zeros(m, dtype=torch.bool)
        bad[idx.cpu()] = ~torch.isfinite(losses[idx]).cpu()
        raise nonfinite_error(problem.members, bad, f"early-stopping loss at step {step}")
    return losses


@torch.no_grad()
def _stop_losses(
    data: FitData | HookData,
    params: dict[str, Tensor],
    members: Tensor,
    labels: Tensor,
    stop_w: Tensor,
    batch: int,
) -> Tensor:
    """Each member's mean loss over its early-stopping rows, a batch of rows at a time.

    The products run in the fit's dtype even when training's run in bfloat16: the rounding of a
    bfloat16 loss is larger than ``min_delta``, so members would train on past their best.
    """
    rows = stop_w.bool().any(dim=0).nonzero().flatten()
    total = torch.zeros(stop_w.shape[0], dtype=stop_w.dtype, device=stop_w.device)
    for start in range(0, rows.numel(), batch):
        r = rows[start : start + batch]
        logits = data.logits(params, r, members, full_precision=True)
        loss = per_example_loss(logits, labels[r])
        total += member_sum(loss, stop_w[:, r])
    return total / stop_w.sum(dim=1).clamp_min(1.0)


@dataclass
class _EarlyStop:
    """Each member's early-stopping record during an AdamW fit."""

    best: dict[str, Tensor]
    """The parameters at each member's best early-stopping loss so far."""
    best_loss: Float[Tensor, " member"]
    best_step: Int[Tensor, " member"]
    ref_loss: Float[Tensor, " member"]
    """The loss the next evaluation must beat by ``min_delta`` to reset the patience."""
    waited: Int[Tensor, " member"]
    """Evaluations since the member last made progress."""
    active: Bool[Tensor, " member"]
    """Members still training."""

    @classmethod
    def start(cls, params: dict[str, Tensor], wd: Tensor) -> _EarlyStop:
        """Before the first evaluation: the starting parameters, infinite losses."""
        m, device = wd.shape[0], wd.device
        best_loss = torch.full((m,), float("inf"), dtype=wd.dtype, device=device)
        return cls(
            best={k: v.detach().clone() for k, v in params.items()},
            best_loss=best_loss,
            best_step=torch.zeros(m, dtype=torch.long, device=device),
            ref_loss=best_loss.clone(),
            waited=torch.zeros(m, dtype=torch.long, device=device),
            active=torch.ones(m, dtype=torch.bool, device=device),
        )

    def update(
        self, losses: Tensor, params: dict[str, Tensor], step: int, train: TrainConfig
    ) -> None:
        """Record one evaluation: keep improved members' parameters, finish the patient ones."""
        improved = self.active & (losses < self.best_loss)  # keep the best parameters seen
        self.best_loss = torch.where(improved, losses, self.best_loss)
        self.best_step = torch.where(improved, step, self.best_step)
        for k, v in params.items():
            sel = improved.reshape(-1, *([1] * (v.ndim - 1)))
            self.best[k] = torch.where(sel, v.detach(), self.best[k])
        progressed = self.active & (losses < self.ref_loss - train.min_delta)  # resets patience
        self.ref_loss = torch.where(progressed, losses, self.ref_loss)
        self.waited = torch.where(progressed, 0, self.waited + 1)
        self.active &= self.waited < train.patience
