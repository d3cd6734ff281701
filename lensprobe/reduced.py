"""Capture-time reduction: keep one vector per text and pooled kind, not every token.

A mean, last-token or max probe reads one pooled vector per text, yet a full capture stores every
token. ``capture(..., keep=...)`` chooses what a capture keeps (:data:`KEEPS`):

- ``"tokens"`` (default): every valid token; every probe kind, widget and analysis can read it.
- ``"last"``: each text's last valid token; serves the ``last`` probe.
- ``"pooled"``: each text's mean, max and last over its valid tokens; serves ``mean``, ``max``
  and ``last``.

A reduced capture is a :class:`ReducedActivations`: per text, its pooled vectors (float32: a mean
of bfloat16 values is no bfloat16 value) and the float32 norm of every token (the protocol's input
scale is the median token norm of the training rows, so a reduced store needs the norms to scale
its inputs as the full store does). The tokens are rounded to the capture's storage dtype
(``dtype=``) before pooling, exactly as a full store holds them, and pooled by the one function
the protocol's streaming pass uses (:func:`lensprobe.pooling.pool_all`), so a probe trained on a
reduced capture equals the probe trained on the full capture (tests/test_reduced.py).
:func:`reduce` reduces a full capture afterwards.

The BOS rule: mean and max pool without the BOS token when the capture prepended one (the
protocol's ``bos="auto"``), since a BOS residual is the same for every text and in Gemma dwarfs
the other tokens. A protocol run with another BOS rule on such a store is refused; the last
token is the same under either rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.activations import (
    Activations,
    ActivationsMeta,
    CaptureResult,
    Index,
    as_index,
    row_index,
)
from lensprobe.errors import InputError
from lensprobe.pooling import pool_all, token_norms, without_first_token
from lensprobe.specs import KEEPS, Keep

if TYPE_CHECKING:
    from lensprobe.probes import ProbeConfig

__all__ = ["KEEPS", "KEPT_KINDS", "Keep", "ReducedActivations", "reduce"]

KEPT_KINDS: dict[str, tuple[str, ...]] = {"last": ("last",), "pooled": ("mean", "max", "last")}
"""Reduced keep mode -> the pooled kinds it stores, in the order of ``features``' kind axis."""

_CHUNK = 256
"""Sequences :func:`reduce` pads at a time."""


def check_keep(keep: Any) -> Keep:
    """``keep`` if it names a keep mode, else a named error listing them."""
    if keep not in KEEPS:
        raise InputError(f"keep must be one of {KEEPS}, got {keep!r}")
    return keep  # type: ignore[no-any-return]


def pooling_mask(mask: Bool[Tensor, "batch pos"], prepend_bos: bool) -> Bool[Tensor, "batch pos"]:
    """The tokens a reduced capture pools: the valid ones, less BOS when it was prepended."""
    return without_first_token(mask) if prepend_bos else mask


