"""Where captured activations go: memory or an on-disk store, behind one interface.

The run loop asks a sink for its shards (sequence ranges), skips those it already holds, hands it
each finished shard, and ends with :meth:`Sink.finish`, which returns the
:class:`~lensprobe.activations.CaptureResult`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lensprobe.activations import Activations, ActivationsMeta, CaptureResult, CaptureStats
from lensprobe.capturing.job import CaptureJob
from lensprobe.errors import InputError
from lensprobe.reduced import ReducedActivations
from lensprobe.storage import (
    StoreWriter,
    auto_shard_tokens,
    load,
    plan_shards,
    stored_shard_tokens,
    token_strs_table,
)

__all__ = ["MemorySink", "ShardValues", "Sink", "StoreSink", "open_sink"]

ShardValues = Tensor | dict[str, Tensor]
"""One hook's part of a shard: its packed token rows, or (a reduced capture) the tensors of
:meth:`~lensprobe.reduced.ReducedActivations.shard_tensors`."""


class Sink(ABC):
    """Receives a capture shard by shard."""

    shards: list[tuple[int, int]]
    """Sequence range of each shard, in order; together they cover every sequence."""

    @abstractmethod
    def stored_metas(self) -> dict[str, ActivationsMeta]:
        """Metadata of hooks the sink already holds shards of (a resumed store)."""

    @abstractmethod
    def is_done(self, k: int) -> bool:
        """Whether shard ``k`` is already held (and verified), so need not be computed."""

    @abstractmethod
    def write(
        self, k: int, values: dict[str, ShardValues], metas: dict[str, ActivationsMeta]
    ) -> None:
        """Take shard ``k``: its packed activations per hook, and every hook's metadata."""

    @abstractmethod
    def finish(self, stats: CaptureStats) -> CaptureResult:
        """The capture result, once every shard is held."""


class MemorySink(Sink):
    """Keeps the activations in memory: one shard of every sequence, one tensor per hook."""

    def __init__(self, job: CaptureJob) -> None:
        """Collect ``job``'s activations in memory."""
        self.job = job
        self.shards = [(0, job.n)]
        self._values: dict[int, dict[str, ShardValues]] = {}
        self._metas: dict[str, ActivationsMeta] = {}

    def stored_metas(self) -> dict[str, ActivationsMeta]:
        """Nothing is held before the run."""
        return {}

    def is_done(self, k: int) -> bool:
        """Whether shard ``k`` was written."""
        return k in self._values

    def write(
        self, k: int, values: dict[str, ShardValues], metas: dict[str, ActivationsMeta]
    ) -> None:
        """Keep the activations (``k`` is 0: the one shard)."""
        self._values[k] = values
        self._metas = dict(metas)

    def finish(self, stats: CaptureStats) -> CaptureResult:
        """One :class:`Activations` per hook over the packed tensors."""
        job = self.job
        members: dict[str, Activations] = {}
        for hook in job.hooks:
            values = self._values[0][hook]
            if isinstance(values, Tensor):
                members[hook] = Activations(
                    self._metas[hook],
                    values,
                    job.offsets,
                    job.token_ids,
                    job.labels,
                    token_strs=job.token_strs,
                    texts=job.texts,
                )
            else:
                members[hook] = ReducedActivations(
                    self._metas[hook],
                    values["features"],
                    values["norms"],
                    torch.tensor(job.lengths, dtype=torch.long),
                    job.token_ids,
                    job.labels,
                    token_strs=job.token_strs,
                    texts=job.texts,
                )
        return CaptureResult(members, stats=stats, path=None)


class StoreSink(Sink):
    """Writes each shard to a resumable on-disk store; the result is memory-mapped from it."""

    def __init__(self, job: CaptureJob, writer: StoreWriter) -> None:
        """Write ``job``'s shards through ``writer`` (see :meth:`open`)."""
        self.job = job
        self.writer = writer
        self.shards = writer.plan

    @classmethod
    def open(
        cls, job: CaptureJob, out: str | os.PathLike[str], shard_tokens: int | None
    ) -> StoreSink:
        """Create the store at ``out``, or reopen an unfinished one of the same capture.

        A store resumed with the default ``shard_tokens`` keeps the size it was started with.
        """
        shard_tokens = shard_tokens or stored_shard_tokens(out) or auto_shard_tokens(job.n_tokens)
        plan = plan_shards(job.lengths, shard_tokens)
        writer = StoreWriter.open(
            out,
            hooks=job.hooks,
            plan=plan,
            n_tokens=job.n_tokens,
            has_labels=job.labels is not None,
            fingerprint=job.fingerprint(shard_tokens),
            texts=job.texts,
            token_strs=(
                None if job.token_strs is None else token_strs_table(job.token_ids, job.token_strs)
            ),
        )
        if writer.plan != plan:  # pragma: no cover - guarded by the fingerprint
            raise InputError(f"{out} was planned with other shards; delete it to start over")
        return cls(job, writer)

    @classmethod
    def follow(cls, job: CaptureJob, out: str | os.PathLike[str], *, rank: int) -> StoreSink:
        """Rank ``rank``'s sink in the store its leader opened (see :mod:`.ranks`)."""
        return cls(job, StoreWriter.follow(out, rank=rank))

    def stored_metas(self) -> dict[str, ActivationsMeta]:
        """Metadata of the hooks whose shards the store already holds."""
        return {h: m for h, m in self.writer.metas().items() if m is not None}

    def is_done(self, k: int) -> bool:
        """Whether shard ``k`` is on disk and verified."""
        return self.writer.is_done(k)

    def write(
        self, k: int, values: dict[str, ShardValues], metas: dict[str, ActivationsMeta]
    ) -> None:
        """Write shard ``k``'s files, then the manifest entry that makes it count."""
        job = self.job
        start, stop = self.shards[k]
        self.writer.write_shard(
            k,
            token_ids=job.token_ids[int(job.offsets[start]) : int(job.offsets[stop])],
            lengths=torch.tensor(job.lengths[start:stop], dtype=torch.long),
            labels=None if job.labels is None else job.labels[start:stop],
            values=values,
            metas=metas,
        )

    def finish(self, stats: CaptureStats, *, merge: bool = False) -> CaptureResult:
        """Mark the store complete and read it back (memory-mapped).

        ``merge``: first move the shards the ranks recorded in their journals into the manifest.
        """
        if merge:
            self.writer.merge_journals()
        self.writer.finish()
        result = load(self.writer.path, mmap=True)
        result.stats = stats
        return result


def open_sink(
    job: CaptureJob, out: str | os.PathLike[str] | None, shard_tokens: int | None
) -> Sink:
    """A :class:`StoreSink` at ``out``, or a :class:`MemorySink` when ``out`` is None."""
    if out is None:
        return MemorySink(job)
    return StoreSink.open(job, out, shard_tokens)
