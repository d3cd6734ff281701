"""The Activations container: ragged token activations at one hook, and a set of them.

An :class:`Activations` holds every valid token of a collection of sequences packed end to end
(no padding), with per-sequence offsets, the token ids, optional labels, and the metadata of the
capture that produced them. It pads a batch on demand into ``(batch, pos, d_model)`` plus a mask.

Storage is *segmented*: the packed rows may live in several tensors (for instance one memory-mapped
shard file each), and a subset (``acts[idx]``) or a concatenation (``Activations.concat``) only
re-indexes sequences; activation rows are copied when a batch is padded or ``values`` is read.

:class:`CaptureResult` is the mapping ``hook name -> Activations`` that
:func:`lensprobe.capture` returns; its members share token ids, offsets and labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe._records import check_keys
from lensprobe.errors import InputError, InputIndexError, InputTypeError, UnknownNameError
from lensprobe.specs import KEEPS, Keep

__all__ = ["Activations", "ActivationsMeta", "CaptureResult", "CaptureStats"]

Index = int | slice | Sequence[int] | Tensor | np.ndarray
"""What selects sequences: a position, a slice, a list of positions, an index or bool tensor."""

SegmentCheck = Callable[[], None]
"""Called before a segment's rows are first read; raises if the segment is damaged (storage
passes one per memory-mapped shard, which hashes the file once). Shared by subsets and concats."""


@dataclass(frozen=True)
class ActivationsMeta:
    """Where and how a set of activations was captured (round-trips through JSON)."""

    hook: str
    """Hook name the activations were read at (``blocks.9.hook_resid_post``) or a module path."""

    model_id: str
    """Identifier of the model (bundled name, hub id or local path)."""

    backend: str
    """Backend that ran the model: ``"transformer_lens"``, ``"nnsight"`` or ``"hf"``."""

    d_model: int
    """Width of the activations (last dimension of ``values``)."""

    dtype: str
    """Storage dtype of ``values`` without the ``torch.`` prefix (``"bfloat16"``)."""

    tokenizer: str
    """Name or path of the tokenizer that produced the token ids."""

    padding_side: Literal["left", "right"]
    """Side the model saw padding on during capture (the stored values hold no padding)."""

    max_length: int | None
    """Tokens kept per text (longer texts were truncated); ``None`` for no limit."""

    n_truncated: int
    """How many texts were longer than ``max_length`` and truncated."""

    prepend_bos: bool
    """Whether every sequence starts with the tokenizer's BOS token."""

    class_names: tuple[str, ...] | None = None
    """Name of each label id (``class_names[label]``), when known."""

    keep: Keep = "tokens"
    """What was kept per text: every token, or pooled vectors (:mod:`lensprobe.reduced`)."""

    def __post_init__(self) -> None:
        if self.keep not in KEEPS:
            raise InputError(f"keep must be one of {KEEPS}, got {self.keep!r}")
        if self.d_model <= 0:
            raise InputError(f"d_model must be positive, got {self.d_model}")
        if self.padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.n_truncated < 0:
            raise InputError(f"n_truncated must be >= 0, got {self.n_truncated}")
        if self.max_length is not None and self.max_length <= 0:
            raise InputError(f"max_length must be positive or None, got {self.max_length}")
        if self.class_names is not None and not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        out = dataclasses.asdict(self)
        if self.keep == "tokens":  # the default: records of full captures read as before
            del out["keep"]
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActivationsMeta:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        check_keys(cls, data, "ActivationsMeta fields")
        kwargs = dict(data)
        if kwargs.get("class_names") is not None:
            kwargs["class_names"] = tuple(kwargs["class_names"])
        return cls(**kwargs)


