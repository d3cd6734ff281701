"""Entropy against the uniform baseline, exact token contributions, true top examples."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from probe_helpers import builtin_kinds, random_probe

import lensprobe as lp
from lensprobe.activations import Activations, ActivationsMeta
from lensprobe.analysis import (
    attention_entropy,
    entropy_from_attention,
    explain,
    token_contributions,
    top_examples,
)

D = 8


def make_acts(n=30, d=D, max_len=12, min_len=1, seed=0, vocab=25, n_classes=2):
    """Random ragged activations with token ids, readable token strings, labels and texts."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen)
    lengths[0] = 1  # always one single-token sequence
    values = torch.randn(int(lengths.sum()), d, generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = torch.randint(0, vocab, (int(lengths.sum()),), generator=gen)
    strs = [[f" w{i}" for i in ids[offsets[j] : offsets[j + 1]].tolist()] for j in range(n)]
    meta = ActivationsMeta(
        hook="blocks.3.hook_resid_post",
        model_id="toy",
        backend="hf",
        d_model=d,
        dtype="float32",
        tokenizer="toy",
        padding_side="right",
        max_length=None,
        n_truncated=0,
        prepend_bos=False,
        class_names=tuple(f"c{c}" for c in range(n_classes)),
    )
    labels = torch.arange(n) % n_classes
    return Activations(
        meta, values, offsets, ids, labels, token_strs=strs, texts=["".join(s) for s in strs]
    )


randomised = functools.partial(random_probe, d_model=D)


def left_padded_with_garbage(acts: Activations, extra=3):
    """The same sequences, padded on the left with large garbage values."""
    x, mask = acts.pad(padding_side="left")
    pad = torch.full((x.shape[0], extra, x.shape[2]), 50.0)
    x = torch.cat([pad, x], dim=1)
    mask = torch.cat([torch.zeros(x.shape[0], extra, dtype=torch.bool), mask], dim=1)
    x[~mask] = 50.0
    return x, mask


# -- entropy ---------------------------------------------------------------------------------------


def test_entropy_of_known_distributions():
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6, [True] + [False] * 5])
    attn = torch.zeros(3, 6, 2)
    attn[0, :4, 0] = 0.25  # uniform over 4
    attn[0, 2, 1] = 1.0  # one token
    attn[1, :, 0] = torch.tensor([0.5, 0.5, 0, 0, 0, 0])  # two of six
    attn[1, :, 1] = 1 / 6
    attn[2, 0, :] = 1.0  # a single valid token
    attn[0, 4:, :] = 9.0  # garbage at masked positions must be ignored
    ent = entropy_from_attention(attn, mask)
    assert ent.entropy[0, 0].item() == pytest.approx(math.log(4), abs=1e-6)
    assert ent.entropy[0, 1].item() == 0.0 and ent.ratio[0, 1].item() == 0.0
    assert ent.ratio[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert ent.entropy[1, 0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert ent.ratio[1, 0].item() == pytest.approx(math.log(2) / math.log(6), abs=1e-6)
    assert ent.ratio[1, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert ent.uniform.tolist() == pytest.approx([math.log(4), math.log(6), 0.0])
    assert ent.n_valid.tolist() == [4, 6, 1]
    # one valid token: entropy 0, uniform 0, ratio undefined -> NaN, left out of ratio summaries
    assert ent.entropy[2].tolist() == [0.0, 0.0] and ent.ratio[2].isnan().all()
    head0 = ent.per_head()[0]
    assert head0["n_ratio_defined"] == 2 and head0["n_sequences"] == 3
    expected = (1.0 + math.log(2) / math.log(6)) / 2
    assert head0["mean_ratio"] == pytest.approx(expected, abs=1e-6)
    assert head0["mean_entropy"] == pytest.approx((math.log(4) + math.log(2)) / 3, abs=1e-6)
    assert ent.summary()["n_ratio_defined"] == 4


def test_entropy_matches_numpy_on_random_distributions():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 15, size=20)
    pos = int(lengths.max())
    attn = np.zeros((20, pos, 3))
    mask = np.zeros((20, pos), dtype=bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
        attn[i, :n] = rng.dirichlet(np.full(n, 0.3), size=3).T
    ent = entropy_from_attention(torch.tensor(attn, dtype=torch.float32), torch.tensor(mask))
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(attn > 0, attn * np.log(attn), 0.0)
    expected = -plogp.sum(axis=1)
    np.testing.assert_allclose(ent.entropy.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        ent.ratio.numpy(), expected / np.log(lengths)[:, None], rtol=1e-4, atol=1e-5
    )
    assert bool((ent.ratio <= 1 + 1e-5).all() and (ent.ratio >= 0).all())


def test_fresh_probe_attends_uniformly_and_a_steep_position_bias_attends_to_one_token():
    acts = make_acts()
    probe = lp.AttentionProbe(D, n_heads=2)  # query 0, position weight 0: uniform attention
    ent = attention_entropy(probe, acts)
    defined = ~ent.ratio.isnan()
    torch.testing.assert_close(ent.ratio[defined], torch.ones(int(defined.sum())))
    torch.testing.assert_close(ent.entropy[:, 0], ent.uniform)
    with torch.no_grad():
        probe.position_weight.fill_(60.0)  # all weight on the last token
    ent = attention_entropy(probe, acts)
    assert float(ent.ratio[~ent.ratio.isnan()].max()) < 1e-3
    assert ent.rows.tolist() == list(range(len(acts)))


def test_entropy_ignores_padding_and_batching_and_respects_rows():
    acts = make_acts(n=25)
    probe = randomised("attention", scale=0.4)
    full = attention_entropy(probe, acts, batch_size=64)
    x, mask = left_padded_with_garbage(acts)
    other = attention_entropy(probe, (x, mask), batch_size=4)
    torch.testing.assert_close(full.entropy, other.entropy, rtol=1e-4, atol=1e-5)
    rows = torch.tensor([7, 2, 19])
    sub = attention_entropy(probe, acts, rows=rows, batch_size=2)
    assert sub.rows.tolist() == [7, 2, 19]
    torch.testing.assert_close(sub.entropy, full.entropy[rows], rtol=1e-5, atol=1e-6)
    assert sub.n_valid.tolist() == acts.lengths[rows].tolist()


def test_entropy_keeps_probe_mode_and_json_has_no_nan():
    import json

    acts = make_acts(n=6)
    probe = randomised("attention").train()
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    ent = attention_entropy(probe, acts)
    assert probe.training
    assert all(torch.equal(before[k], v) for k, v in probe.state_dict().items())
    text = json.dumps(ent.to_dict(), allow_nan=False)  # the one-token row's ratio is null
    assert '"ratio": [[null, null, null]' in text


def test_entropy_of_a_pooled_probe_names_the_alternative():
    with pytest.raises(TypeError, match="token_contributions"):
        attention_entropy(lp.MeanProbe(D), make_acts(n=4))


# -- token contributions -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", builtin_kinds())
@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("exclude_bos", [False, True])
def test_contributions_sum_to_the_logits_and_ignore_padding(kind, n_outputs, exclude_bos):
    acts = make_acts(n=12, seed=1)
    if exclude_bos:  # every row needs a token after BOS
        acts = acts[[i for i in range(len(acts)) if int(acts.lengths[i]) > 1]]
    probe = randomised(kind, n_outputs=n_outputs, seed=2, scale=0.5, exclude_bos=exclude_bos)
    x, mask = acts.pad()
    contrib = token_contributions(probe, x, mask)
    with torch.no_grad():
        logits = probe(x, mask)
    torch.testing.assert_close(contrib.sum(dim=1) + probe.bias, logits, rtol=1e-4, atol=1e-4)
    assert bool((contrib[~mask] == 0).all())
    if exclude_bos:
        assert bool((contrib[:, 0] == 0).all()) and bool((contrib[:, 1] != 0).any())
    xl, ml = left_padded_with_garbage(acts)
    other = token_contributions(probe, xl, ml)
    torch.testing.assert_close(other[ml], contrib[mask], rtol=1e-4, atol=1e-5)


def test_last_token_contribution_sits_on_the_last_token_and_max_splits_ties():
    probe = randomised("last", n_outputs=2)
    x = torch.randn(1, 5, D)
    mask = torch.tensor([[True, True, True, False, False]])
    contrib = token_contributions(probe, x, mask)
    assert bool((contrib[0, :2] == 0).all()) and bool((contrib[0, 2] != 0).any())
    maxp = randomised("max", n_outputs=1)
    row = torch.randn(D)
    x = torch.stack([row, row, row - 1.0])[None]  # tokens 0 and 1 tie on every feature
    contrib = token_contributions(maxp, x, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(contrib[0, 0], contrib[0, 1])
    assert float(contrib[0, 2].abs().max()) == 0.0


# -- top examples --------------------------------------------------------------------------------


def brute_force(probe, acts, rows):
    """Logits, attention and token masses of every row, one sequence at a time."""
    logits, peaks, mass = {}, {}, {}
    with torch.no_grad():
        for r in rows:
            x = acts.sequence(r).float()[None]
            m = torch.ones(1, x.shape[1], dtype=torch.bool)
            if isinstance(probe, lp.AttentionProbe):
                out, attn = probe(x, m, return_attention=True)
                peaks[r] = attn[0].max(dim=0)
                ids = acts.token_ids[acts.offsets[r] : acts.offsets[r + 1]].tolist()
                for p, tid in enumerate(ids):
                    mass.setdefault(tid, torch.zeros(attn.shape[-1], dtype=torch.float64))
                    mass[tid] += attn[0, p].double()
            else:
                out = probe(x, m)
            logits[r] = out[0]
    return logits, peaks, mass


def test_top_examples_are_the_true_top_k_per_class_and_per_head():
    acts = make_acts(n=40, seed=3, vocab=12)
    probe = randomised("attention", n_outputs=1, n_heads=2, seed=4, scale=0.5)
    rows = list(range(3, 40, 2))
    top = top_examples(probe, acts, k=4, rows=rows, batch_size=5)
    logits, peaks, mass = brute_force(probe, acts, rows)
    by_logit = sorted(rows, key=lambda r: -float(logits[r]))
    assert [e.row for e in top.by_class[1]] == by_logit[:4]
    assert [e.row for e in top.by_class[0]] == by_logit[::-1][:4]  # class 0: most negative logit
    for e in top.by_class[0]:
        assert e.score == pytest.approx(-float(logits[e.row]), abs=1e-5)
        torch.testing.assert_close(e.logits, logits[e.row], rtol=1e-4, atol=1e-5)
    for h in range(2):
        expected = sorted(rows, key=lambda r: -float(peaks[r].values[h]))[:4]
        got = top.by_head[h]
        assert [e.row for e in got] == expected
        for e in got:
            assert e.head == h and e.peak == int(peaks[e.row].indices[h])
            assert e.score == pytest.approx(float(peaks[e.row].values[h]), abs=1e-5)
            assert e.tokens == tuple(acts.token_strs[e.row])
            assert e.attention[:, h].max().item() == pytest.approx(e.score, abs=1e-6)
        best_ids = sorted(mass, key=lambda t: -float(mass[t][h]))[:3]
        assert [t.token for t in top.head_tokens[h][:3]] == [f" w{i}" for i in best_ids]
        for t, tid in zip(top.head_tokens[h][:3], best_ids, strict=True):
            assert t.mass == pytest.approx(float(mass[tid][h]), rel=1e-5)
            assert t.count == sum(
                acts.token_ids[acts.offsets[r] : acts.offsets[r + 1]].tolist().count(tid)
                for r in rows
            )
        assert sum(t.share for t in top.head_tokens[h]) <= 1 + 1e-6
    assert top.n_rows == len(rows) and top.k == 4
    e = top.by_class[1][0]
    assert e.label == int(acts.labels[e.row]) and e.text == acts.texts[e.row]
    torch.testing.assert_close(
        e.contributions.sum(0) + probe.bias.detach(), e.logits, rtol=1e-4, atol=1e-4
    )


def test_head_examples_find_a_planted_needle_token():
    acts = make_acts(n=30, seed=5, vocab=20, min_len=4)
    needle = torch.zeros(D)
    needle[0] = 1.0
    values = acts.values.clone()
    ids = acts.token_ids.clone()
    strs = [list(s) for s in acts.token_strs]
    for r in range(0, 30, 3):  # plant a needle token in every third sequence
        at = int(acts.offsets[r]) + int(acts.lengths[r]) // 2
        values[at] = needle * 5.0
        ids[at] = 99
        strs[r][int(acts.lengths[r]) // 2] = " NEEDLE"
    planted = Activations(acts.meta, values, acts.offsets, ids, acts.labels, token_strs=strs)
    probe = lp.AttentionProbe(D, n_heads=1)
    with torch.no_grad():
        probe.query[:, 0] = needle * 4.0
    top = top_examples(probe, planted, k=5)
    assert top.head_tokens[0][0].token == " NEEDLE" and top.head_tokens[0][0].count == 10
    for e in top.by_head[0]:
        assert e.row % 3 == 0 and e.tokens[e.peak] == " NEEDLE"


def test_top_examples_of_pooled_multiclass_probes_and_tuple_input():
    acts = make_acts(n=20, seed=6, n_classes=3)
    probe = randomised("mean", n_outputs=3, seed=7)
    top = top_examples(probe, acts, k=50)
    assert top.k == 20 and top.by_head == () and top.head_tokens == ()
    assert len(top.by_class) == 3 and top.class_names == ("c0", "c1", "c2")
    logits, _, _ = brute_force(probe, acts, range(20))
    for c in range(3):
        assert [e.row for e in top.by_class[c]] == sorted(
            range(20), key=lambda r: -float(logits[r][c])
        )
        assert e.attention is None if (e := top.by_class[c][0]) else True
    x, mask = left_padded_with_garbage(acts)
    strs = acts.token_strs
    other = top_examples(probe, (x, mask), k=3, token_strs=strs, labels=acts.labels)
    assert [e.row for e in other.by_class[2]] == [e.row for e in top.by_class[2]][:3]
    assert other.by_class[2][0].tokens == tuple(strs[other.by_class[2][0].row])
    plain = top_examples(probe, (x, mask), k=2)
    assert plain.by_class[0][0].tokens[0] == "[0]" and plain.by_class[0][0].label is None


def test_top_examples_do_not_touch_probe_or_activations_and_errors_name_the_fix():
    acts = make_acts(n=10)
    values = acts.values.clone()
    probe = randomised("attention").train()
    top_examples(probe, acts, k=2)
    assert probe.training and torch.equal(acts.values, values)
    with pytest.raises(IndexError, match="rows must lie in"):
        top_examples(probe, acts, rows=[0, 10])
    with pytest.raises(ValueError, match="width"):
        top_examples(lp.MeanProbe(D + 1), acts)
    with pytest.raises(ValueError, match="k must be positive"):
        top_examples(probe, acts, k=0)


def test_explain_one_sequence():
    acts = make_acts(n=8)
    probe = randomised("attention", n_outputs=1, scale=0.5)
    e = explain(probe, acts, -1)
    assert e.row == 7 and e.tokens == tuple(acts.token_strs[7])
    assert e.attention.shape == (int(acts.lengths[7]), 3)
    torch.testing.assert_close(e.attention.sum(0), torch.ones(3))
    torch.testing.assert_close(e.head_contributions.sum(1), e.contributions)
    assert e.predicted == int(e.logits[0] > 0)
    with pytest.raises(IndexError):
        explain(probe, acts, 8)
