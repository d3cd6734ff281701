"""Ragged (store-backed) activations are streamed, never padded whole: the padded path's result."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_analysis import make_acts

import lensprobe as lp
from lensprobe.activations import Activations
from lensprobe.errors import InputError
from lensprobe.probes.spec import ProbeSpec
from lensprobe.storage import load_activations, save
from lensprobe.train import TrainConfig
from lensprobe.train.streaming import CHUNK

KW = dict(seeds=(0, 1), weight_decays=(0.0, 0.1), n_folds=3)
SHORT = TrainConfig(max_steps=30)


def _acts(dtype: torch.dtype, n: int = 60, seed: int = 3) -> Activations:
    base = make_acts(n=n, d=8, max_len=12, seed=seed)
    meta = dataclasses.replace(base.meta, dtype=str(dtype).removeprefix("torch."))
    return Activations(meta, base.values.to(dtype), base.offsets, base.token_ids, base.labels)


def _same(streamed: lp.ProtocolResult, padded: lp.ProtocolResult) -> None:
    for a, b in zip(streamed.runs, padded.runs, strict=True):
        assert torch.equal(a.test_logits, b.test_logits)
        assert torch.equal(a.cv_logits, b.cv_logits)
        assert a.input_scale == b.input_scale and a.weight_decay == b.weight_decay
        assert a.probe.config.exclude_bos == b.probe.config.exclude_bos
        for k, w in b.probe.state_dict().items():
            assert torch.equal(a.probe.state_dict()[k], w), k


PROBES = [
    "mean",
    "last",
    "max",
    "mean-adamw",
    "last-adamw",
    "attention-1",
    "attention-2",
    "ema:halflife=3",
    "multimax-2",
    "rolling-2:window=3",
]


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("bos", ["keep", "drop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shards", [None, 37])  # in memory; a store of many small shards
def test_streamed_probes_equal_the_padded_path(tmp_path, probe, bos, dtype, shards):
    acts = _acts(dtype)
    if shards is not None:  # shard boundaries fall inside every block and minibatch read
        save(acts, tmp_path / "store", shard_tokens=shards)
        acts = load_activations(tmp_path / "store")
    spec = ProbeSpec.parse(probe)
    kw = dict(
        KW,
        probe=spec.kind,
        n_heads=spec.n_heads,
        optimizer=spec.optimizer,
        options=dict(spec.options),
        bos=bos,
        train=SHORT,
    )
    streamed = lp.run_protocol(acts, **kw)
    x, mask = acts.pad(dtype=dtype)
    padded = lp.run_protocol(x, acts.labels, mask=mask, **kw)
    _same(streamed, padded)
    # the refit probe reads raw activations as captured: its forward gives the test logits
    run = streamed.runs[0]
    xt, mt = acts.pad(run.test_rows)
    with torch.no_grad():
        logits = run.probe(xt.float(), mt)
    assert torch.allclose(logits.double(), run.test_logits.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("probe", ["mean", "attention"])
def test_the_stream_never_pads_more_than_a_block_of_rows(monkeypatch, probe):
    acts = _acts(torch.float32, n=CHUNK * 2 + 17)
    sizes = []
    real = Activations.pad

    def pad(self, idx=None, **kw):
        sizes.append(len(self) if idx is None else len(idx))
        return real(self, idx, **kw)

    monkeypatch.setattr(Activations, "pad", pad)
    kw = dict(KW, probe=probe, train=TrainConfig(max_steps=20, batch_size=16))
    result = lp.run_protocol(acts, **kw)
    # blocks of rows for the norms and pooling; minibatches and scoring batches for attention
    assert max(sizes) <= CHUNK and result.runs[0].test_logits.shape[0] > 0
    if probe == "attention":
        assert 16 in sizes  # the AdamW minibatches are padded from the storage one by one
    monkeypatch.setattr(Activations, "pad", real)
    x, mask = acts.pad()
    _same(result, lp.run_protocol(x, acts.labels, mask=mask, **kw))


def test_a_nonfinite_token_is_named_while_streaming():
    acts = _acts(torch.float32)
    values = acts.values.clone()
    row = 41
    values[int(acts.offsets[row]) + 1, 2] = float("nan")
    bad = Activations(acts.meta, values, acts.offsets, acts.token_ids, acts.labels)
    with pytest.raises(InputError, match=rf"NaN or inf at 1 valid token.*\(row {row}, pos 1\)"):
        lp.run_protocol(bad, probe="mean", **KW)


@pytest.mark.parametrize("probe", ["mean", "last", "max"])
def test_streamed_equals_a_left_padded_tensor(probe):
    acts = _acts(torch.float32)
    streamed = lp.run_protocol(acts, probe=probe, bos="drop", **KW)
    x, mask = acts.pad(padding_side="left")
    left = lp.run_protocol(x, acts.labels, mask=mask, probe=probe, bos="drop", **KW)
    for a, b in zip(streamed.runs, left.runs, strict=True):
        assert a.weight_decay == b.weight_decay and a.input_scale == pytest.approx(b.input_scale)
        assert torch.allclose(a.test_logits, b.test_logits, rtol=1e-5, atol=1e-5)


def test_one_class_is_refused_before_streaming(monkeypatch):
    import lensprobe.train.protocol as protocol

    base = _acts(torch.float32)
    one = Activations(base.meta, base.values, base.offsets, base.token_ids, base.labels * 0)
    monkeypatch.setattr(protocol, "stream_inputs", lambda *a: pytest.fail("streamed"))
    with pytest.raises(InputError, match="a probe needs at least two classes"):
        lp.run_protocol(one, probe="mean", **KW)


def test_streaming_hands_freed_memory_back(monkeypatch):
    import lensprobe.train.members as members
    import lensprobe.train.streaming as streaming

    calls = []
    monkeypatch.setattr(streaming, "return_freed_memory", lambda: calls.append("block"))
    monkeypatch.setattr(members, "return_freed_memory", lambda: calls.append("minibatch"))
    acts = _acts(torch.float32, n=CHUNK + 40)
    lp.run_protocol(acts, probe="attention", **KW, train=TrainConfig(max_steps=40, batch_size=8))
    assert calls.count("block") == 2  # after each block of rows read for the norms
    assert calls.count("minibatch") >= 40 * len(KW["seeds"]) // members.TRIM_EVERY