@dataclass(frozen=True)
class CaptureStats:
    """What a capture run cost and how much padding it computed."""

    n_sequences: int
    """Sequences in the capture."""

    n_tokens: int
    """Valid (non-padding) tokens in the capture."""

    n_tokens_run: int
    """Valid tokens that went through the model in this run (shards resumed from disk excluded)."""

    n_padded_tokens: int
    """Token slots the model computed in this run, padding included."""

    n_truncated: int
    """Texts truncated to ``max_length``."""

    seconds: float
    """Wall-clock seconds of this run spent in model forwards and storing their outputs."""

    @property
    def padding_waste(self) -> float:
        """Fraction of computed token slots that were padding (0 when nothing ran)."""
        if self.n_padded_tokens == 0:
            return 0.0
        return 1.0 - self.n_tokens_run / self.n_padded_tokens

    @property
    def tokens_per_second(self) -> float:
        """Valid tokens captured per second of forward time (NaN when nothing ran)."""
        return self.n_tokens_run / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        resumed = self.n_tokens - self.n_tokens_run
        parts = [
            f"{self.n_sequences:,} sequences, {self.n_tokens:,} tokens",
            f"{self.padding_waste:.1%} padding",
            f"{self.n_truncated:,} truncated",
        ]
        if self.n_tokens_run:
            parts.append(f"{self.seconds:.1f} s ({self.tokens_per_second:,.0f} tokens/s)")
        if resumed:
            parts.append(f"{resumed:,} tokens resumed from disk")
        return ", ".join(parts)


def as_index(idx: Index, n: int) -> Tensor:
    """Normalise any sequence selector to an int64 tensor of positions in ``[0, n)``."""
    if isinstance(idx, bool):
        raise InputTypeError("a bool is not a sequence index; pass an int, slice, list or tensor")
    if isinstance(idx, (int, np.integer)):
        i = int(idx)
        if not -n <= i < n:
            raise InputIndexError(f"sequence index {i} out of range for {n} sequences")
        return torch.tensor([i % n], dtype=torch.long)
    if isinstance(idx, slice):
        return torch.arange(n, dtype=torch.long)[idx]
    if isinstance(idx, np.ndarray):
        idx = torch.from_numpy(np.ascontiguousarray(idx))  # e.g. argsort(...)[::-1]
    elif not isinstance(idx, Tensor):
        items = list(idx)
        if items and all(isinstance(i, (bool, np.bool_)) for i in items):
            idx = torch.tensor([bool(i) for i in items], dtype=torch.bool)  # a mask
        else:
            idx = torch.as_tensor(items, dtype=torch.long)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise InputIndexError(f"a bool mask must have shape ({n},), got {tuple(idx.shape)}")
        return idx.nonzero().flatten().cpu()
    if idx.is_floating_point() or idx.is_complex():
        raise InputTypeError(f"sequence indices must be integers, got dtype {idx.dtype}")
    idx = idx.reshape(-1).to(device="cpu", dtype=torch.long)
    if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise InputIndexError(f"sequence index out of range for {n} sequences")
    return torch.where(idx < 0, idx + n, idx)


