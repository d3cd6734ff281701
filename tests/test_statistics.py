"""Seeds are repeated random splits; results carry intervals; comparisons are paired."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import lensprobe as lp
from lensprobe.errors import InputError


def needle(n=100, pos=10, d=8, seed=0):
    """Binary task whose class lives in one token at a random position (max reads it, last not)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, pos, d, generator=gen)
    lengths = torch.randint(5, pos + 1, (n,), generator=gen)
    mask = torch.arange(pos)[None] < lengths[:, None]
    where = (torch.rand(n, generator=gen) * (lengths - 1)).long()
    x[torch.arange(n), where, 0] += 6.0 * y - 1.0
    return x, mask, y


_RUNS: dict = {}


def run(probe, seeds=(0, 1, 2), data=None, **kw):
    """A protocol result on the needle task (cached: results are read, never changed)."""
    key = (probe, seeds, tuple(sorted(kw.items())))
    if data is None and key in _RUNS:
        return _RUNS[key]
    x, mask, y = data or needle()
    res = lp.run_protocol(x, y, mask=mask, probe=probe, seeds=seeds, **kw)
    if data is None:
        _RUNS[key] = res
    return res


def test_each_seed_draws_its_own_stratified_split():
    y = needle()[2]
    res = run("mean")
    assert [r.split_seed for r in res.runs] == [0, 1, 2]
    tests = [set(r.test_rows.tolist()) for r in res.runs]
    assert tests[0] != tests[1] and tests[1] != tests[2] and tests[0] != tests[2]
    for r in res.runs:
        assert not set(r.train_rows.tolist()) & set(r.test_rows.tolist())
        assert torch.bincount(y[r.test_rows]).tolist() == [10, 10]  # stratified 20%
        assert torch.equal(r.test_labels, y[r.test_rows])
    # L-BFGS is deterministic: identical splits would give identical seeds; these differ
    assert len({round(m["log_loss"], 9) for m in res.metrics_per_seed}) == 3
    assert res.test_rows is res.runs[0].test_rows and res.probe is res.runs[0].probe


def test_a_seed_is_an_independent_run_of_the_protocol():
    both = run("mean", seeds=(0, 1))
    alone = run("mean", seeds=(1,))
    a, b = both.runs[1], alone.runs[0]
    assert a.split_seed == b.split_seed == 1
    assert torch.equal(a.test_rows, b.test_rows) and a.weight_decay == b.weight_decay
    torch.testing.assert_close(a.test_logits, b.test_logits)
    assert a.metrics == pytest.approx(b.metrics)
    shifted = run("mean", seeds=(0,), split_seed=1)  # split seed = split_seed + seed
    assert torch.equal(shifted.test_rows, a.test_rows)


def test_summary_has_mean_std_t_interval_and_n_test():
    stats = pytest.importorskip("scipy.stats")
    res = run("max", seeds=(0, 1, 2, 3))
    assert res.n_test == 20
    for name, est in res.summary.items():
        values = np.array([m[name] for m in res.metrics_per_seed])
        assert est.mean == pytest.approx(values.mean()) == pytest.approx(res.metrics[name])
        assert est.n_seeds == 4 and est.n_test == 20 and est.method == "t"
        if values.std() == 0:
            assert est.low == est.high == est.mean
            continue
        assert est.std == pytest.approx(values.std(ddof=1))
        low, high = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values))
        assert (est.low, est.high) == pytest.approx((low, high), rel=1e-6)
    payload = json.loads(json.dumps(res.to_dict()))
    assert payload["summary"]["accuracy"]["n_test"] == 20
    assert [r["split_seed"] for r in payload["runs"]] == [0, 1, 2, 3]
    assert "tpr_at_5pct_fpr" in res.metrics and "fpr_at_5pct_threshold" in res.metrics


def test_tpr_thresholds_are_fixed_on_the_training_part():
    res = run("max", seeds=(0,))
    r = res.runs[0]
    assert r.cv_logits.shape == (r.train_rows.numel(), 1)
    for name, fpr in lp.metrics.MONITORING_FPRS.items():
        t = lp.metrics.fpr_threshold(r.cv_logits, needle()[2][r.train_rows], fpr)
        assert r.thresholds[name] == t
        pos = r.test_logits[r.test_labels == 1, 0]
        assert r.metrics[name] == float((pos > t).double().mean())


def test_one_seed_has_no_t_interval_but_a_seeded_bootstrap():
    res = run("max", seeds=(0,))
    est = res.summary["accuracy"]
    assert est.method == "none" and math.isnan(est.low) and math.isnan(est.std)
    boot = res.bootstrap("log_loss", n_resamples=400, seed=3)
    assert boot.method == "bootstrap" and boot.n_test == 20
    assert boot.low <= res.metrics["log_loss"] <= boot.high and boot.low < boot.high
    assert res.bootstrap("log_loss", n_resamples=400, seed=3) == boot  # seeded
    assert res.bootstrap("log_loss", n_resamples=400, seed=4) != boot
    with pytest.raises(KeyError, match="choose one of"):
        res.bootstrap("accuracyy")


