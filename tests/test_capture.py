"""capture(): the three backends, padding, BOS, truncation, errors, the resumable store."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lensprobe import storage
from lensprobe.activations import Activations
from lensprobe.backends import detect_backend
from lensprobe.backends.names import TABLES, UnknownHookError, resolve_sites
from lensprobe.batching import collate, length_batches, tokenize
from lensprobe.capturing import capture
from lensprobe.storage import StoreWriter

BACKENDS = ["hf", "nnsight", "transformer_lens"]

GEMMA_HOOKS = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.2.hook_resid_post",
    "ln_final.hook_normalized",
]


def hf_module(model):
    """The Hugging Face module under any backend's model."""
    if detect_backend(model) == "nnsight":
        return model._module
    if detect_backend(model) == "transformer_lens":
        return model.original_model
    return model


def reference_hidden_states(hf, tokenizer, text: str, *, prepend_bos: bool) -> tuple:
    """Unbatched hidden states of one text from a plain forward (the independent reference)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        ids = [tokenizer.bos_token_id, *ids]
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return tuple(h[0] for h in out.hidden_states)


# -- agreement between backends ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_three_backends_give_the_same_numbers(family, tiny_gemma3, tiny_gpt2, tiny_texts):
    load = tiny_gemma3 if family == "gemma3" else tiny_gpt2
    hooks = [*GEMMA_HOOKS, "blocks.1.hook_resid_post"]
    if family == "gpt2":
        hooks.append("hook_pos_embed")
    labels = [i % 3 for i in range(len(tiny_texts))]
    # explicit BOS: TransformerLens's own tokenizer copy prepends BOS for GPT-2 by default
    kw = {"batch_size": 3, "dtype": torch.float32, "prepend_bos": True, "progress": False}
    results = {b: capture(load(b), tiny_texts, hooks, labels, **kw) for b in BACKENDS}
    ref = results["hf"]
    for backend in ("nnsight", "transformer_lens"):
        res = results[backend]
        assert list(res) == hooks
        for hook in hooks:
            torch.testing.assert_close(res[hook].values, ref[hook].values, rtol=1e-5, atol=1e-5)
            assert torch.equal(res[hook].token_ids, ref[hook].token_ids)
            assert res[hook].meta.backend == backend
    # the numbers are the model's own: block outputs equal a plain unbatched forward's hidden states
    hf = load("hf")
    acts = ref["blocks.1.hook_resid_post"]
    for i, text in enumerate(tiny_texts):
        hs = reference_hidden_states(hf, hf.tokenizer, text, prepend_bos=acts.meta.prepend_bos)
        torch.testing.assert_close(acts.sequence(i), hs[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch",
    ["LlamaForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM"],
)
def test_name_tables_match_transformer_lens(arch, tmp_path, tiny_texts):
    """Each family's table reads where TransformerLens's bridge reads, for every table name."""
    import transformers
    from conftest import _word_tokenizer, tiny_vocab_size

    from lensprobe.models import load_model

    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    config = config_cls(
        vocab_size=tiny_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config.architectures = [arch]
    torch.manual_seed(0)
    getattr(transformers, arch)(config).save_pretrained(tmp_path)
    _word_tokenizer(tmp_path, add_bos=True)
    hf = load_model(str(tmp_path), backend="hf", dtype="float32")
    table = next(t for t in TABLES if hf.config.model_type in t.model_types)
    hooks = [p.format(layer=1) for p in table.sites]
    assert set(resolve_sites(hf, hooks)) == set(hooks)
    ours = capture(hf, tiny_texts, hooks, dtype=torch.float32, progress=False)
    tl = capture(
        load_model(str(tmp_path), backend="transformer_lens", dtype="float32"),
        tiny_texts,
        hooks,
        dtype=torch.float32,
        progress=False,
    )
    for hook in hooks:
        torch.testing.assert_close(ours[hook].values, tl[hook].values, rtol=1e-5, atol=1e-5)


def test_nnsight_transformers_model_wrapper(tiny_gemma3_dir, tiny_texts):
    from nnsight import TransformersModel
    from transformers import AutoTokenizer

    from lensprobe.models import load_model

    wrapped = TransformersModel(
        str(tiny_gemma3_dir),
        task="text-generation",
        tokenizer=AutoTokenizer.from_pretrained(tiny_gemma3_dir),
    )
    hooks = ["blocks.1.hook_resid_post", "model.layers.2"]
    got = capture(wrapped, tiny_texts, hooks, dtype=torch.float32, progress=False)
    want = capture(
        load_model(str(tiny_gemma3_dir), backend="hf", dtype="float32"),
        tiny_texts,
        hooks,
        dtype=torch.float32,
        progress=False,
    )
    for hook in hooks:
        torch.testing.assert_close(got[hook].values, want[hook].values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["hf", "nnsight"])
def test_module_paths_read_module_outputs(backend, tiny_gemma3, tiny_texts):
    res = capture(
        tiny_gemma3(backend),
        tiny_texts,
        ["model.layers.1", "blocks.1.hook_resid_post", "model.layers.1.mlp"],
        dtype=torch.float32,
        progress=False,
    )
    assert torch.equal(res["model.layers.1"].values, res["blocks.1.hook_resid_post"].values)
    assert not torch.equal(res["model.layers.1.mlp"].values, res["model.layers.1"].values)


# -- padding, positions, BOS, truncation ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_and_right_padding_agree_with_unbatched(backend, tiny_gemma3, tiny_texts):
    # sliding_window=4 in the tiny Gemma 3: longer texts exercise the sliding mask with padding
    model = tiny_gemma3(backend)
    hooks = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    kw = {"dtype": torch.float32, "progress": False}
    right = capture(model, tiny_texts, hooks, batch_size=4, padding_side="right", **kw)
    left = capture(model, tiny_texts, hooks, batch_size=4, padding_side="left", **kw)
    alone = capture(model, tiny_texts, hooks, batch_size=1, **kw)
    for hook in hooks:
        assert right[hook].meta.padding_side == "right" and left[hook].meta.padding_side == "left"
        assert not torch.isnan(left[hook].values).any()
        torch.testing.assert_close(left[hook].values, right[hook].values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone[hook].values, right[hook].values, rtol=1e-5, atol=1e-5)


def test_collate_positions_count_from_first_valid_token():
    ids = [[5, 6, 7], [8]]
    right = collate(ids, [0, 1], pad_id=0, padding_side="right")
    left = collate(ids, [0, 1], pad_id=0, padding_side="left")
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert right.position_ids[right.attention_mask.bool()].tolist() == [0, 1, 2, 0]
    assert left.position_ids[left.attention_mask.bool()].tolist() == [0, 1, 2, 0]


def test_bos_follows_the_tokenizer_and_is_recorded(tiny_gemma3, tiny_gpt2, tiny_texts):
    gemma, gpt2 = tiny_gemma3("hf"), tiny_gpt2("hf")
    bos = gemma.tokenizer.bos_token_id
    with_bos = capture(gemma, tiny_texts, "blocks.0.hook_resid_post", progress=False)
    acts = with_bos["blocks.0.hook_resid_post"]
    assert acts.meta.prepend_bos is True
    assert all(acts.token_ids[int(o)] == bos for o in acts.offsets[:-1])
    assert acts.token_strs[0][0] == "<bos>"
    without = capture(
        gemma, tiny_texts, "blocks.0.hook_resid_post", prepend_bos=False, progress=False
    )
    plain = without["blocks.0.hook_resid_post"]
    assert plain.meta.prepend_bos is False
    assert (acts.lengths - plain.lengths).tolist() == [1] * len(tiny_texts)
    assert plain.token_ids.tolist() == [
        t
        for text in tiny_texts
        for t in gemma.tokenizer(text, add_special_tokens=False)["input_ids"]
    ]
    g = capture(gpt2, tiny_texts, "blocks.0.hook_resid_post", progress=False)[
        "blocks.0.hook_resid_post"
    ]
    assert g.meta.prepend_bos is False  # GPT-2's tokenizer adds no BOS by default
    g_bos = capture(gpt2, tiny_texts, "blocks.0.hook_resid_post", prepend_bos=True, progress=False)
    assert g_bos["blocks.0.hook_resid_post"].token_ids[0] == gpt2.tokenizer.bos_token_id
    # TransformerLens's tokenizer prepends BOS (its default_prepend_bos); the default follows it
    g_tl = capture(
        tiny_gpt2("transformer_lens"), tiny_texts, "blocks.0.hook_resid_post", progress=False
    )
    assert g_tl["blocks.0.hook_resid_post"].meta.prepend_bos is True


def test_truncation_is_counted_and_reported(tiny_gemma3, tiny_texts, caplog):
    model = tiny_gemma3("hf")
    longer = sum(len(model.tokenizer(t)["input_ids"]) > 5 for t in tiny_texts)
    assert 0 < longer < len(tiny_texts)
    with caplog.at_level(logging.WARNING, logger="lensprobe"):
        res = capture(model, tiny_texts, "blocks.0.hook_resid_post", max_length=5, progress=False)
    acts = res["blocks.0.hook_resid_post"]
    assert acts.meta.n_truncated == longer == res.stats.n_truncated
    assert acts.meta.max_length == 5
    assert int(acts.lengths.max()) == 5
    assert f"{longer} of {len(tiny_texts)} texts" in caplog.text


def test_length_batches_keep_padding_small():
    lengths = [50 + (i * 37) % 40 for i in range(200)] + [400, 380]
    batches = length_batches(lengths, 16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 16 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.05
    assert max(lengths[i] for i in batches[0]) == 400  # longest first


def test_stats_report_padding_and_throughput(tiny_gemma3, tiny_texts):
    res = capture(
        tiny_gemma3("hf"), tiny_texts * 4, "blocks.0.hook_resid_post", batch_size=5, progress=False
    )
    s = res.stats
    assert s.n_sequences == 4 * len(tiny_texts)
    assert s.n_tokens == s.n_tokens_run == res["blocks.0.hook_resid_post"].n_tokens
    assert s.n_padded_tokens >= s.n_tokens
    assert 0 <= s.padding_waste < 0.5 and s.tokens_per_second > 0
    text = str(s)
    assert f"{s.n_tokens:,} tokens" in text and f"{s.padding_waste:.1%} padding" in text
    assert "resumed" not in text


def test_stats_text_counts_resumed_tokens():
    from lensprobe.activations import CaptureStats

    s = CaptureStats(
        n_sequences=3,
        n_tokens=1200,
        n_tokens_run=200,
        n_padded_tokens=250,
        n_truncated=1,
        seconds=2.0,
    )
    assert str(s) == (
        "3 sequences, 1,200 tokens, 20.0% padding, 1 truncated, 2.0 s (100 tokens/s), "
        "1,000 tokens resumed from disk"
    )


# -- what capture does to the model and the inputs -----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_stops_after_the_deepest_hook(backend, tiny_gemma3, tiny_texts):
    model = tiny_gemma3(backend)
    hf = hf_module(model)
    calls = {"layer0": 0, "layer3": 0, "norm": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1

        return hook

    handles = [
        hf.model.layers[0].register_forward_pre_hook(count("layer0")),
        hf.model.layers[3].register_forward_pre_hook(count("layer3")),
        hf.model.norm.register_forward_pre_hook(count("norm")),
    ]
    try:
        hooks = ["blocks.2.hook_resid_post", "blocks.1.hook_attn_out"]
        capture(model, tiny_texts, hooks, progress=False)
        assert calls["layer0"] > 0 and calls["layer3"] == calls["norm"] == 0
        calls.update(layer0=0)
        capture(model, tiny_texts, "ln_final.hook_normalized", progress=False)
        assert calls["layer0"] == calls["layer3"] == calls["norm"] > 0
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_are_removed_and_mode_restored_even_on_error(backend, tiny_gemma3, tiny_texts):
    model = tiny_gemma3(backend)
    hf = hf_module(model)

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())

    # TransformerLens installs a few permanent hooks of its own on the first forward
    # (on each layer the forward reaches)
    capture(model, tiny_texts[:1], "ln_final.hook_normalized", progress=False)
    before = n_hooks()
    model.train()
    hf.train()
    modes = [m.training for m in hf.modules()]
    assert all(modes)
    capture(model, tiny_texts, "blocks.1.hook_resid_post", progress=False)
    assert n_hooks() == before
    assert [m.training for m in hf.modules()] == modes
    model.eval()

    def boom(*_):
        raise RuntimeError("boom")

    handle = hf.model.layers[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            capture(model, tiny_texts, "blocks.1.hook_resid_post", progress=False)
    finally:
        handle.remove()
    assert n_hooks() == before


def test_inputs_are_not_mutated(tiny_gemma3, tiny_texts):
    texts = list(tiny_texts)
    labels = torch.arange(len(texts))
    res = capture(tiny_gemma3("hf"), texts, "blocks.0.hook_resid_post", labels, progress=False)
    assert texts == tiny_texts and torch.equal(labels, torch.arange(len(texts)))
    acts = res["blocks.0.hook_resid_post"]
    assert acts.texts == texts and acts.texts is not texts
    assert torch.equal(acts.labels, labels)


def test_default_storage_is_bf16_and_hooks_share_tokens(tiny_gemma3, tiny_texts):
    res = capture(
        tiny_gemma3("hf"),
        tiny_texts,
        ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
        progress=False,
    )
    a, b = res.values()
    assert a.values.dtype == torch.bfloat16 and a.meta.dtype == "bfloat16"
    assert a.token_ids is b.token_ids
    assert len(a.token_strs) == len(tiny_texts)
    assert a.token_strs[0] == ["<bos>", *tiny_texts[0].split()]


# -- labels and errors ---------------------------------------------------------------------------


def test_string_labels_become_class_ids(tiny_gemma3, tiny_texts):
    names = ["pos" if i % 2 else "neg" for i in range(len(tiny_texts))]
    acts = capture(
        tiny_gemma3("hf"), tiny_texts, "blocks.0.hook_resid_post", names, progress=False
    )["blocks.0.hook_resid_post"]
    assert acts.class_names == ("neg", "pos")
    assert acts.labels.tolist() == [i % 2 for i in range(len(tiny_texts))]
    given = capture(
        tiny_gemma3("hf"),
        tiny_texts,
        "blocks.0.hook_resid_post",
        names,
        class_names=["pos", "neg"],
        progress=False,
    )["blocks.0.hook_resid_post"]
    assert given.labels.tolist() == [1 - i % 2 for i in range(len(tiny_texts))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_hook_lists_nearest_names(backend, tiny_gemma3, tiny_texts):
    model = tiny_gemma3(backend)
    with pytest.raises(UnknownHookError, match=r"blocks\.1\.hook_resid_post") as err:
        capture(model, tiny_texts, "blocks.1.hook_resid_pots", progress=False)
    assert "blocks.1.hook_resid_pots" in str(err.value)
    with pytest.raises(UnknownHookError):
        capture(model, tiny_texts, "blocks.9.hook_resid_post", progress=False)  # only 4 layers


def test_input_errors_name_the_fix(tiny_gemma3, tiny_texts):
    model = tiny_gemma3("hf")
    with pytest.raises(ValueError, match="texts is empty"):
        capture(model, [], "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="one label per text"):
        capture(model, tiny_texts, "blocks.0.hook_resid_post", labels=[0, 1])
    with pytest.raises(TypeError, match="list of strings"):
        capture(model, "one text", "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="hooks is empty"):
        capture(model, tiny_texts, [])
    with pytest.raises(ValueError, match="empty"):
        capture(model, ["", "cat"], "blocks.0.hook_resid_post", prepend_bos=False, progress=False)
    with pytest.raises(TypeError, match="load_model"):
        capture(torch.nn.Linear(3, 3), tiny_texts, "blocks.0.hook_resid_post")
    bare = tiny_gemma3("hf")
    del bare.tokenizer
    with pytest.raises(ValueError, match="tokenizer="):
        capture(bare, tiny_texts, "blocks.0.hook_resid_post")


def test_explicit_tokenizer_for_a_bare_model(tiny_gemma3_dir, tiny_texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bare = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir)
    tok = AutoTokenizer.from_pretrained(tiny_gemma3_dir)
    res = capture(bare, tiny_texts, "blocks.1.hook_resid_post", tokenizer=tok, progress=False)
    assert len(res["blocks.1.hook_resid_post"]) == len(tiny_texts)


def test_tokenize_matches_the_tokenizer(tiny_gemma3):
    tok = tiny_gemma3("hf").tokenizer
    texts = ["the cat sat", "a dog"]
    out = tokenize(tok, texts, max_length=None)
    assert out.ids == [tok(t)["input_ids"] for t in texts]
    assert out.prepend_bos is True and out.n_truncated == 0


# -- the on-disk store ---------------------------------------------------------------------------


def _count_layer0(model):
    hf = hf_module(model)
    calls = {"rows": 0}

    def hook(_mod, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        calls["rows"] += x.shape[0]

    return calls, hf.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("backend", ["hf", "transformer_lens"])
def test_out_store_matches_memory_and_reruns_compute_nothing(
    backend, tiny_gemma3, tiny_texts, tmp_path
):
    model = tiny_gemma3(backend)
    texts = tiny_texts * 3
    labels = [i % 2 for i in range(len(texts))]
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"]
    kw = {"dtype": torch.float32, "progress": False, "batch_size": 4}
    mem = capture(model, texts, hooks, labels, **kw)
    disk = capture(model, texts, hooks, labels, out=tmp_path / "s", shard_tokens=20, **kw)
    assert disk.path == str(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) > 3
    assert (tmp_path / "s" / "blocks.1.hook_resid_post").is_dir()
    for hook in hooks:
        assert disk[hook].meta == mem[hook].meta
        torch.testing.assert_close(disk[hook].values, mem[hook].values, rtol=1e-5, atol=1e-5)
        assert torch.equal(disk[hook].labels, mem[hook].labels)
        assert disk[hook].texts == texts and disk[hook].token_strs == mem[hook].token_strs
    calls, handle = _count_layer0(model)
    try:
        again = capture(model, texts, hooks, labels, out=tmp_path / "s", shard_tokens=20, **kw)
    finally:
        handle.remove()
    assert calls["rows"] == 0 and again.stats.n_tokens_run == 0
    assert torch.equal(again[hooks[0]].values, disk[hooks[0]].values)
    with pytest.raises(ValueError, match="differs in hooks"):
        capture(model, texts, hooks[:1], labels, out=tmp_path / "s", shard_tokens=20, **kw)
    assert isinstance(storage.load(tmp_path / "s")[hooks[1]], Activations)


def test_interrupted_capture_resumes_without_recomputing(
    tiny_gemma3, tiny_texts, tmp_path, monkeypatch
):
    model = tiny_gemma3("hf")
    texts = tiny_texts * 3
    kw = {"dtype": torch.float32, "progress": False, "batch_size": 2, "shard_tokens": 25}
    original = StoreWriter.write_shard
    written = []

    def flaky(self, k, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # as if killed after two shards
        original(self, k, **kwargs)
        written.append((k, int(kwargs["lengths"].numel())))

    monkeypatch.setattr(StoreWriter, "write_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture(model, texts, "blocks.1.hook_resid_post", out=tmp_path / "s", **kw)
    monkeypatch.setattr(StoreWriter, "write_shard", original)
    with pytest.raises(ValueError, match="incomplete"):
        storage.load_activations(tmp_path / "s")
    calls, handle = _count_layer0(model)
    try:
        res = capture(model, texts, "blocks.1.hook_resid_post", out=tmp_path / "s", **kw)
    finally:
        handle.remove()
    done = sum(n for _, n in written)
    assert calls["rows"] == len(texts) - done
    want = capture(model, texts, "blocks.1.hook_resid_post", **kw)
    torch.testing.assert_close(
        res["blocks.1.hook_resid_post"].values,
        want["blocks.1.hook_resid_post"].values,
        rtol=1e-5,
        atol=1e-5,
    )


CHILD = """
import sys, time, torch
from lensprobe.capturing import capture
from lensprobe.models import load_model
model = load_model(sys.argv[1], backend="hf", dtype="float32")
model.model.layers[0].register_forward_pre_hook(lambda *a: time.sleep(0.25))
texts = [line for line in sys.argv[3].split("|")]
capture(model, texts, "blocks.1.hook_resid_post", out=sys.argv[2], dtype=torch.float32,
        batch_size=1, shard_tokens=6, progress=False)
