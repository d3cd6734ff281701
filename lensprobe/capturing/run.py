"""The capture loop: run every shard a sink still needs through the model, batch by batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lensprobe import backends
from lensprobe._progress import progress_bar
from lensprobe.activations import ActivationsMeta, CaptureStats
from lensprobe.backends.core import Reduction, Runner
from lensprobe.backends.shipped import reduce_site
from lensprobe.batching import collate, length_batches
from lensprobe.capturing.job import CaptureJob
from lensprobe.capturing.sinks import ShardValues, Sink
from lensprobe.errors import InputError
from lensprobe.reduced import KEPT_KINDS, pooling_mask

logger = logging.getLogger(__name__)

__all__ = ["run_capture"]


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


def run_capture(
    model: Any,
    backend: str,
    job: CaptureJob,
    sink: Sink,
    *,
    progress: bool,
    shards: Sequence[int] | None = None,
    label: str = "",
) -> CaptureStats:
    """Compute every shard ``sink`` does not hold yet and hand it over, shard by shard.

    Args:
        model: The model, run by ``backend``.
        backend: Its backend name.
        job: The capture's plan.
        sink: Where the shards go.
        progress: Show a progress bar.
        shards: Compute only these shards (a rank's share); default every shard.
        label: Said on the progress bar after the backend (e.g. the rank).

    Returns:
        What this run cost (shards the sink already held count as resumed).
    """
    metas = sink.stored_metas()
    mine = range(len(sink.shards)) if shards is None else shards
    todo = [k for k in mine if not sink.is_done(k)]
    size = {k: sink.shards[k][1] - sink.shards[k][0] for k in mine}
    desc = f"capture ({backend}{', ' + label if label else ''})"
    bar = progress_bar(total=sum(size.values()), unit="seq", desc=desc, disable=not progress)
    counters = _Counters(bar)
    try:
        bar.update(sum(size.values()) - sum(size[k] for k in todo))
        if todo:
            reduction = Reduction(
                kinds=KEPT_KINDS.get(job.keep, ()),
                drop_first=bool(job.base_meta["prepend_bos"]),
                dtype=job.dtype,
            )
            opened = backends.open_runner(
                model, backend, job.hooks, remote=job.remote, reduction=reduction
            )
            with opened as runner:
                for k in todo:
                    start, stop = sink.shards[k]
                    values = _capture_range(runner, job, start, stop, metas, counters)
                    sink.write(k, values, metas)
    finally:
        bar.close()
    stats = CaptureStats(
        n_sequences=job.n,
        n_tokens=job.n_tokens,
        n_tokens_run=counters.tokens,
        n_padded_tokens=counters.padded,
        n_truncated=job.tokenized.n_truncated,
        seconds=counters.seconds,
    )
    if counters.padded:
        logger.info(
            "captured %d tokens at %.0f tokens/s, %.1f%% padding",
            counters.tokens,
            stats.tokens_per_second,
            100 * stats.padding_waste,
        )
    return stats


def _capture_range(
    runner: Runner,
    job: CaptureJob,
    start: int,
    stop: int,
    metas: dict[str, ActivationsMeta],
    counters: _Counters,
) -> dict[str, ShardValues]:
    """Run sequences ``start..stop`` and keep, per hook, what the capture stores of them.

    That is their packed valid tokens in original order, or (a reduced capture) their pooled
    vectors and token norms. ``metas`` gains an entry for every hook on its first batch (its width is known then).
    """
    offsets = job.offsets
    first = int(offsets[start])
    n_rows = int(offsets[stop]) - first
    kinds = KEPT_KINDS.get(job.keep, ())
    buffers: dict[str, dict[str, Tensor]] = {}
    for index in length_batches(job.lengths[start:stop], job.batch_size, start=start):
        t0 = time.perf_counter()
        batch = collate(
            job.tokenized.ids,
            index,
            pad_id=job.tokenized.pad_id,
            padding_side=job.padding_side,
            device=runner.device,
        )
        acts = runner.run(batch)
        mask = batch.attention_mask.bool()
        # Destination rows of the batch's valid tokens, in the order mask selection yields them.
        rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in index])
        rows -= first
        pool = pooling_mask(mask, job.base_meta["prepend_bos"]) if kinds else mask
        for hook in job.hooks:
            kept = _kept(hook, acts[hook], mask, pool, kinds, job.dtype)
            width = kept["features" if kinds else "values"].shape[-1]
            if hook not in buffers:
                buffers[hook] = _buffers(job, n_rows, stop - start, width, kinds)
                metas[hook] = _hook_meta(job, hook, width, metas.get(hook))
            if not kinds:
                buffers[hook]["values"][rows] = kept["values"][mask].cpu()
                continue
            buffers[hook]["features"][torch.tensor(index) - start] = kept["features"].cpu()
            buffers[hook]["norms"][rows] = kept["norms"][mask].cpu()
        counters.add(time.perf_counter() - t0, batch.input_ids.numel(), len(rows), len(index))
    return {h: b["values"] if not kinds else b for h, b in buffers.items()}


def _kept(
    hook: str,
    a: Tensor | dict[str, Tensor],
    mask: Tensor,
    pool: Tensor,
    kinds: tuple[str, ...],
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """What the capture keeps of one hook's batch.

    That is its activations in the storage dtype, or their pooled vectors and the norm of every
    position. A remote runner computed it where the model ran (a dict); a local one returns the
    activations, reduced here the same way (:func:`~lensprobe.backends.shipped.reduce_site`).
    """
    if isinstance(a, dict):
        return a
    if a.ndim != 3 or a.shape[:2] != mask.shape:
        raise InputError(
            f"hook {hook!r} gives a tensor of shape {tuple(a.shape)}; capture stores "
            "(batch, pos, d_model) activations"
        )
    return reduce_site(a, "output", pool, kinds, dtype)


def _buffers(
    job: CaptureJob, n_rows: int, n_seq: int, width: int, kinds: tuple[str, ...]
) -> dict[str, Tensor]:
    """Empty storage of one shard at one hook: its token rows, or its pooled vectors and norms."""
    if not kinds:
        return {"values": torch.empty(n_rows, width, dtype=job.dtype)}
    return {
        "features": torch.empty(n_seq, len(kinds), width, dtype=torch.float32),
        "norms": torch.empty(n_rows, dtype=torch.float32),
    }


def _hook_meta(
    job: CaptureJob, hook: str, width: int, stored: ActivationsMeta | None
) -> ActivationsMeta:
    """A hook's metadata, first seen at ``width`` in this run; ``stored`` is its resumed record."""
    meta = stored or ActivationsMeta(hook=hook, d_model=width, **job.base_meta)
    if meta.d_model != width:
        raise InputError(
            f"hook {hook!r} is {width} wide here but {meta.d_model} in the shards already stored"
        )
    return meta
