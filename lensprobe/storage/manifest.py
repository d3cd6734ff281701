"""The store's layout and its manifest: names of files, the manifest's checks, target checks.

The manifest (``manifest.json``) lists the plan of shards, the hooks and their metadata, and the
size, SHA-256 and XXH3-128 of every file; it carries a checksum of itself. :func:`read_manifest`
checks all of that before anything else is read, and every damage is a
:class:`~lensprobe.errors.StoreCorruptError` that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import xxhash
from torch import Tensor

from lensprobe.errors import MissingFileError, OutputPathError, StoreCorruptError, StoreError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "check_store_target",
    "read_manifest",
    "stored_shard_tokens",
    "token_strs_table",
]

FORMAT = "lensprobe.activations"
"""Value of the manifest's ``format`` field."""

VERSION = 1
"""Version of the layout this package writes and reads."""

MANIFEST = "manifest.json"
"""Name of the manifest file in a store directory."""

SIDECARS = ("texts.json", "token_strs.json")
"""Optional JSON files beside the manifest: the source texts and the token strings."""


# -- names ---------------------------------------------------------------------------------------


def shard_name(k: int) -> str:
    """File name of shard ``k`` (in ``tokens/`` and in every hook's directory)."""
    return f"shard-{k:05d}.safetensors"


def hook_dir(hook: str, taken: set[str]) -> str:
    """A directory name for a hook: the name itself when it is filesystem-safe."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", hook).strip(".") or "hook"
    if name in ("tokens", MANIFEST) or name in taken:
        name = f"{name}-{hashlib.sha256(hook.encode()).hexdigest()[:8]}"
    taken.add(name)
    return name


def rebuild_fix(path: Path) -> str:
    """What to do about a damaged manifest or sidecar of the store at ``path``."""
    return (
        f"rerun the same capture into {path} to rebuild it (its shards are recomputed), or "
        "delete the folder"
    )


def shard_fix(path: Path, k: int | str) -> str:
    """What to do about a damaged file of shard ``k``."""
    return f"rerun the same capture into {path} to recompute shard {k} (the other shards are kept)"


# -- the manifest's own checksum and structure ----------------------------------------------------


def _manifest_checksum(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(canonical.encode("utf-8"))


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as written: indented JSON with its checksum."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    full = {**body, "checksum": _manifest_checksum(body)}
    return json.dumps(full, ensure_ascii=False, indent=1).encode("utf-8")


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _safe_rel(rel: Any) -> bool:
    """A path inside the store: relative, no ``..``, no backslashes or drive letters."""
    if not isinstance(rel, str) or not rel or "\\" in rel or ":" in rel:
        return False
    parts = Path(rel).parts
    return not Path(rel).is_absolute() and ".." not in parts


_FIELDS: dict[str, Callable[[Any], bool]] = {
    "version": is_int,
    "complete": lambda v: isinstance(v, bool),
    "n_sequences": is_int,
    "n_tokens": is_int,
    "has_labels": lambda v: isinstance(v, bool),
    "plan": lambda v: isinstance(v, list),
    "hooks": lambda v: isinstance(v, dict) and bool(v),
    "shards": lambda v: isinstance(v, dict),
    "sidecars": lambda v: isinstance(v, dict),
    "fingerprint": lambda v: v is None or isinstance(v, dict),
}
"""The manifest's fields and what each must hold."""


def _manifest_problem(m: Any) -> str | None:
    """What is structurally wrong with a parsed manifest (None when nothing is)."""
    if not isinstance(m, dict):
        return f"it holds a JSON {type(m).__name__}, not an object"
    for key, ok in _FIELDS.items():
        if key not in m:
            return f"the field {key!r} is missing"
        if not ok(m[key]):
            return f"the field {key!r} has an invalid value"
    return _plan_problem(m) or _hooks_problem(m["hooks"]) or _files_problem(m)


def _plan_problem(m: Mapping[str, Any]) -> str | None:
    """Whether the plan is ``[start, stop]`` ranges covering the sequences in order."""
    stop = 0
    for i, rng in enumerate(m["plan"]):
        if not (isinstance(rng, list) and len(rng) == 2 and all(is_int(v) for v in rng)):
            return f"plan[{i}] is not a [start, stop] pair"
        if rng[0] != stop or rng[1] <= rng[0]:
            return f"plan[{i}] = {rng} does not continue the previous range"
        stop = rng[1]
    if stop != m["n_sequences"]:
        return f"the plan covers {stop} sequences, the field 'n_sequences' says {m['n_sequences']}"
    return None


def _hooks_problem(hooks: Mapping[str, Any]) -> str | None:
    """Whether every hook has a directory inside the store and metadata that is an object."""
    for hook, info in hooks.items():
        if not isinstance(info, dict) or not _safe_rel(info.get("dir")):
            return f"the entry of hook {hook!r} is malformed"
        if info.get("meta") is not None and not isinstance(info["meta"], dict):
            return f"the metadata of hook {hook!r} is malformed"
    return None


def _files_problem(m: Mapping[str, Any]) -> str | None:
    """Whether every shard entry and every listed file (inside the store) is well formed."""
    entries = [("sidecars", m["sidecars"])]
    for key, shard in m["shards"].items():
        if not (key.isdigit() and int(key) < len(m["plan"])):
            return f"the shard key {key!r} is not a shard of the plan"
        if not (isinstance(shard, dict) and is_int(shard.get("n_tokens"))):
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
                and is_int(info.get("bytes"))
                and isinstance(info.get("sha256"), str)
            ):
                return f"{where}: the size or checksum of {rel} is malformed"
    return None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``, checked (checksum and structure).

    Raises:
        FileNotFoundError: There is no manifest.
        StoreError: The manifest is another program's file, or from a newer lensprobe.
        StoreCorruptError: The manifest is damaged (the message says how to rebuild the store).
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MissingFileError(f"no lensprobe store at {path} (missing {MANIFEST})")
    fix = rebuild_fix(path)
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
    if isinstance(m, dict) and is_int(m.get("version")) and m["version"] > VERSION:
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


