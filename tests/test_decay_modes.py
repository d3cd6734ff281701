"""AdamW's weight-decay modes: ``l2`` minimises the L-BFGS objective, ``decoupled`` shrinks per step.

``TrainConfig.decay="l2"`` adds ``wd / 2 * ||W||^2`` to each member's loss, so AdamW run long
enough lands on the optimum L-BFGS finds for the same decay; batched and sequential protocol runs
agree with it as they do with decoupled decay.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import lensprobe as lp
from lensprobe.train import TrainConfig
from tests.test_exact_batching import ADAMW, DECAYS, assert_same_runs, separable_task


def noisy_task(n=80, pos=5, d=8, seed=0):
    """Overlapping classes (no separating direction): the penalised optimum is finite."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, pos, d, generator=gen)
    x[:, :, 0] += 0.7 * (2 * y[:, None].float() - 1)
    mask = torch.ones(n, pos, dtype=torch.bool)
    return x, mask, y


def test_decay_mode_round_trips_and_is_checked():
    for mode in ("decoupled", "l2"):
        cfg = TrainConfig(decay=mode, lr=1e-2)
        back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and back.decay == mode
    assert TrainConfig().decay == "l2"
    with pytest.raises((ValueError, TypeError), match="decay"):  # TypeError: runtime type check
        TrainConfig.from_dict({"decay": "l1"})
    proto = lp.ProtocolConfig(train=TrainConfig(decay="decoupled"))
    assert lp.ProtocolConfig.from_dict(json.loads(json.dumps(proto.to_dict()))) == proto


@pytest.mark.parametrize("wd", [0.03, 0.3])
def test_l2_adamw_reaches_the_penalised_optimum(wd):
    x, mask, y = noisy_task()
    torch.manual_seed(0)
    probe = lp.MeanProbe(d_model=x.shape[-1])
    exact = lp.fit(probe, x, mask, y, weight_decay=wd, train=TrainConfig(optimizer="lbfgs"))
    long = TrainConfig(
        lr=2e-2, batch_size=x.shape[0], max_steps=1000, early_stop_fraction=0.0, decay="l2"
    )
    adam = lp.fit(probe, x, mask, y, weight_decay=wd, train=long)
    w_exact, w_adam = exact.weight.detach(), adam.weight.detach()
    # the penalty shrinks the weights: more decay, smaller norm than the unpenalised optimum
    free = lp.fit(probe, x, mask, y, weight_decay=0.0, train=TrainConfig(optimizer="lbfgs"))
    assert w_exact.norm() < 0.9 * free.weight.detach().norm()
    torch.testing.assert_close(w_adam, w_exact, rtol=0, atol=2e-3 * float(w_exact.norm()) + 1e-4)
    # decoupled decay of the same wd at this lr and budget is a different, weaker shrinkage
    loose = lp.fit(probe, x, mask, y, weight_decay=wd, train=replace(long, decay="decoupled"))
    assert float((loose.weight.detach() - w_exact).norm()) > 10 * float((w_adam - w_exact).norm())
    assert loose.weight.detach().norm() > w_adam.norm()


def test_modes_agree_at_zero_decay_only():
    x, mask, y = noisy_task(seed=1)
    torch.manual_seed(1)
    probe = lp.MeanProbe(d_model=x.shape[-1])
    train = TrainConfig(lr=1e-2, max_steps=200, early_stop_fraction=0.0)
    fits = {
        (mode, wd): lp.fit(probe, x, mask, y, weight_decay=wd, train=replace(train, decay=mode))
        for mode in ("decoupled", "l2")
        for wd in (0.0, 0.1)
    }
    torch.testing.assert_close(
        fits[("l2", 0.0)].weight, fits[("decoupled", 0.0)].weight, rtol=0, atol=0
    )
    assert not torch.allclose(fits[("l2", 0.1)].weight, fits[("decoupled", 0.1)].weight)


@pytest.mark.parametrize("probe", ["attention", "mean"])
def test_l2_protocol_is_the_same_batched_and_sequential(probe):
    x, mask, y = separable_task(n=50, pos=6, d=12, k=3, seed=5)
    kw = dict(
        mask=mask,
        probe=probe,
        n_heads=2 if probe == "attention" else 1,
        optimizer="adamw",
        weight_decays=DECAYS,
        train=replace(ADAMW, decay="l2"),
    )
    batched = lp.run_protocol(x, y, **kw)
    sequential = lp.run_protocol(x, y, execution="sequential", **kw)
    assert batched.config.resolved_train.decay == "l2"
    assert_same_runs(batched, sequential, rtol=1e-4, atol=1e-4)