def row_index(starts: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``starts[i] .. starts[i] + lengths[i]`` for every i, and the sequence of each row."""
    seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(int(lengths.sum())) - first[seq]
    return starts[seq] + within, seq


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Activations:
    """Ragged activations of many sequences at one hook.

    Attributes:
        meta: Capture metadata (hook, model, dtype, tokenizer, padding side, ...).
        token_ids: Token ids of every valid token, packed like ``values``.
        labels: One integer label per sequence, or ``None``.
        token_strs: Each sequence's tokens decoded one by one (for widgets), or ``None``.
        texts: The source texts, or ``None``.

    Construct from one packed tensor (``Activations(meta, values, offsets, token_ids, ...)``), or
    from several with :meth:`from_segments` (what :mod:`lensprobe.storage` does with the shards of
    a store). This class knows nothing about files: :mod:`lensprobe.storage` saves and loads it.
    """

    meta: ActivationsMeta
    labels: Int[Tensor, " batch"] | None
    token_strs: list[list[str]] | None
    texts: list[str] | None

    def __init__(
        self,
        meta: ActivationsMeta,
        values: Float[Tensor, "tokens d_model"],
        offsets: Int[Tensor, " n_seq_plus_1"],
        token_ids: Int[Tensor, " tokens"],
        labels: Int[Tensor, " batch"] | None = None,
        *,
        token_strs: list[list[str]] | None = None,
        texts: list[str] | None = None,
    ) -> None:
        """Wrap packed activations.

        Args:
            meta: Capture metadata; ``meta.d_model`` and ``meta.dtype`` must describe ``values``.
            values: Valid-token activations of all sequences, end to end.
            offsets: ``n + 1`` row offsets; sequence ``i`` is ``values[offsets[i]:offsets[i+1]]``.
            token_ids: Token id of every row of ``values``.
            labels: One integer label per sequence.
            token_strs: Each sequence's tokens as strings.
            texts: Each sequence's source text.
        """
        if offsets.ndim != 1 or offsets.numel() < 1 or int(offsets[0]) != 0:
            raise InputError("offsets must be 1-D, start at 0 and have n_sequences + 1 entries")
        offsets = offsets.to(device="cpu", dtype=torch.long)
        lengths = offsets[1:] - offsets[:-1]
        if int(offsets[-1]) != values.shape[0]:
            raise InputError(
                f"offsets end at {int(offsets[-1])} but values has {values.shape[0]} rows"
            )
        if lengths.numel() and int(lengths.min()) <= 0:
            raise InputError("every sequence needs at least one token (offsets must increase)")
        n = lengths.numel()
        self.meta = meta
        self._check_values(values)
        self._init(
            segments=(values,),
            seg=torch.zeros(n, dtype=torch.long),
            starts=offsets[:-1].clone(),
            lengths=lengths,
            token_ids=token_ids.to(torch.long),
            labels=labels,
            token_strs=token_strs,
            texts=texts,
        )

    # -- construction --------------------------------------------------------------------------

    def _check_values(self, values: Tensor) -> None:
        if values.ndim != 2 or values.shape[1] != self.meta.d_model:
            raise InputError(
                f"values must be (tokens, {self.meta.d_model}) to match meta.d_model, "
                f"got {tuple(values.shape)}"
            )
        if _dtype_name(values.dtype) != self.meta.dtype:
            raise InputError(
                f"values are {_dtype_name(values.dtype)} but meta.dtype says {self.meta.dtype}; "
                "convert the values or fix the metadata"
            )

    def _init(
        self,
        *,
        segments: tuple[Tensor, ...],
        seg: Tensor,
        starts: Tensor,
        lengths: Tensor,
        token_ids: Tensor,
        labels: Tensor | None,
        token_strs: list[list[str]] | None,
        texts: list[str] | None,
        checks: tuple[SegmentCheck | None, ...] | None = None,
    ) -> None:
        n = lengths.numel()
        if checks is not None and len(checks) != len(segments):
            raise InputError("checks must hold one entry (or None) per segment")
        if token_ids.shape != (int(lengths.sum()),):
            raise InputError(f"token_ids must hold one id per token ({int(lengths.sum())})")
        if labels is not None:
            if labels.shape != (n,):
                raise InputError(
                    f"labels must hold one label per sequence ({n}), got {tuple(labels.shape)}"
                )
            if labels.is_floating_point():
                raise InputTypeError("labels must be integer class ids")
            labels = labels.to(torch.long)
        if token_strs is not None:
            if len(token_strs) != n:
                raise InputError(f"token_strs must hold one list per sequence ({n})")
            if any(len(s) != int(k) for s, k in zip(token_strs, lengths.tolist(), strict=True)):
                raise InputError("each token_strs entry must have one string per token")
        if texts is not None and len(texts) != n:
            raise InputError(f"texts must hold one text per sequence ({n})")
        self._segments = segments
        self._checks = checks if checks is not None and any(checks) else None
        self._seg = seg
        self._starts = starts
        self._lengths = lengths
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
        self.token_ids = token_ids
        self.labels = labels
        self.token_strs = token_strs
        self.texts = texts
        self._values_cache: Tensor | None = None

    @classmethod
    def from_segments(
        cls,
        meta: ActivationsMeta,
        segments: tuple[Float[Tensor, "_rows d_model"], ...],
        seg: Int[Tensor, " batch"],
        starts: Int[Tensor, " batch"],
        lengths: Int[Tensor, " batch"],
        token_ids: Int[Tensor, " tokens"],
        labels: Int[Tensor, " batch"] | None = None,
        token_strs: list[list[str]] | None = None,
        texts: list[str] | None = None,
        *,
        checks: tuple[SegmentCheck | None, ...] | None = None,
    ) -> Activations:
        """Build from several storage tensors (segments) without copying them.

        Sequence ``i`` is ``segments[seg[i]][starts[i] : starts[i] + lengths[i]]``; segments may
        be memory-mapped files, and their rows are read only when a batch is padded.

        Args:
            meta: Capture metadata; every segment must be ``(rows, meta.d_model)`` of
                ``meta.dtype``.
            segments: The storage tensors.
            seg: Segment of each sequence.
            starts: First row of each sequence in its segment.
            lengths: Tokens of each sequence (all positive).
            token_ids: Token id of every token, sequences end to end.
            labels: One integer label per sequence.
            token_strs: Each sequence's tokens as strings.
            texts: Each sequence's source text.
            checks: One integrity check per segment (or None), run before the segment's rows are
                first read.
        """
        self = cls.__new__(cls)
        self.meta = meta
        for s in segments:
            self._check_values(s)
        if lengths.numel() and int(lengths.min()) <= 0:
            raise InputError("every sequence needs at least one token")
        self._init(
            segments=segments,
            seg=seg,
            starts=starts,
            lengths=lengths,
            token_ids=token_ids,
            labels=labels,
            token_strs=token_strs,
            texts=texts,
            checks=checks,
        )
        return self

    def _ensure(self, segment_ids: Sequence[int]) -> None:
        """Run the integrity check of every listed segment not yet checked."""
        if self._checks is not None:
            for s in segment_ids:
                check = self._checks[s]
                if check is not None:
                    check()

    # -- shape ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._lengths.numel()

    def __repr__(self) -> str:
        return (
            f"Activations(hook={self.meta.hook!r}, sequences={len(self)}, tokens={self.n_tokens}, "
            f"d_model={self.d_model}, dtype={self.meta.dtype}, labels={self.labels is not None})"
        )

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Valid tokens of each sequence."""
        return self._lengths

    @property
    def offsets(self) -> Int[Tensor, " n_seq_plus_1"]:
        """Row offsets into :attr:`values`: sequence i is ``values[offsets[i]:offsets[i+1]]``."""
        return self._offsets

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return self.meta.d_model

    @property
    def n_tokens(self) -> int:
        """Valid tokens over all sequences."""
        return int(self._offsets[-1])

    @property
    def device(self) -> torch.device:
        """Where the activations are stored (a batch is padded there unless told otherwise)."""
        return self._segments[0].device if self._segments else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the activations."""
        return self._segments[0].dtype if self._segments else getattr(torch, self.meta.dtype)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Name of each label id, when known."""
        return self.meta.class_names

    @property
    def values(self) -> Float[Tensor, "tokens d_model"]:
        """All valid-token activations packed end to end, in storage dtype.

        A view when the activations are one contiguous segment in order (a fresh in-memory
        capture); otherwise gathered once (memory-mapped shards, subsets) and kept.
        """
        if self._values_cache is None:
            self._values_cache = self._gather(torch.arange(len(self)))
        return self._values_cache

    def _is_identity(self) -> bool:
        """True when sequence order is exactly the single segment's row order."""
        return (
            len(self._segments) == 1
            and self._segments[0].shape[0] == self.n_tokens
            and bool(torch.equal(self._starts, self._offsets[:-1]))
        )

    def _gather(self, idx: Tensor) -> Tensor:
        """Packed rows of sequences ``idx`` (in that order), in storage dtype."""
        if (
            idx.numel() == len(self)
            and self._is_identity()
            and bool(torch.equal(idx, torch.arange(len(self))))
        ):
            self._ensure([0])
            return self._segments[0]
        lengths = self._lengths[idx]
        rows, seq = row_index(self._starts[idx], lengths)
        if not self._segments:
            return torch.empty(0, self.d_model, dtype=self.dtype)
        if len(self._segments) == 1:
            if idx.numel():
                self._ensure([0])
            return self._segments[0].index_select(0, rows)
        first = self._segments[0]
        out = torch.empty(rows.numel(), self.d_model, dtype=first.dtype, device=first.device)
        seg_of_row = self._seg[idx][seq]
        # Group rows by segment once (a sort), not one scan of all rows per segment: stores
        # have hundreds of shards.
        order = torch.argsort(seg_of_row, stable=True)
        used, counts = torch.unique_consecutive(seg_of_row[order], return_counts=True)
        self._ensure(used.tolist())
        begin = 0
        for s, count in zip(used.tolist(), counts.tolist(), strict=True):
            sel = order[begin : begin + count]
            begin += count
            src = rows[sel]
            first_row, last_row = int(src[0]), int(src[-1])
            if last_row - first_row + 1 == count and int(sel[-1]) - int(sel[0]) + 1 == count:
                # one contiguous run on both sides (reading a store in order): a slice copy
                span = self._segments[s][first_row : last_row + 1]
                if bool((src[1:] > src[:-1]).all()) and bool((sel[1:] > sel[:-1]).all()):
                    out[int(sel[0]) : int(sel[-1]) + 1] = span.to(out.device)
                    continue
            out[sel] = self._segments[s].index_select(0, src).to(out.device)
        return out

    # -- selection -----------------------------------------------------------------------------

    def sequence(self, i: int) -> Float[Tensor, "pos d_model"]:
        """Activations of sequence ``i`` (a view of the storage, no copy)."""
        n = len(self)
        if not -n <= i < n:
            raise InputIndexError(f"sequence index {i} out of range for {n} sequences")
        i %= n
        start = int(self._starts[i])
        self._ensure([int(self._seg[i])])
        return self._segments[int(self._seg[i])][start : start + int(self._lengths[i])]

    def __getitem__(self, idx: Index) -> Activations:
        """A subset of sequences (activations are re-indexed, not copied)."""
        sel = as_index(idx, len(self))
        token_rows, _ = row_index(self._offsets[:-1][sel], self._lengths[sel])
        return Activations.from_segments(
            self.meta,
            self._segments,
            self._seg[sel],
            self._starts[sel],
            self._lengths[sel],
            self.token_ids[token_rows],
            None if self.labels is None else self.labels[sel],
            None if self.token_strs is None else [self.token_strs[i] for i in sel.tolist()],
            None if self.texts is None else [self.texts[i] for i in sel.tolist()],
            checks=self._checks,
        )

    def with_labels(
        self,
        labels: Int[Tensor, " batch"] | None,
        class_names: Sequence[str] | None = None,
    ) -> Activations:
        """The same activations with other labels (no copy), e.g. for a second task.

        Args:
            labels: One integer label per sequence, or ``None`` to drop them.
            class_names: Names of the label ids; ``None`` drops any recorded names.
        """
        meta = dataclasses.replace(
            self.meta, class_names=None if class_names is None else tuple(class_names)
        )
        return Activations.from_segments(
            meta,
            self._segments,
            self._seg,
            self._starts,
            self._lengths,
            self.token_ids,
            labels,
            self.token_strs,
            self.texts,
            checks=self._checks,
        )

    @classmethod
    def concat(cls, parts: Sequence[Activations]) -> Activations:
        """Sequences of several parts one after the other (storage is shared, not copied).

        Parts must agree on hook, model, backend, width, dtype, tokenizer, padding side, BOS
        handling and class names, and either all have labels or none.
        """
        if not parts:
            raise InputError("concat needs at least one Activations")
        _check_concat(parts)
        return parts[0]._concat_parts(parts, _concat_meta(parts))

    def _concat_parts(self, parts: Sequence[Activations], meta: ActivationsMeta) -> Activations:
        """:meth:`concat` of checked ``parts`` (this one first) under the merged ``meta``."""
        segments, checks, seg = _merge_segments(parts)
        strs = None
        if all(p.token_strs is not None for p in parts):
            strs = [s for p in parts for s in p.token_strs]  # type: ignore[union-attr]
        texts = None
        if all(p.texts is not None for p in parts):
            texts = [t for p in parts for t in p.texts]  # type: ignore[union-attr]
        return Activations.from_segments(
            meta,
            segments,
            seg,
            torch.cat([p._starts for p in parts]),
            torch.cat([p._lengths for p in parts]),
            torch.cat([p.token_ids for p in parts]),
            None if parts[0].labels is None else torch.cat([p.labels for p in parts]),  # type: ignore[misc]
            strs,
            texts,
            checks=checks,
        )

    # -- padding -------------------------------------------------------------------------------

    def pad(
        self,
        idx: Index | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> tuple[Float[Tensor, "batch pos d_model"], Bool[Tensor, "batch pos"]]:
        """Pad sequences into a dense batch.

        Args:
            idx: Which sequences (default all), in the order given.
            dtype: Floating dtype of the returned activations.
            device: Where to put them (default: where the activations are stored).
            padding_side: Put padding after (``"right"``) or before (``"left"``) the tokens.

        Returns:
            ``x`` of shape ``(batch, pos, d_model)`` with zeros at padding, and ``mask``, True at
            valid tokens; ``pos`` is the longest selected sequence.
        """
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        sel = torch.arange(len(self)) if idx is None else as_index(idx, len(self))
        lengths = self._lengths[sel]
        pos = int(lengths.max()) if lengths.numel() else 0
        if device is None:
            device = self.device
        steps = torch.arange(pos)
        if padding_side == "right":
            mask = steps[None, :] < lengths[:, None]
        else:
            mask = steps[None, :] >= pos - lengths[:, None]
        x = torch.zeros(sel.numel(), pos, self.d_model, dtype=dtype, device=device)
        rows = self._gather(sel)
        mask = mask.to(device)
        x[mask] = rows.to(device=device, dtype=dtype)
        return x, mask

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor | None, Tensor]]:
        """Stream padded batches (each gathered from storage only when reached).

        Args:
            batch_size: Sequences per batch (the last batch may be smaller).
            shuffle: Visit sequences in a random order.
            seed: Seed of that order.
            dtype: Floating dtype of each ``x``.
            device: Where to put each batch.

        Yields:
            ``(x, mask, labels, indices)``: the padded batch, its mask, the batch's labels (or
            ``None``) and the positions of its sequences in this collection.
        """
        if batch_size <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            sel = order[start : start + batch_size]
            x, mask = self.pad(sel, dtype=dtype, device=device)
            labels = None
            if self.labels is not None:
                labels = self.labels[sel].to(x.device)
            yield x, mask, labels, sel


