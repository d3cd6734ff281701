"""The members of a sweep, and what every fit of them shares.

A sweep is one batched model with a leading ``member`` dim. Every member of a grid (weight decays
x folds x seeds) has its own parameters, its own training rows and its own early-stopping rows,
given as boolean ``(member, row)`` tables (:class:`Members`). All members read the same rows of
activations (:class:`FitData`), and each member's loss counts only its own rows
(:func:`member_sum`), so the members never interact.

Pooled probes (mean / last / max) pool every sequence once up front; after that a fit only sees
``(row, d_model)`` features. Masks passed in are the valid tokens of the input as captured; a fit
reads the tokens :func:`~lensprobe.probes.base.tokens_read` selects for the probe's config (BOS
left out when the config excludes it), the same rule the trained probe's ``forward`` applies.

A non-finite loss is an error that names the member (index and weight decay,
:func:`nonfinite_error`), never a member silently returned untrained.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.errors import InputError
from lensprobe.hardware import return_freed_memory
from lensprobe.probes import Probe, ProbeConfig, probe_class
from lensprobe.probes.base import tokens_read


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
            raise InputError("weight_decay, seeds, train and stop must agree on the member count")
        if self.index is not None and len(self.index) != m:
            raise InputError(f"index names {len(self.index)} members, the sweep has {m}")
        if bool((self.train & self.stop).any()):
            raise InputError("a member's early-stopping rows overlap its training rows")
        if not bool(self.train.any(dim=1).all()):
            raise InputError("every member needs at least one training row")

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


def member_sum(
    loss: Float[Tensor, "member batch"], weight: Float[Tensor, "member batch"]
) -> Float[Tensor, " member"]:
    """Each member's loss summed over its own rows, each row counted with its weight.

    A row outside a member's set (weight 0) never reaches its sum, even with a non-finite loss.
    """
    return (torch.where(weight > 0, loss, 0.0) * weight).sum(dim=1)


def member_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """Each member's mean loss over its rows (0 for a member with no row here)."""
    return member_sum(loss, weight) / weight.sum(dim=1).clamp_min(1.0)


TRIM_EVERY = 32
"""Reads of padded rows from ragged activations between two hand-backs of freed memory."""


