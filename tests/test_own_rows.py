"""Every choice of a split reads its own training part only; every member reads its own rows only.

The property: replace the test part of one split (its activations, at every hook) with anything
else, and nothing that split chose moves: its weight decay, its layer, its thresholds, its CV
scores, its early stopping and its refit probe. (The labels stay: a stratified split is drawn
from them, so new labels would draw another split.) The old pooled layer choice failed this: it
averaged the CV score over splits, and another split trains on this split's test rows.
"""

from __future__ import annotations

import math

import pytest
import torch
from probe_helpers import token_task

import lensprobe as lp
from lensprobe.experiment import run_grid
from lensprobe.probes import ProbeConfig, probe_class
from lensprobe.train import ProtocolConfig, TrainConfig
from lensprobe.train.fit import fit_members
from lensprobe.train.members import Members
from lensprobe.train.selection import choose_layer

ADAMW = TrainConfig(max_steps=40, eval_every=5, patience=2, lr=2e-2, batch_size=16)
FAST = dict(weight_decays=(0.0, 1e-2), n_folds=3)


def to_acts(x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, hook: str) -> lp.Activations:
    """Padded ``(x, mask)`` as ragged Activations of one hook."""
    from lensprobe.activations import ActivationsMeta

    lengths = mask.sum(dim=1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    meta = ActivationsMeta(
        hook=hook,
        model_id="toy",
        backend="hf",
        d_model=x.shape[-1],
        dtype="float32",
        tokenizer="toy",
        padding_side="right",
        max_length=None,
        n_truncated=0,
        prepend_bos=False,
    )
    ids = torch.zeros(int(lengths.sum()), dtype=torch.long)
    return lp.Activations(meta, x[mask], offsets, ids, y)


def two_hooks(n=90, pos=5, d=8, seed=1):
    """Hook ``a`` carries the class weakly everywhere (CV accuracy ~0.62); hook ``b`` is noise."""
    x, mask, y = token_task(n, pos, d, 2, seed, min_length=2, strength=0.5)
    gen = torch.Generator().manual_seed(seed + 100)
    return {"a": x, "b": torch.randn(x.shape, generator=gen)}, mask, y


def _test_rows(y: torch.Tensor, split_seed: int) -> torch.Tensor:
    return lp.train.split.stratified_split(y, 0.2, seed=split_seed)[1]


def _what_split_chose(rows, j: int) -> dict:
    records = [r.record() for r in rows]
    choice = choose_layer(records)
    out = {"pick": choice.picks[j]}
    for r in rows:
        run = r.result.runs[j]
        out[r.hook] = {
            "decay": run.weight_decay,
            "thresholds": {k: None if math.isnan(v) else v for k, v in run.thresholds.items()},
            "cv": [
                {k: round(v, 9) for k, v in row.items() if not math.isnan(v)}
                for row in run.cv_summary
            ],
            "params": {k: v.detach().clone() for k, v in run.probe.state_dict().items()},
        }
    return out


def _assert_same(before: dict, after: dict) -> None:
    assert after["pick"] == before["pick"]
    for hook in ("a", "b"):
        b, a = before[hook], after[hook]
        assert (a["decay"], a["thresholds"], a["cv"]) == (b["decay"], b["thresholds"], b["cv"])
        for k in b["params"]:
            torch.testing.assert_close(a["params"][k], b["params"][k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("j", [0, 2])
def test_replacing_a_splits_test_part_changes_nothing_that_split_chose(j):
    xs, mask, y = two_hooks()
    protocol = ProtocolConfig(seeds=(0, 1, 2), **FAST)

    def grid(values):
        acts = {h: to_acts(x, mask, y, h) for h, x in values.items()}
        return run_grid(acts, ["mean"], dataset="d", protocol=protocol)

    rows = grid(xs)
    before = _what_split_chose(rows, j)
    test = _test_rows(y, j)
    # anything else: at a, one vector for every test row (unlearnable, both labels share it); at
    # b, a signal that gives the label away on exactly these rows
    replaced = {h: x.clone() for h, x in xs.items()}
    replaced["a"][test] = 1.0
    replaced["b"][test] = 0.0
    replaced["b"][test, :, 0] = 8.0 * (2.0 * y[test, None] - 1.0)
    after_rows = grid(replaced)
    _assert_same(before, _what_split_chose(after_rows, j))
    assert before["pick"] == "a"
    # the other splits train on these rows and do move: a choice pooled over the splits (mean
    # CV) reads them and flips from a to b, for split j too
    assert _pooled_pick(rows) == "a" and _pooled_pick(after_rows) == "b"


def _pooled_pick(rows) -> str:
    """The hook with the best CV accuracy averaged over the splits (the old, leaky choice)."""
    cv = {r.hook: sum(s["cv"]["accuracy"] for s in r.record()["splits"]) for r in rows}
    return max(cv, key=cv.get)


@pytest.mark.parametrize(
    ("probe", "optimizer", "decay"),
    [("mean", "lbfgs", 0.0), ("mean", "lbfgs", 1e-2), ("max", "lbfgs", 0.0),
     ("attention", "lbfgs", 0.0), ("attention", "adamw", 0.0), ("attention", "adamw", 1e-2)],
)  # fmt: skip
def test_a_refit_is_unchanged_when_the_test_activations_are_noise(probe, optimizer, decay):
    """Decay 0 on separable data (n < d) is the case where the solver's basis used to matter."""
    x, mask, y = token_task(40, 6, 64, 2, 3, min_length=3, strength=2.0)
    kw = dict(
        mask=mask,
        probe=probe,
        optimizer=optimizer,
        weight_decays=(decay,),
        train=ADAMW if optimizer == "adamw" else TrainConfig(lbfgs_max_iter=200),
    )
    res = lp.run_protocol(x, y, **kw)
    test = res.test_rows
    noisy = x.clone()
    noisy[test] = 1e3 * torch.randn(noisy[test].shape, generator=torch.Generator().manual_seed(1))
    again = lp.run_protocol(noisy, y, **kw)
    assert torch.equal(again.test_rows, test)
    with torch.no_grad():  # both probes on the original test activations
        logits = res.probe(x[test], mask[test])
        logits_again = again.probe(x[test], mask[test])
    torch.testing.assert_close(
        logits_again, logits, rtol=1e-5, atol=1e-5 * float(logits.abs().max())
    )


@pytest.mark.parametrize("kind", ["mean", "last", "max", "attention"])
@pytest.mark.parametrize("decay", [0.0, 1e-3, 1e-1])
def test_lbfgs_members_batched_equal_each_alone_on_its_own_rows(kind, decay):
    """Alone means handed only its own rows: no other row can reach its basis or its steps."""
    x, mask, y = token_task(36, 6, 48, 2, 4, min_length=3, strength=2.0)
    cfg = ProbeConfig(kind=kind, d_model=48, n_outputs=1, n_heads=2 if kind == "attention" else 1)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(0)
    train = torch.stack([torch.rand(n, generator=gen) < p for p in (0.9, 0.7, 0.5)])
    members = Members(
        weight_decay=torch.full((3,), decay),
        seeds=(0, 1, 2),
        train=train,
        stop=torch.zeros_like(train),
    )
    tc = TrainConfig(optimizer="lbfgs", lbfgs_max_iter=60 if kind == "attention" else 300)
    batched = fit_members(cfg, x, mask, y, members, tc, input_scale=2.0)
    cls = probe_class(cfg.kind)
    for i in range(3):
        own = train[i].nonzero().flatten()
        one = Members(
            weight_decay=members.weight_decay[i : i + 1],
            seeds=(i,),
            train=torch.ones(1, own.numel(), dtype=torch.bool),
            stop=torch.zeros(1, own.numel(), dtype=torch.bool),
        )
        alone = fit_members(cfg, x[own], mask[own], y[own], one, tc, input_scale=2.0)
        assert int(alone.steps[0]) == int(batched.steps[i]), i
        for k, v in alone.params.items():
            torch.testing.assert_close(batched.params[k][i], v[0], rtol=1e-6, atol=1e-8, msg=k)
        probe = cls.from_member(cfg, alone.params, 0)
        assert probe is not None


def test_the_adamw_refit_equals_the_probe_trained_alone_on_its_own_rows():
    x, mask, y = token_task(50, 6, 12, 3, 5, min_length=3, strength=2.0)
    res = lp.run_protocol(
        x, y, mask=mask, probe="attention", n_heads=2, weight_decays=(1e-2,), train=ADAMW
    )
    run = res.runs[0]
    # the refit's rows: the training part less the early-stopping slice, which it stops on
    _, held = lp.train.split.stratified_split(
        y[run.train_rows], ADAMW.early_stop_fraction, seed=ADAMW.seed + run.split_seed
    )
    stop = run.train_rows[held]
    own = run.train_rows[~torch.isin(run.train_rows, stop)]
    rows = torch.cat([own, stop])
    cfg = run.probe.config
    members = Members(
        weight_decay=torch.tensor([1e-2]),
        seeds=(run.seed,),
        train=torch.arange(rows.numel())[None] < own.numel(),
        stop=torch.arange(rows.numel())[None] >= own.numel(),
    )
    tc = lp.TrainConfig(**{**ADAMW.to_dict(), "seed": ADAMW.seed + run.seed})
    alone = fit_members(cfg, x[rows], mask[rows], y[rows], members, tc, input_scale=run.input_scale)
    from lensprobe.train.fit import unscale_params

    params = unscale_params(cfg, alone.params, run.input_scale)
    probe = probe_class(cfg.kind).from_member(cfg, params, 0).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            probe(x[run.test_rows], mask[run.test_rows]), run.test_logits, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("factor", [1e20, 1e-30])
def test_activations_at_extreme_scales_train_as_at_scale_one(factor):
    x, mask, y = token_task(60, 6, 16, 2, 6, min_length=3, strength=3.0)
    base = lp.run_protocol(x, y, mask=mask, probe="mean", **FAST)
    scaled = lp.run_protocol(x * factor, y, mask=mask, probe="mean", **FAST)
    assert base.metrics["accuracy"] > 0.8
    assert scaled.metrics["accuracy"] == base.metrics["accuracy"]
    assert scaled.input_scale == pytest.approx(base.input_scale * factor, rel=1e-5)


def test_decay_is_logistic_regression_with_the_c_the_docstring_states():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, mask, y = token_task(80, 5, 6, 2, 8, min_length=2, strength=1.0)
    wd = 0.05
    res = lp.run_protocol(
        x * 30.0,
        y,
        mask=mask,
        probe="mean",
        weight_decays=(wd,),
        train=TrainConfig(lbfgs_tolerance=1e-10),
    )
    run = res.runs[0]
    s, n = run.input_scale, run.train_rows.numel()
    feats = ((x * 30.0) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    clf = sklearn.LogisticRegression(C=1 / (n * wd * s**2), tol=1e-12, max_iter=10_000)
    clf.fit(feats[run.train_rows].double().numpy(), y[run.train_rows].numpy())
    w = run.probe.state_dict()["weight"].flatten().double()
    torch.testing.assert_close(w, torch.from_numpy(clf.coef_[0]), rtol=1e-4, atol=1e-8)
