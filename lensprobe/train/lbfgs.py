"""Full-batch L-BFGS for a sweep in which every member is its own optimisation.

Each member has its own curvature history, its own line search step and its own stopping test
and iteration count (only the arithmetic is batched), so a member takes the same iterations and
ends at the same point in any sweep, decay 0 on separable data included. It runs in float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from einops import einsum
from torch import Tensor

from lensprobe.probes import Probe
from lensprobe.train.config import TrainConfig
from lensprobe.train.members import (
    FitData,
    FitResult,
    Problem,
    decay_penalty,
    member_sum,
    nonfinite_error,
    per_example_loss,
)

logger = logging.getLogger(__name__)


_HISTORY = 20
"""L-BFGS: curvature pairs each member keeps."""
_ARMIJO = 1e-4
"""L-BFGS: sufficient-decrease constant of the backtracking line search."""
_MAX_BACKTRACKS = 40
"""L-BFGS: step halvings (at least) before a member's line search gives up."""
_TOLERANCE_CHANGE = 1e-12
"""L-BFGS: a member stops when its objective or its largest parameter step changes less."""


class _Objective:
    """Each member's full-batch objective on flat parameters ``(member, n_params)``.

    The objective of member ``i`` is its mean training loss plus ``wd_i / 2 * ||W_i||^2``. It
    depends on member ``i``'s parameters, rows and decay only, so any subset of members can be
    evaluated together and gets the values it would get alone.

    Pooled probes are solved centred: member ``i`` reads ``features - center_i`` (the mean of its
    own training rows), which is the bias reparameterisation ``b' = b + center_i @ W``. The bias is
    not decayed, so the optimum is the same; pooled residuals share a large common direction, and
    without centring L-BFGS crawls along it.

    With ``reduce`` and fewer training rows than features (the usual case for a probing dataset:
    a few hundred texts, d_model in the hundreds or thousands), pooled probes are also solved in
    the span of the training rows' features: ``W = Q A`` with ``Q`` an orthonormal basis of the
    features of the rows some member trains on (never of rows no member trains on, such as a
    test part). The loss sees ``features @ W = (features @ Q) @ A`` and ``||W|| = ||A||``, and
    a member's gradients never leave the span of its own rows, so a fit that starts at zero
    weights follows the same path in any basis that contains that span: L-BFGS uses only inner
    products and Euclidean norms (its first step and its stopping tests included), which a
    change of orthonormal basis keeps. So a member ends where it ends trained alone on its own
    rows, whichever other members share the fit and whatever rows the fit was handed besides.
    """

    def __init__(
        self,
        cls: type[Probe],
        data: FitData,
        labels: Tensor,
        train_w: Tensor,
        wd: Tensor,
        shapes: dict[str, tuple[int, ...]],
        *,
        reduce: bool = False,
    ):
        self.cls, self.data, self.wd, self.shapes = cls, data, wd, dict(shapes)
        self.rows = train_w.bool().any(dim=0).nonzero().flatten()
        w = train_w[:, self.rows]
        self.share = w / w.sum(dim=1, keepdim=True)  # each row's share of its member's mean
        self.labels = labels[self.rows]
        self.features = self.center = self.basis = None
        if data.pooled:
            features = data.features
            d_model = features.shape[1]
            features = features[self.rows]
            n_rows = features.shape[0]
            if reduce and n_rows < d_model:
                self.basis = torch.linalg.qr(features.nan_to_num().T).Q  # (d_model, n_rows)
                features = features @ self.basis
                self.shapes["weight"] = (n_rows, shapes["weight"][1])
            self.features = features
            # (nan_to_num: a NaN row of one member must not reach the others' centres)
            self.center = self.share @ self.features.nan_to_num()
            n_out = shapes["bias"][0]
            if n_out > 1:
                self.onehot = torch.nn.functional.one_hot(self.labels, n_out).to(wd.dtype)
        self.sizes = [math.prod(s) for s in self.shapes.values()]

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """Stacked parameters (read raw inputs) as flat centred ones ``(member, n_params)``."""
        params = dict(params)
        if self.basis is not None:
            params["weight"] = einsum(self.basis, params["weight"], "d r, m d c -> m r c")
        if self.center is not None:
            params["bias"] = params["bias"] + einsum(
                self.center, params["weight"], "m d, m d c -> m c"
            )
        m = next(iter(params.values())).shape[0]
        return torch.cat([params[k].reshape(m, -1) for k in self.shapes], dim=1)

    def unflatten(
        self, theta: Tensor, idx: Tensor | None = None, *, raw: bool = False
    ) -> dict[str, Tensor]:
        """Flat parameters as a dict; with ``raw``, the bias converted back to read raw inputs."""
        parts = theta.split(self.sizes, dim=1)
        params = {
            k: p.reshape(-1, *s) for (k, s), p in zip(self.shapes.items(), parts, strict=True)
        }
        if raw and self.center is not None:
            center = self.center if idx is None else self.center[idx]
            params["bias"] = params["bias"] - einsum(center, params["weight"], "m d, m d c -> m c")
        if raw and self.basis is not None:
            params["weight"] = einsum(self.basis, params["weight"], "d r, m r c -> m d c")
        return params

    def __call__(self, theta: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Objective ``(k,)`` and gradient ``(k, n_params)`` of members ``idx`` at ``theta``."""
        if self.features is not None:
            return self._pooled(theta, idx)
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            params = self.unflatten(theta)
            loss = per_example_loss(self.data.logits(params, self.rows), self.labels)
            f = member_sum(loss, self.share[idx]) + decay_penalty(self.cls, params, self.wd[idx])
            (g,) = torch.autograd.grad(f.sum(), theta)
        return f.detach(), g

    def _pooled(self, theta: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled (logistic / softmax regression) case, with its gradient written out.

        The loss is :func:`per_example_loss`'s, computed with elementwise operations next to its
        derivative (probabilities minus one-hot labels): on small problems every kernel launch
        counts, and on a busy machine so does every multi-threaded one.
        """
        assert self.features is not None and self.center is not None
        params = self.unflatten(theta)
        weight, center, wd = params["weight"], self.center[idx], self.wd[idx]
        k, d, c = weight.shape
        # all members' logits as one matrix product of the shared features
        z = (self.features @ weight.permute(1, 0, 2).reshape(d, k * c)).view(-1, k, c)
        bias = params["bias"] - (center[:, :, None] * weight).sum(dim=1)
        z = z.permute(1, 0, 2) + bias[:, None, :]
        if c == 1:
            z1, target = z[..., 0], self.labels.to(z.dtype)
            loss = z1.clamp_min(0) - z1 * target + torch.log1p(torch.exp(-z1.abs()))
            dz = (torch.sigmoid(z1) - target)[..., None]
        else:
            top = z.amax(dim=-1, keepdim=True)
            e = torch.exp(z - top)
            total = e.sum(dim=-1, keepdim=True)
            loss = (total.log() + top - (z * self.onehot).sum(dim=-1, keepdim=True))[..., 0]
            dz = e / total - self.onehot
        share = self.share[idx]
        counted = share > 0  # other members' rows never count, even when not finite
        f = member_sum(loss, share) + 0.5 * wd * weight.pow(2).flatten(1).sum(dim=1)
        dz = torch.where(counted[..., None], dz * share[..., None], 0.0)  # d f / d logits
        d_bias = dz.sum(dim=1)
        d_weight = (self.features.T @ dz.permute(1, 0, 2).reshape(-1, k * c)).view(d, k, c)
        d_weight = d_weight.permute(1, 0, 2) - center[:, :, None] * d_bias[:, None, :]
        d_weight = d_weight + wd[:, None, None] * weight
        grads = {"weight": d_weight, "bias": d_bias}
        return f, torch.cat([grads[n].reshape(k, -1) for n in self.shapes], dim=1)


def _armijo(
    objective: _Objective,
    x: Tensor,
    f0: Tensor,
    g0: Tensor,
    d: Tensor,
    t: Tensor,
    idx: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backtracking line search along ``d``, each member with its own step.

    Each member starts at its step ``t`` and backtracks (to the minimiser of the quadratic through
    its objective, slope and trial value, kept within ``[t/10, t/2]``) until the sufficient
    decrease ``f(x + t d) <= f(x) + c t g.d`` holds. A non-finite trial value counts as too long.

    Returns:
        Per member the accepted step, objective and gradient there, and whether it failed.
    """
    gd = (g0 * d).sum(dim=1)
    f, g = f0.clone(), g0.clone()
    t = t.clone()
    searching = torch.ones_like(f0, dtype=torch.bool)
    for _ in range(_MAX_BACKTRACKS):
        s = None if bool(searching.all()) else searching.nonzero().flatten()
        if s is None:
            ft, gt = objective(x + t[:, None] * d, idx)
            f0s, gds, ts = f0, gd, t
        else:
            ft, gt = objective(x[s] + t[s, None] * d[s], idx[s])
            f0s, gds, ts = f0[s], gd[s], t[s]
        ok = ft <= f0s + _ARMIJO * ts * gds  # False for NaN
        quad = -gds * ts * ts / (2 * (ft - f0s - gds * ts))
        quad = torch.where(torch.isfinite(quad), quad, 0.5 * ts)
        shorter = torch.minimum(torch.maximum(quad, 0.1 * ts), 0.5 * ts)
        if s is None:
            f = torch.where(ok, ft, f)
            g = torch.where(ok[:, None], gt, g)
            t = torch.where(ok, t, shorter)
            searching = ~ok
        else:
            f[s] = torch.where(ok, ft, f0s)
            g[s] = torch.where(ok[:, None], gt, g[s])
            t[s] = torch.where(ok, ts, shorter)
            searching[s] = ~ok
        if not bool(searching.any()):
            break
    return t, f, g, searching


class _History:
    """Each member's last L-BFGS curvature pairs, and the product of its inverse-Hessian estimate.

    The pairs ``(s, y)`` sit in a ring of ``_HISTORY`` slots indexed by the iteration (all live
    members iterate together, so a member's slot is its own iteration number). A pair a member
    skips (no positive curvature) has ``rho = 0``, which makes it a no-op in the recursion.
    (The compact form of Byrd, Nocedal and Schnabel gives the same product in fewer operations
    but reads the history three times per iteration instead of twice: measured slower here.)
    """

    def __init__(self, m: int, n_params: int, dtype: torch.dtype, device: torch.device) -> None:
        self.pairs = torch.zeros(2, _HISTORY, m, n_params, dtype=dtype, device=device)  # s, y
        self.rho = torch.zeros(_HISTORY, m, dtype=dtype, device=device)
        self.gamma = torch.ones(m, dtype=dtype, device=device)
        self.count = 0  # pairs written so far (= iterations of every live member)

    def keep(self, live: Tensor) -> None:
        """Drop the members that stopped."""
        self.pairs, self.rho, self.gamma = (
            self.pairs[:, :, live],
            self.rho[:, live],
            self.gamma[live],
        )

    def direction(self, g: Tensor) -> Tensor:
        """``-H g`` for every member (two-loop recursion over its pairs, newest first)."""
        q = -g
        alphas = []
        for h in range(min(self.count, _HISTORY)):
            j = (self.count - 1 - h) % _HISTORY
            alpha = self.rho[j] * (self.pairs[0, j] * q).sum(dim=1)
            q = q - alpha[:, None] * self.pairs[1, j]
            alphas.append((j, alpha))
        d = q * self.gamma[:, None]
        for j, alpha in reversed(alphas):
            beta = self.rho[j] * (self.pairs[1, j] * d).sum(dim=1)
            d = d + (alpha - beta)[:, None] * self.pairs[0, j]
        return d

    def add(self, s: Tensor, y: Tensor, good: Tensor) -> None:
        """Store each member's pair of this iteration (a no-op pair where ``good`` is False)."""
        j = self.count % _HISTORY
        sy, yy = (s * y).sum(dim=1), (y * y).sum(dim=1)
        self.pairs[0, j], self.pairs[1, j] = s, y
        self.rho[j] = torch.where(good, 1.0 / torch.where(good, sy, 1.0), 0.0)
        self.gamma = torch.where(good, sy / torch.where(good, yy, 1.0), self.gamma)
        self.count += 1


def fit_lbfgs(
    problem: Problem,
    params: dict[str, Tensor],
    train: TrainConfig,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Full-batch L-BFGS in which every member is its own optimisation.

    The members share only the arithmetic: each has its own curvature history, its own line
    search step (backtracking with sufficient decrease) and its own stopping test, so a member
    takes the same iterations and ends at the same point as when it is trained alone on its own
    rows. A member stops when the Euclidean norm of its gradient is at most ``lbfgs_tolerance``,
    when its objective changes by less than 1e-12 or its step is shorter than that, when its line
    search finds no decrease, or after ``lbfgs_max_iter`` iterations. Stopped members leave the
    computation.
    """
    objective, x = _lbfgs_objective(problem, params)
    m = x.shape[0]
    ids = torch.arange(m, device=x.device)
    f, g = objective(x, ids)
    for bad, what in ((~torch.isfinite(f), "loss"), (~torch.isfinite(g).all(dim=1), "gradient")):
        if bool(bad.any()):
            where = f"training {what} at the starting point"
            raise nonfinite_error(problem.members, bad.cpu(), where)
    out = x.clone()
    iters = torch.zeros(m, dtype=torch.long, device=x.device)
    history = _History(m, x.shape[1], x.dtype, x.device)
    live = g.norm(dim=1) > train.lbfgs_tolerance
    step = 0
    if on_step is not None:
        on_step(0)
    while True:
        if not bool(live.all()):  # drop stopped members from every live tensor
            out[ids[~live]] = x[~live]
            ids, x, f, g = ids[live], x[live], f[live], g[live]
            history.keep(live)
        if ids.numel() == 0 or step >= train.lbfgs_max_iter:
            break
        s, f_new, g_new, stop = _lbfgs_iteration(
            objective, history, problem, x, f, g, ids, step, train.lbfgs_tolerance
        )
        step += 1
        iters[ids] = step
        x, f, g = x + s, f_new, g_new
        live = ~stop
        if on_step is not None:
            on_step(step)
    out[ids] = x
    m_params = objective.unflatten(out, raw=True)
    logger.debug("L-BFGS fit: %d members, iterations %s", m, iters.tolist())
    return FitResult(
        params={k: v.detach().contiguous() for k, v in m_params.items()},
        steps=iters.cpu(),
        best_step=iters.cpu().clone(),
        stop_loss=torch.full((m,), float("nan")),
    )


def _lbfgs_objective(problem: Problem, params: dict[str, Tensor]) -> tuple[_Objective, Tensor]:
    """The members' objective, and their starting point as its flat parameters.

    Pooled probes are solved in the span of the rows' features when the start lies in it (zero
    weights): see :class:`_Objective`.
    """
    shapes = {k: tuple(v.shape[1:]) for k, v in params.items()}
    reduce = problem.data.pooled and not bool(params["weight"].detach().any())
    objective = _Objective(
        problem.probe_cls,
        problem.data,
        problem.labels,
        problem.train_w,
        problem.wd,
        shapes,
        reduce=reduce,
    )
    with torch.no_grad():
        x = objective.flatten({k: v.detach() for k, v in params.items()})
    return objective, x


def _lbfgs_iteration(
    objective: _Objective,
    history: _History,
    problem: Problem,
    x: Tensor,
    f: Tensor,
    g: Tensor,
    ids: Tensor,
    step: int,
    tol: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One iteration of the live members ``ids`` at ``x`` (objective ``f``, gradient ``g``).

    Each member steps along its own quasi-Newton direction (steepest descent where that is not
    a descent direction) with its own line search, stores its curvature pair, and tests whether
    it stops (gradient norm at most ``tol``, see :func:`fit_lbfgs`).

    Returns:
        Per member the step taken, the objective and gradient after it, and whether it stops.
    """
    d = history.direction(g)
    descent = (g * d).sum(dim=1) < 0
    d = torch.where(descent[:, None], d, -g)
    t = torch.ones_like(f)
    if step == 0:  # no curvature yet: a first step of Euclidean length at most 1
        t = (1.0 / g.norm(dim=1)).clamp(max=1.0)
    t, f_new, g_new, failed = _armijo(objective, x, f, g, d, t, ids)
    bad = ~failed & ~torch.isfinite(g_new).all(dim=1)
    if bool(bad.any()):
        flags = torch.zeros(len(problem.members), dtype=torch.bool)
        flags[ids[bad].cpu()] = True
        raise nonfinite_error(problem.members, flags, f"gradient at L-BFGS iteration {step + 1}")
    s = torch.where(failed[:, None], 0.0, t[:, None] * d)
    y = g_new - g
    sy = (s * y).sum(dim=1)
    good = ~failed & (sy > torch.finfo(x.dtype).eps * (s.norm(dim=1) * y.norm(dim=1)))
    history.add(s, y, good)
    stop = (  # Euclidean norms: a rotation of the basis changes none of these tests
        failed
        | (g_new.norm(dim=1) <= tol)
        | ((f_new - f).abs() < _TOLERANCE_CHANGE)
        | (s.norm(dim=1) <= _TOLERANCE_CHANGE)
    )
    return s, f_new, g_new, stop
