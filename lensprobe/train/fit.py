"""Training many probes at once: a sweep is one batched model with a leading ``member`` dim.

Every member of a grid (weight decays x folds x seeds) has its own parameters, its own training
rows and its own early-stopping rows, given as boolean ``(member, row)`` tables. All members read
the same minibatch of activations in the same order, and each member's loss counts only its own
rows, so the members never interact: a member ends exactly where the same probe trained alone on
the same rows (with the same data order) ends, but the activations are read once for all of them.

With L-BFGS every member is its own optimisation too: its own curvature history, its own line
search step and its own stopping test and iteration count (only the arithmetic is batched), so a
member takes the same iterations and ends at the same point in any sweep, decay 0 on separable
data included. It runs in float64.

Pooled probes (mean / last / max) pool every sequence once up front; after that a fit only sees
``(row, d_model)`` features.

Masks passed in are the valid tokens of the input as captured; a fit reads the tokens
:func:`~lensprobe.probes.base.tokens_read` selects for the probe's config (BOS left out when the
config excludes it), the same rule the trained probe's ``forward`` applies.

A non-finite loss is an error that names the member (index and weight decay), never a member
silently returned untrained.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.probes import Probe, ProbeConfig, probe_class
from lensprobe.probes.base import tokens_read
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
    index: tuple[int, ...] | None = None
    """Each member's number in its whole sweep, as errors name it (default ``0, 1, ...``)."""

    def __post_init__(self) -> None:
        m = self.weight_decay.shape[0]
        if len(self.seeds) != m or self.train.shape[0] != m or self.stop.shape != self.train.shape:
            raise ValueError("weight_decay, seeds, train and stop must agree on the member count")
        if self.index is not None and len(self.index) != m:
            raise ValueError(f"index names {len(self.index)} members, the sweep has {m}")
        if bool((self.train & self.stop).any()):
            raise ValueError("a member's early-stopping rows overlap its training rows")
        if not bool(self.train.any(dim=1).all()):
            raise ValueError("every member needs at least one training row")

    def __len__(self) -> int:
        return self.weight_decay.shape[0]

    def select(self, i: int) -> Members:
        """Member ``i`` alone, as a one-member sweep that keeps its number for errors."""
        return Members(
            weight_decay=self.weight_decay[i : i + 1],
            seeds=self.seeds[i : i + 1],
            train=self.train[i : i + 1],
            stop=self.stop[i : i + 1],
            index=(self.index[i] if self.index is not None else i,),
        )

    def describe(self, i: int) -> str:
        """How errors name member ``i``: its number in the sweep and its weight decay."""
        number = self.index[i] if self.index is not None else i
        return f"member {number} (weight decay {float(self.weight_decay[i]):g})"


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


def _member_sum(
    loss: Float[Tensor, "member batch"], weight: Float[Tensor, "member batch"]
) -> Float[Tensor, " member"]:
    """Each member's loss summed over its own rows, each row counted with its weight.

    A row outside a member's set (weight 0) never reaches its sum, even with a non-finite loss.
    """
    return (torch.where(weight > 0, loss, 0.0) * weight).sum(dim=1)


def _member_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """Each member's mean loss over its rows (0 for a member with no row here)."""
    return _member_sum(loss, weight) / weight.sum(dim=1).clamp_min(1.0)


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
        given = mask
        mask = tokens_read(config, mask)  # the tokens the trained probe's forward reads
        self.x, self.mask, self.dtype, self.scale = x, mask, dtype, scale
        if self.pooled:
            # Pooling commutes with the positive scale, so the raw pooled features are shared by
            # every fit and prediction on the same activations (see _pooled).
            self.features = (_pooled(self, given) / scale).to(dtype)

    def _read(
        self, rows: Tensor | slice, cols: slice | None, dtype: torch.dtype, *, scaled: bool = True
    ) -> Tensor:
        """Rows (and columns) of ``x`` in ``dtype``, zero at padding, divided by the scale."""
        x = self.x[rows] if cols is None else self.x[rows, cols]
        mask = self.mask[rows] if cols is None else self.mask[rows, cols]
        x = x.to(dtype).masked_fill(~mask[..., None], 0.0)  # a new tensor: x is never changed
        return x.div_(self.scale) if scaled and self.scale != 1.0 else x

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


