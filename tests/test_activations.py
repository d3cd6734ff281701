"""The Activations container and its on-disk store (no language model needed)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import lensprobe as lp
from lensprobe import storage
from lensprobe.activations import Activations, ActivationsMeta, CaptureResult
from lensprobe.storage import StoreWriter, plan_shards, read_safetensors

D = 6


def make_meta(**overrides) -> ActivationsMeta:
    fields = {
        "hook": "blocks.1.hook_resid_post",
        "model_id": "tiny",
        "backend": "hf",
        "d_model": D,
        "dtype": "float32",
        "tokenizer": "tiny-tok",
        "padding_side": "right",
        "max_length": 16,
        "n_truncated": 0,
        "prepend_bos": True,
        "class_names": ("neg", "pos"),
    }
    fields.update(overrides)
    return ActivationsMeta(**fields)


def make_acts(
    lengths=(3, 1, 4, 2), *, seed=0, labels=True, dtype=torch.float32, **meta
) -> Activations:
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths_t, 0)])
    n_tok = int(offsets[-1])
    values = torch.randn(n_tok, D, generator=gen).to(dtype)
    token_ids = torch.randint(0, 50, (n_tok,), generator=gen)
    strs = [[f"t{int(t)}" for t in token_ids[a:b]] for a, b in itertools.pairwise(offsets.tolist())]
    return Activations(
        make_meta(dtype=str(dtype).removeprefix("torch."), **meta),
        values,
        offsets,
        token_ids,
        torch.arange(len(lengths)) % 2 if labels else None,
        token_strs=strs,
        texts=[f"text {i}" for i in range(len(lengths))],
    )


# -- metadata ------------------------------------------------------------------------------------


def test_meta_round_trips_through_json():
    meta = make_meta()
    again = ActivationsMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    assert isinstance(again.class_names, tuple)


def test_meta_rejects_bad_fields():
    # a runtime type checker (the test suite's jaxtyping hook) may object before __post_init__
    with pytest.raises((ValueError, TypeError), match="padding_side"):
        make_meta(padding_side="middle")
    with pytest.raises(ValueError, match="d_model"):
        make_meta(d_model=0)
    with pytest.raises(ValueError, match="unknown ActivationsMeta fields"):
        ActivationsMeta.from_dict({**make_meta().to_dict(), "colour": "red"})


# -- container -----------------------------------------------------------------------------------


def test_construction_checks_shapes_and_dtype():
    acts = make_acts()
    with pytest.raises(ValueError, match="offsets end"):
        Activations(acts.meta, acts.values[:-1], acts.offsets, acts.token_ids[:-1])
    with pytest.raises(ValueError, match=r"meta\.dtype"):
        Activations(acts.meta, acts.values.half(), acts.offsets, acts.token_ids)
    with pytest.raises(ValueError, match="at least one token"):
        Activations(acts.meta, acts.values, torch.tensor([0, 0, 10]), acts.token_ids)
    with pytest.raises(ValueError, match="labels"):
        Activations(
            acts.meta, acts.values, acts.offsets, acts.token_ids, torch.zeros(3, dtype=torch.long)
        )


def test_lengths_offsets_and_sequences():
    acts = make_acts((3, 1, 4, 2))
    assert len(acts) == 4
    assert acts.lengths.tolist() == [3, 1, 4, 2]
    assert acts.offsets.tolist() == [0, 3, 4, 8, 10]
    assert acts.n_tokens == 10 and acts.d_model == D
    assert torch.equal(acts.sequence(2), acts.values[4:8])
    assert torch.equal(acts.sequence(-1), acts.values[8:10])
    # sequence() is a view of the storage, not a copy
    assert acts.sequence(2).data_ptr() == acts.values[4:8].data_ptr()
    with pytest.raises(IndexError):
        acts.sequence(4)


def test_subset_reindexes_without_copying_values():
    acts = make_acts((3, 1, 4, 2))
    sub = acts[[2, 0]]
    assert len(sub) == 2
    assert sub.lengths.tolist() == [4, 3]
    assert torch.equal(sub.values, torch.cat([acts.values[4:8], acts.values[0:3]]))
    assert torch.equal(sub.token_ids, torch.cat([acts.token_ids[4:8], acts.token_ids[0:3]]))
    assert sub.labels.tolist() == [0, 0]
    assert sub.texts == ["text 2", "text 0"]
    assert sub.token_strs == [acts.token_strs[2], acts.token_strs[0]]
    # the subset's sequences still point into the original storage
    assert sub.sequence(0).data_ptr() == acts.sequence(2).data_ptr()
    # other selectors
    assert acts[1:3].lengths.tolist() == [1, 4]
    assert acts[-1].lengths.tolist() == [2]
    assert acts[torch.tensor([True, False, False, True])].lengths.tolist() == [3, 2]
    with pytest.raises(IndexError):
        acts[[0, 7]]


def test_pad_right_and_left():
    acts = make_acts((3, 1, 4, 2))
    x, mask = acts.pad([0, 1])
    assert x.shape == (2, 3, D) and x.dtype == torch.float32
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(x[0], acts.sequence(0))
    assert torch.equal(x[1, 0], acts.sequence(1)[0])
    assert torch.all(x[1, 1:] == 0)
    xl, ml = acts.pad([0, 1], padding_side="left")
    assert ml.tolist() == [[True, True, True], [False, False, True]]
    assert torch.equal(xl[1, 2], acts.sequence(1)[0])
    assert torch.equal(xl[ml], x[mask])


def test_pad_converts_dtype_from_bf16_storage():
    acts = make_acts(dtype=torch.bfloat16)
    x, mask = acts.pad(dtype=torch.float64)
    assert x.dtype == torch.float64
    assert torch.equal(x[mask], acts.values.to(torch.float64))


def test_batches_cover_every_sequence_once_and_shuffle_is_seeded():
    acts = make_acts((3, 1, 4, 2, 5, 1, 2))
    seen = []
    for x, mask, labels, idx in acts.batches(3, shuffle=True, seed=1):
        assert x.shape[0] == mask.shape[0] == labels.shape[0] == idx.shape[0] <= 3
        assert mask.sum(1).tolist() == acts.lengths[idx].tolist()
        assert torch.equal(labels, acts.labels[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(7))
    again = [idx.tolist() for *_, idx in acts.batches(3, shuffle=True, seed=1)]
    other = [idx.tolist() for *_, idx in acts.batches(3, shuffle=True, seed=2)]
    assert [i for b in again for i in b] == seen
    assert [i for b in other for i in b] != seen
    assert [idx.tolist() for *_, idx in acts.batches(3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_concat_shares_storage_and_checks_meta():
    a, b = make_acts((2, 3), seed=1), make_acts((1, 4, 2), seed=2)
    both = Activations.concat([a, b[1:], a[0]])
    assert both.lengths.tolist() == [2, 3, 4, 2, 2]
    assert torch.equal(both.sequence(2), b.sequence(1))
    assert both.sequence(2).data_ptr() == b.sequence(1).data_ptr()
    assert torch.equal(both.values, torch.cat([a.values, b.values[1:], a.values[:2]]))
    assert both.labels.tolist() == [0, 1, 1, 0, 0]
    assert len(both._segments) == 2  # a's storage is not duplicated
    with pytest.raises(ValueError, match=r"meta\.hook"):
        Activations.concat([a, make_acts(hook="blocks.2.hook_resid_post")])
    with pytest.raises(ValueError, match="labelled"):
        Activations.concat([a, make_acts(labels=False)])


def test_concat_sums_truncation_counts():
    a, b = make_acts(n_truncated=2), make_acts(n_truncated=3)
    assert Activations.concat([a, b]).meta.n_truncated == 5


def test_with_labels_relabels_without_copy():
    acts = make_acts((3, 1, 4, 2))
    other = acts.with_labels(torch.tensor([2, 1, 0, 2]), ["a", "b", "c"])
    assert other.labels.tolist() == [2, 1, 0, 2]
    assert other.class_names == ("a", "b", "c")
    assert acts.labels.tolist() == [0, 1, 0, 1]  # original untouched
    assert other.sequence(0).data_ptr() == acts.sequence(0).data_ptr()


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=12),
    pick=st.lists(st.integers(0, 11), max_size=10),
    side=st.sampled_from(["left", "right"]),
)
def test_pad_matches_sequences(lengths, pick, side):
    acts = make_acts(tuple(lengths))
    pick = [p % len(lengths) for p in pick] or [0]
    x, mask = acts.pad(pick, padding_side=side)
    assert mask.sum(1).tolist() == [lengths[p] for p in pick]
    for row, p in enumerate(pick):
        assert torch.equal(x[row][mask[row]], acts.sequence(p))
        assert torch.all(x[row][~mask[row]] == 0)


# -- store ---------------------------------------------------------------------------------------


def test_plan_shards_covers_in_order():
    assert plan_shards([3, 3, 3, 3], 6) == [(0, 2), (2, 4)]
    assert plan_shards([10, 1, 1], 4) == [(0, 1), (1, 3)]
    plan = plan_shards([1] * 10, 3)
    assert plan[0] == (0, 3) and plan[-1][1] == 10
    assert all(a[1] == b[0] for a, b in itertools.pairwise(plan))


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, mmap: bool):
    acts = make_acts((3, 1, 4, 2, 5), dtype=torch.bfloat16)
    storage.save(acts, tmp_path / "store", shard_tokens=4)
    back = storage.load_activations(tmp_path / "store", mmap=mmap)
    assert back.meta == acts.meta
    assert torch.equal(back.values, acts.values)
    assert torch.equal(back.offsets, acts.offsets)
    assert torch.equal(back.token_ids, acts.token_ids)
    assert torch.equal(back.labels, acts.labels)
    assert back.token_strs == acts.token_strs and back.texts == acts.texts
    assert len(back._segments) == len(list((tmp_path / "store").glob("*/shard-*"))) // 2 > 1
    x, mask = back.pad([4, 0])
    x0, m0 = acts.pad([4, 0])
    assert torch.equal(x, x0) and torch.equal(mask, m0)


def test_mmap_tensors_are_copy_on_write(tmp_path: Path):
    acts = make_acts()
    storage.save(acts, tmp_path / "s")
    shard = next((tmp_path / "s").glob("blocks*/shard-00000.safetensors"))
    before = shard.read_bytes()
    t = read_safetensors(shard, mmap=True)["values"]
    t.add_(1.0)  # writes go to private pages, never to the file
    assert shard.read_bytes() == before
    assert torch.equal(read_safetensors(shard, mmap=False)["values"], acts.values)


def test_store_manifest_has_checksums_and_verify_detects_damage(tmp_path: Path):
    acts = make_acts((3, 1, 4, 2))
    storage.save(acts, tmp_path / "s", shard_tokens=5)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] is True
    files = [rel for shard in manifest["shards"].values() for rel in shard["files"]]
    assert all(
        len(manifest["shards"][k]["files"][r]["sha256"]) == 64
        for k in manifest["shards"]
        for r in manifest["shards"][k]["files"]
    )
    target = tmp_path / "s" / files[-1]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    target.write_bytes(bytes(data))
    lazy = storage.load_activations(tmp_path / "s")  # an activation shard is hashed when first read
    lazy.sequence(0)  # shard 0 is intact
    with pytest.raises(ValueError, match="fails its checksum"):
        lazy.pad()
    with pytest.raises(ValueError, match="fails its checksum"):
        storage.load_activations(tmp_path / "s", verify=True)
    storage.load_activations(tmp_path / "s", verify="off").pad()  # sizes and headers only
    target.write_bytes(bytes(data[:-3]))
    with pytest.raises(ValueError, match="truncated or overwritten"):
        storage.load_activations(tmp_path / "s")


def test_save_refuses_existing_store(tmp_path: Path):
    acts = make_acts()
    storage.save(acts, tmp_path / "s")
    with pytest.raises(FileExistsError):
        storage.save(acts, tmp_path / "s")


def test_multi_hook_store_and_load_by_hook(tmp_path: Path):
    a = make_acts(seed=1)
    b = Activations(
        make_meta(hook="blocks.2.hook_resid_post"),
        a.values * 2,
        a.offsets,
        a.token_ids,
        a.labels,
    )
    result = CaptureResult({a.meta.hook: a, b.meta.hook: b})
    storage.save(result, tmp_path / "s")
    back = storage.load(tmp_path / "s")
    assert list(back) == [a.meta.hook, b.meta.hook]
    assert torch.equal(back[b.meta.hook].values, a.values * 2)
    assert back[a.meta.hook].token_ids is back[b.meta.hook].token_ids
    with pytest.raises(ValueError, match="pass hook="):
        storage.load_activations(tmp_path / "s")
    assert torch.equal(storage.load_activations(tmp_path / "s", hook=b.meta.hook).values, b.values)
    with pytest.raises(KeyError, match="holds"):
        back["blocks.7.hook_resid_post"]


def _writer(path: Path, acts: Activations, plan, fingerprint) -> StoreWriter:
    return StoreWriter.open(
        path,
        hooks=[acts.meta.hook],
        plan=plan,
        n_tokens=acts.n_tokens,
        has_labels=True,
        fingerprint=fingerprint,
    )


def _write(writer: StoreWriter, acts: Activations, k: int) -> None:
    a, b = writer.plan[k]
    o = acts.offsets
    writer.write_shard(
        k,
        token_ids=acts.token_ids[int(o[a]) : int(o[b])],
        lengths=acts.lengths[a:b],
        labels=acts.labels[a:b],
        values={acts.meta.hook: acts.values[int(o[a]) : int(o[b])]},
        metas={acts.meta.hook: acts.meta},
    )


def test_writer_resumes_keeps_verified_shards_and_ignores_half_written_files(tmp_path: Path):
    acts = make_acts((3, 1, 4, 2, 2, 3))
    plan = plan_shards(acts.lengths.tolist(), 4)
    fp = {"what": "test"}
    w = _writer(tmp_path / "s", acts, plan, fp)
    _write(w, acts, 0)
    _write(w, acts, 1)
    # a crash while writing shard 2: a temporary file, no manifest entry
    hook_dir = tmp_path / "s" / w.manifest["hooks"][acts.meta.hook]["dir"]
    (hook_dir / "shard-00002.safetensors.tmp-999").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="incomplete"):
        storage.load(tmp_path / "s")

    again = _writer(tmp_path / "s", acts, plan, fp)
    assert [again.is_done(k) for k in range(len(plan))] == [True, True] + [False] * (len(plan) - 2)
    assert not list((tmp_path / "s").rglob("*.tmp-*"))
    for k in range(2, len(plan)):
        _write(again, acts, k)
    again.finish()
    back = storage.load_activations(tmp_path / "s", verify=True)
    assert torch.equal(back.values, acts.values)
    assert torch.equal(back.labels, acts.labels)


def test_writer_recomputes_a_corrupt_shard(tmp_path: Path):
    acts = make_acts((3, 1, 4, 2))
    plan = plan_shards(acts.lengths.tolist(), 4)
    w = _writer(tmp_path / "s", acts, plan, {"x": 1})
    _write(w, acts, 0)
    _write(w, acts, 1)
    shard = tmp_path / "s" / "tokens" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    again = _writer(tmp_path / "s", acts, plan, {"x": 1})
    assert again.is_done(0) and not again.is_done(1)


def test_writer_refuses_a_different_capture(tmp_path: Path):
    acts = make_acts()
    plan = plan_shards(acts.lengths.tolist(), 4)
    _writer(tmp_path / "s", acts, plan, {"model_id": "a", "hooks": ["x"]})
    with pytest.raises(ValueError, match="differs in model_id"):
        _writer(tmp_path / "s", acts, plan, {"model_id": "b", "hooks": ["x"]})


def test_writer_refuses_a_non_empty_directory_without_manifest(tmp_path: Path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    acts = make_acts()
    with pytest.raises(FileExistsError, match="not empty"):
        _writer(tmp_path / "s", acts, plan_shards(acts.lengths.tolist(), 4), {"x": 1})


def test_no_pickle_files_in_a_store(tmp_path: Path):
    storage.save(make_acts(), tmp_path / "s")
    suffixes = {p.suffix for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors"}
    assert all(os.path.getsize(p) > 0 for p in (tmp_path / "s").rglob("*") if p.is_file())


def test_write_store_requires_same_sequences(tmp_path: Path):
    a, b = make_acts((3, 1)), make_acts((2, 2), hook="other")
    with pytest.raises(ValueError, match="same sequences"):
        storage.save({"a": a, "b": b}, tmp_path / "s")


@pytest.mark.parametrize("probe", ["attention", "mean"])
def test_protocol_on_bf16_activations_equals_the_float32_padded_tensor(probe):
    # Fits read bf16 captures a minibatch at a time; the result must be what converting the
    # whole capture to float32 up front gives.
    from lensprobe.train import TrainConfig

    lengths = [3 + (7 * i) % 11 for i in range(60)]
    acts = make_acts(lengths, dtype=torch.bfloat16, prepend_bos=False)
    acts = acts.with_labels(torch.arange(60) % 2)
    x, mask = acts.pad(dtype=torch.float32)
    kw = dict(probe=probe, seeds=(0,), weight_decays=(0.0, 0.1))
    if probe == "attention":
        kw["train"] = TrainConfig(max_steps=40, eval_every=10)
    from_store = lp.run_protocol(acts, **kw)
    from_tensor = lp.run_protocol(x, acts.labels, mask=mask, **kw)
    assert torch.equal(from_store.test_logits, from_tensor.test_logits)
    assert from_store.cv_table == from_tensor.cv_table


def test_selectors_lists_of_bools_and_reversed_numpy_orders():
    acts = make_acts((3, 1, 4, 2))
    picked = acts[[False, True, False, True]]
    assert len(picked) == 2 and picked.lengths.tolist() == [1, 2]
    assert acts[np.array([False, True, False, True])].lengths.tolist() == [1, 2]
    order = np.argsort(np.array([0.3, 0.9, 0.1, 0.5]))[::-1]  # negative strides
    assert acts[order].lengths.tolist() == [1, 2, 3, 4]
    x, _ = acts.pad(order)
    torch.testing.assert_close(x[0, 0], acts.sequence(1)[0])
    assert acts[[1, 0]].lengths.tolist() == [1, 3]  # plain ints stay positions


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_loaded_store_holds_no_file_per_shard(tmp_path):
    acts = make_acts(tuple(range(1, 41)))
    storage.save(acts, tmp_path / "s", shard_tokens=8)
    n_shards = len(list((tmp_path / "s").rglob("*.safetensors")))
    before = len(os.listdir("/proc/self/fd"))
    back = storage.load_activations(tmp_path / "s")
    assert n_shards > 30 and len(os.listdir("/proc/self/fd")) - before < 5
    torch.testing.assert_close(back.values, acts.values)
    back.values.add_(1.0)  # copy-on-write: the files keep the captured values
    torch.testing.assert_close(storage.load_activations(tmp_path / "s").values, acts.values)


def test_a_store_refuses_hooks_with_different_labels(tmp_path):
    a = make_acts((3, 1, 2))
    b = Activations(a.meta, a.values + 1, a.offsets, a.token_ids, torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match="labels of 'b' differ"):
        storage.save({"a": a, "b": b}, tmp_path / "s1")
    with pytest.raises(ValueError, match="labels of 'a' differ"):
        storage.save({"c": a.with_labels(None), "a": a}, tmp_path / "s2")
    storage.save({"a": a, "b": b.with_labels(a.labels)}, tmp_path / "s3")


def test_reads_across_many_shards_in_any_order(tmp_path):
    acts = make_acts(tuple(1 + (3 * i) % 5 for i in range(30)))
    storage.save(acts, tmp_path / "s", shard_tokens=6)
    back = storage.load_activations(tmp_path / "s")
    assert len(back._segments) > 10
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    for idx in (order, order[:7], torch.arange(30), torch.tensor([29, 0, 29])):
        assert torch.equal(back.pad(idx)[0], acts.pad(idx)[0])
        assert torch.equal(back[idx].values, acts[idx].values)
