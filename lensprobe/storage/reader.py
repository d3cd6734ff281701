"""Reading a store: :func:`load` (every hook) and :func:`load_activations` (one hook).

Reading memory-maps each shard (copy-on-write: the files are never modified), so stores larger
than RAM stream from disk. Integrity is checked by default, cheaply: loading checks the manifest's
own checksum and structure, every file's size, the whole of every token shard (ids, lengths,
labels) and the header of every activation shard; an activation shard's bytes are hashed
(XXH3-128, tens of GB/s) the first time any of its rows is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lensprobe.activations import Activations, ActivationsMeta, CaptureResult
from lensprobe.errors import InputError, StoreCorruptError, StoreError, UnknownNameError
from lensprobe.reduced import KEPT_KINDS, ReducedActivations
from lensprobe.storage.files import check_file, read_shard_file
from lensprobe.storage.manifest import (
    MANIFEST,
    decode_token_strs,
    read_manifest,
    rebuild_fix,
    shard_fix,
    shard_name,
)

__all__ = ["Verify", "load", "load_activations"]

Verify = Literal["lazy", "full", "off"]
"""How much of a store is hashed when it is loaded (see :func:`load`)."""


class _ShardCheck:
    """Hashes one activation shard the first time its rows are read (then never again)."""

    __slots__ = ("done", "file", "fix", "info")

    def __init__(self, file: Path, info: Mapping[str, Any], fix: str) -> None:
        self.file, self.info, self.fix, self.done = file, info, fix, False

    def __call__(self) -> None:
        if not self.done:
            check_file(self.file, self.info, self.fix, full=True)
            self.done = True


@dataclass
class _Columns:
    """What the shards of a store give, shard after shard: per-sequence columns and segments."""

    token_ids: list[Tensor]
    lengths: list[Tensor]
    labels: list[Tensor]
    seg: list[Tensor]
    starts: list[Tensor]
    segments: dict[str, list[Tensor]]
    checks: dict[str, list[_ShardCheck | None]]
    reduced: dict[str, list[dict[str, Tensor]]]


def load(
    path: str | os.PathLike[str], *, mmap: bool = True, verify: Verify | bool = "lazy"
) -> CaptureResult:
    """Read a complete store, checking its integrity.

    Args:
        path: The store directory (written by :func:`~lensprobe.storage.save` or by
            ``capture(..., out=path)``).
        mmap: Memory-map the shards (default) instead of reading them into memory.
        verify: ``"lazy"`` (default): the manifest, every file's size, every token shard and
            every header are checked now, and each activation shard is hashed (XXH3-128) the
            first time its rows are read. ``"full"`` (or ``True``): hash every file now.
            ``"off"`` (or ``False``): sizes, headers and token shards only.

    Returns:
        Hook name -> :class:`~lensprobe.activations.Activations` (sharing token ids, offsets and
        labels).

    Raises:
        FileNotFoundError: ``path`` holds no store.
        StoreError: The store is unfinished, another program's, or from a newer lensprobe.
        StoreCorruptError: A file is damaged; the message names it and the fix (now, or when a
            damaged activation shard is first read).
    """
    if isinstance(verify, bool):
        verify = "full" if verify else "off"
    if verify not in ("lazy", "full", "off"):
        raise InputError(f"verify must be 'lazy', 'full' or 'off', got {verify!r}")
    path = Path(path)
    manifest = read_manifest(path)
    if not manifest["complete"]:
        raise StoreError(
            f"the store at {path} is incomplete ({len(manifest['shards'])} of "
            f"{len(manifest['plan'])} shards); rerun the same capture(..., out=...) to resume it"
        )
    metas = _hook_metas(path, manifest)
    cols = _Columns(
        [], [], [], [], [], {h: [] for h in metas}, {h: [] for h in metas}, {h: [] for h in metas}
    )
    for k in range(len(manifest["plan"])):
        _read_shard(path, manifest, k, metas, cols, mmap=mmap, verify=verify)
    token_ids, lengths = torch.cat(cols.token_ids), torch.cat(cols.lengths)
    texts, token_strs = _read_sidecars(path, manifest, token_ids, lengths)
    labels = torch.cat(cols.labels) if manifest["has_labels"] else None
    members: dict[str, Activations] = {}
    for h, meta in metas.items():
        if meta.keep != "tokens":
            parts = cols.reduced[h]
            members[h] = ReducedActivations(
                meta,
                torch.cat([p["features"] for p in parts]),
                torch.cat([p["norms"] for p in parts]),
                lengths,
                token_ids,
                labels,
                token_strs=token_strs,
                texts=texts,
            )
            continue
        members[h] = Activations.from_segments(
            meta,
            tuple(cols.segments[h]),
            torch.cat(cols.seg),
            torch.cat(cols.starts),
            lengths,
            token_ids,
            labels,
            token_strs,
            texts,
            checks=tuple(cols.checks[h]),
        )
    return CaptureResult(members, path=str(path))


def load_activations(
    path: str | os.PathLike[str],
    *,
    hook: str | None = None,
    mmap: bool = True,
    verify: Verify | bool = "lazy",
) -> Activations:
    """Read one hook's activations from a store (see :func:`load`).

    Args:
        path: The store directory.
        hook: Which hook to read; may be left out when the store holds one.
        mmap: Memory-map the shards (default) instead of reading them into memory.
        verify: How much to hash now (see :func:`load`).

    Raises:
        ValueError: ``hook`` left out of a store of several hooks.
        KeyError: ``hook`` is not in the store.
        lensprobe.errors.StoreCorruptError: A damaged file (named, with the fix).
    """
    result = load(path, mmap=mmap, verify=verify)
    if hook is None:
        if len(result) != 1:
            raise InputError(
                f"the store at {os.fspath(path)} holds hooks {list(result)}; pass hook=..."
            )
        return next(iter(result.values()))
    if hook not in result:
        raise UnknownNameError(f"hook {hook!r} not in the store; it holds {list(result)}")
    return result[hook]


def _hook_metas(path: Path, manifest: Mapping[str, Any]) -> dict[str, ActivationsMeta]:
    """Each hook's metadata as recorded in the manifest."""
    metas: dict[str, ActivationsMeta] = {}
    for h, info in manifest["hooks"].items():
        try:
            metas[h] = ActivationsMeta.from_dict(info["meta"])
        except (TypeError, ValueError) as err:
            raise StoreCorruptError(
                f"{path / MANIFEST} is damaged: the metadata of hook {h!r} is invalid ({err}); "
                f"{rebuild_fix(path)}"
            ) from None
    return metas


