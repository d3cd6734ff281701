"""The on-disk activation store: safetensors shards, a JSON manifest, atomic and resumable writes.

Layout of a store directory::

    manifest.json                     what is there, with a SHA-256 and size per file
    texts.json                        the source texts (optional)
    token_strs.json                   how token ids decode, for widgets (optional)
    tokens/shard-00000.safetensors    token_ids (int32), lengths, labels of shard 0
    <hook>/shard-00000.safetensors    values (tokens, d_model) of shard 0 at that hook

A shard is a contiguous range of sequences (in the original order), so shards read back end to
end give the sequences in order. Every file is written to a temporary name, flushed to disk and
renamed into place, and the manifest (also replaced atomically) lists a shard only after all its
files exist. A capture killed midway therefore leaves finished shards that a rerun verifies and
keeps, and never a half-written file that a reader could take for data. Reading memory-maps each
shard (copy-on-write: the files are never modified) so stores larger than RAM stream from disk.
No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import Tensor

from lensprobe.activations import Activations, ActivationsMeta, CaptureResult

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "StoreWriter",
    "load_store",
    "plan_shards",
    "read_safetensors",
    "token_strs_table",
    "write_store",
]

FORMAT = "lensprobe.activations"
"""Value of the manifest's ``format`` field."""

VERSION = 1
"""Version of the layout this module writes and reads."""

MANIFEST = "manifest.json"

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# -- low-level file helpers ----------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` through a temporary file and a rename; return its checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")


def read_safetensors(path: str | os.PathLike[str], *, mmap: bool = True) -> dict[str, Tensor]:
    """Read a safetensors file, memory-mapped (copy-on-write) by default.

    Args:
        path: The file.
        mmap: Map the file instead of reading it; tensors then page in on access and writes to
            them never reach the file.

    Returns:
        Tensor name -> tensor.
    """
    path = Path(path)
    if not mmap:
        return load_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path} is not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
    # A private (copy-on-write) mapping that holds no file descriptor once made, so a store of
    # many shards never runs into the open-files limit (``mmap.mmap`` keeps one per file).
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    base = 8 + n
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {name!r}")
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(v) for v in info["data_offsets"])
        count = 1
        for s in shape:
            count *= s
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if end - begin != count * itemsize or base + end > size:
            raise ValueError(f"{path}: tensor {name!r} does not fit the file; it is corrupt")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            raw = buffer[base + begin : base + end]
            if (base + begin) % itemsize:  # unaligned (not written by safetensors): copy it
                raw = raw.clone()
            out[name] = raw.view(dtype).reshape(shape)
    return out


def plan_shards(lengths: Sequence[int], shard_tokens: int) -> list[tuple[int, int]]:
    """Split sequences ``0..n`` into contiguous ranges of about ``shard_tokens`` tokens each.

    Args:
        lengths: Tokens of each sequence.
        shard_tokens: Target tokens per shard; a shard always holds at least one sequence.

    Returns:
        ``(start, stop)`` sequence ranges covering ``0..len(lengths)``.
    """
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
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