"""


def test_killed_capture_resumes(tiny_gemma3_dir, tiny_gemma3, tiny_texts, tmp_path):
    """SIGKILL a capture midway; the rerun keeps the finished shards and computes the rest."""
    out = tmp_path / "s"
    texts = tiny_texts * 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tiny_gemma3_dir), str(out), "|".join(texts)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = out / "manifest.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if manifest.exists():
                state = json.loads(manifest.read_text())
                if len(state["shards"]) >= 2:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the child capture wrote no shards in time")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    state = json.loads(manifest.read_text())
    assert not state["complete"]
    done = {int(k) for k in state["shards"]}
    plan = state["plan"]
    kept_rows = sum(plan[k][1] - plan[k][0] for k in done)
    model = tiny_gemma3("hf")
    calls, handle = _count_layer0(model)
    try:
        res = capture(
            model,
            texts,
            "blocks.1.hook_resid_post",
            out=out,
            dtype=torch.float32,
            batch_size=1,
            shard_tokens=6,
            progress=False,
        )
    finally:
        handle.remove()
    assert calls["rows"] == len(texts) - kept_rows
    want = capture(model, texts, "blocks.1.hook_resid_post", dtype=torch.float32, progress=False)
    torch.testing.assert_close(
        res["blocks.1.hook_resid_post"].values,
        want["blocks.1.hook_resid_post"].values,
        rtol=1e-5,
        atol=1e-5,
    )
    assert not list(out.rglob("*.tmp-*"))


# -- the real Gemma 3 270M -----------------------------------------------------------------------

REAL_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Stocks rallied on Tuesday after the central bank held rates steady.",
    "Hi",
    "A second team of rocketeers announced the first launch date for its manned rocket, "
    "a contest for privately funded suborbital space flight.",
]


@pytest.mark.slow
def test_real_gemma_backends_agree_and_match_hidden_states(gemma_hf, gemma_nnsight, gemma_tl):
    hooks = ["blocks.5.hook_resid_post", "blocks.5.hook_attn_out"]
    kw = {"dtype": torch.float32, "progress": False, "batch_size": 4}
    res = {
        b: capture(m, REAL_TEXTS, hooks, **kw)
        for b, m in (("hf", gemma_hf), ("nnsight", gemma_nnsight), ("transformer_lens", gemma_tl))
    }
    for hook in hooks:
        ref = res["hf"][hook].values
        scale = ref.abs().max().item()
        for backend in ("nnsight", "transformer_lens"):
            torch.testing.assert_close(res[backend][hook].values, ref, rtol=1e-4, atol=1e-5 * scale)
    acts = res["hf"]["blocks.5.hook_resid_post"]
    assert acts.meta.model_id == "gemma-3-270m" and acts.meta.d_model == 640
    assert acts.meta.prepend_bos is True
    tok = gemma_hf.tokenizer
    assert acts.token_ids.tolist() == [t for text in REAL_TEXTS for t in tok(text)["input_ids"]]
    # gemma_hf is an unwrapped model (nnsight and TL wrap their own copies in place)
    for i, text in enumerate(REAL_TEXTS):
        hs = reference_hidden_states(gemma_hf, tok, text, prepend_bos=True)
        torch.testing.assert_close(acts.sequence(i), hs[6], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow
def test_real_gemma_left_right_padding(gemma_tl):
    kw = {"dtype": torch.float32, "progress": False, "batch_size": 4}
    right = capture(gemma_tl, REAL_TEXTS, "blocks.3.hook_resid_post", padding_side="right", **kw)
    left = capture(gemma_tl, REAL_TEXTS, "blocks.3.hook_resid_post", padding_side="left", **kw)
    r = right["blocks.3.hook_resid_post"].values
    l_ = left["blocks.3.hook_resid_post"].values
    torch.testing.assert_close(l_, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def test_any_hooked_root_module(tiny_gemma3):
    """A hand-written TransformerLens HookedRootModule works through its hook_dict."""
    from transformer_lens import HookedRootModule
    from transformer_lens.hook_points import HookPoint

    class Toy(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(40, 8)
            self.mix = torch.nn.Linear(8, 8)
            self.hook_embed = HookPoint()
            self.hook_mixed = HookPoint()
            self.setup()

        def forward(self, input_ids, attention_mask=None):
            x = self.hook_embed(self.embed(input_ids))
            return self.hook_mixed(torch.tanh(self.mix(x)))

    toy = Toy()
    tok = tiny_gemma3("hf").tokenizer
    texts = ["the cat sat", "a dog ran quickly on the mat"]
    res = capture(
        toy, texts, ["hook_embed", "hook_mixed"], tokenizer=tok, dtype=torch.float32, progress=False
    )
    assert res["hook_embed"].meta.backend == "transformer_lens"
    ids = torch.tensor(tok(texts[1])["input_ids"])
    with torch.no_grad():
        want = torch.tanh(toy.mix(toy.embed(ids)))
    torch.testing.assert_close(res["hook_mixed"].sequence(1), want)
    with pytest.raises(UnknownHookError, match="hook_mixed"):
        capture(toy, texts, "hook_mixd", tokenizer=tok, progress=False)


def test_default_shard_size_resumes_a_store_started_with_another(tiny_gemma3, tiny_texts, tmp_path):
    """A store begun with an explicit (or an older default) shard size resumes with the default."""
    model = tiny_gemma3("hf")
    kw = {"dtype": torch.float32, "progress": False}
    first = capture(
        model, tiny_texts, "blocks.1.hook_resid_post", out=tmp_path / "s", shard_tokens=9, **kw
    )
    again = capture(model, tiny_texts, "blocks.1.hook_resid_post", out=tmp_path / "s", **kw)
    assert again.stats.n_tokens_run == 0
    assert torch.equal(
        again["blocks.1.hook_resid_post"].values, first["blocks.1.hook_resid_post"].values
    )