def _read_shard(
    path: Path,
    manifest: Mapping[str, Any],
    k: int,
    metas: Mapping[str, ActivationsMeta],
    cols: _Columns,
    *,
    mmap: bool,
    verify: Verify,
) -> None:
    """Check shard ``k``'s files and append its token columns and activation segments."""
    fix = shard_fix(path, k)
    shard = manifest["shards"].get(str(k))
    name = shard_name(k)
    rels = [f"tokens/{name}", *(f"{info['dir']}/{name}" for info in manifest["hooks"].values())]
    if shard is None or set(rels) - set(shard["files"]):
        raise StoreCorruptError(
            f"{path / MANIFEST} is damaged: shard {k} or one of its files is not listed; "
            f"{rebuild_fix(path)}"
        )
    for rel in rels:
        check_file(path / rel, shard["files"][rel], fix, full=False)
    check_file(path / rels[0], shard["files"][rels[0]], fix, full=True)
    a, b = manifest["plan"][k]
    token_ids, lengths, labels = _token_shard(
        path / rels[0],
        fix,
        n_sequences=b - a,
        n_tokens=shard["n_tokens"],
        has_labels=manifest["has_labels"],
    )
    cols.token_ids.append(token_ids)
    cols.lengths.append(lengths)
    if labels is not None:
        cols.labels.append(labels)
    cols.seg.append(torch.full((lengths.numel(),), k, dtype=torch.long))
    cols.starts.append(torch.cumsum(lengths, 0) - lengths)
    eager = verify == "full" or (verify == "lazy" and not mmap)
    for (h, meta), rel in zip(metas.items(), rels[1:], strict=True):
        f, info = path / rel, shard["files"][rel]
        if meta.keep != "tokens":  # a reduced hook: small, read and hashed now
            check_file(f, info, fix, full=True)
            cols.reduced[h].append(_reduced_shard(f, fix, lengths, meta))
            continue
        if eager:
            check_file(f, info, fix, full=True)
        cols.segments[h].append(_values_shard(f, fix, shard["n_tokens"], meta, mmap=mmap))
        cols.checks[h].append(_ShardCheck(f, info, fix) if verify == "lazy" and not eager else None)