def _hook_dir(hook: str, taken: set[str]) -> str:
    """A directory name for a hook: the name itself when it is filesystem-safe."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", hook).strip(".") or "hook"
    if name in ("tokens", MANIFEST) or name in taken:
        name = f"{name}-{hashlib.sha256(hook.encode()).hexdigest()[:8]}"
    taken.add(name)
    return name


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


# -- token strings sidecar -----------------------------------------------------------------------


def token_strs_table(token_ids: Tensor, token_strs: list[list[str]]) -> dict[str, Any]:
    """A decode table ``id -> string`` when consistent, else the full lists."""
    table: dict[int, str] = {}
    flat_ids = token_ids.tolist()
    k = 0
    for strs in token_strs:
        for s in strs:
            tid = flat_ids[k]
            k += 1
            if table.setdefault(tid, s) != s:
                return {"lists": token_strs}
    ids = sorted(table)
    return {"ids": ids, "strs": [table[i] for i in ids]}


def _decode_token_strs(
    data: Mapping[str, Any], token_ids: Tensor, lengths: Tensor
) -> list[list[str]]:
    if "lists" in data:
        return [list(s) for s in data["lists"]]
    table = dict(zip(data["ids"], data["strs"], strict=True))
    flat = [table[i] for i in token_ids.tolist()]
    out, k = [], 0
    for length in lengths.tolist():
        out.append(flat[k : k + length])
        k += length
    return out


# -- writer --------------------------------------------------------------------------------------


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
        manifest_path = path / MANIFEST
        if manifest_path.exists():
            if fingerprint is None:
                raise FileExistsError(
                    f"{path} already holds a store; choose another directory or delete it first"
                )
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            if old.get("format") != FORMAT:
                raise ValueError(f"{manifest_path} is not a lensprobe store manifest")
            old_fp = old.get("fingerprint") or {}
            differ = sorted(
                k for k in set(old_fp) | set(fingerprint) if old_fp.get(k) != fingerprint.get(k)
            )
            if differ:
                raise ValueError(
                    f"{path} holds a different capture (it differs in {', '.join(differ)}); "
                    "pass another out= directory or delete this one to start over"
                )
            writer = cls(path, old)
            writer._cleanup_temporaries()
            writer._verify_done()
            return writer
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(
                f"{path} exists and is not empty but has no {MANIFEST}; "
                "choose an empty or new directory"
            )
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
            "hooks": {h: {"dir": _hook_dir(h, taken), "meta": None} for h in hooks},
            "shards": {},
            "sidecars": {},
        }
        writer = cls(path, manifest)
        if texts is not None:
            manifest["sidecars"]["texts.json"] = _write_atomic(
                path / "texts.json", _json_bytes(texts)
            )
        if token_strs is not None:
            manifest["sidecars"]["token_strs.json"] = _write_atomic(
                path / "token_strs.json", _json_bytes(token_strs)
            )
        writer._write_manifest()
        return writer

    def _write_manifest(self) -> None:
        _write_atomic(self.path / MANIFEST, _json_bytes(self.manifest))
        _fsync_dir(self.path)

    def _cleanup_temporaries(self) -> None:
        for tmp in self.path.rglob("*.tmp-*"):
            logger.info("removing the unfinished file %s", tmp)
            tmp.unlink()

    def _verify_done(self) -> None:
        bad = []
        for key, shard in self.manifest["shards"].items():
            for rel, info in shard["files"].items():
                f = self.path / rel
                if (
                    not f.exists()
                    or f.stat().st_size != info["bytes"]
                    or _sha256_file(f) != info["sha256"]
                ):
                    bad.append(key)
                    break
        for key in bad:
            logger.warning(
                "shard %s of %s failed verification; it will be recomputed", key, self.path
            )
            del self.manifest["shards"][key]
        if bad:
            self.manifest["complete"] = False
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
        values: Mapping[str, Tensor],
        metas: Mapping[str, ActivationsMeta],
    ) -> None:
        """Write shard ``k`` (all its files, then the manifest entry that makes it count).

        Args:
            k: Shard number (its sequence range is ``plan[k]``).
            token_ids: Packed token ids of the shard.
            lengths: Tokens of each sequence of the shard.
            labels: Labels of the shard's sequences, if the store has labels.
            values: Packed activations of the shard for every hook.
            metas: Metadata of every hook.
        """
        start, stop = self.plan[k]
        if lengths.numel() != stop - start:
            raise ValueError(f"shard {k} covers {stop - start} sequences, got {lengths.numel()}")
        if set(values) != set(self.manifest["hooks"]):
            raise ValueError(f"shard {k} needs values for {sorted(self.manifest['hooks'])}")
        if (labels is not None) != self.manifest["has_labels"]:
            raise ValueError("labels must be given exactly when the store has labels")
        files: dict[str, Any] = {}
        tensors = {
            "token_ids": token_ids.to(torch.int32).contiguous(),
            "lengths": lengths.to(torch.int64).contiguous(),
        }
        if labels is not None:
            tensors["labels"] = labels.to(torch.int64).contiguous()
        rel = f"tokens/{_shard_name(k)}"
        files[rel] = _write_atomic(self.path / rel, save_safetensors(tensors))
        n_tok = int(lengths.sum())
        for hook, info in self.manifest["hooks"].items():
            v = values[hook]
            if v.shape[0] != n_tok:
                raise ValueError(
                    f"hook {hook!r}: shard {k} has {n_tok} tokens, values {v.shape[0]}"
                )
            rel = f"{info['dir']}/{_shard_name(k)}"
            files[rel] = _write_atomic(
                self.path / rel, save_safetensors({"values": v.detach().cpu().contiguous()})
            )
            if info["meta"] is None:
                info["meta"] = metas[hook].to_dict()
        for sub in {Path(r).parent for r in files}:
            _fsync_dir(self.path / sub)
        self.manifest["shards"][str(k)] = {"n_tokens": n_tok, "files": files}
        self._write_manifest()

    def finish(self) -> None:
        """Mark the store complete (every shard must be done)."""
        missing = [k for k in range(len(self.plan)) if not self.is_done(k)]
        if missing:
            raise RuntimeError(f"cannot finish the store at {self.path}: shards {missing} missing")
        self.manifest["complete"] = True
        self._write_manifest()


def write_store(
    path: str | os.PathLike[str],
    members: Mapping[str, Activations],
    *,
    shard_tokens: int = 65536,
) -> None:
    """Write activations of one or more hooks (same sequences) as a complete store.

    Args:
        path: A new or empty directory.
        members: Hook name -> activations; all must hold the same sequences.
        shard_tokens: Tokens per shard file.
    """
    if not members:
        raise ValueError("nothing to write: pass at least one hook's activations")
    parts = list(members.values())
    first = parts[0]
    for hook, a in members.items():
        if not torch.equal(a.lengths, first.lengths) or not torch.equal(
            a.token_ids, first.token_ids
        ):
            raise ValueError("every hook written to one store must hold the same sequences")
        same_labels = (a.labels is None) == (first.labels is None) and (
            a.labels is None or torch.equal(a.labels, first.labels)
        )
        if not same_labels:
            raise ValueError(
                f"the labels of {hook!r} differ from those of {next(iter(members))!r}; one store "
                "holds one set of labels: give every hook the same (Activations.with_labels)"
            )
    token_strs = None
    if first.token_strs is not None:
        token_strs = token_strs_table(first.token_ids, first.token_strs)
    lengths = first.lengths
    writer = StoreWriter.open(
        path,
        hooks=list(members),
        plan=plan_shards(lengths.tolist(), shard_tokens),
        n_tokens=first.n_tokens,
        has_labels=first.labels is not None,
        fingerprint=None,
        texts=first.texts,
        token_strs=token_strs,
    )
    offsets = first.offsets
    for k, (a, b) in enumerate(writer.plan):
        idx = torch.arange(a, b)
        writer.write_shard(
            k,
            token_ids=first.token_ids[int(offsets[a]) : int(offsets[b])],
            lengths=lengths[a:b],
            labels=None if first.labels is None else first.labels[a:b],
            values={h: m._gather(idx) for h, m in members.items()},
            metas={h: m.meta for h, m in members.items()},
        )
    writer.finish()


def load_store(
    path: str | os.PathLike[str], *, mmap: bool = True, verify: bool = False
) -> CaptureResult:
    """Read a complete store.

    Args:
        path: The store directory.
        mmap: Memory-map the shards (default) instead of reading them into memory.
        verify: Check every file's SHA-256 against the manifest first.

    Returns:
        Hook name -> :class:`Activations` (sharing token ids, offsets and labels).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"no lensprobe store at {path} (missing {MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not a lensprobe store manifest")
    if manifest.get("version", 0) > VERSION:
        raise ValueError(
            f"{path} was written by a newer lensprobe (store version {manifest['version']}); "
            "upgrade lensprobe to read it"
        )
    plan = manifest["plan"]
    if not manifest["complete"]:
        done = len(manifest["shards"])
        raise ValueError(
            f"the store at {path} is incomplete ({done} of {len(plan)} shards); rerun the same "
            "capture(..., out=...) to resume it"
        )
    hooks = manifest["hooks"]
    files_sizes = [
        (rel, info) for shard in manifest["shards"].values() for rel, info in shard["files"].items()
    ] + list(manifest["sidecars"].items())
    for rel, info in files_sizes:
        f = path / rel
        if not f.exists() or f.stat().st_size != info["bytes"]:
            raise ValueError(f"{f} is missing or has the wrong size; the store is damaged")
        if verify and _sha256_file(f) != info["sha256"]:
            raise ValueError(f"{f} fails its SHA-256 check; the store is damaged")

    token_parts, length_parts, label_parts, seg_parts, start_parts = [], [], [], [], []
    segments: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for k in range(len(plan)):
        name = _shard_name(k)
        tok = read_safetensors(path / "tokens" / name, mmap=False)
        lengths = tok["lengths"].to(torch.long)
        token_parts.append(tok["token_ids"].to(torch.long))
        length_parts.append(lengths)
        if manifest["has_labels"]:
            label_parts.append(tok["labels"].to(torch.long))
        seg_parts.append(torch.full((lengths.numel(),), k, dtype=torch.long))
        start_parts.append(torch.cumsum(lengths, 0) - lengths)
        for h, info in hooks.items():
            segments[h].append(read_safetensors(path / info["dir"] / name, mmap=mmap)["values"])
    token_ids = torch.cat(token_parts)
    lengths = torch.cat(length_parts)
    labels = torch.cat(label_parts) if manifest["has_labels"] else None
    seg = torch.cat(seg_parts)
    starts = torch.cat(start_parts)
    texts = None
    if "texts.json" in manifest["sidecars"]:
        texts = json.loads((path / "texts.json").read_text(encoding="utf-8"))
    token_strs = None
    if "token_strs.json" in manifest["sidecars"]:
        data = json.loads((path / "token_strs.json").read_text(encoding="utf-8"))
        token_strs = _decode_token_strs(data, token_ids, lengths)
    members = {
        h: Activations._from_segments(
            ActivationsMeta.from_dict(info["meta"]),
            tuple(segments[h]),
            seg,
            starts,
            lengths,
            token_ids,
            labels,
            token_strs,
            texts,
        )
        for h, info in hooks.items()
    }
    return CaptureResult(members, path=str(path))