_POOLED: list[tuple[tuple, Tensor]] = []
"""The last pooled features and what they were pooled from (see :func:`_pooled`)."""


def _pooled(data: _Data, given_mask: Tensor) -> Tensor:
    """Float32 pooled features of ``data.x`` (unscaled), pooled a chunk of rows at a time.

    The last result is kept while the same ``x`` and mask objects live unchanged (same tensor
    version), so a protocol that fits and then predicts on the same activations pools them once.
    """
    key = (data.config.kind, data.config.exclude_bos, data.x._version, given_mask._version)
    if _POOLED:
        (x_ref, mask_ref, *old_key), features = _POOLED[0]
        if x_ref() is data.x and mask_ref() is given_mask and tuple(old_key) == key:
            return features
    features = torch.cat(
        [
            data.cls.pool(  # type: ignore[attr-defined]
                data._read(slice(i, i + data.chunk), None, torch.float32, scaled=False),
                data.mask[i : i + data.chunk],
            )
            for i in range(0, data.x.shape[0], data.chunk)
        ]
    )
    _POOLED[:] = [((weakref.ref(data.x), weakref.ref(given_mask), *key), features)]
    return features


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
        mask: Valid tokens of ``x`` as captured; the fit reads the tokens
            :func:`~lensprobe.probes.base.tokens_read` selects for ``config``.
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

    Raises:
        FloatingPointError: A member's loss became NaN or infinite (the error names it).
    """
    train = train or TrainConfig()
    device = x.device
    cls = probe_class(config.kind)
    # L-BFGS runs in float64: its line search and stopping tests compare objective values that
    # differ in the last float32 digits near the end, where rounding would decide the result.
    dtype = torch.float64 if train.optimizer == "lbfgs" else torch.float32
    data = _Data(config, x, mask, dtype, input_scale)
    problem = _Problem.build(cls, data, labels.to(device), members)
    start = init if init is not None else cls.init_members(config, list(members.seeds))
    params = {
        k: v.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        for k, v in start.items()
    }
    if train.optimizer == "lbfgs":
        return _fit_lbfgs(problem, params, train, on_step)
    if order_rows is None:
        order_rows = members.train.any(dim=0).nonzero().flatten()
    return _fit_adamw(problem, params, train, order_rows.to(device), eval_batch_size, on_step)


@dataclass(frozen=True)
class _Problem:
    """What a fit optimises, whatever the optimizer.

    The probe class, the rows it reads, the labels, and each member's weight decay and row
    weights in the fit's dtype, on the labels' device.
    """

    probe_cls: type[Probe]
    data: _Data
    labels: Int[Tensor, " batch"]
    members: Members
    wd: Float[Tensor, " member"]
    train_w: Float[Tensor, "member batch"]
    """1.0 on each member's training rows."""
    stop_w: Float[Tensor, "member batch"]
    """1.0 on each member's early-stopping rows."""

    @classmethod
    def build(cls, probe: type[Probe], data: _Data, labels: Tensor, members: Members) -> _Problem:
        """The problem of ``members`` on ``data`` (tables moved to the labels' device)."""
        device, dtype = labels.device, data.dtype
        return cls(
            probe_cls=probe,
            data=data,
            labels=labels,
            members=members,
            wd=members.weight_decay.to(device=device, dtype=dtype),
            train_w=members.train.to(device=device, dtype=dtype),
            stop_w=members.stop.to(device=device, dtype=dtype),
        )


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

    With ``reduce`` and fewer rows than features (the usual case for a probing dataset: a few
    hundred texts, d_model in the hundreds or thousands), pooled probes are also solved in the
    span of the rows' features: ``W = Q A`` with ``Q`` an orthonormal basis of that span (from
    every row the fit was given, so a member's coordinates do not depend on which other members
    share the fit). The loss sees ``features @ W = (features @ Q) @ A`` and ``||W|| = ||A||``,
    and gradients never leave the span, so a fit that starts in it (zero weights) follows the
    same path as in the full space, with ``d_model`` replaced by the number of rows.
    """

    def __init__(
        self,
        cls: type[Probe],
        data: _Data,
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
            n_rows, d_model = features.shape
            if reduce and n_rows < d_model:
                self.basis = torch.linalg.qr(features.nan_to_num().T).Q  # (d_model, n_rows)
                features = features @ self.basis
                self.shapes["weight"] = (n_rows, shapes["weight"][1])
            self.features = features[self.rows]
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
            f = _member_sum(loss, self.share[idx]) + _decay_penalty(self.cls, params, self.wd[idx])
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
        f = _member_sum(loss, share) + 0.5 * wd * weight.pow(2).flatten(1).sum(dim=1)
        dz = torch.where(counted[..., None], dz * share[..., None], 0.0)  # d f / d logits
        d_bias = dz.sum(dim=1)
        d_weight = (self.features.T @ dz.permute(1, 0, 2).reshape(-1, k * c)).view(d, k, c)
        d_weight = d_weight.permute(1, 0, 2) - center[:, :, None] * d_bias[:, None, :]
        d_weight = d_weight + wd[:, None, None] * weight
        grads = {"weight": d_weight, "bias": d_bias}
        return f, torch.cat([grads[n].reshape(k, -1) for n in self.shapes], dim=1)


def _nonfinite_error(members: Members, bad: Tensor, what: str) -> FloatingPointError:
    """The error for members whose ``what`` became NaN/inf (``bad``: a flag per member)."""
    which = bad.nonzero().flatten().tolist()
    others = f" and {len(which) - 1} other member(s)" if len(which) > 1 else ""
    return FloatingPointError(
        f"{members.describe(which[0])}{others}: non-finite {what}; check the activations for "
        "NaN/inf values (or lower the learning rate / weight decay)"
    )


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


def _fit_lbfgs(
    problem: _Problem,
    params: dict[str, Tensor],
    train: TrainConfig,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Full-batch L-BFGS in which every member is its own optimisation.

    The members share only the arithmetic: each has its own curvature history, its own line
    search step (backtracking with sufficient decrease) and its own stopping test, so a member
    takes the same iterations and ends at the same point as when it is trained alone. A member
    stops when its largest gradient entry is at most ``lbfgs_tolerance``, when its objective or
    its step changes by less than 1e-12, when its line search finds no decrease, or after
    ``lbfgs_max_iter`` iterations. Stopped members leave the computation.
    """
    objective, x = _lbfgs_objective(problem, params)
    m = x.shape[0]
    ids = torch.arange(m, device=x.device)
    f, g = objective(x, ids)
    for bad, what in ((~torch.isfinite(f), "loss"), (~torch.isfinite(g).all(dim=1), "gradient")):
        if bool(bad.any()):
            where = f"training {what} at the starting point"
            raise _nonfinite_error(problem.members, bad.cpu(), where)
    out = x.clone()
    iters = torch.zeros(m, dtype=torch.long, device=x.device)
    history = _History(m, x.shape[1], x.dtype, x.device)
    live = g.abs().amax(dim=1) > train.lbfgs_tolerance
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


