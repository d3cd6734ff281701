"""Capture activations at hook names from TransformerLens, nnsight or plain Hugging Face models.

:func:`capture` reads as its steps: validate the inputs (:mod:`.inputs`), plan the job (tokenise
the texts once, with explicit BOS and truncation: :mod:`.job`), open a sink (memory, or a
resumable on-disk store: :mod:`.sinks`), run the model through the backend's runner shard by shard
with batches grouped by length (:mod:`.run`), stopping every forward after the deepest requested
hook, and finish into :class:`~lensprobe.activations.CaptureResult`.

Details of the arguments:

- **model**: a TransformerLens ``TransformerBridge`` / ``HookedRootModule``, an nnsight model, or
  a Hugging Face model (see :func:`lensprobe.load_model`).
- **hooks**: TransformerLens names (``blocks.9.hook_resid_post``), which every backend accepts for
  the Gemma, Gemma 2, Gemma 3, Llama, Qwen 2 and GPT-2 families, or module paths
  (``model.layers.9``) for the nnsight and Hugging Face backends.
- **labels**: integer class ids, or class-name strings mapped to ids of ``class_names`` (by
  default the sorted distinct names).
- **max_length**: longer texts are truncated, counted and reported.
- **out**: a capture killed midway resumes when rerun with the same arguments: finished shards
  are verified and kept. Under ``torchrun`` (several ranks) ``out`` is required and every rank
  computes whole shards of that one store (:mod:`.ranks`); the store is byte for byte the one a
  single process with the same threads per process writes.
- **padding_side**: position ids are explicit, so both sides give the same activations for every
  valid token (up to float rounding).
- **prepend_bos**: ``None`` follows the tokenizer's default (Gemma's adds BOS, GPT-2's does not;
  the tokenizer a TransformerLens bridge carries adds it as its ``cfg.default_prepend_bos``
  says). Texts are tokenised without special tokens and BOS is then prepended explicitly, so
  every backend sees the same ids. The choice is recorded in the metadata.
- **keep**: ``"tokens"`` stores every valid token; ``"last"`` each text's last token and
  ``"pooled"`` its mean, max and last (float32), with the norm of every token, for the pooled
  probes only, at a few kilobytes per text (:mod:`lensprobe.reduced`).
- **remote** (nnsight models): each batch is one remote trace (``model.trace(...,
  remote=...)``) that stops after the deepest hook and saves only what the capture keeps,
  reduced on the server for ``keep="last"`` / ``"pooled"``; the model's weights are never loaded
  here. Sites are read in the order their modules are defined. An unreachable service is a
  :class:`~lensprobe.errors.RemoteServiceError` naming the fix.
- **shard_tokens**: the default, :func:`lensprobe.storage.auto_shard_tokens`, is 1024 to 65536
  tokens, about a thousandth of the capture, so a killed capture keeps all but the shard in
  progress. A store resumed with the default keeps the size it was started with.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch

from lensprobe import backends
from lensprobe._progress import wanted
from lensprobe.activations import CaptureResult
from lensprobe.backends import detect_backend
from lensprobe.capturing.inputs import check_capture_out, check_inputs, check_settings, check_texts
from lensprobe.capturing.job import plan_job
from lensprobe.capturing.ranks import Ranks, capture_on_ranks, current_ranks
from lensprobe.capturing.run import run_capture
from lensprobe.capturing.sinks import open_sink
from lensprobe.errors import InputError, UnknownHookError, UsageError
from lensprobe.models import display_name
from lensprobe.specs import CAPTURE_BATCH_SIZE, CAPTURE_MAX_LENGTH, Keep
from lensprobe.storage import check_store_target, store_lock

__all__ = ["UnknownHookError", "capture", "check_capture_out", "check_texts", "detect_backend"]


def capture(
    model: Any,
    texts: Sequence[str],
    hooks: str | Sequence[str],
    labels: Any = None,
    *,
    max_length: int | None = CAPTURE_MAX_LENGTH,
    batch_size: int = CAPTURE_BATCH_SIZE,
    dtype: torch.dtype = torch.bfloat16,
    out: str | os.PathLike[str] | None = None,
    tokenizer: Any = None,
    padding_side: Literal["left", "right"] = "right",
    prepend_bos: bool | None = None,
    class_names: Sequence[str] | None = None,
    model_id: str | None = None,
    shard_tokens: int | None = None,
    keep_texts: bool = True,
    keep: Keep = "tokens",
    remote: bool | str = False,
    progress: bool | None = None,
) -> CaptureResult:
    """Capture activations at hook names for a list of texts (details: :mod:`lensprobe.capturing`).

    Args:
        model: A TransformerLens bridge or ``HookedRootModule``, an nnsight or a Hugging Face model.
        texts: The texts, one sequence each.
        hooks: One hook name or several: TransformerLens names or module paths (see above).
        labels: One label per text: class ids, or class-name strings (ids of ``class_names``).
        max_length: Keep at most this many tokens per text, BOS included; ``None``: every token.
        batch_size: Sequences per forward (grouped by length, longest first).
        dtype: Storage dtype of the activations (bfloat16 halves memory and disk).
        out: Directory for a resumable on-disk store; the result is then memory-mapped.
        tokenizer: Tokenizer to use; default ``model.tokenizer``.
        padding_side: Where batches are padded (both sides give the same activations).
        prepend_bos: Start every sequence with BOS; ``None`` follows the tokenizer's default.
        class_names: Names of the label ids (default for string labels: their sorted set).
        model_id: Identifier to record; default from the model's config.
        shard_tokens: Tokens per shard of a store (default ``storage.auto_shard_tokens``).
        keep_texts: Keep the texts (and per-token strings) with the activations, for widgets.
        keep: What to store per text: ``"tokens"`` (every token), ``"last"`` or ``"pooled"``
            (pooled vectors for the mean / max / last probes; see above).
        remote: Run the forwards on nnsight's remote service (NDIF): True, a host URL, or
            ``"local"`` (serialised and run here, as the service would); see above.
        progress: Show a progress bar (sequences, tokens/s); None: in a terminal or a notebook,
            not in a script whose stderr goes to a file.

    Returns:
        Hook name -> :class:`~lensprobe.activations.Activations`; ``.stats`` has timings.

    Raises:
        UnknownHookError: A hook name the model does not have (nearest names listed).
        InputError: No texts, or an empty text (a ``ValueError``).
        ValueError: No hooks, labels of the wrong length, or a setting out of range.
        StoreError: An ``out`` directory holding another capture (a ``ValueError``).
        OutputPathError: ``out`` is a file or a non-empty folder that is no store.
        TypeError: A model no backend understands.
    """
    inputs = check_inputs(texts, hooks, labels, class_names, max_length)
    check_settings(batch_size, max_length, padding_side, dtype, shard_tokens, keep)
    ranks = _check_out(out, inputs.source)
    backend = detect_backend(model)
    with backends.remote_scope(model, backend, remote):  # a remote model's weights stay there
        tok = _tokenizer(model, tokenizer)
        backends.check_hooks(model, backend, inputs.hooks)  # fail before tokenising
        meta = _recorded_meta(model, backend, tok, model_id, dtype, padding_side, max_length)
        meta["keep"] = keep
        weights = backends.weights_fingerprint(model, backend) if out is not None else None
        job = plan_job(tok, inputs, meta, prepend_bos, keep_texts, batch_size, dtype, weights)
        job = dataclasses.replace(job, remote=remote)
        _check_context(job.lengths, backends.context_length(model, backend), max_length)
        if ranks is not None:
            assert out is not None
            return capture_on_ranks(
                model, backend, job, out, shard_tokens, ranks, progress=wanted(progress)
            )
        with nullcontext() if out is None else store_lock(out):  # one capture per store
            sink = open_sink(job, out, shard_tokens)
            return sink.finish(run_capture(model, backend, job, sink, progress=wanted(progress)))


def _check_out(out: str | os.PathLike[str] | None, source: dict[str, Any]) -> Ranks | None:
    """The ranks this capture runs on (None: one process), once ``out`` may take it.

    Under torchrun ``out`` is required; a file or a folder of other things is refused before
    any work (under torchrun, once every rank has finished its own checks).
    """
    ranks = current_ranks()
    if ranks is not None and out is None:
        raise UsageError(
            f"this capture runs on {ranks.world} ranks (torchrun), which share their work "
            "through a store: pass out=DIR (--out DIR on the command line)"
        )
    if out is not None:
        if ranks is None:
            check_store_target(out, source)
        else:
            ranks.attempt(lambda: check_store_target(out, source), leader_only=True)
    return ranks


def _check_context(lengths: list[int], context: int | None, max_length: int | None) -> None:
    """Refuse texts longer than the positions the model was built for (before any forward)."""
    if context is None or not lengths or max(lengths) <= context:
        return
    i = max(range(len(lengths)), key=lengths.__getitem__)
    raise InputError(
        f"text {i} has {lengths[i]} tokens but the model was built for {context} positions "
        f"(max_length={max_length}): pass max_length={context} or less to cut the texts there"
    )


def _tokenizer(model: Any, tokenizer: Any) -> Any:
    """The tokenizer passed, else the model's own."""
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise InputError(
            f"{type(model).__name__} has no .tokenizer; pass tokenizer=AutoTokenizer.from_pretrained(...)"
        )
    return tok


def _recorded_meta(
    model: Any,
    backend: str,
    tok: Any,
    model_id: str | None,
    dtype: torch.dtype,
    padding_side: str,
    max_length: int | None,
) -> dict[str, Any]:
    """The metadata every hook records that is known before tokenising."""
    return {
        "model_id": model_id or backends.model_id(model, backend),
        "backend": backend,
        "dtype": str(dtype).removeprefix("torch."),
        "tokenizer": display_name(str(getattr(tok, "name_or_path", "") or type(tok).__name__)),
        "padding_side": padding_side,
        "max_length": max_length,
    }
