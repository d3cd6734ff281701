"""Capture-time reduction (keep="last" / "pooled"): the full capture reduced afterwards, and the
probes the full capture trains."""

from __future__ import annotations

import random

import pytest
import torch
from test_streaming import _same

import lensprobe as lp
from lensprobe import storage
from lensprobe.capturing import capture
from lensprobe.errors import InputError, StoreError
from lensprobe.reduced import ReducedActivations, check_keep, reduce
from lensprobe.train import TrainConfig

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
WORDS = "the cat sat on mat a dog ran big red bird flew over green tree and then it house".split()
KW = dict(seeds=(0, 1), weight_decays=(0.0, 0.1), n_folds=3)
SHORT = TrainConfig(max_steps=20)


def _texts(n: int = 48, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts of 1 to 14 words; the label says whether "cat" is among them."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(1, 14))
        if i % 2:
            words[rng.randrange(len(words))] = "cat"
        else:
            words = [w for w in words if w != "cat"] or ["dog"]
        texts.append(" ".join(words))
        labels.append(int("cat" in words))
    return texts, labels


def _assert_same_reduced(a: ReducedActivations, b: ReducedActivations) -> None:
    assert isinstance(a, ReducedActivations) and isinstance(b, ReducedActivations)
    assert a.meta == b.meta
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.norms, b.norms)
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.token_ids, b.token_ids)
    assert torch.equal(a.labels, b.labels)
    assert a.texts == b.texts


@pytest.mark.parametrize("keep", ["last", "pooled"])
@pytest.mark.parametrize(
    ("model", "backend", "padding_side", "dtype", "shard_tokens"),
    [
        ("tiny_gemma3", "hf", "right", torch.bfloat16, None),  # BOS prepended
        ("tiny_gemma3", "nnsight", "left", torch.float32, 40),  # several shards
        ("tiny_gemma3", "transformer_lens", "right", torch.float32, None),
        ("tiny_gpt2", "hf", "left", torch.bfloat16, 40),  # no BOS
    ],
)
def test_a_reduced_capture_is_the_full_capture_reduced_afterwards(
    request, tmp_path, keep, model, backend, padding_side, dtype, shard_tokens
):
    lm = request.getfixturevalue(model)(backend)
    texts, labels = _texts()
    kw = dict(batch_size=5, padding_side=padding_side, dtype=dtype)
    # the same shards (so the same batches) with every token kept
    full_out = None if shard_tokens is None else tmp_path / "full"
    full = capture(lm, texts, HOOKS, labels, out=full_out, shard_tokens=shard_tokens, **kw)
    out = None if shard_tokens is None else tmp_path / "store"
    reduced = capture(lm, texts, HOOKS, labels, keep=keep, out=out, shard_tokens=shard_tokens, **kw)
    if out is not None:
        assert len(storage.load(out)[HOOKS[0]].lengths) == len(texts)
        hook_files = sorted((out / next(out.glob("blocks.1*")).name).glob("shard-*"))
        assert len(hook_files) > 1  # shard boundaries fall between batches
    afterwards = reduce(full, keep)
    for hook in HOOKS:
        _assert_same_reduced(reduced[hook], afterwards[hook])
        assert reduced[hook].meta.keep == keep
        # the last kind is the last stored token, exactly
        last = reduced[hook].features[:, reduced[hook].kinds.index("last")]
        ends = full[hook].offsets[1:] - 1
        assert torch.equal(last, full[hook].values[ends].float())