def _values_shard(f: Path, fix: str, n_tokens: int, meta: ActivationsMeta, *, mmap: bool) -> Tensor:
    """The ``values`` tensor of one activation shard, checked against the hook's metadata."""
    values = read_shard_file(f, fix, mmap=mmap)
    v = values.get("values")
    shape = (n_tokens, meta.d_model)
    if set(values) != {"values"} or v is None:
        raise StoreCorruptError(f"{f} holds {sorted(values)}, not ['values']; {fix}")
    if tuple(v.shape) != shape or str(v.dtype).removeprefix("torch.") != meta.dtype:
        raise StoreCorruptError(
            f"{f} holds {str(v.dtype).removeprefix('torch.')} values of shape "
            f"{tuple(v.shape)}, not {meta.dtype} {shape}; {fix}"
        )
    return v


def _reduced_shard(f: Path, fix: str, lengths: Tensor, meta: ActivationsMeta) -> dict[str, Tensor]:
    """The pooled vectors and token norms of one reduced shard, checked against the metadata."""
    tensors = read_shard_file(f, fix, mmap=False)
    shapes = {
        "features": (lengths.numel(), len(KEPT_KINDS[meta.keep]), meta.d_model),
        "norms": (int(lengths.sum()),),
    }
    if set(tensors) != set(shapes):
        raise StoreCorruptError(f"{f} holds {sorted(tensors)}, not {sorted(shapes)}; {fix}")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != torch.float32:
            raise StoreCorruptError(
                f"{f}: {name} is {str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}, not "
                f"float32 {shape}; {fix}"
            )
    return tensors


def _token_shard(
    f: Path, fix: str, *, n_sequences: int, n_tokens: int, has_labels: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Token ids, lengths and labels of one token shard, each checked against the manifest."""
    tok = read_shard_file(f, fix, mmap=False)
    want = {"token_ids", "lengths", *(["labels"] if has_labels else [])}
    if set(tok) != want:
        raise StoreCorruptError(f"{f} holds {sorted(tok)}, not {sorted(want)}; {fix}")
    token_ids, lengths = tok["token_ids"], tok["lengths"]
    labels = tok.get("labels")
    for name, t in tok.items():
        if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise StoreCorruptError(f"{f}: {name} is not a 1-D integer tensor; {fix}")
    if lengths.numel() != n_sequences or (labels is not None and labels.numel() != n_sequences):
        raise StoreCorruptError(f"{f} does not hold the {n_sequences} sequences planned; {fix}")
    if int(lengths.min()) <= 0 or int(lengths.sum()) != n_tokens or token_ids.numel() != n_tokens:
        raise StoreCorruptError(f"{f} does not hold the {n_tokens} tokens recorded; {fix}")
    if labels is not None and int(labels.min()) < 0:
        raise StoreCorruptError(f"{f} holds negative labels; {fix}")
    return (
        token_ids.to(torch.long),
        lengths.to(torch.long),
        None if labels is None else labels.to(torch.long),
    )


def _read_sidecar(path: Path, name: str, info: Mapping[str, Any], fix: str) -> Any:
    f = path / name
    check_file(f, info, fix, full=True)
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:  # pragma: no cover - hash first
        raise StoreCorruptError(f"{f} is not valid JSON ({err}); {fix}") from None


def _read_sidecars(
    path: Path, manifest: Mapping[str, Any], token_ids: Tensor, lengths: Tensor
) -> tuple[list[str] | None, list[list[str]] | None]:
    """The texts and the token strings, when the store has them (each checked)."""
    sidecars, fix = manifest["sidecars"], rebuild_fix(path)
    texts = None
    if "texts.json" in sidecars:
        texts = _read_sidecar(path, "texts.json", sidecars["texts.json"], fix)
        if not (
            isinstance(texts, list)
            and len(texts) == lengths.numel()
            and all(isinstance(t, str) for t in texts)
        ):
            raise StoreCorruptError(f"{path / 'texts.json'} is not one text per sequence; {fix}")
    token_strs = None
    if "token_strs.json" in sidecars:
        data = _read_sidecar(path, "token_strs.json", sidecars["token_strs.json"], fix)
        try:
            token_strs = decode_token_strs(data, token_ids, lengths)
        except (KeyError, TypeError, ValueError):
            raise StoreCorruptError(
                f"{path / 'token_strs.json'} does not decode the stored token ids; {fix}"
            ) from None
    return texts, token_strs
