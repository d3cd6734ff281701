"""Writing a store: the shard plan, the resumable :class:`StoreWriter`, and :func:`save`.

Every file is written to a temporary name, flushed and renamed into place, and the manifest (also
replaced atomically) lists a shard only after all its files exist. A capture killed midway
therefore leaves finished shards that a rerun verifies and keeps, and never a half-written file
that a reader could take for data.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from lensprobe.activations import Activations, ActivationsMeta
from lensprobe.errors import InputError, OutputPathError, StoreCorruptError, UsageError
from lensprobe.reduced import ReducedActivations
from lensprobe.storage.files import file_matches, fsync_dir, json_bytes, write_atomic
from lensprobe.storage.manifest import (
    FORMAT,
    MANIFEST,
    VERSION,
    check_same_capture,
    entries,
    hook_dir,
    journal_name,
    journals,
    looks_like_store,
    manifest_bytes,
    not_a_store_error,
    read_manifest,
    shard_name,
    token_strs_table,
)

logger = logging.getLogger(__name__)

__all__ = ["StoreWriter", "auto_shard_tokens", "plan_shards", "save"]

SHARD_TOKENS_MIN = 1024
"""Smallest automatic shard (tokens; shards are also what torchrun ranks share out, so a capture
of a few thousand tokens still has work for several): a killed capture loses at most this much
finished work..."""

SHARD_TOKENS_MAX = 65536
"""...or, for captures of more than ``1024 * SHARD_TOKENS_MIN`` tokens, 1/1024 of the whole."""


def auto_shard_tokens(n_tokens: int) -> int:
    """The default shard size for a capture of ``n_tokens`` tokens.

    About 1024 shards per capture, never fewer than :data:`SHARD_TOKENS_MIN` nor more than
    :data:`SHARD_TOKENS_MAX` tokens each: a capture killed midway keeps all but the shard in
    progress, so small captures lose seconds and large ones about a thousandth of their work.

    Args:
        n_tokens: Valid tokens of the whole capture.

    Returns:
        Tokens per shard.
    """
    return max(SHARD_TOKENS_MIN, min(SHARD_TOKENS_MAX, -(-int(n_tokens) // 1024)))


def plan_shards(lengths: Sequence[int], shard_tokens: int) -> list[tuple[int, int]]:
    """Split sequences ``0..n`` into contiguous ranges of about ``shard_tokens`` tokens each.

    Args:
        lengths: Tokens of each sequence.
        shard_tokens: Target tokens per shard; a shard always holds at least one sequence.

    Returns:
        ``(start, stop)`` sequence ranges covering ``0..len(lengths)``.
    """
    if shard_tokens <= 0:
        raise InputError(f"shard_tokens must be positive, got {shard_tokens}")
    plan: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i, length in enumerate(lengths):
        if acc and acc + length > shard_tokens:
            plan.append((start, i))
            start, acc = i, 0
        acc += length
    if start < len(lengths) or not plan:
        plan.append((start, len(lengths)))
    return plan


@dataclass
class StoreWriter:
    """Writes a store shard by shard; reopening the same directory resumes where it stopped.

    Use :meth:`open`, then :meth:`write_shard` for every shard not :meth:`is_done`, then
    :meth:`finish`.
    """

    path: Path
    """The store directory."""

    manifest: dict[str, Any]
    """The manifest as last written."""

    journal: str | None = None
    """A rank's journal file in the store (see :meth:`follow`); None: shards go to the manifest."""

    _journaled: dict[str, Any] = field(default_factory=dict)
    """The shards this writer recorded in its journal."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        hooks: Sequence[str],
        plan: Sequence[tuple[int, int]],
        n_tokens: int,
        has_labels: bool,
        fingerprint: Mapping[str, Any] | None,
        texts: list[str] | None = None,
        token_strs: Mapping[str, Any] | None = None,
    ) -> StoreWriter:
        """Create a store, or reopen an unfinished one written with the same fingerprint.

        Args:
            path: The store directory.
            hooks: Hook names it will hold.
            plan: Sequence range of each shard (see :func:`plan_shards`).
            n_tokens: Valid tokens over all sequences.
            has_labels: Whether shards carry labels.
            fingerprint: What identifies the content (model, texts, settings); ``None`` makes a
                store that cannot be resumed (an existing store at ``path`` is then an error).
            texts: Source texts for the ``texts.json`` sidecar.
            token_strs: Decode table for the ``token_strs.json`` sidecar.

        Returns:
            A writer whose :meth:`is_done` says which shards are already on disk and verified.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{path} is a file, not a folder; pass a folder for the store")
        old = cls._existing_manifest(path, fingerprint)
        if old is not None:
            check_same_capture(path, old.get("fingerprint") or {}, fingerprint or {})
            writer = cls(path, old)
            writer._cleanup_temporaries()
            writer.merge_journals()
            writer._verify_done(texts=texts, token_strs=token_strs)
            return writer
        path.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "complete": False,
            "fingerprint": None if fingerprint is None else dict(fingerprint),
            "n_sequences": plan[-1][1] if plan else 0,
            "n_tokens": int(n_tokens),
            "has_labels": bool(has_labels),
            "plan": [list(p) for p in plan],
            "hooks": {h: {"dir": hook_dir(h, taken), "meta": None} for h in hooks},
            "shards": {},
            "sidecars": {},
        }
        writer = cls(path, manifest)
        for name, content in (("texts.json", texts), ("token_strs.json", token_strs)):
            if content is not None:
                manifest["sidecars"][name] = write_atomic(path / name, json_bytes(content))
        writer._write_manifest()
        return writer

    @staticmethod
    def _existing_manifest(
        path: Path, fingerprint: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """The manifest of a store to resume at ``path``; None when a new store is to be made.

        A damaged manifest of what looks like a store is set aside (``manifest.json.damaged``)
        and the store rebuilt; anything else in the way is an error.
        """
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            if path.exists() and entries(path):
                raise not_a_store_error(path)
            return None
        if fingerprint is None:
            raise OutputPathError(
                f"{path} already holds a store; choose another directory or delete it first"
            )
        try:
            return read_manifest(path)
        except StoreCorruptError as err:
            if not looks_like_store(path):
                raise
            logger.warning("%s; rebuilding the store (every shard is recomputed)", err)
            os.replace(manifest_path, path / f"{MANIFEST}.damaged")
            for journal in journals(path):
                journal.unlink()
            return None

    @classmethod
    def follow(cls, path: str | os.PathLike[str], *, rank: int) -> StoreWriter:
        """The writer of one rank of a data-parallel capture, in a store its leader opened.

        It writes shard files as :meth:`write_shard` always does, but records each finished
        shard in its own journal (``manifest.json.rank-R``) instead of the manifest, so ranks
        never write one file; the leader then calls :meth:`merge_journals` and :meth:`finish`.
        """
        path = Path(path)
        return cls(path, read_manifest(path), journal=journal_name(rank))

    def merge_journals(self) -> None:
        """Move every shard the ranks' journals record into the manifest, after verifying it.

        A shard whose files fail verification, or an unreadable journal, is logged and left to
        be recomputed. The journals are deleted once the manifest holds their shards.
        """
        found = journals(self.path)
        if not found:
            return
        for path in found:
            try:
                journal = json.loads(path.read_bytes())
                shards, metas = dict(journal["shards"]), dict(journal["hooks"])
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("%s is unreadable; its shards will be recomputed", path)
                continue
            for hook, meta in metas.items():
                info = self.manifest["hooks"].get(hook)
                if info is not None and info["meta"] is None:
                    info["meta"] = meta
            for key, shard in shards.items():
                done = key in self.manifest["shards"]
                files = shard.get("files") if isinstance(shard, dict) else None
                if (
                    not done
                    and isinstance(files, dict)
                    and key.isdigit()
                    and int(key) < len(self.plan)
                ):
                    if all(file_matches(self.path / r, i) for r, i in files.items()):
                        self.manifest["shards"][key] = shard
                        continue
                    logger.warning(
                        "shard %s of %s failed verification; it will be recomputed", key, self.path
                    )
        self._write_manifest()
        for path in found:
            path.unlink()

    def _write_journal(self) -> None:
        assert self.journal is not None
        hooks = {h: info["meta"] for h, info in self.manifest["hooks"].items()}
        write_atomic(
            self.path / self.journal, json_bytes({"shards": self._journaled, "hooks": hooks})
        )

    def _write_manifest(self) -> None:
        shards = self.manifest["shards"]  # in plan order, however the shards were finished
        self.manifest["shards"] = {k: shards[k] for k in sorted(shards, key=int)}
        write_atomic(self.path / MANIFEST, manifest_bytes(self.manifest))
        fsync_dir(self.path)

    def _cleanup_temporaries(self) -> None:
        for tmp in self.path.rglob("*.tmp-*"):
            logger.info("removing the unfinished file %s", tmp)
            tmp.unlink()

    def _verify_done(
        self, *, texts: list[str] | None, token_strs: Mapping[str, Any] | None
    ) -> None:
        changed = False
        for key, shard in list(self.manifest["shards"].items()):
            if not all(file_matches(self.path / r, i) for r, i in shard["files"].items()):
                logger.warning(
                    "shard %s of %s failed verification; it will be recomputed", key, self.path
                )
                del self.manifest["shards"][key]
                changed = True
        for name, content in (("texts.json", texts), ("token_strs.json", token_strs)):
            info = self.manifest["sidecars"].get(name)
            if content is not None and (info is None or not file_matches(self.path / name, info)):
                self.manifest["sidecars"][name] = write_atomic(
                    self.path / name, json_bytes(content)
                )
                changed = True
        if changed:
            self.manifest["complete"] = len(self.manifest["shards"]) == len(self.plan)
            self._write_manifest()

    @property
    def plan(self) -> list[tuple[int, int]]:
        """Sequence range of each shard."""
        return [(int(a), int(b)) for a, b in self.manifest["plan"]]

    def is_done(self, k: int) -> bool:
        """Whether shard ``k`` is on disk and verified."""
        return str(k) in self.manifest["shards"]

    def metas(self) -> dict[str, ActivationsMeta | None]:
        """Metadata recorded for each hook (``None`` until its first shard is written)."""
        return {
            h: None if info["meta"] is None else ActivationsMeta.from_dict(info["meta"])
            for h, info in self.manifest["hooks"].items()
        }

    def write_shard(
        self,
        k: int,
        *,
        token_ids: Tensor,
        lengths: Tensor,
        labels: Tensor | None,
        values: Mapping[str, Tensor | Mapping[str, Tensor]],
        metas: Mapping[str, ActivationsMeta],
    ) -> None:
        """Write shard ``k`` (all its files, then the manifest entry that makes it count).

        Args:
            k: Shard number (its sequence range is ``plan[k]``).
            token_ids: Packed token ids of the shard.
            lengths: Tokens of each sequence of the shard.
            labels: Labels of the shard's sequences, if the store has labels.
            values: Packed activations of the shard for every hook, or (a reduced capture) its
                pooled vectors and token norms
                (:meth:`~lensprobe.reduced.ReducedActivations.shard_tensors`).
            metas: Metadata of every hook.
        """
        start, stop = self.plan[k]
        if lengths.numel() != stop - start:
            raise InputError(f"shard {k} covers {stop - start} sequences, got {lengths.numel()}")
        if set(values) != set(self.manifest["hooks"]):
            raise InputError(f"shard {k} needs values for {sorted(self.manifest['hooks'])}")
        if (labels is not None) != self.manifest["has_labels"]:
            raise InputError("labels must be given exactly when the store has labels")
        files: dict[str, Any] = {}
        tensors = {
            "token_ids": token_ids.to(torch.int32).contiguous(),
            "lengths": lengths.to(torch.int64).contiguous(),
        }
        if labels is not None:
            tensors["labels"] = labels.to(torch.int64).contiguous()
        rel = f"tokens/{shard_name(k)}"
        files[rel] = write_atomic(self.path / rel, save_safetensors(tensors))
        n_tok = int(lengths.sum())
        for hook, info in self.manifest["hooks"].items():
            tensors = _hook_tensors(hook, k, values[hook], lengths)
            rel = f"{info['dir']}/{shard_name(k)}"
            files[rel] = write_atomic(self.path / rel, save_safetensors(tensors))
            if info["meta"] is None:
                info["meta"] = metas[hook].to_dict()
        for sub in {Path(r).parent for r in files}:
            fsync_dir(self.path / sub)
        entry = {"n_tokens": n_tok, "files": files}
        self.manifest["shards"][str(k)] = entry
        if self.journal is None:
            self._write_manifest()
        else:
            self._journaled[str(k)] = entry
            self._write_journal()

    def finish(self) -> None:
        """Mark the store complete (every shard must be done)."""
        missing = [k for k in range(len(self.plan)) if not self.is_done(k)]
        if missing:
            raise UsageError(f"cannot finish the store at {self.path}: shards {missing} missing")
        self.manifest["complete"] = True
        self._write_manifest()


def _hook_tensors(
    hook: str, k: int, values: Tensor | Mapping[str, Tensor], lengths: Tensor
) -> dict[str, Tensor]:
    """The tensors of shard ``k``'s file at ``hook``, checked against the shard's sequences."""
    n_tok, n_seq = int(lengths.sum()), lengths.numel()
    if isinstance(values, Tensor):
        values = {"values": values}
        rows = {"values": n_tok}
    else:
        rows = {"features": n_seq, "norms": n_tok}
    if set(values) != set(rows):
        raise InputError(f"hook {hook!r}: shard {k} needs {sorted(rows)}, got {sorted(values)}")
    for name, t in values.items():
        if t.shape[0] != rows[name]:
            raise InputError(
                f"hook {hook!r}: shard {k} has {rows[name]} rows of {name}, got {t.shape[0]}"
            )
    return {name: t.detach().cpu().contiguous() for name, t in values.items()}


def save(
    acts: Activations | Mapping[str, Activations],
    path: str | os.PathLike[str],
    *,
    shard_tokens: int | None = None,
) -> None:
    """Write activations as a complete store (safetensors shards and a checksummed manifest).

    Args:
        acts: One hook's activations, or several hooks' (``hook name -> Activations``, e.g. a
            :class:`~lensprobe.activations.CaptureResult`) that hold the same sequences.
        path: A new or empty directory.
        shard_tokens: Tokens per shard file (default: :func:`auto_shard_tokens`).

    Raises:
        OutputPathError: ``path`` is a file, a folder of other things, or already a store.
        ValueError: Hooks with different sequences or labels.
    """
    members = {acts.meta.hook: acts} if isinstance(acts, Activations) else dict(acts)
    first = _check_one_set_of_sequences(members)
    writer = StoreWriter.open(
        path,
        hooks=list(members),
        plan=plan_shards(first.lengths.tolist(), shard_tokens or auto_shard_tokens(first.n_tokens)),
        n_tokens=first.n_tokens,
        has_labels=first.labels is not None,
        fingerprint=None,
        texts=first.texts,
        token_strs=(
            None
            if first.token_strs is None
            else token_strs_table(first.token_ids, first.token_strs)
        ),
    )
    offsets = first.offsets
    for k, (a, b) in enumerate(writer.plan):
        writer.write_shard(
            k,
            token_ids=first.token_ids[int(offsets[a]) : int(offsets[b])],
            lengths=first.lengths[a:b],
            labels=None if first.labels is None else first.labels[a:b],
            values={h: _shard_values(m[a:b]) for h, m in members.items()},
            metas={h: m.meta for h, m in members.items()},
        )
    writer.finish()


def _shard_values(acts: Activations) -> Tensor | dict[str, Tensor]:
    """What a store's file of one hook holds for ``acts``' sequences."""
    if isinstance(acts, ReducedActivations):
        return acts.shard_tensors()
    return acts.values


def _check_one_set_of_sequences(members: Mapping[str, Activations]) -> Activations:
    """The first member, after checking that every member holds its sequences and labels."""
    if not members:
        raise InputError("nothing to write: pass at least one hook's activations")
    first_hook, first = next(iter(members.items()))
    for hook, a in members.items():
        if not torch.equal(a.lengths, first.lengths) or not torch.equal(
            a.token_ids, first.token_ids
        ):
            raise InputError("every hook written to one store must hold the same sequences")
        same_labels = (a.labels is None) == (first.labels is None) and (
            a.labels is None or torch.equal(a.labels, first.labels)
        )
        if not same_labels:
            raise InputError(
                f"the labels of {hook!r} differ from those of {first_hook!r}; one store "
                "holds one set of labels: give every hook the same (Activations.with_labels)"
            )
    return first
