"""One pass over hooks x probe kinds: every cell equals run_protocol on that cell alone."""

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
from lensprobe.train import ProtocolConfig, TrainConfig
from lensprobe.train.protocol import run_sweep

BASE = ProtocolConfig(
    seeds=(0, 1), weight_decays=(0.0, 0.1), n_folds=3, train=TrainConfig(max_steps=40)
)
SPECS = [
    "attention-1",
    "attention-2",
    "mean",
    "last",
    "max",
    "mean-adamw",
    "multimax-2",
    "rolling-2:window=3",
    "ema",
    "ema:halflife=2",  # two poolings of one kind in one streaming pass, keyed apart
]


def _hooks(n=48, n_hooks=3, dtype=torch.float32, n_classes=2):
    """Hooks of the same texts (same lengths and labels), each with its own values."""
    base = make_acts(n=n, d=8, max_len=10, seed=5, n_classes=n_classes)
    out = {}
    for h in range(n_hooks):
        gen = torch.Generator().manual_seed(h)
        values = base.values + 0.5 * h * torch.randn(base.values.shape, generator=gen)
        # a class signal of a different size at every hook
        values[:, 0] += (h + 1) * 0.4 * base.labels.repeat_interleave(base.lengths).float()
        meta = dataclasses.replace(
            base.meta, hook=f"blocks.{h}.hook_resid_post", dtype=str(dtype).split(".")[-1]
        )
        out[meta.hook] = Activations(
            meta, values.to(dtype), base.offsets, base.token_ids, base.labels
        )
    return out


def _same(a: lp.ProtocolResult, b: lp.ProtocolResult) -> None:
    assert len(a.runs) == len(b.runs)
    for x, y in zip(a.runs, b.runs, strict=True):
        assert torch.equal(x.train_rows, y.train_rows) and torch.equal(x.test_rows, y.test_rows)
        assert x.weight_decay == y.weight_decay and x.input_scale == y.input_scale
        assert torch.equal(x.test_logits, y.test_logits)
        assert torch.equal(x.cv_logits, y.cv_logits)
        for k, w in y.probe.state_dict().items():
            assert torch.equal(x.probe.state_dict()[k], w), k
    assert a.cv_table == b.cv_table


