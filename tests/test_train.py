"""Training: the batched sweep equals lone training, LBFGS matches scikit-learn on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from probe_helpers import token_task
from sklearn.linear_model import LogisticRegression

from lensprobe.pooling import pool
from lensprobe.probes import AttentionProbe, LastTokenProbe, MaxProbe, MeanProbe, ProbeConfig
from lensprobe.probes.base import tokens_read
from lensprobe.train import Members, TrainConfig, fit, fit_members, stratified_split


def needle_data(n=160, pos=12, d=16, k=2, seed=0):
    """Sequences of noise where one token at a random position carries the class."""
    return token_task(n, pos, d, k, seed, min_length=4, strength=3.0)


def words_as_token_embeddings(texts: list[str], d: int = 48, max_len: int = 40):
    """Real text as token sequences: each lower-cased word gets a fixed random embedding."""
    vocab: dict[str, int] = {}
    ids = [
        [vocab.setdefault(w, len(vocab)) for w in t.lower().split()[:max_len]] or [0] for t in texts
    ]
    table = torch.randn(len(vocab) + 1, d, generator=torch.Generator().manual_seed(1))
    x = torch.zeros(len(ids), max_len, d)
    mask = torch.zeros(len(ids), max_len, dtype=torch.bool)
    for i, seq in enumerate(ids):
        x[i, : len(seq)] = table[torch.tensor(seq)]
        mask[i, : len(seq)] = True
    return x, mask


def test_batched_member_ends_where_the_lone_probe_ends():
    x, mask, y = needle_data()
    cfg = ProbeConfig(kind="attention", d_model=16, n_heads=2, n_outputs=1)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(3)
    train = torch.rand(4, n, generator=gen) < 0.7
    stop = ~train & (torch.rand(4, n, generator=gen) < 0.5)
    members = Members(
        weight_decay=torch.tensor([0.0, 1e-2, 1e-1, 1.0]),
        seeds=(0, 1, 2, 3),
        train=train,
        stop=stop,
    )
    tc = TrainConfig(max_steps=150, eval_every=10, patience=3, batch_size=16, lr=1e-2)
    order = torch.arange(n)
    batched = fit_members(cfg, x, mask, y, members, tc, order_rows=order)
    assert batched.steps.unique().numel() > 1, "members should stop at different steps"
    for i in range(4):
        alone = fit_members(
            cfg,
            x,
            mask,
            y,
            Members(
                weight_decay=members.weight_decay[i : i + 1],
                seeds=(i,),
                train=train[i : i + 1],
                stop=stop[i : i + 1],
            ),
            tc,
            order_rows=order,
        )
        assert int(alone.steps[0]) == int(batched.steps[i])
        assert int(alone.best_step[0]) == int(batched.best_step[i])
        for name, value in alone.params.items():
            torch.testing.assert_close(batched.params[name][i : i + 1], value, rtol=1e-4, atol=1e-5)
    # members really differ (different seeds, decays and rows)
    assert not torch.allclose(batched.params["value"][0], batched.params["value"][1])


def test_early_stopping_stops_on_held_out_rows():
    x, mask, y = needle_data(n=120)
    # labels that carry no signal: held-out loss stops improving quickly
    y = torch.randint(0, 2, (120,), generator=torch.Generator().manual_seed(5))
    tc = TrainConfig(max_steps=5000, eval_every=3, patience=2, lr=5e-2, batch_size=32)
    probe = fit(AttentionProbe(16, 2, 1), x, mask, y, train=tc)
    assert isinstance(probe, AttentionProbe)
    members = Members(
        weight_decay=torch.zeros(1),
        seeds=(0,),
        train=(torch.arange(120) % 5 != 0)[None],
        stop=(torch.arange(120) % 5 == 0)[None],
    )
    r = fit_members(probe.config, x, mask, y, members, tc)
    # 96 training rows in batches of 32: one evaluation per epoch of 3 steps
    assert int(r.steps[0]) < 5000
    assert int(r.best_step[0]) == int(r.steps[0]) - 2 * 3


def test_fit_learns_repeatably_and_leaves_the_input_probe_alone():
    x, mask, y = needle_data(n=200, seed=2)
    start = AttentionProbe(16, n_heads=2, n_outputs=1)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    tc = TrainConfig(max_steps=200, eval_every=10, lr=2e-2)
    a = fit(start, x, mask, y, train=tc)
    b = fit(start, x, mask, y, train=tc)
    for k, v in start.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    acc = float(((a(x, mask)[:, 0] > 0).long() == y).float().mean())
    assert acc > 0.9
    assert a.query.abs().sum() > 0 and not a.training


def test_weight_decay_shrinks_weights_not_biases():
    x, mask, y = needle_data(n=120, seed=4)
    tc = TrainConfig(max_steps=60, lr=2e-2, early_stop_fraction=0.0)
    free = fit(AttentionProbe(16, 2, 1), x, mask, y, weight_decay=0.0, train=tc)
    decayed = fit(AttentionProbe(16, 2, 1), x, mask, y, weight_decay=20.0, train=tc)
    assert decayed.value.norm() < 0.5 * free.value.norm()
    assert decayed.query.norm() < 0.5 * free.query.norm()
    assert AttentionProbe.decay_params == ("query", "value")
    assert MeanProbe.decay_params == ("weight",)


@pytest.mark.parametrize("probe_cls", [MeanProbe, LastTokenProbe])
@pytest.mark.parametrize("weight_decay", [1e-3, 1e-1])
def test_lbfgs_matches_scikit_learn_logistic_regression_on_real_text(
    probe_cls, weight_decay, fixture_data_dir
):
    df = pd.read_csv(fixture_data_dir / "sst2" / "92_glue_sst2.csv")  # 400 rows, 200 per class
    y = torch.tensor(df["target"].to_numpy(), dtype=torch.long)
    x, mask = words_as_token_embeddings(df["prompt"].tolist())
    train_rows, test_rows = stratified_split(y, 0.25, seed=0)
    tc = TrainConfig(optimizer="lbfgs")
    probe = fit(
        probe_cls(48, 1),
        x[train_rows],
        mask[train_rows],
        y[train_rows],
        weight_decay=weight_decay,
        train=tc,
    )
    feats = pool(probe_cls.kind, x.masked_fill(~mask[..., None], 0), mask).double().numpy()
    n_train = train_rows.numel()
    sk = LogisticRegression(C=1.0 / (n_train * weight_decay), tol=1e-10, max_iter=10_000)
    sk.fit(feats[train_rows], y[train_rows].numpy())
    ours = torch.sigmoid(probe(x[test_rows], mask[test_rows])[:, 0]).detach().double().numpy()
    theirs = sk.predict_proba(feats[test_rows])[:, 1]
    assert np.abs(ours - theirs).max() < 2e-3
    acc_ours = ((ours > 0.5) == y[test_rows].numpy()).mean()
    acc_theirs = sk.score(feats[test_rows], y[test_rows].numpy())
    assert acc_ours >= acc_theirs - 0.005


def test_lbfgs_batched_members_match_lone_members():
    x, mask, y = needle_data(n=150, k=3, seed=6)
    cfg = ProbeConfig(kind="mean", d_model=16, n_outputs=3)
    train = torch.rand(3, 150, generator=torch.Generator().manual_seed(0)) < 0.8
    members = Members(
        weight_decay=torch.tensor([1e-3, 1e-2, 1e-1]),
        seeds=(0, 0, 0),
        train=train,
        stop=torch.zeros_like(train),
    )
    tc = TrainConfig(optimizer="lbfgs", lbfgs_tolerance=1e-10)
    batched = fit_members(cfg, x, mask, y, members, tc)
    for i in range(3):
        alone = fit_members(
            cfg,
            x,
            mask,
            y,
            Members(
                weight_decay=members.weight_decay[i : i + 1],
                seeds=(0,),
                train=train[i : i + 1],
                stop=torch.zeros_like(train[i : i + 1]),
            ),
            tc,
        )
        torch.testing.assert_close(
            batched.params["weight"][i], alone.params["weight"][0], rtol=1e-4, atol=1e-4
        )


def test_on_step_reports_every_step_of_a_fit():
    x, mask, y = needle_data(n=120)
    members = Members(
        weight_decay=torch.tensor([0.0, 0.1]),
        seeds=(0, 1),
        train=(torch.arange(120) % 5 != 0)[None].repeat(2, 1),
        stop=(torch.arange(120) % 5 == 0)[None].repeat(2, 1),
    )
    config = AttentionProbe(16, 2, 1).config
    seen: list[int] = []
    tc = TrainConfig(max_steps=400, eval_every=3, patience=2, batch_size=32)
    r = fit_members(config, x, mask, y, members, tc, on_step=seen.append)
    assert seen == list(range(1, int(r.steps.max()) + 1))
    seen.clear()
    lbfgs = TrainConfig(optimizer="lbfgs", lbfgs_max_iter=30)
    r = fit_members(MeanProbe(16, 2).config, x, mask, y, members, lbfgs, on_step=seen.append)
    assert seen == list(range(int(r.steps.max()) + 1)) and 0 < max(seen) <= 30


@pytest.mark.parametrize("k", [2, 3])
def test_lbfgs_reaches_the_optimum_when_features_share_a_large_offset(k):
    # Pooled residual streams share a large common direction; the batched L-BFGS must still reach
    # each member's optimum (scikit-learn's, at matched regularisation) within its default budget.
    x, mask, y = needle_data(n=300, d=32, k=k, seed=3)
    offset = 25.0 * torch.randn(32, generator=torch.Generator().manual_seed(1))
    x = (x + offset) * mask[..., None]
    wds = [0.0, 1e-3, 1e-2, 1e-1]
    rows = torch.arange(300) < 240
    members = Members(
        weight_decay=torch.tensor(wds),
        seeds=(0,) * 4,
        train=rows[None].repeat(4, 1),
        stop=torch.zeros(4, 300, dtype=torch.bool),
    )
    cfg = ProbeConfig(kind="mean", d_model=32, n_outputs=1 if k == 2 else k)
    r = fit_members(cfg, x, mask, y, members, TrainConfig(optimizer="lbfgs"))
    feats = pool("mean", x, mask).double()
    for i, wd in enumerate(wds[1:], start=1):
        # the same objective: mean log loss + wd / 2 * ||W||^2  <=>  C = 1 / (n_train * wd)
        sk = LogisticRegression(C=1.0 / (240 * wd), tol=1e-12, max_iter=100_000)
        sk.fit(feats[:240].numpy(), y[:240].numpy())
        z = feats @ r.params["weight"][i] + r.params["bias"][i]
        ours = torch.sigmoid(z[:, 0]) if k == 2 else z.softmax(dim=1)
        theirs = sk.predict_proba(feats.numpy())
        theirs = theirs[:, 1] if k == 2 else theirs
        assert np.abs(ours.numpy() - theirs).max() < 1e-3, f"weight decay {wd}"


# -- every member as if trained alone (L-BFGS), whatever the decay ----------------------------------


def one_member(members: Members, i: int) -> Members:
    """Member ``i`` of a sweep as a sweep of its own."""
    return Members(
        weight_decay=members.weight_decay[i : i + 1],
        seeds=members.seeds[i : i + 1],
        train=members.train[i : i + 1],
        stop=members.stop[i : i + 1],
    )


def grid(n: int, weight_decays=(0.0, 1e-3, 1e-2, 1e-1), n_row_sets=3, seed=0) -> Members:
    """Every decay on each of a few random 80 % row sets, as one sweep."""
    rows = torch.rand(n_row_sets, n, generator=torch.Generator().manual_seed(seed)) < 0.8
    wd = torch.tensor(weight_decays).repeat_interleave(n_row_sets)
    train = rows.repeat(len(weight_decays), 1)
    return Members(wd, (0,) * len(wd), train, torch.zeros_like(train))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("kind", ["mean", "last", "max"])
def test_lbfgs_member_in_a_sweep_is_the_member_alone_even_without_decay(kind, k):
    # 60 sequences, d_model 64: fewer rows than features, so every member can separate its rows
    # and a decay-0 member has no optimum: where it stops is its own stopping test's business.
    x, mask, y = needle_data(n=60, pos=6, d=64, k=k, seed=7)
    cfg = ProbeConfig(kind=kind, d_model=64, n_outputs=1 if k == 2 else k)
    members = grid(60)
    tc = TrainConfig(optimizer="lbfgs")
    batched = fit_members(cfg, x, mask, y, members, tc)
    for i in range(len(members)):
        alone = fit_members(cfg, x, mask, y, one_member(members, i), tc)
        wd = float(members.weight_decay[i])
        assert int(alone.steps[0]) == int(batched.steps[i]), f"member {i}, decay {wd}"
        for name, value in alone.params.items():
            torch.testing.assert_close(
                batched.params[name][i : i + 1], value, rtol=1e-7, atol=1e-9, msg=name
            )
    # the stopping tests really are per member: members stop at different iterations
    assert batched.steps.unique().numel() > 1


def test_lbfgs_attention_members_are_trained_alone():
    x, mask, y = needle_data(n=48, pos=6, d=8, seed=8)
    cfg = ProbeConfig(kind="attention", d_model=8, n_heads=2, n_outputs=1)
    members = grid(48, n_row_sets=2)
    members = Members(members.weight_decay, (0, 1) * 4, members.train, members.stop)
    tc = TrainConfig(optimizer="lbfgs", lbfgs_max_iter=40)
    batched = fit_members(cfg, x, mask, y, members, tc)
    for i in range(len(members)):
        alone = fit_members(cfg, x, mask, y, one_member(members, i), tc)
        assert int(alone.steps[0]) == int(batched.steps[i]), f"member {i}"
        for name, value in alone.params.items():
            torch.testing.assert_close(batched.params[name][i : i + 1], value, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("decay", ["l2", "decoupled"])
@pytest.mark.parametrize("kind", ["attention", "mean", "max"])
def test_adamw_member_in_a_sweep_is_the_member_alone_for_every_decay(kind, decay):
    x, mask, y = needle_data(n=60, pos=6, d=16, k=3, seed=9)
    cfg = ProbeConfig(kind=kind, d_model=16, n_heads=2 if kind == "attention" else 1, n_outputs=3)
    n = x.shape[0]
    base = grid(n, n_row_sets=2)
    stop = ~base.train & (torch.arange(n) % 2 == 0)
    members = Members(base.weight_decay, (0, 1) * 4, base.train, stop)
    tc = TrainConfig(max_steps=60, eval_every=4, patience=2, batch_size=16, lr=2e-2, decay=decay)
    order = torch.arange(n)
    batched = fit_members(cfg, x, mask, y, members, tc, order_rows=order)
    for i in range(len(members)):
        alone = fit_members(cfg, x, mask, y, one_member(members, i), tc, order_rows=order)
        assert int(alone.steps[0]) == int(batched.steps[i])
        assert int(alone.best_step[0]) == int(batched.best_step[i])
        for name, value in alone.params.items():
            torch.testing.assert_close(batched.params[name][i : i + 1], value, rtol=1e-5, atol=1e-6)


def test_lbfgs_single_member_matches_scikit_learn_multiclass():
    x, mask, y = needle_data(n=90, pos=6, d=12, k=3, seed=10)
    feats = pool("max", x.masked_fill(~mask[..., None], 0), mask).double()
    probe = fit(
        MaxProbe(12, 3), x, mask, y, weight_decay=1e-2, train=TrainConfig(optimizer="lbfgs")
    )
    sk = LogisticRegression(C=1.0 / (90 * 1e-2), tol=1e-12, max_iter=100_000)
    sk.fit(feats.numpy(), y.numpy())
    ours = probe(x, mask).double().softmax(dim=1).detach().numpy()
    assert np.abs(ours - sk.predict_proba(feats.numpy())).max() < 1e-4


# -- the tokens a probe reads ---------------------------------------------------------------------


def test_fit_reads_the_tokens_forward_reads_when_bos_is_excluded():
    # A large constant first token (the BOS residual of models such as Gemma): a probe that
    # excludes it must be trained on the same tokens its forward reads.
    x, mask, y = needle_data(n=200, pos=10, d=16, seed=11)
    x[:, 0] = 50.0
    mask[:, 0] = True
    tc = TrainConfig(optimizer="lbfgs")
    cfg = ProbeConfig(kind="mean", d_model=16, exclude_bos=True)
    probe = fit(MeanProbe(16, config=cfg), x, mask, y, weight_decay=1e-2, train=tc)
    # the same fit on the features forward reads, given as an explicit mask to a probe that
    # keeps every token
    read = mask.clone()
    read[:, 0] = False  # every sequence has at least 4 tokens, the first one at position 0
    assert torch.equal(tokens_read(cfg, mask), read)
    plain = fit(MeanProbe(16), x, read, y, weight_decay=1e-2, train=tc)
    torch.testing.assert_close(probe(x, mask), plain(x, read), rtol=1e-5, atol=1e-5)
    acc = float(((probe(x, mask)[:, 0] > 0).long() == y).float().mean())
    assert acc > 0.85


# -- a non-finite loss is an error naming the member ----------------------------------------------


def test_adamw_member_that_diverges_is_named():
    x, mask, y = needle_data(n=64, pos=6, d=8, seed=12)
    members = Members(
        weight_decay=torch.tensor([0.0, 30.0]),
        seeds=(0, 0),
        train=torch.ones(2, 64, dtype=torch.bool),
        stop=torch.zeros(2, 64, dtype=torch.bool),
    )
    # decoupled decay with lr * wd = 30 multiplies the weights by -29 every step: overflow
    tc = TrainConfig(max_steps=200, lr=1.0, early_stop_fraction=0.0, decay="decoupled")
    cfg = ProbeConfig(kind="attention", d_model=8, n_heads=1)
    with pytest.raises(FloatingPointError, match=r"member 1 \(weight decay 30\):"):
        fit_members(cfg, x, mask, y, members, tc)


@pytest.mark.parametrize("optimizer", ["adamw", "lbfgs"])
def test_nan_activations_of_one_members_rows_name_that_member(optimizer):
    x, mask, y = needle_data(n=64, pos=6, d=8, seed=13)
    x[5, 0] = float("nan")
    train = torch.ones(3, 64, dtype=torch.bool)
    train[0, 5] = train[2, 5] = False  # only member 1 trains on row 5
    members = Members(
        weight_decay=torch.tensor([0.0, 1e-2, 1e-1]),
        seeds=(0, 0, 0),
        train=train,
        stop=torch.zeros(3, 64, dtype=torch.bool),
        index=(6, 7, 8),  # their numbers in a larger sweep
    )
    kind = "attention" if optimizer == "adamw" else "mean"
    cfg = ProbeConfig(kind=kind, d_model=8)
    tc = TrainConfig(optimizer=optimizer, max_steps=20, early_stop_fraction=0.0)
    with pytest.raises(FloatingPointError, match=r"^member 7 \(weight decay 0.01\):"):
        fit_members(cfg, x, mask, y, members, tc)


@pytest.mark.parametrize("k", [2, 3])
def test_lbfgs_with_fewer_rows_than_features_matches_scikit_learn(k):
    # 50 rows, 80 features: the fit is solved in the span of the rows' features, which must not
    # move the optimum (each decay > 0 member against scikit-learn at C = 1 / (n_train * wd)).
    x, mask, y = needle_data(n=50, pos=5, d=80, k=k, seed=14)
    members = grid(50, n_row_sets=2)
    cfg = ProbeConfig(kind="mean", d_model=80, n_outputs=1 if k == 2 else k)
    r = fit_members(cfg, x, mask, y, members, TrainConfig(optimizer="lbfgs", lbfgs_tolerance=1e-9))
    feats = pool("mean", x.masked_fill(~mask[..., None], 0), mask).double()
    for i in range(len(members)):
        wd, rows = float(members.weight_decay[i]), members.train[i]
        if wd == 0:
            continue
        sk = LogisticRegression(C=1.0 / (int(rows.sum()) * wd), tol=1e-12, max_iter=100_000)
        sk.fit(feats[rows].numpy(), y[rows].numpy())
        z = feats @ r.params["weight"][i] + r.params["bias"][i]
        ours = torch.sigmoid(z[:, 0]) if k == 2 else z.softmax(dim=1)
        theirs = sk.predict_proba(feats.numpy())
        theirs = theirs[:, 1] if k == 2 else theirs
        assert np.abs(ours.numpy() - theirs).max() < 1e-5, f"member {i}, weight decay {wd}"