class ReducedActivations(Activations):
    """A capture reduced to pooled vectors per text (``keep="last"`` or ``"pooled"``).

    Sequence-level parts are those of :class:`Activations` (lengths, token ids, labels, texts,
    subsets, concatenation); the token activations themselves are gone, so padding a batch (what
    attention probes, widgets and analyses read) is a named error.

    Attributes:
        features: Per sequence, one float32 vector per kind of :attr:`kinds`.
        norms: Float32 norm of every valid token (BOS included), sequences end to end.
    """

    features: Float[Tensor, "batch kind d_model"]
    norms: Float[Tensor, " tokens"]

    def __init__(
        self,
        meta: ActivationsMeta,
        features: Float[Tensor, "batch kind d_model"],
        norms: Float[Tensor, " tokens"],
        lengths: Int[Tensor, " batch"],
        token_ids: Int[Tensor, " tokens"],
        labels: Int[Tensor, " batch"] | None = None,
        *,
        token_strs: list[list[str]] | None = None,
        texts: list[str] | None = None,
    ) -> None:
        if meta.keep not in KEPT_KINDS:
            raise InputError(
                f"reduced activations need meta.keep 'last' or 'pooled', not {meta.keep!r}"
            )
        lengths = lengths.to(torch.long)
        n, k = lengths.numel(), len(KEPT_KINDS[meta.keep])
        if tuple(features.shape) != (n, k, meta.d_model) or features.dtype != torch.float32:
            raise InputError(
                f"features must be float32 ({n}, {k}, {meta.d_model}), got "
                f"{str(features.dtype).removeprefix('torch.')} {tuple(features.shape)}"
            )
        if tuple(norms.shape) != (int(lengths.sum()),) or norms.dtype != torch.float32:
            raise InputError(f"norms must be float32, one per token ({int(lengths.sum())})")
        if n and int(lengths.min()) <= 0:
            raise InputError("every sequence needs at least one token")
        self.meta = meta
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
        self._init(
            segments=(),
            seg=torch.zeros(n, dtype=torch.long),
            starts=offsets[:-1],
            lengths=lengths,
            token_ids=token_ids.to(torch.long),
            labels=labels,
            token_strs=token_strs,
            texts=texts,
        )
        self.features = features
        self.norms = norms

    @property
    def kinds(self) -> tuple[str, ...]:
        """The pooled kinds held, in the order of the kind axis of :attr:`features`."""
        return KEPT_KINDS[self.meta.keep]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of :attr:`features` (float32; ``meta.dtype`` is what the tokens were rounded to)."""
        return torch.float32

    def __repr__(self) -> str:
        return (
            f"ReducedActivations(hook={self.meta.hook!r}, keep={self.meta.keep!r}, "
            f"sequences={len(self)}, tokens={self.n_tokens}, d_model={self.d_model}, "
            f"labels={self.labels is not None})"
        )

    def _no_tokens(self, what: str) -> InputError:
        return InputError(
            f"the activations at {self.meta.hook!r} were captured with keep={self.meta.keep!r}: "
            f"one vector per text for {'/'.join(self.kinds)} probes, not every token, which "
            f"{what} needs; capture with keep='tokens'"
        )

    def _gather(self, idx: Tensor) -> Tensor:
        raise self._no_tokens("reading token activations")

    def pad(self, idx: Index | None = None, **kwargs: Any) -> Any:
        """Refused: a reduced capture holds no tokens to pad."""
        raise self._no_tokens("padding a batch")

    def sequence(self, i: int) -> Tensor:
        """Refused: a reduced capture holds no tokens."""
        raise self._no_tokens("reading a sequence")

    def check_serves(self, config: ProbeConfig) -> None:
        """Refuse a probe this capture cannot train (another kind, or another BOS rule)."""
        if config.kind not in self.kinds:
            raise self._no_tokens(f"the {config.kind} probe")
        if config.kind != "last" and config.exclude_bos != self.meta.prepend_bos:
            said = "without" if self.meta.prepend_bos else "with"
            raise InputError(
                f"the activations at {self.meta.hook!r} were pooled {said} BOS when captured "
                f"(keep={self.meta.keep!r}); train with bos='auto', or capture with keep='tokens' "
                "to choose the BOS rule at training time"
            )

    def read_norms(
        self, exclude_bos: bool
    ) -> tuple[Float[Tensor, " tokens"], Int[Tensor, " batch"]]:
        """The norms of the tokens a probe reads, and how many each sequence has."""
        lengths = self.lengths
        if not exclude_bos:
            return self.norms, lengths
        keep = torch.ones(self.n_tokens, dtype=torch.bool)
        keep[self.offsets[:-1][lengths > 1]] = False
        return self.norms[keep], lengths - (lengths > 1).long()

    def shard_tensors(self) -> dict[str, Tensor]:
        """What a store's file of this hook holds for these sequences."""
        return {"features": self.features.contiguous(), "norms": self.norms.contiguous()}

    def __getitem__(self, idx: Index) -> ReducedActivations:
        """A subset of sequences."""
        sel = as_index(idx, len(self))
        rows, _ = row_index(self.offsets[:-1][sel], self.lengths[sel])
        return ReducedActivations(
            self.meta,
            self.features[sel],
            self.norms[rows],
            self.lengths[sel],
            self.token_ids[rows],
            None if self.labels is None else self.labels[sel],
            token_strs=None
            if self.token_strs is None
            else [self.token_strs[i] for i in sel.tolist()],
            texts=None if self.texts is None else [self.texts[i] for i in sel.tolist()],
        )

    def with_labels(
        self, labels: Int[Tensor, " batch"] | None, class_names: Sequence[str] | None = None
    ) -> ReducedActivations:
        """The same activations with other labels (see :meth:`Activations.with_labels`)."""
        meta = dataclasses.replace(
            self.meta, class_names=None if class_names is None else tuple(class_names)
        )
        return ReducedActivations(
            meta,
            self.features,
            self.norms,
            self.lengths,
            self.token_ids,
            labels,
            token_strs=self.token_strs,
            texts=self.texts,
        )

    def _concat_parts(self, parts: Sequence[Activations], meta: ActivationsMeta) -> Activations:
        reduced = [p for p in parts if isinstance(p, ReducedActivations)]
        assert len(reduced) == len(parts)  # every part has this keep mode (checked)
        strs = texts = None
        if all(p.token_strs is not None for p in reduced):
            strs = [s for p in reduced for s in p.token_strs]  # type: ignore[union-attr]
        if all(p.texts is not None for p in reduced):
            texts = [t for p in reduced for t in p.texts]  # type: ignore[union-attr]
        return ReducedActivations(
            meta,
            torch.cat([p.features for p in reduced]),
            torch.cat([p.norms for p in reduced]),
            torch.cat([p.lengths for p in reduced]),
            torch.cat([p.token_ids for p in reduced]),
            None if reduced[0].labels is None else torch.cat([p.labels for p in reduced]),  # type: ignore[misc]
            token_strs=strs,
            texts=texts,
        )


