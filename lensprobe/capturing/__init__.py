"""Capture activations at hook names from TransformerLens, nnsight or plain Hugging Face models.

:func:`capture` tokenises the texts once (explicit BOS, truncation), batches them by length, runs
the model through the adapter of its backend (one module each: :mod:`.transformer_lens`,
:mod:`.nnsight`, :mod:`.hf`; hook names translated by :mod:`.names`), stops every forward after the
deepest requested hook, and packs the valid tokens (no padding) into :class:`Activations`, in memory
or in a resumable on-disk store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lensprobe import backends
from lensprobe.activations import Activations, ActivationsMeta, CaptureResult, CaptureStats
from lensprobe.backends import detect_backend
from lensprobe.backends.hf import Runner
from lensprobe.backends.names import UnknownHookError
from lensprobe.batching import Tokenized, collate, length_batches, token_strings, tokenize
from lensprobe.errors import InputError
from lensprobe.models import display_name
from lensprobe.store import (
    StoreWriter,
    auto_shard_tokens,
    check_store_target,
    load_store,
    plan_shards,
    stored_shard_tokens,
    token_strs_table,
)

logger = logging.getLogger(__name__)

__all__ = ["UnknownHookError", "capture", "check_capture_out", "check_texts", "detect_backend"]


def _labels(
    labels: Any, n: int, class_names: Sequence[str] | None
) -> tuple[Tensor | None, tuple[str, ...] | None]:
    """Labels as int64 class ids (strings become ids of ``class_names`` or of their sorted set)."""
    names = None if class_names is None else tuple(str(c) for c in class_names)
    if labels is None:
        return None, names
    if isinstance(labels, Tensor):
        values: list[Any] = labels.tolist()
    elif isinstance(labels, np.ndarray):
        values = labels.tolist()
    else:
        values = list(labels)
    if len(values) != n:
        raise ValueError(
            f"labels has {len(values)} entries but texts has {n}; pass one label per text"
        )
    if values and all(isinstance(v, str) for v in values):
        if names is None:
            names = tuple(sorted(set(values)))
        lookup = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise ValueError(f"labels {unknown} are not in class_names {list(names)}")
        return torch.tensor([lookup[v] for v in values], dtype=torch.long), names
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise TypeError("labels must be integer class ids or class-name strings")
    out = torch.tensor(values, dtype=torch.long)
    if out.numel() and int(out.min()) < 0:
        raise ValueError("labels must be non-negative class ids")
    if names is not None and out.numel() and int(out.max()) >= len(names):
        raise ValueError(f"label {int(out.max())} has no entry in class_names ({len(names)} names)")
    return out, names


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, checked: strings, at least one, none empty or only whitespace.

    Raises:
        InputError: No texts, or an empty one (the message gives its position).
        TypeError: One string instead of a list, or a non-string entry.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; wrap it: [text]")
    text_list = list(texts)
    if not text_list:
        raise InputError("texts is empty; pass at least one text")
    for i, t in enumerate(text_list):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a string")
    empty = [i for i, t in enumerate(text_list) if not t.strip()]
    if empty:
        raise InputError(
            f"texts {empty[:10]} are empty or only whitespace ({len(empty)} of {len(text_list)}); "
            "remove them: an empty text has no tokens to probe"
        )
    return text_list


def _source_fingerprint(
    texts: list[str],
    hooks: list[str],
    labels: Tensor | None,
    names: tuple[str, ...] | None,
    max_length: int | None,
) -> dict[str, Any]:
    """The part of a store's fingerprint that is known before the model is loaded."""
    return {
        "hooks": hooks,
        "n_sequences": len(texts),
        "max_length": max_length,
        "class_names": None if names is None else list(names),
        "texts_sha256": _digest(texts),
        "labels_sha256": None if labels is None else _digest(labels.tolist()),
    }


