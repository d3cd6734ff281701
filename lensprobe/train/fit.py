"""Training many probes at once: a sweep is one batched model with a leading ``member`` dim.

Every member of a grid (weight decays x folds x seeds) has its own parameters, its own training
rows and its own early-stopping rows, given as boolean ``(member, row)`` tables. All members read
the same minibatch of activations in the same order, and each member's loss counts only its own
rows, so the members never interact: a member ends exactly where the same probe trained alone on
the same rows (with the same data order) ends, but the activations are read once for all of them.

Pooled probes (mean / last / max) pool every sequence once up front; after that a fit only sees
``(row, d_model)`` features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.probes import Probe, ProbeConfig, probe_class
from lensprobe.probes.pooled import PooledProbe
from lensprobe.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Members:
    """The grid of a sweep: per member a weight decay, an init seed and its rows."""

    weight_decay: Float[Tensor, " member"]
    """Weight decay of each member."""
    seeds: tuple[int, ...]
    """Initialisation seed of each member."""
    train: Bool[Tensor, "member batch"]
    """Rows each member trains on."""
    stop: Bool[Tensor, "member batch"]
    """Rows each member early-stops on (AdamW); may be all False (no early stopping)."""

    def __post_init__(self) -> None:
        m = self.weight_decay.shape[0]
        if len(self.seeds) != m or self.train.shape[0] != m or self.stop.shape != self.train.shape:
            raise ValueError("weight_decay, seeds, train and stop must agree on the member count")
        if bool((self.train & self.stop).any()):
            raise ValueError("a member's early-stopping rows overlap its training rows")
        if not bool(self.train.any(dim=1).all()):
            raise ValueError("every member needs at least one training row")

    def __len__(self) -> int:
        return self.weight_decay.shape[0]


@dataclass
class FitResult:
    """What a batched fit returns."""

    params: dict[str, Tensor]
    """Final (best early-stopping) parameters, stacked on the member dim."""
    steps: Int[Tensor, " member"]
    """Optimizer steps (AdamW) or iterations (L-BFGS) each member trained before it stopped."""
    best_step: Int[Tensor, " member"]
    """Step whose parameters were kept (AdamW; equals ``steps`` for L-BFGS)."""
    stop_loss: Float[Tensor, " member"]
    """Best early-stopping loss per member (NaN without early-stopping rows)."""


def per_example_loss(
    logits: Float[Tensor, "member batch n_outputs"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, "member batch"]:
    """Binary cross-entropy for one logit, softmax cross-entropy for k; no reduction."""
    if logits.shape[-1] == 1:
        target = labels.to(logits.dtype).expand(logits.shape[0], -1)
        return F.binary_cross_entropy_with_logits(logits[..., 0], target, reduction="none")
    m, b, c = logits.shape
    return F.cross_entropy(logits.reshape(m * b, c), labels.repeat(m), reduction="none").reshape(
        m, b
    )


def _member_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """Each member's mean loss over its rows (0 for a member with no row here)."""
    return (loss * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class _Data:
    """The rows a fit reads: pooled features (computed once), or the padded activations.

    The padded activations are kept as given (e.g. bfloat16 from a capture) and each minibatch
    is converted, zeroed at padding and scaled when it is read, so a fit never holds a float32
    copy of the whole capture. The values are the same as converting everything up front.
    """

    chunk = 256
    """Rows converted at a time when pooling."""

    def __init__(
        self, config: ProbeConfig, x: Tensor, mask: Tensor, dtype: torch.dtype, scale: float
    ):
        self.cls = probe_class(config.kind)
        self.config = config
        self.pooled = issubclass(self.cls, PooledProbe)
        self.x, self.mask, self.dtype, self.scale = x, mask, dtype, scale
        if self.pooled:
            # Pool in float32, a chunk of rows at a time; keep only (row, d_model) features.
            self.features = torch.cat(
                [
                    self.cls.pool(  # type: ignore[attr-defined]
                        self._read(slice(i, i + self.chunk), None, torch.float32),
                        mask[i : i + self.chunk],
                    ).to(dtype)
                    for i in range(0, x.shape[0], self.chunk)
                ]
            )

    def _read(self, rows: Tensor | slice, cols: slice | None, dtype: torch.dtype) -> Tensor:
        """Rows (and columns) of ``x`` in ``dtype``, zero at padding, divided by the scale."""
        x = self.x[rows] if cols is None else self.x[rows, cols]
        mask = self.mask[rows] if cols is None else self.mask[rows, cols]
        x = x.to(dtype, copy=True).masked_fill_(~mask[..., None], 0.0)
        return x.div_(self.scale) if self.scale != 1.0 else x

    def logits(self, params: dict[str, Tensor], rows: Tensor) -> Tensor:
        """Logits ``(member, row, n_outputs)`` of some rows."""
        if self.pooled:
            return self.cls.linear_members(params, self.features[rows])  # type: ignore[attr-defined]
        mask = self.mask[rows]
        # Read only the columns some row of this batch uses (length-trimmed minibatches).
        cols = mask.any(dim=0).nonzero().flatten()
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        logits, _ = self.cls.forward_members(
            self.config, params, self._read(rows, slice(lo, hi), self.dtype), mask[:, lo:hi]
        )
        return logits


def _decay_penalty(cls: type[Probe], params: dict[str, Tensor], wd: Tensor) -> Tensor:
    total = torch.zeros_like(wd)
    for name in cls.decay_params:
        p = params[name]
        total = total + p.pow(2).reshape(p.shape[0], -1).sum(dim=1)
    return 0.5 * wd * total


def fit_members(
    config: ProbeConfig,
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    labels: Int[Tensor, " batch"],
    members: Members,
    train: TrainConfig | None = None,
    *,
    order_rows: Int[Tensor, " rows"] | None = None,
    init: dict[str, Tensor] | None = None,
    input_scale: float = 1.0,
    eval_batch_size: int = 256,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train every member of a sweep at once.

    Args:
        config: The probe every member is an instance of.
        x: Padded activations of all rows any member uses.
        mask: Valid tokens of ``x``.
        labels: Class of each row.
        members: Per-member weight decay, seed, training and early-stopping rows.
        train: Optimisation settings (AdamW or L-BFGS).
        order_rows: Rows the AdamW minibatches are drawn from, in a seeded shuffle each epoch
            (default: every row some member trains on). Pass the same value to reproduce one
            member of a sweep alone.
        init: Starting parameters stacked on the member dim (default: each member's seed).
        input_scale: Train on ``x / input_scale`` (the returned parameters read the scaled
            input; :func:`unscale_params` converts them to read raw activations).
        eval_batch_size: Rows per forward when computing early-stopping losses.
        on_step: Called with the number of steps taken so far (AdamW optimizer steps, L-BFGS
            iterations) as the fit goes, e.g. to move a progress bar.

    Returns:
        The parameters (best early-stopping step per member for AdamW) and per-member counts.
    """
    train = train or TrainConfig()
    device = x.device
    cls = probe_class(config.kind)
    # L-BFGS on pooled features is cheap; float64 keeps its line search well behaved.
    lbfgs_pooled = train.optimizer == "lbfgs" and issubclass(cls, PooledProbe)
    dtype = torch.float64 if lbfgs_pooled else torch.float32
    data = _Data(config, x, mask, dtype, input_scale)
    labels = labels.to(device)
    start = init if init is not None else cls.init_members(config, list(members.seeds))
    params = {
        k: v.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        for k, v in start.items()
    }
    wd = members.weight_decay.to(device=device, dtype=dtype)
    train_w = members.train.to(device=device, dtype=dtype)
    if train.optimizer == "lbfgs":
        return _fit_lbfgs(cls, data, params, labels, train_w, wd, train, on_step)
    stop_w = members.stop.to(device=device, dtype=dtype)
    if order_rows is None:
        order_rows = members.train.any(dim=0).nonzero().flatten()
    return _fit_adamw(
        cls,
        data,
        params,
        labels,
        train_w,
        stop_w,
        wd,
        train,
        order_rows.to(device),
        eval_batch_size,
        on_step,
    )


def _fit_lbfgs(
    cls: type[Probe],
    data: _Data,
    params: dict[str, Tensor],
    labels: Tensor,
    train_w: Tensor,
    wd: Tensor,
    train: TrainConfig,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Full-batch L-BFGS on the sum of the members' objectives.

    The members' objectives are independent, so their sum is minimised exactly where each one is
    (the objective is strictly convex for pooled probes with weight decay > 0). Pooled features
    are centred for the solve and the bias converted back, which leaves the optimum unchanged.
    """
    rows = train_w.bool().any(dim=0).nonzero().flatten()
    w = train_w[:, rows]
    center = None
    if data.pooled:
        # Centre the pooled features: pooled residuals share a large common direction, which
        # makes the problem badly conditioned. The bias is not decayed, so this is an exact
        # reparameterisation (same optimum, read back below); L-BFGS converges far faster.
        center = data.features[rows].mean(dim=0)
        data.features = data.features - center
        with torch.no_grad():
            params["bias"] += einsum(params["weight"], center, "m d c, d -> m c")
    opt = torch.optim.LBFGS(
        list(params.values()),
        lr=1.0,
        max_iter=train.lbfgs_max_iter,
        history_size=20,
        tolerance_grad=train.lbfgs_tolerance,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        if on_step is not None:
            on_step(int(opt.state[opt._params[0]].get("n_iter", 0)))
        opt.zero_grad()
        loss = per_example_loss(data.logits(params, rows), labels[rows])
        objective = (_member_mean(loss, w) + _decay_penalty(cls, params, wd)).sum()
        objective.backward()
        return objective

    opt.step(closure)
    if center is not None:
        with torch.no_grad():
            params["bias"] -= einsum(params["weight"], center, "m d c, d -> m c")
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    m = wd.shape[0]
    iters = torch.full((m,), n_iter, dtype=torch.long)
    return FitResult(
        params={k: v.detach() for k, v in params.items()},
        steps=iters,
        best_step=iters.clone(),
        stop_loss=torch.full((m,), float("nan")),
    )


@torch.no_grad()
def _stop_losses(
    data: _Data, params: dict[str, Tensor], labels: Tensor, stop_w: Tensor, batch: int
) -> Tensor:
    rows = stop_w.bool().any(dim=0).nonzero().flatten()
    total = torch.zeros(stop_w.shape[0], dtype=stop_w.dtype, device=stop_w.device)
    for start in range(0, rows.numel(), batch):
        r = rows[start : start + batch]
        loss = per_example_loss(data.logits(params, r), labels[r])
        total += (loss * stop_w[:, r]).sum(dim=1)
    return total / stop_w.sum(dim=1).clamp_min(1.0)


def _fit_adamw(
    cls: type[Probe],
    data: _Data,
    params: dict[str, Tensor],
    labels: Tensor,
    train_w: Tensor,
    stop_w: Tensor,
    wd: Tensor,
    train: TrainConfig,
    order_rows: Tensor,
    eval_batch_size: int,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Minibatch AdamW with per-member early stopping on each member's held-out rows.

    The early-stopping loss is evaluated at the end of the first epoch that completes
    ``eval_every`` steps since the last evaluation. A member whose loss has not dropped by more
    than ``min_delta`` for ``patience`` evaluations is finished: its best parameters are frozen, it is no longer computed,
    and the fit ends when every member is finished (or after ``max_steps``).
    """
    m = wd.shape[0]
    device = wd.device
    opt = torch.optim.Adam(list(params.values()), lr=train.lr)
    gen = torch.Generator().manual_seed(train.seed)
    early_stop = bool(stop_w.bool().any())
    best = {k: v.detach().clone() for k, v in params.items()}
    best_loss = torch.full((m,), float("inf"), dtype=wd.dtype, device=device)
    ref_loss = best_loss.clone()
    best_step = torch.zeros(m, dtype=torch.long, device=device)
    steps = torch.zeros(m, dtype=torch.long, device=device)
    bad = torch.zeros(m, dtype=torch.long, device=device)
    active = torch.ones(m, dtype=torch.bool, device=device)
    decay = set(cls.decay_params)
    step = last_eval = 0

    while step < train.max_steps and bool(active.any()):
        perm = order_rows[torch.randperm(order_rows.numel(), generator=gen).to(device)]
        # Finished members keep their best parameters; only the active ones are computed, so the
        # sweep gets cheaper as members stop. (Adam still moves finished members' parameters from
        # its momentum, which is harmless: they are never read again.)
        live = None if bool(active.all()) else active.nonzero().flatten()
        for start in range(0, perm.numel(), train.batch_size):
            if step >= train.max_steps:
                break
            rows = perm[start : start + train.batch_size]
            opt.zero_grad(set_to_none=True)
            if live is None:
                w = train_w[:, rows]
                loss = per_example_loss(data.logits(params, rows), labels[rows])
            else:
                w = train_w[live][:, rows]
                live_params = {k: v[live] for k, v in params.items()}
                loss = per_example_loss(data.logits(live_params, rows), labels[rows])
            _member_mean(loss, w).sum().backward()
            with torch.no_grad():  # decoupled weight decay, per member
                for name in decay:
                    p = params[name]
                    p.mul_((1 - train.lr * wd).reshape(-1, *([1] * (p.ndim - 1))))
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step)
        steps = torch.where(active, step, steps)
        if not early_stop or (step - last_eval < train.eval_every and step < train.max_steps):
            continue
        last_eval = step
        losses = torch.full_like(best_loss, float("inf"))
        idx = active.nonzero().flatten()
        losses[idx] = _stop_losses(
            data, {k: v[idx] for k, v in params.items()}, labels, stop_w[idx], eval_batch_size
        )
        improved = active & (losses < best_loss)  # keep the best parameters seen
        best_loss = torch.where(improved, losses, best_loss)
        best_step = torch.where(improved, step, best_step)
        for k, v in params.items():
            sel = improved.reshape(-1, *([1] * (v.ndim - 1)))
            best[k] = torch.where(sel, v.detach(), best[k])
        progressed = active & (losses < ref_loss - train.min_delta)  # patience resets only here
        ref_loss = torch.where(progressed, losses, ref_loss)
        bad = torch.where(progressed, 0, bad + 1)
        active &= bad < train.patience
    if not early_stop:
        best = {k: v.detach() for k, v in params.items()}
        best_step = steps.clone()
        best_loss = torch.full((m,), float("nan"), device=device)
    logger.debug("AdamW fit: %d members, steps %s", m, steps.tolist())
    return FitResult(
        params=best, steps=steps.cpu(), best_step=best_step.cpu(), stop_loss=best_loss.cpu()
    )


@torch.no_grad()
def predict_members(
    config: ProbeConfig,
    params: dict[str, Tensor],
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    *,
    batch_size: int = 256,
    input_scale: float = 1.0,
) -> Float[Tensor, "member batch n_outputs"]:
    """Logits of every member for every row (of ``x / input_scale``), in row chunks."""
    dtype = next(iter(params.values())).dtype
    data = _Data(config, x, mask, dtype, input_scale)
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    return torch.cat(
        [data.logits(params, rows[s : s + batch_size]) for s in range(0, n, batch_size)], dim=1
    )


def unscale_params(
    config: ProbeConfig, params: dict[str, Tensor], input_scale: float
) -> dict[str, Tensor]:
    """Parameters trained on ``x / input_scale`` rewritten to read raw ``x``.

    Every probe is linear in ``x`` through its weight matrices (the ones weight decay applies
    to), so dividing those by the scale is exact.
    """
    if input_scale == 1.0:
        return params
    scaled = set(probe_class(config.kind).decay_params)
    return {k: v / input_scale if k in scaled else v for k, v in params.items()}


def token_scale(x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]) -> float:
    """Median norm of the valid token vectors, divided by ``sqrt(d_model)``.

    Dividing by it gives token entries of about unit size whatever the model's residual scale,
    so one learning rate and one weight-decay grid suit every model and layer.
    """
    norms = torch.cat(
        [
            torch.linalg.vector_norm(x[i : i + 256].float(), dim=-1)[mask[i : i + 256]]
            for i in range(0, x.shape[0], 256)
        ]
    )
    scale = float(norms.median()) / x.shape[-1] ** 0.5
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def fit(
    probe: Probe,
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    labels: Int[Tensor, " batch"],
    *,
    weight_decay: float = 0.0,
    train: TrainConfig | None = None,
) -> Probe:
    """Train a copy of ``probe`` from its current parameters; ``probe`` itself is not changed.

    With AdamW, ``train.early_stop_fraction`` of the rows (stratified by label) are held out to
    early-stop on. With L-BFGS every row trains.

    Returns:
        The trained probe, in eval mode, on ``x``'s device.
    """
    from lensprobe.train.split import stratified_split

    train = train or TrainConfig()
    n = x.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} labels for {n} sequences")
    train_rows = torch.ones(n, dtype=torch.bool)
    stop_rows = torch.zeros(n, dtype=torch.bool)
    if train.optimizer == "adamw" and train.early_stop_fraction > 0:
        _, held = stratified_split(labels, train.early_stop_fraction, seed=train.seed)
        train_rows[held] = False
        stop_rows[held] = True
    members = Members(
        weight_decay=torch.tensor([float(weight_decay)]),
        seeds=(0,),
        train=train_rows[None],
        stop=stop_rows[None],
    )
    result = fit_members(probe.config, x, mask, labels, members, train, init=probe.member_params())
    trained = type(probe).from_member(probe.config, result.params, 0).to(x.device)
    return trained.eval()
