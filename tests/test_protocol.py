"""The study's protocol: split, CV over weight decay, refit, test."""

from __future__ import annotations

import json
import re

import pytest
import torch

import lensprobe as lp
from lensprobe.metrics import METRIC_NAMES
from lensprobe.train import ProtocolConfig, TrainConfig, stratified_folds, stratified_split

FAST = TrainConfig(max_steps=150, eval_every=10, lr=2e-2, batch_size=32)


def needle_task(n=200, pos=16, d=16, k=3, seed=0):
    """Class lives in one token at a random position: attention finds it, last-token cannot."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, pos, d, generator=gen)
    lengths = torch.randint(6, pos + 1, (n,), generator=gen)
    mask = torch.arange(pos)[None] < lengths[:, None]
    where = (torch.rand(n, generator=gen) * (lengths - 1)).long()  # never the last token
    x[torch.arange(n), where] += 4 * torch.randn(k, d, generator=gen)[y]
    return x, mask, y


def test_attention_beats_last_token_on_a_needle_task():
    x, mask, y = needle_task()
    attn = lp.run_protocol(x, y, mask=mask, probe="attention", n_heads=2, train=FAST)
    last = lp.run_protocol(x, y, mask=mask, probe="last")
    assert attn.metrics["accuracy"] > 0.9
    assert last.metrics["accuracy"] < 0.6
    assert attn.weight_decay in attn.config.weight_decays
    assert set(attn.metrics) == set(METRIC_NAMES)  # three classes: no TPR at a fixed FPR
    assert attn.config.resolved_train.optimizer == "adamw"
    assert last.config.resolved_train.optimizer == "lbfgs"
    assert not attn.probe.training and attn.probe.config.n_outputs == 3


def test_cv_table_split_and_selection():
    x, mask, y = needle_task(n=150, k=2)
    r = lp.run_protocol(x, y, mask=mask, probe="mean", seeds=(0, 1), weight_decays=(0.0, 1e-2, 1.0))
    assert len(r.cv_table) == 3 * 5 * 2
    assert {row["fold"] for row in r.cv_table} == set(range(5))
    assert len(r.probes) == 2 and len(r.metrics_per_seed) == 2
    train, test = set(r.train_rows.tolist()), set(r.test_rows.tolist())
    assert not train & test and len(train | test) == 150
    assert len(test) == 30 and int(y[r.test_rows].sum()) == 15  # stratified 20 %
    for run in r.runs:  # each seed chooses on its own folds
        best = min(run.cv_summary, key=lambda s: (-s["accuracy"], s["log_loss"]))
        assert run.weight_decay == best["weight_decay"]
    assert r.weight_decay == r.runs[0].weight_decay
    torch.testing.assert_close(r.test_logits, r.probe(x[r.test_rows], mask[r.test_rows]))
    json.dumps(r.to_dict())  # JSON-ready


def test_sequential_execution_gives_the_batched_result():
    x, mask, y = needle_task(n=120, k=2, seed=1)
    kw = dict(mask=mask, probe="attention", n_heads=2, train=FAST, weight_decays=(0.0, 0.1))
    batched = lp.run_protocol(x, y, **kw)
    sequential = lp.run_protocol(x, y, execution="sequential", **kw)
    assert batched.weight_decay == sequential.weight_decay
    for a, b in zip(batched.cv_table, sequential.cv_table, strict=True):
        assert a["steps"] == b["steps"]
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    torch.testing.assert_close(batched.test_logits, sequential.test_logits, rtol=1e-3, atol=1e-4)


def test_protocol_does_not_touch_the_callers_tensors():
    x, mask, y = needle_task(n=80, k=2)
    x[~mask] = 123.0
    copies = x.clone(), mask.clone(), y.clone()
    lp.run_protocol(x, y, mask=mask, probe="max")
    for a, b in zip((x, mask, y), copies, strict=True):
        assert torch.equal(a, b)


def test_protocol_errors_name_the_fix():
    x, mask, y = needle_task(n=60, k=2)
    with pytest.raises(ValueError, match="at least two classes"):
        lp.run_protocol(x, torch.zeros(60, dtype=torch.long), mask=mask, probe="mean")
    with pytest.raises(ValueError, match=r"59 labels for 60 sequences|one each"):
        lp.run_protocol(x, y[:59], mask=mask, probe="mean")
    rare = torch.zeros(60, dtype=torch.long)
    rare[:4] = 1
    with pytest.raises(ValueError, match="lower n_folds"):
        lp.run_protocol(x, rare, mask=mask, probe="mean")
    with pytest.raises(ValueError, match="no labels"):
        lp.run_protocol(x, mask=mask, probe="mean")
    with pytest.raises(TypeError, match="Activations"):
        lp.run_protocol([[1.0]], y)
    with pytest.raises(ValueError, match="at least one head"):
        ProtocolConfig(probe="attention", n_heads=0)


def test_protocol_config_round_trips_through_json():
    cfg = ProtocolConfig(probe="attention", n_heads=8, seeds=(0, 1), train=FAST)
    again = ProtocolConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="has no heads"):
        ProtocolConfig(probe="mean", n_heads=2)


def test_config_dicts_with_unknown_keys_are_named_errors():
    d = {**ProtocolConfig(probe="mean").to_dict(), "colour": "red", "folds": 3}
    with pytest.raises(ValueError, match=r"unknown protocol keys \['colour', 'folds'\]; known: "):
        ProtocolConfig.from_dict(d)
    with pytest.raises(ValueError, match=r"unknown train config keys \['steps'\]; known: \['batch"):
        TrainConfig.from_dict({"lr": 1e-3, "steps": 10})
    with pytest.raises(ValueError, match=r"unknown train config keys \['steps'\]"):
        ProtocolConfig.from_dict({"train": {"steps": 10}})  # the nested train config too


def test_stratified_split_and_folds():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_split(y, 0.2, seed=3)
    assert torch.bincount(y[held]).tolist() == [10, 6, 4]
    assert sorted(kept.tolist() + held.tolist()) == list(range(100))
    fold = stratified_folds(y, 5, seed=3)
    for f in range(5):
        assert torch.bincount(y[fold == f], minlength=3).tolist() == [10, 6, 4]


def test_normalisation_makes_the_protocol_blind_to_the_activation_scale():
    x, mask, y = needle_task(n=120, k=2, seed=3)
    kw = dict(mask=mask, probe="attention", n_heads=2, train=FAST, weight_decays=(0.0, 0.1))
    small = lp.run_protocol(x, y, **kw)
    big = lp.run_protocol(x * 1000.0, y, **kw)
    assert big.input_scale == pytest.approx(1000.0 * small.input_scale, rel=1e-4)
    assert big.weight_decay == small.weight_decay
    assert big.metrics["accuracy"] == small.metrics["accuracy"]
    torch.testing.assert_close(big.test_logits, small.test_logits, rtol=1e-3, atol=1e-3)
    # the returned probe reads raw (unscaled) activations
    raw = big.probe(x[big.test_rows] * 1000.0, mask[big.test_rows])
    torch.testing.assert_close(raw, big.test_logits, rtol=1e-3, atol=1e-3)
    unnormalised = lp.run_protocol(x * 1000.0, y, normalize="none", **kw)
    assert unnormalised.input_scale == 1.0


def test_bos_is_dropped_when_the_capture_prepended_it():
    x, mask, y = needle_task(n=100, k=2, seed=4)

    class Meta:
        hook, model_id, class_names = "blocks.0.hook_resid_post", "toy", ("no", "yes")
        backend, dtype, padding_side, max_length, prepend_bos = "hf", "float32", "right", 16, True

    class FakeActivations:  # the attributes run_protocol reads
        meta, labels, dtype = Meta(), y, torch.float32

        def pad(self, dtype=torch.float32):
            return x.clone().to(dtype), mask.clone()

    x[:, 0] = 1e4  # a huge, uninformative first token, like Gemma's BOS
    res = lp.run_protocol(FakeActivations(), probe="mean")
    assert res.probe.config.exclude_bos and res.probe.config.hook == "blocks.0.hook_resid_post"
    assert res.probe.config.class_names == ("no", "yes")
    kept = lp.run_protocol(FakeActivations(), probe="mean", bos="keep")
    assert not kept.probe.config.exclude_bos
    assert res.input_scale < kept.input_scale


def test_progress_bar_counts_the_steps_and_leaves_the_result_alone(capsys):
    x, mask, y = needle_task(n=100, k=2)
    kw = dict(mask=mask, probe="attention", n_heads=1, train=FAST, seeds=(0, 1))
    quiet = lp.run_protocol(x, y, **kw)
    assert capsys.readouterr().err == ""
    shown = lp.run_protocol(x, y, progress="needle attention-1", **kw)
    err = capsys.readouterr().err
    budget = 2 * FAST.max_steps  # two seeds, one batched fit each
    counts = [int(c) for c in re.findall(rf"(\d+)/{budget} ", err)]
    assert "needle attention-1" in err and counts[0] == 0
    assert counts == sorted(counts) and counts[-1] > budget // 2
    torch.testing.assert_close(quiet.test_logits, shown.test_logits)
    assert quiet.cv_table == shown.cv_table