def check_capture_out(
    out: str | os.PathLike[str],
    texts: Sequence[str],
    hooks: str | Sequence[str],
    labels: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    max_length: int | None = 512,
) -> None:
    """Check, before loading a model, that ``capture(..., out=out)`` with these inputs may run.

    ``out`` may be absent, empty, or a store of this same capture (to resume or reuse it).

    Raises:
        OutputPathError: ``out`` is a file, or a non-empty folder that is no store.
        StoreError: ``out`` holds a store of another capture (other texts, hooks or labels).
        InputError: Empty texts.
    """
    text_list = check_texts(texts)
    hook_list = list(dict.fromkeys([hooks] if isinstance(hooks, str) else hooks))
    label_tensor, names = _labels(labels, len(text_list), class_names)
    check_store_target(
        out, _source_fingerprint(text_list, hook_list, label_tensor, names, max_length)
    )


def capture(
    model: Any,
    texts: Sequence[str],
    hooks: str | Sequence[str],
    labels: Any = None,
    *,
    max_length: int | None = 512,
    batch_size: int = 32,
    dtype: torch.dtype = torch.bfloat16,
    out: str | os.PathLike[str] | None = None,
    tokenizer: Any = None,
    padding_side: Literal["left", "right"] = "right",
    prepend_bos: bool | None = None,
    class_names: Sequence[str] | None = None,
    model_id: str | None = None,
    shard_tokens: int | None = None,
    keep_texts: bool = True,
    progress: bool = True,
) -> CaptureResult:
    """Capture activations at hook names for a list of texts.

    Args:
        model: A TransformerLens ``TransformerBridge`` / ``HookedRootModule``, an nnsight model,
            or a Hugging Face model (see :func:`lensprobe.load_model`).
        texts: The texts, one sequence each.
        hooks: One hook name or several: TransformerLens names (``blocks.9.hook_resid_post``),
            which every backend accepts for the Gemma, Gemma 2, Gemma 3, Llama, Qwen 2 and GPT-2
            families, or module paths (``model.layers.9``) for the nnsight and Hugging Face
            backends.
        labels: One label per text: integer class ids or class-name strings (then mapped to ids
            of ``class_names``, by default the sorted distinct names).
        max_length: Keep at most this many tokens per text, BOS included (longer texts are
            truncated, counted and reported); ``None`` keeps every token.
        batch_size: Sequences per forward. Sequences are grouped by length, longest first.
        dtype: Storage dtype of the activations (bfloat16 halves memory and disk against float32).
        out: Directory for an on-disk store. A capture killed midway resumes when rerun with the
            same arguments: finished shards are verified and kept. The result is memory-mapped.
        tokenizer: Tokenizer to use; default ``model.tokenizer``.
        padding_side: Where batches are padded. Position ids are explicit, so both sides give
            the same activations for every valid token (up to float rounding).
        prepend_bos: Start every sequence with BOS; ``None`` follows the tokenizer's default
            (Gemma's adds BOS, GPT-2's does not; the tokenizer a TransformerLens bridge carries
            adds it as its ``cfg.default_prepend_bos`` says). Texts are tokenised without special
            tokens and BOS is then prepended explicitly, so every backend sees the same ids. The
            choice is recorded in the metadata.
        class_names: Names of the label ids.
        model_id: Identifier to record; default from the model's config.
        shard_tokens: Tokens per shard of an on-disk store; default
            :func:`lensprobe.store.auto_shard_tokens` (4096 to 65536 tokens, about a thousandth
            of the capture), so a killed capture keeps all but the shard in progress.
        keep_texts: Keep the texts (and per-token strings) with the activations, for widgets.
        progress: Show a progress bar (sequences, tokens/s).

    Returns:
        Hook name -> :class:`~lensprobe.activations.Activations`; ``result.stats`` has timings and
        the padding waste.

    Raises:
        UnknownHookError: A hook name the model does not have (nearest names listed).
        InputError: No texts, or an empty text (a ``ValueError``).
        ValueError: Labels of the wrong length.
        StoreError: An ``out`` directory holding another capture (a ``ValueError``).
        OutputPathError: ``out`` is a file or a non-empty folder that is no store.
        TypeError: A model no backend understands.
    """
    if isinstance(hooks, str):
        hooks = [hooks]
    hook_list = list(dict.fromkeys(hooks))
    if not hook_list:
        raise ValueError(
            "hooks is empty; pass at least one hook name, e.g. 'blocks.9.hook_resid_post'"
        )
    text_list = check_texts(texts)
    n = len(text_list)
    label_tensor, names = _labels(labels, n, class_names)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_length is not None and max_length <= 0:
        raise ValueError(f"max_length must be positive or None, got {max_length}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if shard_tokens is not None and shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive or None, got {shard_tokens}")
    if out is not None:  # a file or a folder of other things: refused before any work
        check_store_target(
            out, _source_fingerprint(text_list, hook_list, label_tensor, names, max_length)
        )

    backend = detect_backend(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            f"{type(model).__name__} has no .tokenizer; pass tokenizer=AutoTokenizer.from_pretrained(...)"
        )
    backends.check_hooks(model, backend, hook_list)  # fail before tokenising

    tokenized = tokenize(tok, text_list, max_length=max_length, prepend_bos=prepend_bos)
    lengths = tokenized.lengths
    n_tokens = sum(lengths)
    token_ids = torch.tensor([t for seq in tokenized.ids for t in seq], dtype=torch.long)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
    strs = token_strings(tok, tokenized.ids) if keep_texts else None

    base_meta = {
        "model_id": model_id or backends.model_id(model, backend),
        "backend": backend,
        "dtype": str(dtype).removeprefix("torch."),
        "tokenizer": display_name(str(getattr(tok, "name_or_path", "") or type(tok).__name__)),
        "padding_side": padding_side,
        "max_length": max_length,
        "n_truncated": tokenized.n_truncated,
        "prepend_bos": tokenized.prepend_bos,
        "class_names": names,
    }
    if shard_tokens is None and out is not None:  # resuming: keep the size it was started with
        shard_tokens = stored_shard_tokens(out)
    shard_tokens = shard_tokens or auto_shard_tokens(n_tokens)
    plan = plan_shards(lengths, shard_tokens) if out is not None else [(0, n)]
    writer = None
    if out is not None:
        fingerprint = {
            **{k: v for k, v in base_meta.items() if k != "class_names"},
            **_source_fingerprint(text_list, hook_list, label_tensor, names, max_length),
            "n_tokens": n_tokens,
            "shard_tokens": shard_tokens,
            "token_ids_sha256": _digest(tokenized.ids),
        }
        writer = StoreWriter.open(
            out,
            hooks=hook_list,
            plan=plan,
            n_tokens=n_tokens,
            has_labels=label_tensor is not None,
            fingerprint=fingerprint,
            texts=text_list if keep_texts else None,
            token_strs=None if strs is None else token_strs_table(token_ids, strs),
        )
        if writer.plan != plan:  # pragma: no cover - guarded by the fingerprint
            raise ValueError(f"{out} was planned with other shards; delete it to start over")

    metas: dict[str, ActivationsMeta] = {}
    if writer is not None:
        metas = {h: m for h, m in writer.metas().items() if m is not None}
    values: dict[str, Tensor] = {}
    todo = [k for k in range(len(plan)) if writer is None or not writer.is_done(k)]
    progress_bar = tqdm(total=n, unit="seq", desc=f"capture ({backend})", disable=not progress)
    counters = _Counters(progress_bar)
    try:
        progress_bar.update(n - sum(plan[k][1] - plan[k][0] for k in todo))
        if todo:
            with backends.open_runner(model, backend, hook_list) as runner:
                for k in todo:
                    start, stop = plan[k]
                    buffers = _capture_range(
                        runner,
                        tokenized,
                        offsets,
                        start,
                        stop,
                        hooks=hook_list,
                        batch_size=batch_size,
                        padding_side=padding_side,
                        dtype=dtype,
                        metas=metas,
                        base_meta=base_meta,
                        counters=counters,
                    )
                    if writer is None:
                        values = buffers
                        continue
                    writer.write_shard(
                        k,
                        token_ids=token_ids[int(offsets[start]) : int(offsets[stop])],
                        lengths=torch.tensor(lengths[start:stop], dtype=torch.long),
                        labels=None if label_tensor is None else label_tensor[start:stop],
                        values=buffers,
                        metas=metas,
                    )
    finally:
        progress_bar.close()
    seconds, padded, run_tokens = counters.seconds, counters.padded, counters.tokens

    stats = CaptureStats(
        n_sequences=n,
        n_tokens=n_tokens,
        n_tokens_run=run_tokens,
        n_padded_tokens=padded,
        n_truncated=tokenized.n_truncated,
        seconds=seconds,
    )
    if padded:
        logger.info(
            "captured %d tokens at %.0f tokens/s, %.1f%% padding",
            run_tokens,
            stats.tokens_per_second,
            100 * stats.padding_waste,
        )
    if writer is not None:
        writer.finish()
        result = load_store(writer.path, mmap=True)
        result.stats = stats
        return result
    members = {
        hook: Activations(
            metas[hook],
            values[hook],
            offsets,
            token_ids,
            label_tensor,
            token_strs=strs,
            texts=text_list if keep_texts else None,
        )
        for hook in hook_list
    }
    return CaptureResult(members, stats=stats, path=None)