def _lbfgs_objective(problem: _Problem, params: dict[str, Tensor]) -> tuple[_Objective, Tensor]:
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
    problem: _Problem,
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
    it stops (largest gradient entry at most ``tol``, see :func:`_fit_lbfgs`).

    Returns:
        Per member the step taken, the objective and gradient after it, and whether it stops.
    """
    d = history.direction(g)
    descent = (g * d).sum(dim=1) < 0
    d = torch.where(descent[:, None], d, -g)
    t = torch.ones_like(f)
    if step == 0:  # no curvature yet: a first step of length at most 1 in the L1 norm
        t = (1.0 / g.abs().sum(dim=1)).clamp(max=1.0)
    t, f_new, g_new, failed = _armijo(objective, x, f, g, d, t, ids)
    bad = ~failed & ~torch.isfinite(g_new).all(dim=1)
    if bool(bad.any()):
        flags = torch.zeros(len(problem.members), dtype=torch.bool)
        flags[ids[bad].cpu()] = True
        raise _nonfinite_error(problem.members, flags, f"gradient at L-BFGS iteration {step + 1}")
    s = torch.where(failed[:, None], 0.0, t[:, None] * d)
    y = g_new - g
    sy = (s * y).sum(dim=1)
    good = ~failed & (sy > torch.finfo(x.dtype).eps * (s.norm(dim=1) * y.norm(dim=1)))
    history.add(s, y, good)
    stop = (
        failed
        | (g_new.abs().amax(dim=1) <= tol)
        | ((f_new - f).abs() < _TOLERANCE_CHANGE)
        | (s.abs().amax(dim=1) <= _TOLERANCE_CHANGE)
    )
    return s, f_new, g_new, stop


def _fit_adamw(
    problem: _Problem,
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
    problem: _Problem,
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
    problem: _Problem,
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
    loss = per_example_loss(problem.data.logits(member_params, rows), problem.labels[rows])
    member_loss = _member_mean(loss, w)
    went_bad = ~torch.isfinite(member_loss.detach())
    if train.decay == "l2":  # wd / 2 * ||W||^2 in each member's loss, as L-BFGS
        member_loss = member_loss + _decay_penalty(problem.probe_cls, member_params, wd)
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
        raise _nonfinite_error(members, (bad_step == first).cpu(), f"training loss at step {first}")


def _early_stop_losses(
    problem: _Problem, params: dict[str, Tensor], active: Tensor, step: int, batch: int
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
        problem.labels,
        problem.stop_w[idx],
        batch,
    )
    if not bool(torch.isfinite(losses[idx]).all()):
        bad = torch.zeros(m, dtype=torch.bool)
        bad[idx.cpu()] = ~torch.isfinite(losses[idx]).cpu()
        raise _nonfinite_error(problem.members, bad, f"early-stopping loss at step {step}")
    return losses


@torch.no_grad()
def _stop_losses(
    data: _Data, params: dict[str, Tensor], labels: Tensor, stop_w: Tensor, batch: int
) -> Tensor:
    """Each member's mean loss over its early-stopping rows, a batch of rows at a time."""
    rows = stop_w.bool().any(dim=0).nonzero().flatten()
    total = torch.zeros(stop_w.shape[0], dtype=stop_w.dtype, device=stop_w.device)
    for start in range(0, rows.numel(), batch):
        r = rows[start : start + batch]
        loss = per_example_loss(data.logits(params, r), labels[r])
        total += _member_sum(loss, stop_w[:, r])
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


