"""The two capture sinks (memory and an on-disk store) give the same Activations; storage is one way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lensprobe import storage
from lensprobe.activations import Activations
from lensprobe.capturing import capture
from lensprobe.capturing.sinks import StoreSink

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"]


def assert_same_activations(a: Activations, b: Activations) -> None:
    """Bit-identical values, ids, offsets, labels, texts, token strings and metadata."""
    assert a.meta == b.meta
    assert a.values.dtype == b.values.dtype
    assert torch.equal(a.values, b.values)
    assert torch.equal(a.offsets, b.offsets)
    assert torch.equal(a.token_ids, b.token_ids)
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        assert torch.equal(a.labels, b.labels)
    assert a.texts == b.texts
    assert a.token_strs == b.token_strs


@pytest.mark.parametrize("backend", ["hf", "nnsight", "transformer_lens"])
def test_memory_and_store_sinks_give_identical_activations(
    backend, tiny_gemma3, tiny_texts, tmp_path
):
    """One shard: the same batches, so the same bits. Many shards: batch_size=1 (no padding)."""
    model = tiny_gemma3(backend)
    labels = [i % 2 for i in range(len(tiny_texts))]
    kw = {"progress": False, "batch_size": 3}
    mem = capture(model, tiny_texts, HOOKS, labels, **kw)
    one = capture(model, tiny_texts, HOOKS, labels, out=tmp_path / "one", shard_tokens=10**6, **kw)
    assert len(json.loads((tmp_path / "one" / "manifest.json").read_text())["plan"]) == 1
    kw1 = {"progress": False, "batch_size": 1, "dtype": torch.float32}
    mem1 = capture(model, tiny_texts, HOOKS, labels, **kw1)
    many = capture(model, tiny_texts, HOOKS, labels, out=tmp_path / "many", shard_tokens=8, **kw1)
    assert len(json.loads((tmp_path / "many" / "manifest.json").read_text())["plan"]) > 3
    for hook in HOOKS:
        assert_same_activations(mem[hook], one[hook])
        assert_same_activations(mem1[hook], many[hook])
    for a, b in ((mem, one), (mem1, many)):
        assert a.path is None and b.path is not None
        assert a.stats.n_tokens == b.stats.n_tokens == b.stats.n_tokens_run
        assert a.stats.n_sequences == b.stats.n_sequences == len(tiny_texts)


def test_one_text_in_memory_and_in_a_store(tiny_gemma3, tmp_path):
    model = tiny_gemma3("hf")
    kw = {"progress": False, "dtype": torch.float32}
    mem = capture(model, ["the cat sat"], HOOKS[0], ["a"], **kw)
    disk = capture(model, ["the cat sat"], HOOKS[0], ["a"], out=tmp_path / "s", **kw)
    assert len(mem[HOOKS[0]]) == 1
    assert mem[HOOKS[0]].class_names == ("a",)
    assert_same_activations(mem[HOOKS[0]], disk[HOOKS[0]])
    assert_same_activations(disk[HOOKS[0]], storage.load_activations(tmp_path / "s"))


class _DropsOneText:
    """A tokenizer that finds no tokens in one text (as a truncation to nothing would leave)."""

    def __init__(self, inner, empty: str) -> None:
        self.inner, self.empty = inner, empty
        self.bos_token_id = inner.bos_token_id
        self.pad_token_id = inner.pad_token_id
        self.name_or_path = inner.name_or_path

    def __call__(self, texts, **kwargs):
        ids = self.inner(texts, **kwargs)["input_ids"]
        return {
            "input_ids": [[] if t == self.empty else s for t, s in zip(texts, ids, strict=True)]
        }

    def batch_decode(self, ids):
        return self.inner.batch_decode(ids)


@pytest.mark.parametrize("out", [False, True])
def test_a_text_left_without_tokens_is_an_error_before_anything_is_written(
    tiny_gemma3, tiny_texts, tmp_path, out
):
    model = tiny_gemma3("hf")
    target = tmp_path / "s" if out else None
    tok = _DropsOneText(model.tokenizer, tiny_texts[1])
    with pytest.raises(ValueError, match=r"text 1 \('a dog ran'\) has no tokens"):
        capture(model, tiny_texts, HOOKS, tokenizer=tok, prepend_bos=False, out=target)
    with pytest.raises(ValueError, match="max_length must be positive"):
        capture(model, tiny_texts, HOOKS, max_length=0, out=target)
    assert not (tmp_path / "s").exists()


def test_resume_after_a_partial_write_equals_the_memory_capture(
    tiny_gemma3, tiny_texts, tmp_path, monkeypatch
):
    """Killed while shard 2 was being written (its token file is there but not listed, a
    temporary file is left over): the rerun recomputes from shard 2 on and equals memory."""
    model = tiny_gemma3("hf")
    texts = tiny_texts * 2
    kw = {"progress": False, "batch_size": 1, "dtype": torch.float32, "shard_tokens": 12}
    original = StoreSink.write

    def killed_in_shard_2(self, k, values, metas):
        if k == 2:
            raise KeyboardInterrupt
        original(self, k, values, metas)

    monkeypatch.setattr(StoreSink, "write", killed_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        capture(model, texts, HOOKS, out=tmp_path / "s", **kw)
    monkeypatch.setattr(StoreSink, "write", original)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["0", "1"] and not manifest["complete"]
    (tmp_path / "s" / "tokens" / "shard-00002.safetensors").write_bytes(b"half a shard")
    (tmp_path / "s" / HOOKS[0] / "shard-00002.safetensors.tmp-4242").write_bytes(b"partial")
    with pytest.raises(ValueError, match="incomplete"):
        storage.load(tmp_path / "s")
    done = sum(shard["n_tokens"] for shard in manifest["shards"].values())

    resumed = capture(model, texts, HOOKS, out=tmp_path / "s", **kw)
    mem = capture(model, texts, HOOKS, **kw)
    assert resumed.stats.n_tokens_run == mem.stats.n_tokens - done
    for hook in HOOKS:
        assert_same_activations(mem[hook], resumed[hook])
    assert not list((tmp_path / "s").rglob("*.tmp-*"))


def test_activations_know_nothing_about_files():
    """Storage imports activations, never the reverse (0.1's file methods only warn and delegate)."""
    code = (
        "import sys, lensprobe.activations\n"
        "assert not any(m.startswith('lensprobe.storage') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith('lensprobe'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