@pytest.mark.parametrize("where", ["memory", "store", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_cell_of_a_sweep_equals_run_protocol_alone(tmp_path, where, dtype):
    hooks = _hooks(dtype=dtype)
    if where == "store":  # shard boundaries inside every minibatch
        for i, (name, acts) in enumerate(hooks.items()):
            save(acts, tmp_path / str(i), shard_tokens=29)
            hooks[name] = load_activations(tmp_path / str(i))
    configs = [ProbeSpec.parse(s).protocol(BASE) for s in SPECS]
    if where == "padded":
        padded = {name: a.pad(dtype=dtype) for name, a in hooks.items()}
        labels = next(iter(hooks.values())).labels
        # padded tensors carry no labels: they are passed in, with the masks
        data = {name: x for name, (x, _) in padded.items()}
        kw = dict(labels=labels, masks={name: m for name, (_, m) in padded.items()})
    else:
        data, kw = hooks, {}
    seen = []
    results = run_sweep(data, configs, on_result=lambda h, i, r: seen.append((h, i)), **kw)
    assert sorted(seen) == sorted(results) and len(results) == len(hooks) * len(SPECS)
    for (name, i), result in results.items():
        if where == "padded":
            x, m = padded[name]
            alone = lp.run_protocol(x, labels, mask=m, config=configs[i])
        else:
            alone = lp.run_protocol(hooks[name], config=configs[i])
        _same(result, alone)
    # hooks differ, so their probes do
    first, second = results[next(iter(hooks)), 0], results[list(hooks)[1], 0]
    assert not torch.equal(first.runs[0].test_logits, second.runs[0].test_logits)


def test_a_sweep_shares_every_seeds_split_and_reads_each_hook_once(monkeypatch):
    import lensprobe.train.protocol as protocol

    hooks = _hooks()
    calls = []
    real = protocol.stream_inputs
    monkeypatch.setattr(
        protocol, "stream_inputs", lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    )
    configs = [ProbeSpec.parse(s).protocol(BASE) for s in SPECS]
    results = run_sweep(hooks, configs)
    assert len(calls) == len(hooks)  # one pass per hook for the norms and every pooled kind
    for seed in range(2):
        rows = {tuple(r.runs[seed].test_rows.tolist()) for r in results.values()}
        assert len(rows) == 1


def test_hooks_with_other_labels_or_configs_with_other_splits_are_refused():
    hooks = _hooks()
    name = list(hooks)[1]
    hooks[name] = hooks[name].with_labels(1 - hooks[name].labels)
    with pytest.raises(InputError, match="other labels"):
        run_sweep(hooks, [BASE])
    with pytest.raises(InputError, match="differ in n_folds"):
        run_sweep(_hooks(), [BASE, dataclasses.replace(BASE, n_folds=4)])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_products_keep_batched_equal_to_sequential_and_are_recorded(precision):
    acts = _hooks(n_hooks=1)["blocks.0.hook_resid_post"]
    train = TrainConfig(max_steps=40, precision=precision)
    kw = dict(BASE.__dict__, train=train, probe="attention", n_heads=2)
    batched = lp.run_protocol(acts, config=ProtocolConfig(**kw))
    alone = lp.run_protocol(acts, config=ProtocolConfig(**{**kw, "execution": "sequential"}))
    assert batched.precision == alone.precision == precision
    for a, b in zip(batched.runs, alone.runs, strict=True):
        assert a.weight_decay == b.weight_decay
        torch.testing.assert_close(a.test_logits, b.test_logits, rtol=1e-3, atol=1e-3)
    fp32 = lp.run_protocol(acts, config=ProtocolConfig(**{**kw, "train": replace_precision(train)}))
    gap = (fp32.runs[0].test_logits - batched.runs[0].test_logits).abs().max()
    assert (gap == 0) == (precision == "fp32")  # bf16 products change the fit, a little
    assert gap < 0.1
    mean = ProtocolConfig(**{**kw, "probe": "mean", "n_heads": 1})
    assert lp.run_protocol(acts, config=mean).precision == "fp64"  # L-BFGS
    adamw = ProbeSpec.parse("mean-adamw").protocol(mean)
    assert adamw.resolved_train.precision == precision  # asked for, but pooled features are
    assert lp.run_protocol(acts, config=adamw).precision == "fp32"  # small: always fp32


def replace_precision(train: TrainConfig) -> TrainConfig:
    return dataclasses.replace(train, precision="fp32")


def test_a_sweeps_progress_counts_the_cells_it_trains(capsys, monkeypatch):
    hooks = _hooks(n=30, n_hooks=2)
    configs = [ProbeSpec.parse(s).protocol(BASE) for s in ("mean", "last-adamw", "max")]
    run_sweep(hooks, configs, cells=[(h, i) for h in hooks for i in (0, 1)], progress=True)
    err = capsys.readouterr().err
    assert "cells 1-2 of 4: mean at 2 hook(s)" in err
    assert "cells 3-4 of 4: last-adamw at 2 hook(s)" in err
    assert "max" not in err
    # by default: only where someone watches (stderr here is no terminal)
    run_sweep(hooks, configs, cells=[(h, 0) for h in hooks])
    assert "cells" not in capsys.readouterr().err
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    run_sweep(hooks, configs, cells=[(next(iter(hooks)), 2)])
    assert "cell 1 of 1: max at 1 hook(s)" in capsys.readouterr().err


def test_bf16_training_early_stops_on_fp32_losses(monkeypatch):
    from lensprobe.train.members import FitData

    seen = []
    logits = FitData.logits

    def spy(self, params, rows, members=None, *, full_precision=False):
        seen.append((torch.is_grad_enabled(), full_precision, self.matmul_dtype))
        return logits(self, params, rows, members, full_precision=full_precision)

    monkeypatch.setattr(FitData, "logits", spy)
    acts = _hooks(n_hooks=1)["blocks.0.hook_resid_post"]
    train = TrainConfig(max_steps=60, eval_every=10, precision="bf16")
    lp.run_protocol(
        acts, config=ProtocolConfig(**dict(BASE.__dict__, train=train, probe="attention"))
    )
    steps = {(full, dtype) for grad, full, dtype in seen if grad}
    evals = {(full, dtype) for grad, full, dtype in seen if not grad}
    assert steps == {(False, torch.bfloat16)}  # training steps: bf16 products
    assert (True, torch.bfloat16) in evals  # early-stopping losses: fp32 products


def test_the_step_bars_total_follows_early_stopping():
    from lensprobe.train.protocol import _StepBar

    bar = _StepBar("fits", n_fits=3, budget=100)
    assert bar.bar.total == 300  # before any fit ends: every fit at its budget
    bar.step(10)
    bar.fit_done()  # stopped early at 10: the two fits to come are expected at 10 each
    assert (bar.bar.n, bar.bar.total) == (10, 30)
    bar.step(50)  # longer than expected: the total grows with it, never below the count
    assert (bar.bar.n, bar.bar.total) == (60, 70)
    bar.fit_done()
    assert (bar.bar.n, bar.bar.total) == (60, 90)  # mean 30 steps for the last fit
    bar.step(30)
    bar.fit_done()
    assert bar.bar.n == bar.bar.total == 90  # the steps taken, nothing assumed
    bar.close()
