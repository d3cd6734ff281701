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
    assert a.metrics == pytest.approx(b.metrics, nan_ok=True)  # TPR@1%: too few negatives
    shifted = run("mean", seeds=(0,), split_seed=1)  # split seed = split_seed + seed
    assert torch.equal(shifted.test_rows, a.test_rows)


def test_summary_has_mean_std_corrected_t_interval_and_n_test():
    from lensprobe.metrics import corrected_t_interval, metric_range, wilson_interval

    res = run("max", seeds=(0, 1, 2, 3))
    assert res.n_test == 20
    n_train = int(res.train_rows.numel())
    assert all(math.isnan(m["tpr_at_1pct_fpr"]) for m in res.metrics_per_seed)  # 40 negatives
    for name, est in res.summary.items():
        values = np.array([m[name] for m in res.metrics_per_seed])
        if np.isnan(values).any():
            assert math.isnan(est.mean) and est.method == "none"
            continue
        assert est.mean == pytest.approx(values.mean()) == pytest.approx(res.metrics[name])
        assert est.n_seeds == 4 and est.n_test == 20 and est.n_train == n_train == 80
        if values.std() == 0:  # no spread: never a zero-width interval
            if name == "accuracy":
                assert est.method == "wilson"
                assert (est.low, est.high) == wilson_interval(round(values[0] * 20), 20)
            else:
                assert est.method == "none" and math.isnan(est.low)
            continue
        assert est.method == "corrected_t"
        assert est.std == pytest.approx(values.std(ddof=1))
        expected = corrected_t_interval(values, 80, 20, bounds=metric_range(name))
        assert (est.low, est.high) == pytest.approx(expected, rel=1e-9)
        lo, hi = metric_range(name)
        assert lo <= est.low <= est.high <= hi
    payload = json.loads(json.dumps(res.to_dict()))
    assert payload["summary"]["accuracy"]["n_test"] == 20
    assert [r["split_seed"] for r in payload["runs"]] == [0, 1, 2, 3]
    assert "tpr_at_5pct_fpr" in res.metrics and "fpr_at_5pct_threshold" in res.metrics


def test_repeated_seeds_are_refused():
    with pytest.raises(ValueError, match=r"repeats a seed.*seeds=range\(3\)"):
        lp.ProtocolConfig(seeds=(0, 0, 0))


def test_tpr_thresholds_are_fixed_on_the_training_part():
    res = run("max", seeds=(0,))
    r = res.runs[0]
    assert r.cv_logits.shape == (r.train_rows.numel(), 1)
    assert math.isnan(r.thresholds["tpr_at_1pct_fpr"])  # 40 training negatives: unavailable
    assert math.isnan(r.metrics["tpr_at_1pct_fpr"]) and math.isnan(
        r.metrics["fpr_at_1pct_threshold"]
    )
    for name, fpr in {"tpr_at_5pct_fpr": 0.05}.items():
        t = lp.metrics.fpr_threshold(r.cv_logits, needle()[2][r.train_rows], fpr)
        assert r.thresholds[name] == t
        pos = r.test_logits[r.test_labels == 1, 0]
        assert r.metrics[name] == float((pos > t).double().mean())


def test_one_seed_has_a_wilson_accuracy_and_a_seeded_bootstrap():
    res = run("max", seeds=(0,))
    est = res.summary["accuracy"]
    assert est.method == "wilson" and est.low < est.mean <= est.high <= 1.0
    assert math.isnan(est.std) and "Wilson" in str(est)
    assert res.summary["log_loss"].method == "none"
    boot = res.bootstrap("log_loss", n_resamples=400, seed=3)
    assert boot.method == "bootstrap" and boot.n_test == 20
    assert boot.low <= res.metrics["log_loss"] <= boot.high and boot.low < boot.high
    assert "ignores training variability" in str(boot)
    assert res.bootstrap("log_loss", n_resamples=400, seed=3) == boot  # seeded
    assert res.bootstrap("log_loss", n_resamples=400, seed=4) != boot
    with pytest.raises(KeyError, match="choose one of"):
        res.bootstrap("accuracyy")


def test_compare_pairs_two_probe_kinds_on_the_same_splits():
    from lensprobe.metrics import corrected_t_interval, corrected_t_p_value

    mx, last = run("max"), run("last")
    c = lp.compare(mx, last, metric="accuracy")
    diffs = np.array([a["accuracy"] - b["accuracy"] for a, b in zip(mx.metrics_per_seed, last.metrics_per_seed, strict=True)])  # fmt: skip
    assert c.differences == pytest.approx(tuple(diffs))
    expected = corrected_t_interval(diffs, 80, 20, bounds=(-1.0, 1.0))
    assert (c.low, c.high) == pytest.approx(expected, rel=1e-9)
    assert c.p_value == pytest.approx(corrected_t_p_value(diffs, 80, 20))
    assert c.verdict == "a better" and c.method == "corrected_t" and c.n_test == 20
    assert (c.a, c.b) == ("max", "last") and "max better" in str(c)
    assert "corrected t over 3 splits" in str(c)
    assert lp.compare(last, mx).verdict == "b better"
    assert lp.compare(mx, last, metric="log_loss").verdict == "a better"  # lower is better
    same = lp.compare(mx, mx)
    assert same.difference == 0 and same.verdict == "undecided" and math.isnan(same.low)