def test_a_reduced_store_round_trips_and_subsets(tiny_gemma3, tmp_path):
    texts, labels = _texts(20)
    red = capture(tiny_gemma3("hf"), texts, HOOKS, labels, keep="pooled")
    storage.save(red, tmp_path / "saved", shard_tokens=30)
    back = storage.load(tmp_path / "saved")
    for hook in HOOKS:
        _assert_same_reduced(back[hook], red[hook])
    a = red[HOOKS[0]]
    part = a[[3, 1, 4]]
    assert torch.equal(part.features, a.features[[3, 1, 4]])
    assert torch.equal(
        part.norms, torch.cat([a.norms[a.offsets[i] : a.offsets[i + 1]] for i in (3, 1, 4)])
    )
    _assert_same_reduced(lp.Activations.concat([a[:7], a[7:]]), a)
    with pytest.raises(InputError, match=r"meta\.keep differ"):
        lp.Activations.concat([a, capture(tiny_gemma3("hf"), texts, HOOKS[0], labels)[HOOKS[0]]])


PROBES = ["mean", "last", "max", "mean-adamw", "last-adamw"]


@pytest.mark.parametrize("probe", PROBES)
def test_probes_trained_on_a_reduced_capture_equal_those_of_the_full_capture(tiny_gemma3, probe):
    texts, labels = _texts(60, seed=1)
    lm = tiny_gemma3("hf")
    full = capture(lm, texts, HOOKS[1], labels)[HOOKS[1]]
    kind, _, optimizer = probe.partition("-")
    keep = "last" if kind == "last" else "pooled"
    reduced = capture(lm, texts, HOOKS[1], labels, keep=keep)[HOOKS[1]]
    kw = dict(KW, probe=kind, optimizer=optimizer or "auto", train=SHORT)
    _same(lp.run_protocol(reduced, **kw), lp.run_protocol(full, **kw))


def test_a_sweep_on_reduced_captures_equals_the_sweep_on_full_ones(tiny_gemma3):
    from lensprobe.train import ProtocolConfig
    from lensprobe.train.protocol import run_sweep

    texts, labels = _texts(60, seed=2)
    lm = tiny_gemma3("hf")
    full = capture(lm, texts, HOOKS, labels)
    reduced = capture(lm, texts, HOOKS, labels, keep="pooled")
    configs = [
        ProtocolConfig(probe=k, optimizer=o, train=SHORT, **KW)
        for k, o in (("max", "auto"), ("last", "adamw"))
    ]
    a, b = run_sweep(dict(reduced), configs), run_sweep(dict(full), configs)
    assert a.keys() == b.keys() and len(a) == 4
    for cell, result in a.items():
        _same(result, b[cell])


def test_what_a_reduced_capture_cannot_serve_is_a_named_error(tiny_gemma3):
    from lensprobe.train import ProtocolConfig
    from lensprobe.train.protocol import run_sweep

    texts, labels = _texts(40)
    lm = tiny_gemma3("hf")
    last = capture(lm, texts, HOOKS, labels, keep="last")
    pooled = capture(lm, texts, HOOKS, labels, keep="pooled")
    acts = pooled[HOOKS[0]]
    with pytest.raises(InputError, match=r"keep='pooled'.*the attention probe.*keep='tokens'"):
        lp.run_protocol(acts, probe="attention", train=SHORT, **KW)
    with pytest.raises(InputError, match=r"keep='last'.*the mean probe.*keep='tokens'"):
        lp.run_protocol(last[HOOKS[0]], probe="mean", **KW)
    with pytest.raises(InputError, match=r"pooled without BOS.*bos='auto'"):
        lp.run_protocol(acts, probe="max", bos="keep", **KW)
    lp.run_protocol(last[HOOKS[0]], probe="last", bos="keep", **KW)  # the last token either way
    for read in (lambda: acts.values, lambda: acts.pad(), lambda: acts.sequence(0)):
        with pytest.raises(InputError, match="keep='tokens'"):
            read()
    configs = [ProtocolConfig(probe=k, train=SHORT, **KW) for k in ("mean", "attention")]
    seen = []
    with pytest.raises(InputError, match="attention probe"):  # refused before any cell trains
        run_sweep(dict(pooled), configs, on_result=lambda *cell: seen.append(cell))
    assert seen == []
    with pytest.raises(InputError, match="already reduced"):
        reduce(acts, "last")
    with pytest.raises(InputError, match="keep must be one of"):
        check_keep("mean")  # what capture and the CLI check first