def test_compare_pairs_two_probe_kinds_on_the_same_splits():
    stats = pytest.importorskip("scipy.stats")
    mx, last = run("max"), run("last")
    c = lp.compare(mx, last, metric="accuracy")
    diffs = np.array([a["accuracy"] - b["accuracy"] for a, b in zip(mx.metrics_per_seed, last.metrics_per_seed, strict=True)])  # fmt: skip
    assert c.differences == pytest.approx(tuple(diffs))
    low, high = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert (c.low, c.high) == pytest.approx((low, high), rel=1e-6)
    assert c.verdict == "a better" and c.method == "t" and c.n_test == 20
    assert (c.a, c.b) == ("max", "last") and "max better" in str(c)
    assert lp.compare(last, mx).verdict == "b better"
    assert lp.compare(mx, last, metric="log_loss").verdict == "a better"  # lower is better
    same = lp.compare(mx, mx)
    assert same.difference == 0 and same.verdict == "undecided"


def test_compare_never_trusts_a_zero_width_t_interval():
    """Seeds that all differ by the same amount estimate no spread: ``auto`` falls back to the
    paired bootstrap, and an explicit ``t`` (an interval of zero width) decides nothing."""
    import dataclasses

    mx, last = run("max"), run("last")
    shifted = dataclasses.replace(
        last,
        runs=[
            dataclasses.replace(
                rb, metrics={**rb.metrics, "accuracy": ra.metrics["accuracy"] - 0.05}
            )
            for ra, rb in zip(mx.runs, last.runs, strict=True)
        ],
    )
    auto = lp.compare(mx, shifted, n_resamples=300)
    assert auto.differences == pytest.approx((0.05,) * len(mx.runs))
    assert auto.method == "bootstrap" and auto.low < auto.high
    t = lp.compare(mx, shifted, method="t")
    assert t.low == pytest.approx(t.high) and t.verdict == "undecided"


def test_compare_with_one_seed_is_a_paired_bootstrap():
    mx, last = run("max", seeds=(0,)), run("last", seeds=(0,))
    c = lp.compare(mx, last, n_resamples=300)
    assert c.method == "bootstrap" and c.low <= c.difference <= c.high
    itself = lp.compare(mx, mx, n_resamples=300)
    assert itself.low == itself.high == 0.0  # paired: both scored on the same resampled rows
    with pytest.raises(InputError, match="two or more seeds"):
        lp.compare(mx, last, method="t")
    with pytest.raises(InputError, match="no test metric 'f1'; choose one of"):
        lp.compare(mx, last, "f1")


def test_compare_verdicts_follow_the_direction_of_the_metric():
    from lensprobe.train.compare import _verdict

    assert _verdict("accuracy", 0.1, 0.3) == "a better"
    assert _verdict("accuracy", -0.3, -0.1) == "b better"
    assert _verdict("log_loss", 0.1, 0.3) == "b better"  # lower is better
    assert _verdict("ece", -0.3, -0.1) == "a better"
    assert _verdict("accuracy", -0.1, 0.3) == "undecided"  # contains 0
    assert _verdict("accuracy", 0.0, 0.3) == "undecided"  # touches 0
    assert _verdict("accuracy", math.nan, 0.3) == "undecided"
    assert _verdict("accuracy", 0.2, 0.2, decides=False) == "undecided"  # zero-width t


def test_compare_refuses_results_whose_splits_differ():
    base = run("max", seeds=(0, 1))
    with pytest.raises(InputError, match=r"different splits \(split seeds \[0, 1\] vs \[1, 2\]\)"):
        lp.compare(base, run("last", seeds=(1, 2)))
    with pytest.raises(InputError, match="different train/test rows"):
        lp.compare(base, run("last", seeds=(0, 1), test_fraction=0.3))
    x, mask, y = needle()
    with pytest.raises(InputError, match="different train/test rows or test labels"):
        lp.compare(base, run("last", seeds=(0, 1), data=(x, mask, 1 - y)))


def test_grid_records_and_table_carry_the_interval_and_n_test():
    from lensprobe.experiment import GridRow, format_table

    several = GridRow(dataset="d", hook="h", probe="max", result=run("max")).record()
    est = run("max").summary["accuracy"]
    assert several["n_test"] == 20 and several["seeds"] == 3
    assert (several["accuracy_low"], several["accuracy_high"]) == (
        pytest.approx(est.low, abs=1e-5),
        pytest.approx(est.high, abs=1e-5),
    )
    one = GridRow(dataset="d", hook="h", probe="max", result=run("max", seeds=(0,))).record()
    assert "accuracy_low" not in one  # one split: no t-interval (res.bootstrap gives one)
    table = format_table([several, one])
    assert "acc 95% low" in table and "n_test" in table.splitlines()[0]
