"""The on-disk activation store: safetensors shards, a JSON manifest, atomic and resumable writes.

Layout of a store directory::

    manifest.json                     what is there: size, SHA-256 and XXH3-128 of every file,
                                      and a checksum of the manifest itself
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

Integrity is checked by default, cheaply: loading checks the manifest's own checksum and structure,
every file's size, the whole of every token shard (ids, lengths, labels) and the header of every
activation shard; an activation shard's bytes are hashed (XXH3-128, tens of GB/s) the first time
any of its rows is read. A damaged file is a :class:`~lensprobe.errors.StoreCorruptError` that
names the file and the fix (rerunning the same capture recomputes exactly the damaged shards).
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
from typing import Any, Literal

import torch
import xxhash
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors
from torch import Tensor

from lensprobe.activations import Activations, ActivationsMeta, CaptureResult
from lensprobe.errors import OutputPathError, StoreCorruptError, StoreError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "StoreWriter",
    "auto_shard_tokens",
    "check_store_target",
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

FAST_HASH = "xxh3_128"
"""Key of the fast per-file hash in the manifest (checked on load; SHA-256 is kept beside it)."""

SHARD_TOKENS_MIN = 4096
"""Smallest automatic shard (tokens): a killed capture loses at most this much finished work..."""

SHARD_TOKENS_MAX = 65536
"""...or, for captures of more than ``1024 * SHARD_TOKENS_MIN`` tokens, 1/1024 of the whole."""

Verify = Literal["lazy", "full", "off"]

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


def _fast_hash_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    buf = bytearray(1 << 23)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _file_matches(path: Path, info: Mapping[str, Any]) -> bool:
    """Whether ``path`` has the size and hash the manifest records (fast hash when recorded)."""
    try:
        if path.stat().st_size != info["bytes"]:
            return False
    except OSError:
        return False
    if FAST_HASH in info:
        return _fast_hash_file(path) == info[FAST_HASH]
    return _sha256_file(path) == info["sha256"]


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
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        FAST_HASH: xxhash.xxh3_128_hexdigest(data),
        "bytes": len(data),
    }


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")


def _manifest_checksum(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(canonical.encode("utf-8"))


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return _json_bytes({**body, "checksum": _manifest_checksum(body)})


def _rebuild_fix(path: Path) -> str:
    return (
        f"rerun the same capture into {path} to rebuild it (its shards are recomputed), or "
        "delete the folder"
    )


def _shard_fix(path: Path, k: int | str) -> str:
    return f"rerun the same capture into {path} to recompute shard {k} (the other shards are kept)"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _safe_rel(rel: Any) -> bool:
    """A path inside the store: relative, no ``..``, no backslashes or drive letters."""
    if not isinstance(rel, str) or not rel or "\\" in rel or ":" in rel:
        return False
    parts = Path(rel).parts
    return not Path(rel).is_absolute() and ".." not in parts


def _manifest_problem(m: Any) -> str | None:
    """What is structurally wrong with a parsed manifest (None when nothing is)."""
    if not isinstance(m, dict):
        return f"it holds a JSON {type(m).__name__}, not an object"
    need = {
        "version": _is_int,
        "complete": lambda v: isinstance(v, bool),
        "n_sequences": _is_int,
        "n_tokens": _is_int,
        "has_labels": lambda v: isinstance(v, bool),
        "plan": lambda v: isinstance(v, list),
        "hooks": lambda v: isinstance(v, dict) and bool(v),
        "shards": lambda v: isinstance(v, dict),
        "sidecars": lambda v: isinstance(v, dict),
        "fingerprint": lambda v: v is None or isinstance(v, dict),
    }
    for key, ok in need.items():
        if key not in m:
            return f"the field {key!r} is missing"
        if not ok(m[key]):
            return f"the field {key!r} has an invalid value"
    stop = 0
    for i, rng in enumerate(m["plan"]):
        if not (isinstance(rng, list) and len(rng) == 2 and all(_is_int(v) for v in rng)):
            return f"plan[{i}] is not a [start, stop] pair"
        if rng[0] != stop or rng[1] <= rng[0]:
            return f"plan[{i}] = {rng} does not continue the previous range"
        stop = rng[1]
    if stop != m["n_sequences"]:
        return f"the plan covers {stop} sequences, the field 'n_sequences' says {m['n_sequences']}"
    for hook, info in m["hooks"].items():
        if not isinstance(info, dict) or not _safe_rel(info.get("dir")):
            return f"the entry of hook {hook!r} is malformed"
        if info.get("meta") is not None and not isinstance(info["meta"], dict):
            return f"the metadata of hook {hook!r} is malformed"
    entries = [("sidecars", m["sidecars"])]
    for key, shard in m["shards"].items():
        if not (key.isdigit() and int(key) < len(m["plan"])):
            return f"the shard key {key!r} is not a shard of the plan"
        if not (isinstance(shard, dict) and _is_int(shard.get("n_tokens"))):
            return f"the entry of shard {key} is malformed"
        if not isinstance(shard.get("files"), dict):
            return f"the file list of shard {key} is malformed"
        entries.append((f"shard {key}", shard["files"]))
    for where, files in entries:
        for rel, info in files.items():
            if not _safe_rel(rel):
                return f"{where} lists the file {rel!r}, which is outside the store"
            if not (
                isinstance(info, dict)
                and _is_int(info.get("bytes"))
                and isinstance(info.get("sha256"), str)
            ):
                return f"{where}: the size or checksum of {rel} is malformed"
    return None


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``, checked (checksum and structure).

    Raises:
        FileNotFoundError: There is no manifest.
        StoreError: The manifest is another program's file, or from a newer lensprobe.
        StoreCorruptError: The manifest is damaged (the message says how to rebuild the store).
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no lensprobe store at {path} (missing {MANIFEST})")
    fix = _rebuild_fix(path)
    raw = manifest_path.read_bytes()
    if not raw.strip():
        raise StoreCorruptError(f"{manifest_path} is empty; {fix}")
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreCorruptError(
            f"{manifest_path} is not valid JSON (truncated or damaged: {err}); {fix}"
        ) from None
    if isinstance(m, dict) and "format" in m and m["format"] != FORMAT:
        raise StoreError(f"{manifest_path} is not a lensprobe store manifest")
    if isinstance(m, dict) and _is_int(m.get("version")) and m["version"] > VERSION:
        raise StoreError(
            f"{path} was written by a newer lensprobe (store version {m['version']}); "
            "upgrade lensprobe to read it"
        )
    problem = "the field 'format' is missing" if isinstance(m, dict) and "format" not in m else None
    if problem is None and isinstance(m, dict) and "checksum" in m:
        body = {k: v for k, v in m.items() if k != "checksum"}
        if m["checksum"] != _manifest_checksum(body):
            problem = "its checksum does not match its content (edited or damaged)"
    problem = problem or _manifest_problem(m)
    if problem:
        raise StoreCorruptError(f"{manifest_path} is damaged: {problem}; {fix}")
    return m


def _looks_like_store(path: Path) -> bool:
    """Whether every entry of ``path`` is something a store holds (for rebuilding a damaged one)."""
    for entry in path.iterdir():
        if entry.is_file():
            if not (
                entry.name.startswith(MANIFEST)
                or entry.name in ("texts.json", "token_strs.json")
                or ".tmp-" in entry.name
            ):
                return False
        elif entry.is_dir():
            if not all(f.is_file() and f.name.startswith("shard-") for f in entry.iterdir()):
                return False
        else:
            return False
    return True


def check_store_target(
    path: str | os.PathLike[str], fingerprint: Mapping[str, Any] | None = None
) -> None:
    """Check, before any work, that a capture may write its store at ``path``.

    ``path`` may be absent, an empty folder, or a store of the same capture (finished, unfinished
    or with a damaged manifest, which the capture then rebuilds).

    Args:
        path: The store directory.
        fingerprint: What is known of the capture so far (any subset of the keys ``capture``
            records); a store that differs in one of them is refused.

    Raises:
        OutputPathError: ``path`` is a file, or a non-empty folder that is not a store.
        StoreError: ``path`` holds a store of another capture.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a folder; pass a folder for the store")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not (path / MANIFEST).exists():
        raise OutputPathError(
            f"{path} exists and is not empty but has no {MANIFEST} (it is not an activation "
            "store); choose an empty or new folder"
        )
    try:
        old = _read_manifest(path)
    except StoreCorruptError:
        if _looks_like_store(path):
            return  # the capture rebuilds it
        raise
    if fingerprint is not None:
        _check_same_capture(path, old.get("fingerprint") or {}, fingerprint, partial=True)