def token_scale(
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    rows: Int[Tensor, " rows"] | None = None,
) -> float:
    """Median norm of the valid token vectors, divided by ``sqrt(d_model)``.

    Dividing by it gives token entries of about unit size whatever the model's residual scale,
    so one learning rate and one weight-decay grid suit every model and layer.

    Args:
        x: Padded activations.
        mask: The tokens that count.
        rows: Only these sequences count (default: all); ``x`` is read in place, never copied.
    """
    keep = mask
    if rows is not None:
        keep = torch.zeros(x.shape[0], dtype=torch.bool, device=mask.device)
        keep[rows.to(mask.device)] = True
        keep = mask & keep[:, None]
    norms = torch.cat(
        [
            torch.linalg.vector_norm(x[i : i + 256].float(), dim=-1)[keep[i : i + 256]]
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
    early-stop on. With L-BFGS every row trains. The fit reads the tokens the trained probe's
    ``forward`` reads (:func:`~lensprobe.probes.base.tokens_read`: without each sequence's first
    token when ``probe.config.exclude_bos``), so pass the mask as captured.

    Returns:
        The trained probe, in eval mode, on ``x``'s device.

    Raises:
        InputError: Empty or non-finite activations, a bad mask, labels outside the classes.
        FloatingPointError: The training loss became NaN/inf (e.g. too large a learning rate).
    """
    from lensprobe.errors import InputError
    from lensprobe.train.checks import check_activations
    from lensprobe.train.split import stratified_split

    train = train or TrainConfig()
    check_activations(x, mask)  # empty, wrong mask, rows without tokens, NaN/inf: named errors
    n = x.shape[0]
    if labels.shape[0] != n:
        raise InputError(f"{labels.shape[0]} labels for {n} sequences: pass one label per sequence")
    k = probe.config.n_classes
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise InputError(
            f"labels must be class ids 0..{k - 1} for this probe ({probe.config.n_outputs} "
            f"output(s)), got {int(labels.min())}..{int(labels.max())}: map them to 0..k-1 first "
            "(lp.run_protocol maps any labels for you)"
        )
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