@dataclass
class _Counters:
    """Running totals of one capture call, echoed on the progress bar."""

    bar: Any
    seconds: float = 0.0
    padded: int = 0
    tokens: int = 0

    def add(self, seconds: float, padded: int, tokens: int, sequences: int) -> None:
        self.seconds += seconds
        self.padded += padded
        self.tokens += tokens
        self.bar.update(sequences)
        self.bar.set_postfix_str(f"{self.tokens / max(self.seconds, 1e-9):,.0f} tok/s")


def _capture_range(
    runner: Runner,
    tokenized: Tokenized,
    offsets: Tensor,
    start: int,
    stop: int,
    *,
    hooks: list[str],
    batch_size: int,
    padding_side: Literal["left", "right"],
    dtype: torch.dtype,
    metas: dict[str, ActivationsMeta],
    base_meta: dict[str, Any],
    counters: _Counters,
) -> dict[str, Tensor]:
    """Run sequences ``start..stop`` and pack their valid tokens, per hook, in original order.

    ``metas`` gains an entry for every hook on its first batch (its width is known then).
    """
    first = int(offsets[start])
    n_rows = int(offsets[stop]) - first
    buffers: dict[str, Tensor] = {}
    for index in length_batches(tokenized.lengths[start:stop], batch_size, start=start):
        t0 = time.perf_counter()
        batch = collate(
            tokenized.ids,
            index,
            pad_id=tokenized.pad_id,
            padding_side=padding_side,
            device=runner.device,
        )
        acts = runner.run(batch)
        mask = batch.attention_mask.bool()
        # Destination rows of the batch's valid tokens, in the order mask selection yields them.
        rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in index])
        rows -= first
        for hook in hooks:
            a = acts[hook]
            if a.ndim != 3 or a.shape[:2] != mask.shape:
                raise ValueError(
                    f"hook {hook!r} gives a tensor of shape {tuple(a.shape)}; capture stores "
                    "(batch, pos, d_model) activations"
                )
            if hook not in buffers:
                width = a.shape[-1]
                meta = metas.get(hook) or ActivationsMeta(hook=hook, d_model=width, **base_meta)
                if meta.d_model != width:
                    raise ValueError(
                        f"hook {hook!r} is {width} wide here but {meta.d_model} in the shards "
                        "already stored"
                    )
                metas[hook] = meta
                buffers[hook] = torch.empty(n_rows, width, dtype=dtype)
            buffers[hook][rows] = a[mask].to(device="cpu", dtype=dtype)
        counters.add(time.perf_counter() - t0, batch.input_ids.numel(), len(rows), len(index))
    return buffers