def stored_shard_tokens(path: str | os.PathLike[str]) -> int | None:
    """The shard size a capture recorded in the store at ``path`` (None when there is none).

    A capture that resumes with the default size keeps the size the store was started with.
    """
    try:
        fingerprint = _read_manifest(Path(path)).get("fingerprint") or {}
    except (OSError, StoreError):
        return None
    value = fingerprint.get("shard_tokens")
    return value if _is_int(value) and value > 0 else None


def _check_same_capture(
    path: Path, old: Mapping[str, Any], new: Mapping[str, Any], *, partial: bool = False
) -> None:
    keys = set(new) if partial else set(old) | set(new)
    differ = sorted(k for k in keys if old.get(k) != new.get(k))
    if not differ:
        return
    hint = ""
    if differ == ["shard_tokens"] and old.get("shard_tokens"):
        hint = f" (pass shard_tokens={old['shard_tokens']} to resume it)"
    raise StoreError(
        f"{path} holds a different capture (it differs in {', '.join(differ)}){hint}; "
        "pass another out= directory or delete this one to start over"
    )


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
        try:
            return load_safetensors_bytes(path.read_bytes())
        except Exception as err:  # safetensors raises its own error type
            raise ValueError(f"{path} is not a valid safetensors file ({err})") from None
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} has an unreadable safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has an unreadable safetensors header (not a JSON object)")
    # A private (copy-on-write) mapping that holds no file descriptor once made, so a store of
    # many shards never runs into the open-files limit (``mmap.mmap`` keeps one per file).
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    base = 8 + n
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES.get(info["dtype"])
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: the header entry of {name!r} is malformed") from None
        if dtype is None:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {name!r}")
        count = 1
        for s in shape:
            count *= s
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if (
            min(shape, default=0) < 0
            or begin < 0
            or end - begin != count * itemsize
            or base + end > size
        ):
            raise ValueError(f"{path}: tensor {name!r} does not fit the file; it is corrupt")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            raw = buffer[base + begin : base + end]
            if (base + begin) % itemsize:  # unaligned (not written by safetensors): copy it
                raw = raw.clone()
            out[name] = raw.view(dtype).reshape(shape)
    return out


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
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{path} is a file, not a folder; pass a folder for the store")
        rebuild = False
        if manifest_path.exists():
            if fingerprint is None:
                raise OutputPathError(
                    f"{path} already holds a store; choose another directory or delete it first"
                )
            try:
                old = _read_manifest(path)
            except StoreCorruptError as err:
                if not _looks_like_store(path):
                    raise
                logger.warning("%s; rebuilding the store (every shard is recomputed)", err)
                os.replace(manifest_path, path / f"{MANIFEST}.damaged")
                rebuild = True
            else:
                _check_same_capture(path, old.get("fingerprint") or {}, fingerprint)
                writer = cls(path, old)
                writer._cleanup_temporaries()
                writer._verify_done(texts=texts, token_strs=token_strs)
                return writer
        if not rebuild and path.exists() and any(path.iterdir()):
            raise OutputPathError(
                f"{path} exists and is not empty but has no {MANIFEST} (it is not an activation "
                "store); choose an empty or new folder"
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
        _write_atomic(self.path / MANIFEST, _manifest_bytes(self.manifest))
        _fsync_dir(self.path)

    def _cleanup_temporaries(self) -> None:
        for tmp in self.path.rglob("*.tmp-*"):
            logger.info("removing the unfinished file %s", tmp)
            tmp.unlink()

    def _verify_done(
        self, *, texts: list[str] | None, token_strs: Mapping[str, Any] | None
    ) -> None:
        changed = False
        for key, shard in list(self.manifest["shards"].items()):
            if not all(_file_matches(self.path / r, i) for r, i in shard["files"].items()):
                logger.warning(
                    "shard %s of %s failed verification; it will be recomputed", key, self.path
                )
                del self.manifest["shards"][key]
                changed = True
        for name, content in (("texts.json", texts), ("token_strs.json", token_strs)):
            info = self.manifest["sidecars"].get(name)
            if content is not None and (info is None or not _file_matches(self.path / name, info)):
                self.manifest["sidecars"][name] = _write_atomic(
                    self.path / name, _json_bytes(content)
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
    shard_tokens: int | None = None,
) -> None:
    """Write activations of one or more hooks (same sequences) as a complete store.

    Args:
        path: A new or empty directory.
        members: Hook name -> activations; all must hold the same sequences.
        shard_tokens: Tokens per shard file (default: :func:`auto_shard_tokens`).
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
        plan=plan_shards(lengths.tolist(), shard_tokens or auto_shard_tokens(first.n_tokens)),
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


class _ShardCheck:
    """Hashes one activation shard the first time its rows are read (then never again)."""

    __slots__ = ("done", "file", "fix", "info")

    def __init__(self, file: Path, info: Mapping[str, Any], fix: str) -> None:
        self.file, self.info, self.fix, self.done = file, info, fix, False

    def __call__(self) -> None:
        if not self.done:
            _check_file(self.file, self.info, self.fix, full=True)
            self.done = True


def _check_file(f: Path, info: Mapping[str, Any], fix: str, *, full: bool) -> None:
    """Size (and with ``full`` the hash) of one store file against its manifest entry."""
    if not f.is_file():
        raise StoreCorruptError(f"{f} is missing; {fix}")
    size = f.stat().st_size
    if size != info["bytes"]:
        raise StoreCorruptError(
            f"{f} has {size} bytes but was written with {info['bytes']} (truncated or "
            f"overwritten); {fix}"
        )
    if full and not _file_matches(f, info):
        raise StoreCorruptError(
            f"{f} fails its checksum (its bytes changed after it was written); {fix}"
        )


def _read_shard_file(f: Path, fix: str, *, mmap: bool) -> dict[str, Tensor]:
    try:
        return read_safetensors(f, mmap=mmap)
    except (ValueError, OSError, RuntimeError) as err:
        raise StoreCorruptError(f"{err}; {fix}") from None


def _token_shard(
    f: Path, fix: str, *, n_sequences: int, n_tokens: int, has_labels: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Token ids, lengths and labels of one token shard, each checked against the manifest."""
    tok = _read_shard_file(f, fix, mmap=False)
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
    _check_file(f, info, fix, full=True)
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:  # pragma: no cover - hash first
        raise StoreCorruptError(f"{f} is not valid JSON ({err}); {fix}") from None


def load_store(
    path: str | os.PathLike[str], *, mmap: bool = True, verify: Verify | bool = "lazy"
) -> CaptureResult:
    """Read a complete store, checking its integrity.

    Args:
        path: The store directory.
        mmap: Memory-map the shards (default) instead of reading them into memory.
        verify: ``"lazy"`` (default): the manifest, every file's size, every token shard and
            every header are checked now, and each activation shard is hashed (XXH3-128) the
            first time its rows are read. ``"full"`` (or ``True``): hash every file now.
            ``"off"`` (or ``False``): sizes, headers and token shards only.

    Returns:
        Hook name -> :class:`Activations` (sharing token ids, offsets and labels).

    Raises:
        FileNotFoundError: ``path`` holds no store.
        StoreError: The store is unfinished, another program's, or from a newer lensprobe.
        StoreCorruptError: A file is damaged; the message names it and the fix (now, or when a
            damaged activation shard is first read).
    """
    if isinstance(verify, bool):
        verify = "full" if verify else "off"
    if verify not in ("lazy", "full", "off"):
        raise ValueError(f"verify must be 'lazy', 'full' or 'off', got {verify!r}")
    path = Path(path)
    manifest = _read_manifest(path)
    plan = manifest["plan"]
    if not manifest["complete"]:
        done = len(manifest["shards"])
        raise StoreError(
            f"the store at {path} is incomplete ({done} of {len(plan)} shards); rerun the same "
            "capture(..., out=...) to resume it"
        )
    hooks = manifest["hooks"]
    metas: dict[str, ActivationsMeta] = {}
    for h, info in hooks.items():
        try:
            metas[h] = ActivationsMeta.from_dict(info["meta"])
        except (TypeError, ValueError) as err:
            raise StoreCorruptError(
                f"{path / MANIFEST} is damaged: the metadata of hook {h!r} is invalid ({err}); "
                f"{_rebuild_fix(path)}"
            ) from None

    token_parts, length_parts, label_parts, seg_parts, start_parts = [], [], [], [], []
    segments: dict[str, list[Tensor]] = {h: [] for h in hooks}
    checks: dict[str, list[_ShardCheck | None]] = {h: [] for h in hooks}
    for k, (a, b) in enumerate(plan):
        fix = _shard_fix(path, k)
        shard = manifest["shards"].get(str(k))
        name = _shard_name(k)
        rels = [f"tokens/{name}", *(f"{info['dir']}/{name}" for info in hooks.values())]
        if shard is None or set(rels) - set(shard["files"]):
            raise StoreCorruptError(
                f"{path / MANIFEST} is damaged: shard {k} or one of its files is not listed; "
                f"{_rebuild_fix(path)}"
            )
        for rel in rels:
            _check_file(path / rel, shard["files"][rel], fix, full=False)
        _check_file(path / rels[0], shard["files"][rels[0]], fix, full=True)
        token_ids, lengths, labels = _token_shard(
            path / rels[0],
            fix,
            n_sequences=b - a,
            n_tokens=shard["n_tokens"],
            has_labels=manifest["has_labels"],
        )
        token_parts.append(token_ids)
        length_parts.append(lengths)
        if labels is not None:
            label_parts.append(labels)
        seg_parts.append(torch.full((lengths.numel(),), k, dtype=torch.long))
        start_parts.append(torch.cumsum(lengths, 0) - lengths)
        for (h, meta), rel in zip(metas.items(), rels[1:], strict=True):
            f, info = path / rel, shard["files"][rel]
            eager = verify == "full" or (verify == "lazy" and not mmap)
            if eager:
                _check_file(f, info, fix, full=True)
            values = _read_shard_file(f, fix, mmap=mmap)
            v = values.get("values")
            shape = (shard["n_tokens"], meta.d_model)
            if set(values) != {"values"} or v is None:
                raise StoreCorruptError(f"{f} holds {sorted(values)}, not ['values']; {fix}")
            if tuple(v.shape) != shape or str(v.dtype).removeprefix("torch.") != meta.dtype:
                raise StoreCorruptError(
                    f"{f} holds {str(v.dtype).removeprefix('torch.')} values of shape "
                    f"{tuple(v.shape)}, not {meta.dtype} {shape}; {fix}"
                )
            segments[h].append(v)
            checks[h].append(_ShardCheck(f, info, fix) if verify == "lazy" and not eager else None)
    token_ids = torch.cat(token_parts)
    lengths = torch.cat(length_parts)
    labels = torch.cat(label_parts) if manifest["has_labels"] else None
    seg = torch.cat(seg_parts)
    starts = torch.cat(start_parts)
    sidecar_fix = _rebuild_fix(path)
    texts = None
    if "texts.json" in manifest["sidecars"]:
        texts = _read_sidecar(path, "texts.json", manifest["sidecars"]["texts.json"], sidecar_fix)
        if not (
            isinstance(texts, list)
            and len(texts) == lengths.numel()
            and all(isinstance(t, str) for t in texts)
        ):
            raise StoreCorruptError(
                f"{path / 'texts.json'} is not one text per sequence; {sidecar_fix}"
            )
    token_strs = None
    if "token_strs.json" in manifest["sidecars"]:
        info = manifest["sidecars"]["token_strs.json"]
        data = _read_sidecar(path, "token_strs.json", info, sidecar_fix)
        try:
            token_strs = _decode_token_strs(data, token_ids, lengths)
        except (KeyError, TypeError, ValueError):
            raise StoreCorruptError(
                f"{path / 'token_strs.json'} does not decode the stored token ids; {sidecar_fix}"
            ) from None
    members = {
        h: Activations._from_segments(
            metas[h],
            tuple(segments[h]),
            seg,
            starts,
            lengths,
            token_ids,
            labels,
            token_strs,
            texts,
            checks=tuple(checks[h]),
        )
        for h in hooks
    }
    return CaptureResult(members, path=str(path))
