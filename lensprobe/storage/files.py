"""Files of a store: hashing, atomic writes, strict safetensors reading, checks against the manifest.

Nothing here knows what a store holds; :mod:`.manifest` says where things are and :mod:`.writer`
and :mod:`.reader` use these helpers to write and read them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from lensprobe.errors import DiskFullError, InputError, StoreCorruptError

__all__ = ["FAST_HASH", "check_file", "read_safetensors", "write_atomic"]

FAST_HASH = "xxh3_128"
"""Key of the fast per-file hash in the manifest (checked on load; SHA-256 is kept beside it)."""

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


# -- hashing and writing -------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            digest.update(block)
    return digest.hexdigest()


def _fast_hash_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    buf = bytearray(1 << 23)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def file_matches(path: Path, info: Mapping[str, Any]) -> bool:
    """Whether ``path`` has the size and hash the manifest records (fast hash when recorded)."""
    try:
        if path.stat().st_size != info["bytes"]:
            return False
    except OSError:
        return False
    if FAST_HASH in info:
        return _fast_hash_file(path) == info[FAST_HASH]
    return _sha256_file(path) == info["sha256"]


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames into it) to disk, where the platform allows."""
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


def write_atomic(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Returns:
        The manifest entry of the file: its size, SHA-256 and fast hash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free
        raise DiskFullError(
            f"no space left on the disk of {path.parent} while writing {path.name} "
            f"({len(data) / 2**20:.1f} MiB; {free / 2**20:.0f} MiB free): free space there or "
            "pass another folder; every file finished before is kept and a rerun resumes"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        FAST_HASH: xxhash.xxh3_128_hexdigest(data),
        "bytes": len(data),
    }


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")


# -- reading -------------------------------------------------------------------------------------


def read_safetensors(path: str | os.PathLike[str], *, mmap: bool = True) -> dict[str, Tensor]:
    """Read a safetensors file, memory-mapped (copy-on-write) by default.

    Args:
        path: The file.
        mmap: Map the file instead of reading it; tensors then page in on access and writes to
            them never reach the file.

    Returns:
        Tensor name -> tensor.

    Raises:
        ValueError: The file is no valid safetensors file (the message says how).
    """
    path = Path(path)
    if not mmap:
        try:
            return load_safetensors_bytes(path.read_bytes())
        except Exception as err:  # safetensors raises its own error type
            raise InputError(f"{path} is not a valid safetensors file ({err})") from None
    size = path.stat().st_size
    header, base = _read_header(path, size)
    # A private (copy-on-write) mapping that holds no file descriptor once made, so a store of
    # many shards never runs into the open-files limit (``mmap.mmap`` keeps one per file).
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    return {
        name: _tensor_view(path, buffer, base, name, info)
        for name, info in header.items()
        if name != "__metadata__"
    }


def _read_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of a safetensors file and where its data begins."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InputError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise InputError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{path} has an unreadable safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path} has an unreadable safetensors header (not a JSON object)")
    return header, 8 + n


def _tensor_view(path: Path, buffer: Tensor, base: int, name: str, info: Any) -> Tensor:
    """Tensor ``name`` of a mapped file as a view of ``buffer``, checked against the file's size."""
    try:
        dtype = _ST_DTYPES.get(info["dtype"])
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(v) for v in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: the header entry of {name!r} is malformed") from None
    if dtype is None:
        raise InputError(f"{path}: unsupported dtype {info['dtype']} for {name!r}")
    count = 1
    for s in shape:
        count *= s
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if (
        min(shape, default=0) < 0
        or begin < 0
        or end - begin != count * itemsize
        or base + end > buffer.numel()
    ):
        raise InputError(f"{path}: tensor {name!r} does not fit the file; it is corrupt")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    raw = buffer[base + begin : base + end]
    if (base + begin) % itemsize:  # unaligned (not written by safetensors): copy it
        raw = raw.clone()
    return raw.view(dtype).reshape(shape)


def check_file(f: Path, info: Mapping[str, Any], fix: str, *, full: bool) -> None:
    """Check one store file's size (and with ``full`` its hash) against its manifest entry.

    Raises:
        StoreCorruptError: The file is missing, of another size, or (``full``) of other bytes;
            the message ends with ``fix``.
    """
    if not f.is_file():
        raise StoreCorruptError(f"{f} is missing; {fix}")
    size = f.stat().st_size
    if size != info["bytes"]:
        raise StoreCorruptError(
            f"{f} has {size} bytes but was written with {info['bytes']} (truncated or "
            f"overwritten); {fix}"
        )
    if full and not file_matches(f, info):
        raise StoreCorruptError(
            f"{f} fails its checksum (its bytes changed after it was written); {fix}"
        )


def read_shard_file(f: Path, fix: str, *, mmap: bool) -> dict[str, Tensor]:
    """A shard's tensors; an unreadable file is a :class:`StoreCorruptError` ending with ``fix``."""
    try:
        return read_safetensors(f, mmap=mmap)
    except (ValueError, OSError, RuntimeError) as err:
        raise StoreCorruptError(f"{err}; {fix}") from None