_CONCAT_FIELDS = (
    "hook",
    "model_id",
    "backend",
    "d_model",
    "dtype",
    "tokenizer",
    "padding_side",
    "prepend_bos",
    "class_names",
    "keep",
)
"""Metadata fields that parts of :meth:`Activations.concat` must share."""


def _check_concat(parts: Sequence[Activations]) -> None:
    """Refuse parts whose metadata differ, or a mix of labelled and unlabelled parts."""
    first = parts[0].meta
    for p in parts[1:]:
        for field in _CONCAT_FIELDS:
            if getattr(p.meta, field) != getattr(first, field):
                raise InputError(
                    f"cannot concat activations whose meta.{field} differ "
                    f"({getattr(first, field)!r} vs {getattr(p.meta, field)!r})"
                )
    has_labels = {p.labels is not None for p in parts}
    if len(has_labels) > 1:
        raise InputError("cannot concat labelled and unlabelled activations; label all parts")


def _merge_segments(
    parts: Sequence[Activations],
) -> tuple[tuple[Tensor, ...], tuple[SegmentCheck | None, ...], Tensor]:
    """The distinct segments of all parts (each once), their checks, and each sequence's segment."""
    segments: list[Tensor] = []
    checks: list[SegmentCheck | None] = []
    segs = []
    for p in parts:
        mapping = []
        for j, s in enumerate(p._segments):
            pos = next((k for k, t in enumerate(segments) if t is s), None)
            if pos is None:
                segments.append(s)
                checks.append(None if p._checks is None else p._checks[j])
                pos = len(segments) - 1
            mapping.append(pos)
        segs.append(torch.as_tensor(mapping, dtype=torch.long)[p._seg] if len(p) else p._seg)
    return tuple(segments), tuple(checks), torch.cat(segs)


