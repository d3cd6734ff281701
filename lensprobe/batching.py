"""Tokenising texts (explicit BOS, truncation) and batching them by length.

Every backend sees exactly the same token ids, built here: texts are tokenised without the
tokenizer's special tokens, the BOS token is prepended when asked (by default: when the tokenizer
itself would add one), and sequences longer than ``max_length`` keep their first ``max_length``
tokens. Batches group sequences of similar length (longest first, so memory problems show up on
the first batch) and carry explicit position ids, so left and right padding give the model the
same positions for every valid token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lensprobe.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Batch", "Tokenized", "collate", "length_batches", "token_strings", "tokenize"]


@dataclass(frozen=True)
class Tokenized:
    """Token ids of every text, ready to batch."""

    ids: list[list[int]]
    """Token ids of each text (BOS included when ``prepend_bos``), truncated to ``max_length``."""

    n_truncated: int
    """How many texts were longer than ``max_length``."""

    prepend_bos: bool
    """Whether each sequence starts with BOS."""

    pad_id: int
    """Id used at padding positions (never read: padding is masked)."""

    @property
    def lengths(self) -> list[int]:
        """Tokens of each sequence."""
        return [len(s) for s in self.ids]


@dataclass(frozen=True)
class Batch:
    """A padded batch of token ids."""

    index: Tensor
    """Positions of the batch's sequences in the list of texts."""

    input_ids: Tensor
    """``(batch, pos)`` token ids, padding filled with ``pad_id``."""

    attention_mask: Tensor
    """``(batch, pos)`` 1 at valid tokens, 0 at padding (int64, as Hugging Face expects)."""

    position_ids: Tensor
    """``(batch, pos)`` position of each valid token counted from its sequence's first token."""

    @property
    def n_tokens(self) -> int:
        """Valid tokens in the batch."""
        return int(self.attention_mask.sum())


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer prepends its BOS token by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None,
    prepend_bos: bool | None = None,
) -> Tokenized:
    """Tokenise texts with explicit BOS handling and truncation.

    Args:
        tokenizer: A Hugging Face tokenizer.
        texts: The texts.
        max_length: Keep at most this many tokens per text (BOS included); ``None`` keeps all.
        prepend_bos: Start every sequence with BOS; ``None`` does what the tokenizer does by
            default (Gemma's adds BOS, GPT-2's does not).

    Returns:
        The token ids and how many texts were truncated.
    """
    if prepend_bos is None:
        prepend_bos = tokenizer_adds_bos(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos and bos is None:
        raise InputError(
            "prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False"
        )
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ids: list[list[int]] = []
    n_truncated = 0
    for i, seq in enumerate(encoded):
        seq = [bos, *seq] if prepend_bos else list(seq)
        if max_length is not None and len(seq) > max_length:
            seq = seq[:max_length]
            n_truncated += 1
        if not seq:
            raise InputError(
                f"text {i} ({texts[i][:40]!r}) has no tokens; drop empty texts or pass "
                "prepend_bos=True"
            )
        ids.append(seq)
    if n_truncated:
        logger.warning(
            "%d of %d texts were longer than max_length=%s tokens and were truncated",
            n_truncated,
            len(ids),
            max_length,
        )
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return Tokenized(
        ids=ids, n_truncated=n_truncated, prepend_bos=bool(prepend_bos), pad_id=pad or 0
    )


def token_strings(tokenizer: Any, ids: Sequence[Sequence[int]]) -> list[list[str]]:
    """Each token decoded on its own (decoding every distinct id once)."""
    unique = sorted({t for seq in ids for t in seq})
    decoded = tokenizer.batch_decode([[t] for t in unique])
    table = dict(zip(unique, decoded, strict=True))
    return [[table[t] for t in seq] for seq in ids]


BATCH_COST_TOKENS = 64
"""Fixed cost of one forward, in token slots, that :func:`length_batches` weighs against padding.

Small forwards use a CPU poorly (the weights are streamed once per forward whatever the batch), so
a batch should save at least this much padding to be worth splitting off.
"""


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    start: int = 0,
    *,
    batch_cost: int = BATCH_COST_TOKENS,
) -> list[list[int]]:
    """Group sequences of similar length into batches, longest first, with little padding.

    Sequences are sorted by length (longest first) and cut into consecutive batches of at most
    ``batch_size`` so that the padded token slots plus ``batch_cost`` per batch are as few as
    possible (an exact dynamic programme over the sorted lengths). A few very long texts thus get
    batches of their own instead of padding a full batch.

    Args:
        lengths: Tokens of each sequence.
        batch_size: Most sequences per batch.
        start: Offset added to every returned position.
        batch_cost: Cost of one extra forward, in token slots.

    Returns:
        Batches of sequence positions.
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sorted_lengths = np.asarray([lengths[i] for i in order], dtype=np.float64)
    n = len(order)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        first = np.arange(max(0, j - batch_size), j)
        # A batch order[i:j] pads every row to the first (longest) sequence.
        costs = best[first] + (j - first) * sorted_lengths[first] + batch_cost
        k = int(np.argmin(costs))
        best[j] = costs[k]
        cut[j] = first[k]
    batches: list[list[int]] = []
    j = n
    while j > 0:
        i = int(cut[j])
        batches.append([start + p for p in order[i:j]])
        j = i
    batches.reverse()
    return batches


def collate(
    ids: Sequence[Sequence[int]],
    index: Sequence[int],
    *,
    pad_id: int,
    padding_side: Literal["left", "right"],
    device: torch.device | str | None = None,
) -> Batch:
    """Pad the sequences ``ids[i] for i in index`` into one batch.

    Position ids count from each sequence's first valid token, whichever side the padding is on;
    padding positions get position 0.
    """
    seqs = [ids[i] for i in index]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if padding_side == "right":
            input_ids[row, : len(s)] = torch.as_tensor(s)
            mask[row, : len(s)] = 1
        else:
            input_ids[row, width - len(s) :] = torch.as_tensor(s)
            mask[row, width - len(s) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        index=torch.as_tensor(list(index), dtype=torch.long),
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
    )
