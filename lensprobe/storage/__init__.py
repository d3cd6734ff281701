"""Saving, loading and streaming :class:`~lensprobe.activations.Activations`: the on-disk store.

Layout of a store directory::

    manifest.json                     what is there: size, SHA-256 and XXH3-128 of every file,
                                      and a checksum of the manifest itself
    texts.json                        the source texts (optional)
    token_strs.json                   how token ids decode, for widgets (optional)
    tokens/shard-00000.safetensors    token_ids (int32), lengths, labels of shard 0
    <hook>/shard-00000.safetensors    values (tokens, d_model) of shard 0 at that hook

A shard is a contiguous range of sequences (in the original order), so shards read back end to
end give the sequences in order. Writes are atomic and resumable (:mod:`.writer`): a capture
killed midway leaves finished shards that a rerun verifies and keeps. Reads memory-map the shards
and check integrity cheaply by default (:mod:`.reader`); a damaged file is a
:class:`~lensprobe.errors.StoreCorruptError` that names the file and the fix (rerunning the same
capture recomputes exactly the damaged shards). No pickle is involved anywhere.

Example::

    from lensprobe import storage

    storage.save(acts, "store/")                     # one hook's Activations, or a CaptureResult
    result = storage.load("store/")                  # hook name -> Activations (memory-mapped)
    acts = storage.load_activations("store/", hook="blocks.9.hook_resid_post")
"""

from __future__ import annotations

from lensprobe.storage.files import read_safetensors
from lensprobe.storage.manifest import (
    FORMAT,
    check_store_target,
    store_lock,
    stored_shard_tokens,
    token_strs_table,
)
from lensprobe.storage.reader import Verify, load, load_activations
from lensprobe.storage.writer import StoreWriter, auto_shard_tokens, plan_shards, save

__all__ = [
    "FORMAT",
    "StoreWriter",
    "Verify",
    "auto_shard_tokens",
    "check_store_target",
    "load",
    "load_activations",
    "plan_shards",
    "read_safetensors",
    "save",
    "store_lock",
    "stored_shard_tokens",
    "token_strs_table",
]