class FitData:
    """The rows a fit reads: pooled features (computed once), or the activations themselves.

    The activations are a padded tensor with its mask, or ragged
    :class:`~lensprobe.activations.Activations` (e.g. a memory-mapped store), of which only the
    rows of each minibatch are padded, when they are read. Either way they are kept as given
    (e.g. bfloat16 from a capture) and each minibatch is read as stored when it is read, trimmed
    to the columns its rows read and zeroed where the probe does not read (unless its forward
    never reads there: :attr:`~lensprobe.probes.base.Probe.ignores_masked`); the forward converts
    it to the products' dtype and applies the input scale to their outputs, so a fit never holds
    a float32 copy of the whole capture. The values are the same as converting everything up
    front, and a minibatch of a ragged source equals the same rows of the padded tensor.
    """

    chunk = 256
    """Rows converted at a time when pooling."""

    def __init__(
        self,
        config: ProbeConfig,
        x: Tensor | Activations,
        mask: Tensor | None,
        dtype: torch.dtype,
        scale: float,
        matmul_dtype: torch.dtype | None = None,
    ):
        self.cls = probe_class(config.kind)
        self.matmul_dtype = matmul_dtype
        self.config = config
        self.pooled = self.cls.pooled
        self.x, self.dtype, self.scale = x, dtype, scale
        self.ragged = isinstance(x, Activations)
        self._reads = 0
        self.n = len(x) if isinstance(x, Activations) else x.shape[0]
        self.device = x.device
        self.given: Tensor | None = None
        self.mask: Tensor | None = None
        if not isinstance(x, Activations):
            if mask is None:
                raise InputError("a padded tensor needs its mask")
            self.given = mask
            self.mask = tokens_read(config, mask)  # the tokens the trained probe's forward reads
        if self.pooled:
            # Pooling commutes with the positive scale, so the raw pooled features are shared by
            # every fit and prediction on the same activations (see _pooled).
            self.features = (_pooled(self) / scale).to(dtype)

    def _rows(self, rows: Tensor | slice, trim: bool) -> tuple[Tensor, Tensor, bool]:
        """Some rows as stored, the tokens the probe reads in them, and whether they are ours.

        Ours: a new tensor, zero wherever the probe does not read (ragged sources), not the
        caller's tensor. ``trim``: only the columns some row reads.
        """
        if isinstance(self.x, Activations):
            self._reads += 1
            if self._reads % TRIM_EVERY == 0:  # minibatches of varying size (see hardware)
                return_freed_memory()
            idx = rows if isinstance(rows, Tensor) else torch.arange(self.n)[rows]
            x, given = self.x.pad(idx.cpu(), dtype=self.x.dtype, device=self.device)
            read = tokens_read(self.config, given)
            if not torch.equal(read, given):  # BOS left out: zero it (a few tokens, in place)
                x[given & ~read] = 0.0
            lo, hi = _columns(read) if trim else (0, read.shape[1])
            return x[:, lo:hi], read[:, lo:hi], True
        assert self.mask is not None
        read = self.mask[rows]
        lo, hi = _columns(read) if trim else (0, read.shape[1])
        x = self.x[:, lo:hi]  # only the columns read are gathered
        return (
            (x.index_select(0, rows) if isinstance(rows, Tensor) else x[rows]),
            read[:, lo:hi],
            False,
        )

    def _read(
        self,
        rows: Tensor | slice,
        dtype: torch.dtype | None,
        *,
        trim: bool = True,
        zero: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Rows in ``dtype`` (None: as stored), zero at every token the probe does not read.

        Unscaled; ``trim``: only the columns they read; ``zero=False``: a padded tensor's rows
        are left as they are where not read (for a probe that :attr:`ignores_masked`).

        Returns:
            The rows and the tokens read in them (both trimmed).
        """
        x, mask, zeroed = self._rows(rows, trim)
        x = x if dtype is None else x.to(dtype)
        if zeroed or not zero:
            return x, mask
        return x.masked_fill(~mask[..., None], 0.0), mask  # x is never changed

    def logits(
        self,
        params: dict[str, Tensor],
        rows: Tensor,
        members: Tensor | None = None,
        *,
        full_precision: bool = False,
    ) -> Tensor:
        """Logits ``(member, row, n_outputs)`` of some rows.

        ``members``: which members the stacked ``params`` are (read by :class:`HookData`;
        ignored here). The activations are read as stored and converted to the products' dtype
        (``matmul_dtype``, else the fit's) by the forward, where it packs the valid tokens first:
        a bfloat16 store feeds bfloat16 products without a round trip through float32, and
        padding is never converted. The forward applies the input scale to its products' outputs.
        ``full_precision``: products in the fit's dtype whatever ``matmul_dtype`` (the
        early-stopping losses: bfloat16 rounding there is larger than ``min_delta``).
        """
        if self.pooled:
            return self.cls.linear_members(params, self.features[rows])  # type: ignore[attr-defined]
        matmul = self.dtype if full_precision else self.matmul_dtype or self.dtype
        x, mask = self._read(rows, None, zero=not self.cls.ignores_masked)
        logits, _ = self.cls.forward_members(
            self.config, params, x, mask, matmul_dtype=matmul, input_scale=self.scale
        )
        return logits


def _columns(read: Tensor) -> tuple[int, int]:
    """The first and one past the last column some row reads (all columns when none does)."""
    cols = read.any(dim=0).nonzero().flatten()
    if not cols.numel():
        return 0, read.shape[1]
    return int(cols[0]), int(cols[-1]) + 1


class HookData:
    """Several hooks' :class:`FitData` in one fit: member ``i`` reads hook ``hook_of[i]``.

    Every hook has the same rows (the same texts and labels) and its own activations and input
    scale; the members of one hook form a contiguous block. Each minibatch is read once per hook
    and each hook's members compute on their own hook's rows, so a member ends where it ends in a
    fit of its hook alone, while every hook's members share one optimizer loop.
    """

    def __init__(self, parts: list[FitData], sizes: list[int]):
        if len(parts) != len(sizes) or not parts:
            raise InputError("one FitData and one member count per hook")
        if len({(p.n, p.dtype, p.device, p.pooled) for p in parts}) != 1:
            raise InputError("hooks of one fit need the same rows, dtype, device and probe kind")
        self.parts = parts
        self.n, self.dtype, self.device, self.pooled = (
            parts[0].n,
            parts[0].dtype,
            parts[0].device,
            False,
        )
        self.hook_of = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(sizes))

    def logits(
        self,
        params: dict[str, Tensor],
        rows: Tensor,
        members: Tensor | None = None,
        *,
        full_precision: bool = False,
    ) -> Tensor:
        """Logits ``(member, row, n_outputs)``; ``members`` (ascending) are the stacked ones."""
        hook_of = self.hook_of if members is None else self.hook_of[members.cpu()]
        hooks, counts = torch.unique_consecutive(hook_of, return_counts=True)
        # split, not slices: its backward writes each block's gradient once, where a slice's
        # backward zero-fills a whole parameter stack per block
        blocks = {k: v.split(counts.tolist()) for k, v in params.items()}
        out = [
            self.parts[int(h)].logits(
                {k: b[i] for k, b in blocks.items()}, rows, full_precision=full_precision
            )
            for i, h in enumerate(hooks)
        ]
        return torch.cat(out)


_POOLED: list[tuple[tuple, Tensor]] = []
"""The last pooled features and what they were pooled from (see :func:`_pooled`)."""


def _pooled(data: FitData) -> Tensor:
    """Float32 pooled features of ``data.x`` (unscaled), pooled a chunk of rows at a time.

    For a padded tensor the last result is kept while the same ``x`` and mask objects live
    unchanged (same tensor version), so a protocol that fits and then predicts on the same
    activations pools them once.
    """
    key: tuple = ()
    if data.given is not None:
        assert isinstance(data.x, Tensor)
        given = data.given
        key = (data.config.aggregation, data.config.exclude_bos, data.x._version, given._version)
        if _POOLED:
            (x_ref, mask_ref, *old_key), features = _POOLED[0]
            if x_ref() is data.x and mask_ref() is given and tuple(old_key) == key:
                return features
    parts = []
    for i in range(0, data.n, data.chunk):
        x, mask = data._read(slice(i, i + data.chunk), torch.float32, trim=False)
        parts.append(data.cls.pool(data.config, x, mask))  # type: ignore[attr-defined]
    features = torch.cat(parts) if parts else torch.empty(0, data.config.d_model)
    if data.given is not None:
        _POOLED[:] = [((weakref.ref(data.x), weakref.ref(data.given), *key), features)]
    return features


def decay_penalty(
    cls: type[Probe], params: dict[str, Tensor], wd: Float[Tensor, " member"]
) -> Float[Tensor, " member"]:
    """Each member's L2 penalty ``wd / 2 * ||W||^2`` over the probe's decayed weight matrices."""
    total = torch.zeros_like(wd)
    for name in cls.decay_params:
        p = params[name]
        total = total + p.pow(2).reshape(p.shape[0], -1).sum(dim=1)
    return 0.5 * wd * total


@dataclass(frozen=True)
class Problem:
    """What a fit optimises, whatever the optimizer.

    The probe class, the rows it reads, the labels, and each member's weight decay and row
    weights in the fit's dtype, on the labels' device.
    """

    probe_cls: type[Probe]
    data: FitData | HookData
    labels: Int[Tensor, " batch"]
    members: Members
    wd: Float[Tensor, " member"]
    train_w: Float[Tensor, "member batch"]
    """1.0 on each member's training rows."""
    stop_w: Float[Tensor, "member batch"]
    """1.0 on each member's early-stopping rows."""

    @classmethod
    def build(
        cls, probe: type[Probe], data: FitData | HookData, labels: Tensor, members: Members
    ) -> Problem:
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


def nonfinite_error(members: Members, bad: Tensor, what: str) -> FloatingPointError:
    """The error for members whose ``what`` became NaN/inf (``bad``: a flag per member)."""
    which = bad.nonzero().flatten().tolist()
    others = f" and {len(which) - 1} other member(s)" if len(which) > 1 else ""
    return FloatingPointError(
        f"{members.describe(which[0])}{others}: non-finite {what}; check the activations for "
        "NaN/inf values (or lower the learning rate / weight decay)"
    )
