"""Data-parallel capture under ``torchrun``: every rank computes whole shards of one store.

The plan (tokens, shards, the batches inside each shard) is the single-process plan, made the
same way on every rank. The leader (rank 0) opens or resumes the store and holds its lock; each
rank then computes the unfinished shards given to it (balanced by token count) and records each
finished shard in its own journal (``manifest.json.rank-R``), never in the manifest; after every
rank is done the leader merges the journals into the manifest and marks the store complete. A
rank's shards are computed in exactly the batches one process would use, so the store equals a
single-process capture. A killed run leaves its finished shards listed in the journals, and a
rerun (with any number of ranks, or none) merges and keeps them.

Every collective step goes through :meth:`Ranks.agree`, so an error on one rank is raised on all
of them instead of leaving the others waiting at a barrier.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lensprobe.activations import CaptureResult, CaptureStats
from lensprobe.capturing.job import CaptureJob
from lensprobe.capturing.run import run_capture
from lensprobe.capturing.sinks import StoreSink
from lensprobe.hardware import torchrun_place
from lensprobe.storage import load, store_lock

__all__ = ["Ranks", "capture_on_ranks", "current_ranks"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a ``torch.distributed`` group of several processes."""

    rank: int
    """This process's rank."""

    world: int
    """Processes in the group."""

    @property
    def leader(self) -> bool:
        """Whether this is rank 0, which opens, merges and finishes the store."""
        return self.rank == 0

    def share(self, tokens: Mapping[int, int]) -> list[int]:
        """The shards this rank computes, of the shards to do with ``tokens`` tokens each.

        Longest shard first to the rank with the fewest tokens so far (ties: the lower rank), so
        every rank gets the same answer and the loads differ by at most one shard.
        """
        load = [0] * self.world
        mine: list[int] = []
        for k in sorted(tokens, key=lambda k: (-tokens[k], k)):
            r = min(range(self.world), key=lambda r: (load[r], r))
            load[r] += tokens[k]
            if r == self.rank:
                mine.append(k)
        return sorted(mine)

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank the first error (in rank order) that any rank met; a barrier."""
        for r, other in enumerate(self.gather(_portable(error))):
            if other is None:
                continue
            if r == self.rank and error is not None:
                raise error
            raise other

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order."""
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def attempt(self, step: Callable[[], Any], *, leader_only: bool = False) -> Any:
        """Run ``step`` (on the leader only, if asked) and :meth:`agree` on its outcome."""
        error: BaseException | None = None
        value = None
        if self.leader or not leader_only:
            try:
                value = step()
            except Exception as err:  # raised on every rank by agree
                error = err
        self.agree(error)
        return value


def _portable(error: BaseException | None) -> BaseException | None:
    """``error`` if it survives pickling, else a RuntimeError that says what it was."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def current_ranks() -> Ranks | None:
    """The process group this process runs in, or None for a single process.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) a group not yet set up is initialised here: ``nccl``
    when CUDA is available, ``gloo`` otherwise.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if torchrun_place()[1] <= 1:
            return None
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_group)  # set up here, so taken down here: no abort at exit
    if dist.get_world_size() <= 1:
        return None
    return Ranks(dist.get_rank(), dist.get_world_size())


def _leave_group() -> None:
    """Take down the process group :func:`current_ranks` set up, once every rank is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def capture_on_ranks(
    model: Any,
    backend: str,
    job: CaptureJob,
    out: str | os.PathLike[str],
    shard_tokens: int | None,
    ranks: Ranks,
    *,
    progress: bool,
) -> CaptureResult:
    """Capture ``job`` into the store ``out`` with every rank of ``ranks`` (see the module)."""
    with ExitStack() as held:

        def open_store() -> StoreSink:
            held.enter_context(store_lock(out))
            return StoreSink.open(job, out, shard_tokens)

        ranks.attempt(open_store, leader_only=True)
        sink = StoreSink.follow(job, out, rank=ranks.rank)
        todo = {
            k: _tokens(job, a, b) for k, (a, b) in enumerate(sink.shards) if not sink.is_done(k)
        }
        mine = ranks.share(todo)
        stats = ranks.attempt(
            lambda: run_capture(
                model,
                backend,
                job,
                sink,
                progress=progress and ranks.leader,
                shards=mine,
                label=f"rank {ranks.rank} of {ranks.world}",
            )
        )
        total = _combined(job, ranks.gather(stats))
        result = ranks.attempt(lambda: sink.finish(total, merge=True), leader_only=True)
    if result is None:
        result = load(out, mmap=True)
        result.stats = total
    return result


def _tokens(job: CaptureJob, start: int, stop: int) -> int:
    """Valid tokens of sequences ``start..stop``."""
    return int(job.offsets[stop]) - int(job.offsets[start])


def _combined(job: CaptureJob, stats: Sequence[CaptureStats]) -> CaptureStats:
    """What the ranks cost together: tokens and padding summed, seconds of the slowest rank."""
    return CaptureStats(
        n_sequences=job.n,
        n_tokens=job.n_tokens,
        n_tokens_run=sum(s.n_tokens_run for s in stats),
        n_padded_tokens=sum(s.n_padded_tokens for s in stats),
        n_truncated=job.tokenized.n_truncated,
        seconds=max(s.seconds for s in stats),
    )