@overload
def reduce(acts: Activations, keep: Keep) -> Activations: ...
@overload
def reduce(acts: Mapping[str, Activations], keep: Keep) -> CaptureResult: ...
def reduce(
    acts: Activations | Mapping[str, Activations], keep: Keep
) -> Activations | CaptureResult:
    """A full capture reduced as ``capture(..., keep=keep)`` would have stored it.

    Args:
        acts: One hook's activations with every token, or several hooks' (a capture result).
        keep: ``"last"`` or ``"pooled"`` (see :mod:`lensprobe.reduced`); ``"tokens"`` returns
            ``acts`` unchanged.

    Raises:
        InputError: An unknown keep mode, or activations already reduced to another mode.
    """
    keep = check_keep(keep)
    if not isinstance(acts, Activations):
        result = {h: reduce(a, keep) for h, a in acts.items()}
        return CaptureResult(result, path=None)
    if acts.meta.keep == keep:
        return acts
    if isinstance(acts, ReducedActivations):
        raise InputError(
            f"the activations at {acts.meta.hook!r} are already reduced (keep={acts.meta.keep!r}); "
            f"reduce a capture with keep='tokens' to keep={keep!r}"
        )
    kinds = KEPT_KINDS[keep]
    features, norms = [], []
    for start in range(0, len(acts), _CHUNK):
        x, mask = acts.pad(torch.arange(start, min(start + _CHUNK, len(acts))), dtype=acts.dtype)
        features.append(pool_all(x, pooling_mask(mask, acts.meta.prepend_bos), kinds))
        norms.append(token_norms(x)[mask])
        del x
    d = acts.d_model
    return ReducedActivations(
        dataclasses.replace(acts.meta, keep=keep),
        torch.cat(features) if features else torch.empty(0, len(kinds), d),
        torch.cat(norms) if norms else torch.empty(0),
        acts.lengths,
        acts.token_ids,
        acts.labels,
        token_strs=acts.token_strs,
        texts=acts.texts,
    )