def test_a_store_is_resumed_only_with_the_same_keep(tiny_gemma3, tmp_path):
    texts, labels = _texts(20)
    lm = tiny_gemma3("hf")
    capture(lm, texts, HOOKS, labels, keep="last", out=tmp_path / "s")
    capture(lm, texts, HOOKS, labels, keep="last", out=tmp_path / "s")  # finished: reread
    with pytest.raises(StoreError, match="keep"):
        capture(lm, texts, HOOKS, labels, keep="tokens", out=tmp_path / "s")


def test_the_command_line_captures_a_reduced_store_and_trains_pooled_probes_on_it(
    tiny_gemma3_dir, tmp_path, capsys
):
    from lensprobe.cli import main

    store = tmp_path / "store"
    args = ["capture", "--model", str(tiny_gemma3_dir), "--backend", "hf", "--dataset", "topics"]
    args += ["--n", "40", "--layers", "1,2", "--keep", "pooled", "--out", str(store)]
    assert main(args) == 0
    (acts, _) = storage.load(store).values()
    assert isinstance(acts, ReducedActivations) and len(acts) == 40
    train = ["train", "--acts", str(store), "--max-steps", "10"]
    assert main([*train, "--probes", "mean,last-adamw", "--out", str(tmp_path / "ok")]) == 0
    report = next((tmp_path / "ok").glob("report-*.html")).read_text()
    assert "kept pooled vectors only" in report
    capsys.readouterr()
    assert main([*train, "--probes", "attention-2", "--out", str(tmp_path / "no")]) == 1
    assert "keep='pooled'" in capsys.readouterr().err
    assert main([*args[:-4], "--keep", "some", "--out", str(tmp_path / "x")]) == 2  # parser
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_real_model_reduced_at_capture_trains_the_probes_of_its_full_capture(
    gemma_hf, fixture_data_dir, tmp_path
):
    import csv

    rows = list(csv.DictReader(open(fixture_data_dir / "sst2" / "92_glue_sst2.csv")))[:60]
    texts, labels = [r["prompt"] for r in rows], [int(r["target"]) for r in rows]
    hook = "blocks.9.hook_resid_post"  # Gemma's BOS residual dwarfs the others here
    full = capture(gemma_hf, texts, hook, labels, out=tmp_path / "full")
    reduced = capture(gemma_hf, texts, hook, labels, keep="pooled", out=tmp_path / "pooled")
    _assert_same_reduced(reduced[hook], reduce(full, "pooled")[hook])
    size = {
        d: sum(f.stat().st_size for f in (tmp_path / d / hook).iterdir())
        for d in ("full", "pooled")
    }
    assert size["pooled"] * 2 < size["full"]  # 3 float32 vectors + a norm per token vs every token
    for probe in ("mean", "last"):
        kw = dict(KW, probe=probe, train=SHORT)
        _same(lp.run_protocol(reduced[hook], **kw), lp.run_protocol(full[hook], **kw))


def test_a_non_finite_reduced_vector_is_named_before_training(tiny_gemma3):
    texts, labels = _texts(30)
    acts = capture(tiny_gemma3("hf"), texts, HOOKS[0], labels, keep="pooled")[HOOKS[0]]
    bad = acts.features.clone()
    bad[7, 0, 3] = float("nan")
    broken = ReducedActivations(
        acts.meta, bad, acts.norms, acts.lengths, acts.token_ids, acts.labels
    )
    with pytest.raises(InputError, match=r"sequence 7 .*non-finite pooled vector"):
        lp.run_protocol(broken, probe="mean", **KW)
    norms = acts.norms.clone()
    norms[int(acts.offsets[12]) + 1] = float("inf")
    broken = ReducedActivations(
        acts.meta, acts.features, norms, acts.lengths, acts.token_ids, acts.labels
    )
    with pytest.raises(InputError, match=r"sequence 12 .*non-finite token norm"):
        lp.run_protocol(broken, probe="last", **KW)
