"""The plan of one capture: the tokenised texts, their packing, labels and recorded settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lensprobe.batching import Tokenized, token_strings, tokenize
from lensprobe.capturing.inputs import CaptureInputs, digest

__all__ = ["CaptureJob", "plan_job"]


@dataclass(frozen=True)
class CaptureJob:
    """Everything a capture knows before the model runs; the sinks and the run loop read it."""

    hooks: list[str]
    """Hook names to read, without repeats."""

    tokenized: Tokenized
    """Token ids of every text (BOS and truncation applied)."""

    lengths: list[int]
    """Tokens of each sequence."""

    token_ids: Tensor
    """Token ids of all sequences end to end."""

    offsets: Tensor
    """``n + 1`` row offsets: sequence ``i`` is rows ``offsets[i]:offsets[i+1]``."""

    labels: Tensor | None
    """One class id per sequence, or ``None``."""

    texts: list[str] | None
    """The texts to keep with the activations (``None`` when not kept)."""

    token_strs: list[list[str]] | None
    """Each sequence's tokens as strings (``None`` when texts are not kept)."""

    base_meta: dict[str, Any]
    """Every :class:`~lensprobe.activations.ActivationsMeta` field but the hook and the width."""

    source: dict[str, Any]
    """What identifies the inputs (texts, hooks, labels digests): part of a store's fingerprint."""

    batch_size: int
    """Sequences per forward."""

    padding_side: Literal["left", "right"]
    """Where batches are padded."""

    dtype: torch.dtype
    """Storage dtype of the activations."""

    remote: bool | str = False
    """Where the model runs: here (False), or nnsight's remote service (``capture(remote=)``)."""

    model_fingerprint: dict[str, str] = field(default_factory=dict)
    """The model's compute dtype and a digest of its weights
    (:func:`lensprobe.backends.weights_fingerprint`): part of a store's fingerprint."""

    @property
    def keep(self) -> str:
        """What the capture stores per text (:data:`lensprobe.reduced.KEEPS`)."""
        return str(self.base_meta.get("keep", "tokens"))

    @property
    def n(self) -> int:
        """Sequences in the capture."""
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        """Valid tokens in the capture."""
        return int(self.offsets[-1])

    def fingerprint(self, shard_tokens: int) -> dict[str, Any]:
        """What a store of this capture records to refuse resuming another one."""
        return {
            **{k: v for k, v in self.base_meta.items() if k != "class_names"},
            **self.source,
            **self.model_fingerprint,
            "n_tokens": self.n_tokens,
            "shard_tokens": shard_tokens,
            "token_ids_sha256": digest(self.tokenized.ids),
        }


def plan_job(
    tokenizer: Any,
    inputs: CaptureInputs,
    base_meta: dict[str, Any],
    prepend_bos: bool | None,
    keep_texts: bool,
    batch_size: int,
    dtype: torch.dtype,
    model_fingerprint: dict[str, str] | None = None,
) -> CaptureJob:
    """Tokenise the texts and pack their ids.

    ``base_meta`` (what every hook records, known before tokenising) gains the class names, the
    truncation count and the BOS handling.
    """
    tokenized = tokenize(
        tokenizer, inputs.texts, max_length=base_meta["max_length"], prepend_bos=prepend_bos
    )
    lengths = tokenized.lengths
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
    return CaptureJob(
        hooks=inputs.hooks,
        tokenized=tokenized,
        lengths=lengths,
        token_ids=torch.tensor([t for seq in tokenized.ids for t in seq], dtype=torch.long),
        offsets=offsets,
        labels=inputs.labels,
        texts=inputs.texts if keep_texts else None,
        token_strs=token_strings(tokenizer, tokenized.ids) if keep_texts else None,
        base_meta={
            **base_meta,
            "class_names": inputs.class_names,
            "n_truncated": tokenized.n_truncated,
            "prepend_bos": tokenized.prepend_bos,
        },
        source=inputs.source,
        batch_size=batch_size,
        padding_side=base_meta["padding_side"],
        dtype=dtype,
        model_fingerprint=model_fingerprint or {},
    )