def _concat_meta(parts: Sequence[Activations]) -> ActivationsMeta:
    """The first part's metadata with truncation counted over all parts."""
    max_lengths = {p.meta.max_length for p in parts}
    return dataclasses.replace(
        parts[0].meta,
        n_truncated=sum(p.meta.n_truncated for p in parts),
        max_length=None if None in max_lengths else max(max_lengths),  # type: ignore[type-var]
    )


class CaptureResult(Mapping[str, Activations]):
    """What :func:`lensprobe.capture` returns: ``hook name -> Activations``.

    The members share offsets, token ids, labels and texts. ``stats`` describes the run that
    produced them (``None`` when loaded from disk); ``path`` is the store directory, if any.
    """

    def __init__(
        self,
        members: Mapping[str, Activations],
        *,
        stats: CaptureStats | None = None,
        path: str | None = None,
    ) -> None:
        """Wrap per-hook activations (all with the same sequences)."""
        self._members = dict(members)
        if not self._members:
            raise InputError("a CaptureResult needs at least one hook")
        self.stats = stats
        self.path = path

    def __getitem__(self, hook: str) -> Activations:
        try:
            return self._members[hook]
        except KeyError:
            raise UnknownNameError(
                f"no hook {hook!r} in this capture; it holds {list(self._members)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        first = next(iter(self._members.values()))
        return (
            f"CaptureResult(hooks={list(self._members)}, sequences={len(first)}, "
            f"tokens={first.n_tokens})"
        )
