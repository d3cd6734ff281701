"""Batched training is each member trained alone: protocol runs batched and sequential agree.

``execution="sequential"`` trains every member of a seed (decays x (folds + refit)) on its own
through the same code; the batched run must give the same members, the same iteration counts,
the same CV table and the same chosen decay, for every probe kind and optimizer and for every
decay of the grid, 0 included. The data are the hard case: fewer sequences than features, so the
pooled features are separable and a decay-0 member has no optimum (where it stops is decided by
its own stopping test alone).
"""

from __future__ import annotations

import math

import pytest
import torch
from probe_helpers import token_task

import lensprobe as lp
from lensprobe.train import TrainConfig

DECAYS = (0.0, 1e-3, 1e-2, 1e-1)
ADAMW = TrainConfig(max_steps=40, eval_every=5, patience=2, lr=2e-2, batch_size=16)


def separable_task(n=60, pos=8, d=64, k=2, seed=0):
    """n < d: each class is carried by one token at a random position, on noise."""
    return token_task(n, pos, d, k, seed, min_length=3, strength=2.0)


def assert_same_runs(batched, sequential, *, rtol: float, atol: float) -> None:
    """Every seed: same decay, same CV table (steps exactly), same logits and probe."""
    assert len(batched.cv_table) == len(sequential.cv_table)
    for rb, rs in zip(batched.cv_table, sequential.cv_table, strict=True):
        key = (rb["seed"], rb["weight_decay"], rb["fold"])
        assert key == (rs["seed"], rs["weight_decay"], rs["fold"])
        assert rb["steps"] == rs["steps"], key
        assert rb["best_step"] == rs["best_step"], key
        for name, value in rb.items():
            if isinstance(value, float) and not math.isnan(value):
                assert math.isclose(value, rs[name], rel_tol=rtol, abs_tol=atol), (key, name)
    for b, s in zip(batched.runs, sequential.runs, strict=True):
        assert b.weight_decay == s.weight_decay
        torch.testing.assert_close(b.test_logits, s.test_logits, rtol=rtol, atol=atol)
        torch.testing.assert_close(b.cv_logits, s.cv_logits, rtol=rtol, atol=atol)
        for (name, pb), (_, ps) in zip(
            b.probe.named_parameters(), s.probe.named_parameters(), strict=True
        ):
            torch.testing.assert_close(pb, ps, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize(
    ("probe", "k", "seeds"),
    [
        ("mean", 2, (0, 1)),  # two seeds: two splits, each batched and sequential
        ("mean", 3, (0,)),
        ("last", 2, (0,)),
        ("last", 3, (0,)),
        ("max", 2, (0,)),
        ("max", 3, (0,)),
        ("ema", 2, (0,)),
        ("ema", 3, (0,)),
    ],
)
def test_pooled_lbfgs_protocol_is_the_same_batched_and_sequential(probe, k, seeds):
    x, mask, y = separable_task(k=k, seed=k)
    kw = dict(mask=mask, probe=probe, weight_decays=DECAYS, seeds=seeds)
    batched = lp.run_protocol(x, y, **kw)
    sequential = lp.run_protocol(x, y, execution="sequential", **kw)
    # the case that used to differ: decay 0 stops where its own stopping test says
    steps = {r["steps"] for r in batched.cv_table if r["weight_decay"] == 0.0}
    assert max(steps) < batched.config.train.lbfgs_max_iter
    assert_same_runs(batched, sequential, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("probe", "optimizer"),
    [
        ("attention", "adamw"),
        ("attention", "lbfgs"),
        ("multimax", "adamw"),
        ("rolling", "adamw"),
    ],
)
def test_attention_protocol_is_the_same_batched_and_sequential(probe, optimizer):
    x, mask, y = separable_task(n=50, pos=6, d=12, k=3, seed=5)
    train = ADAMW if optimizer == "adamw" else TrainConfig(lbfgs_max_iter=30)
    kw = dict(
        mask=mask,
        probe=probe,
        n_heads=2,
        options={"window": 3} if probe == "rolling" else {},
        optimizer=optimizer,
        weight_decays=DECAYS,
        train=train,
    )
    batched = lp.run_protocol(x, y, **kw)
    sequential = lp.run_protocol(x, y, execution="sequential", **kw)
    # float32 AdamW: the same arithmetic up to the order of float sums; L-BFGS runs in float64
    tol = 1e-4 if optimizer == "adamw" else 1e-6
    assert_same_runs(batched, sequential, rtol=tol, atol=tol)