def _shift(base, other, delta_of):
    """``other`` with each run's accuracy set to ``delta_of(base run's accuracy)``."""
    import dataclasses

    return dataclasses.replace(
        other,
        runs=[
            dataclasses.replace(
                rb, metrics={**rb.metrics, "accuracy": delta_of(ra.metrics["accuracy"])}
            )
            for ra, rb in zip(base.runs, other.runs, strict=True)
        ],
    )


def test_compare_never_issues_a_zero_width_interval():
    """Differences that are the same on every split estimate no spread: no interval, undecided,
    also when rounding makes equal row counts differ in the last digit (n_test = 31)."""
    mx, last = run("max"), run("last")
    shifted = _shift(mx, last, lambda acc: acc - 0.05)
    c = lp.compare(mx, shifted)
    assert c.differences == pytest.approx((0.05,) * len(mx.runs))
    assert math.isnan(c.low) and math.isnan(c.high) and c.verdict == "undecided"
    assert math.isnan(c.p_value) and "no spread over 3 splits" in str(c)
    # one row ahead on every split, n_test = 31: sums of 1/31 differ by an ulp
    import dataclasses

    ulp = [
        (19 / 31, 18 / 31),
        (sum([1 / 31] * 19), sum([1 / 31] * 18)),
        (0.6129032258064517, 18 / 31),
    ]
    a = dataclasses.replace(mx, runs=[dataclasses.replace(r, metrics={**r.metrics, "accuracy": u[0]}) for r, u in zip(mx.runs, ulp, strict=True)])  # fmt: skip
    b = dataclasses.replace(last, runs=[dataclasses.replace(r, metrics={**r.metrics, "accuracy": u[1]}) for r, u in zip(last.runs, ulp, strict=True)])  # fmt: skip
    assert np.ptp([x - y for x, y in ulp]) > 0  # the old exact test saw a spread here
    c = lp.compare(a, b)
    assert c.verdict == "undecided" and math.isnan(c.low)


def test_compare_with_one_seed_is_a_paired_bootstrap():
    mx, last = run("max", seeds=(0,)), run("last", seeds=(0,))
    c = lp.compare(mx, last, n_resamples=300)
    assert c.method == "bootstrap" and c.low <= c.difference <= c.high
    assert 0.0 <= c.p_value <= 1.0 and "ignores training variability" in str(c)
    itself = lp.compare(mx, mx, n_resamples=300)
    assert math.isnan(itself.low) and itself.verdict == "undecided"  # no spread, not [0, 0]
    with pytest.raises(InputError, match="two or more splits"):
        lp.compare(mx, last, method="corrected_t")
    with pytest.raises(InputError, match="no test metric 'f1'; choose one of"):
        lp.compare(mx, last, "f1")


def test_holm_adjusts_a_family_of_comparisons():
    from lensprobe.train.compare import holm

    mx, last, mean = run("max"), run("last"), run("mean")
    raw = [lp.compare(mx, last), lp.compare(mx, mean), lp.compare(last, mean)]
    adjusted = holm(raw)
    assert [c.family for c in adjusted] == [3, 3, 3]
    for r, c in zip(raw, adjusted, strict=True):
        assert c.verdict == r.verdict  # the raw verdict stays beside the adjusted one
        assert c.holm_verdict in (r.verdict, "undecided")
        assert "Holm over 3" in str(c)
    smallest = min(raw, key=lambda c: c.p_value)
    assert smallest.p_value < 0.05 / 3 or holm([smallest] * 3)[0].holm_verdict == "undecided"


def test_compare_verdicts_follow_the_direction_of_the_metric():
    from lensprobe.train.compare import _verdict

    assert _verdict("accuracy", 0.1, 0.3) == "a better"
    assert _verdict("accuracy", -0.3, -0.1) == "b better"
    assert _verdict("log_loss", 0.1, 0.3) == "b better"  # lower is better
    assert _verdict("ece", -0.3, -0.1) == "a better"
    assert _verdict("accuracy", -0.1, 0.3) == "undecided"  # contains 0
    assert _verdict("accuracy", 0.0, 0.3) == "undecided"  # touches 0
    assert _verdict("accuracy", math.nan, 0.3) == "undecided"


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
    from lensprobe.experiment import format_table
    from lensprobe.grid import Cell, Grid

    several = Cell(dataset="d", hook="h", probe="max", result=run("max")).record()
    est = run("max").summary["accuracy"]
    assert several["n_test"] == 20 and several["seeds"] == 3
    assert (several["accuracy_low"], several["accuracy_high"]) == (
        pytest.approx(est.low, abs=1e-5),
        pytest.approx(est.high, abs=1e-5),
    )
    assert several["accuracy_interval"] == est.method
    one_cell = Cell(dataset="e", hook="h", probe="max", result=run("max", seeds=(0,)))
    one = one_cell.record()
    assert one["accuracy_interval"] == "wilson" and one["auroc_interval"] in ("bootstrap", "none")
    table = format_table(Grid.build([Cell("d", "h", "max", run("max")), one_cell]))
    assert "acc 95% low" in table and "n_test" in table.splitlines()[0]