# -- may a capture write here? -------------------------------------------------------------------


LOCK = f"{MANIFEST}.lock"
"""The file a capture holds while it writes a store (see :func:`store_lock`)."""


def journal_name(rank: int) -> str:
    """The file in which rank ``rank`` of a data-parallel capture records its finished shards."""
    return f"{MANIFEST}.rank-{rank}"


def journals(path: Path) -> list[Path]:
    """The ranks' journals in the store at ``path`` (left by a running or killed capture)."""
    return sorted(path.glob(f"{MANIFEST}.rank-*"))


def entries(path: Path) -> list[Path]:
    """What a folder holds, a capture's lock file aside."""
    return [e for e in path.iterdir() if e.name != LOCK]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def store_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the store at ``path`` for one capture: a second one is refused, never interleaved.

    The lock is ``manifest.json.lock`` in the store (process id, host, start time); a lock left by
    a process that no longer runs on this host (a killed capture) is taken over.

    Raises:
        StoreError: Another capture is writing into ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                other = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                other = {}
            pid, host = other.get("pid"), other.get("host")
            if isinstance(pid, int) and host == me["host"] and not _alive(pid):
                lock.unlink(missing_ok=True)  # left by a killed capture
                continue
            started = time.strftime("%H:%M:%S", time.localtime(other.get("started") or 0))
            raise StoreError(
                f"{path} is being written by another capture (pid {pid} on {host}, started "
                f"{started}); wait for it to finish, or pass another out= directory (delete "
                f"{lock} only if no capture runs)"
            ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def looks_like_store(path: Path) -> bool:
    """Whether every entry of ``path`` is something a store holds (for rebuilding a damaged one)."""
    for entry in path.iterdir():
        if entry.is_file():
            if not (
                entry.name.startswith(MANIFEST) or entry.name in SIDECARS or ".tmp-" in entry.name
            ):
                return False
        elif entry.is_dir():
            if not all(f.is_file() and f.name.startswith("shard-") for f in entry.iterdir()):
                return False
        else:
            return False
    return True


def not_a_store_error(path: Path) -> OutputPathError:
    """The error for a non-empty folder without a manifest."""
    return OutputPathError(
        f"{path} exists and is not empty but has no {MANIFEST} (it is not an activation "
        "store); choose an empty or new folder"
    )


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
    if not path.is_dir() or not entries(path):
        return
    if not (path / MANIFEST).exists():
        raise not_a_store_error(path)
    try:
        old = read_manifest(path)
    except StoreCorruptError:
        if looks_like_store(path):
            return  # the capture rebuilds it
        raise
    if fingerprint is not None:
        check_same_capture(path, old.get("fingerprint") or {}, fingerprint, partial=True)


def stored_shard_tokens(path: str | os.PathLike[str]) -> int | None:
    """The shard size a capture recorded in the store at ``path`` (None when there is none).

    A capture that resumes with the default size keeps the size the store was started with.
    """
    try:
        fingerprint = read_manifest(Path(path)).get("fingerprint") or {}
    except (OSError, StoreError):
        return None
    value = fingerprint.get("shard_tokens")
    return value if is_int(value) and value > 0 else None


LATER_KEYS = ("compute_dtype", "weights_sha256")
"""Fingerprint keys stores written before lensprobe recorded them lack (not compared there)."""


def check_same_capture(
    path: Path, old: Mapping[str, Any], new: Mapping[str, Any], *, partial: bool = False
) -> None:
    """Refuse a store whose fingerprint ``old`` differs from ``new`` (``partial``: in its keys).

    Raises:
        StoreError: The fingerprints differ (the message lists the keys, and how to resume).
    """
    keys = set(new) if partial else set(old) | set(new)
    keys -= {k for k in LATER_KEYS if k not in old}  # a store of an older lensprobe
    differ = sorted(k for k in keys if old.get(k) != new.get(k))
    if not differ:
        return
    hint = ""
    if differ == ["shard_tokens"] and old.get("shard_tokens"):
        hint = f" (pass shard_tokens={old['shard_tokens']} to resume it)"
    if "compute_dtype" in differ:
        hint += (
            f" (the model computes in {new.get('compute_dtype')} now, in "
            f"{old.get('compute_dtype')} when the store was started: load it in that dtype)"
        )
    elif "weights_sha256" in differ:
        hint += " (the model's weights changed since the store was started)"
    raise StoreError(
        f"{path} holds a different capture (it differs in {', '.join(differ)}){hint}; "
        "pass another out= directory or delete this one to start over"
    )


# -- the token strings sidecar -------------------------------------------------------------------


def token_strs_table(token_ids: Tensor, token_strs: list[list[str]]) -> dict[str, Any]:
    """The ``token_strs.json`` content: a table ``id -> string`` when consistent, else the lists."""
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


def decode_token_strs(
    data: Mapping[str, Any], token_ids: Tensor, lengths: Tensor
) -> list[list[str]]:
    """Each sequence's token strings from :func:`token_strs_table` output."""
    if "lists" in data:
        return [list(s) for s in data["lists"]]
    table = dict(zip(data["ids"], data["strs"], strict=True))
    flat = [table[i] for i in token_ids.tolist()]
    out, k = [], 0
    for length in lengths.tolist():
        out.append(flat[k : k + length])
        k += length
    return out
