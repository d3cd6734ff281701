"""A training run's memory is estimated and checked against a budget before any compute."""

from __future__ import annotations

import pytest
from test_analysis import make_acts

import lensprobe as lp
import lensprobe.train.protocol as protocol
from lensprobe.cli import main
from lensprobe.errors import InputError, MemoryBudgetError
from lensprobe.experiment import run_grid
from lensprobe.train import ProtocolConfig, TrainConfig
from lensprobe.train.budget import check_budget, estimate_training_memory, parse_memory

FAST = ProtocolConfig(weight_decays=(0.0, 0.1), n_folds=3, train=TrainConfig(max_steps=5))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GB", 4 * 10**9),
        ("512 MiB", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        ("800kb", 800_000),
        (1000, 1000),
        (2.5e9, 2_500_000_000),
    ],
)
def test_sizes_parse(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["4XB", "GB", "-1GB", "0", 0, True, "four"])
def test_a_size_that_is_not_one_is_a_named_error(bad):
    with pytest.raises(InputError, match="max_memory"):
        parse_memory(bad)


def test_ragged_activations_are_streamed_never_padded_whole():
    acts = make_acts(n=30, d=8, max_len=12)
    ragged = protocol.memory_estimate(acts, None, FAST, FAST.resolved_train)
    norms = next(v for k, v in ragged.parts.items() if k.startswith("token norms"))
    assert norms == 17 * acts.n_tokens  # a float64 norm per token and a seed's selection
    assert not any("padded" in k for k in ragged.parts)
    x, _ = acts.pad()
    as_tensor = protocol.memory_estimate(x, acts.labels, FAST, FAST.resolved_train)
    assert not any(k.startswith("token norms") for k in as_tensor.parts)  # used as it is
    assert ragged.total - as_tensor.total == norms
    # more heads, more members or longer rows need more; pooled probes hold no token batch
    kw = dict(n=100, pos=64, d_model=32, batch_size=32, n_outputs=1)
    one = estimate_training_memory(**kw, pooled=False, lbfgs=False, members=24, n_heads=1)
    eight = estimate_training_memory(**kw, pooled=False, lbfgs=False, members=24, n_heads=8)
    pooled = estimate_training_memory(**kw, pooled=True, lbfgs=True, members=24, n_heads=1)
    assert eight.total > one.total and not any("token batch" in k for k in pooled.parts)


def test_over_the_budget_the_run_stops_before_any_compute(monkeypatch):
    acts = make_acts(n=30, d=8, max_len=12)
    monkeypatch.setattr(protocol, "fit_members", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(protocol, "_resolve_data", lambda *a, **k: pytest.fail("padded"))
    with pytest.raises(MemoryBudgetError, match=r"budget is 1\.0 KB.*largest part.*max_memory"):
        lp.run_protocol(acts, config=FAST, probe="attention", max_memory="1KB")
    est = protocol.memory_estimate(acts, None, FAST, FAST.resolved_train)
    assert check_budget(est, est.total) == est.total  # exactly at the budget: allowed


def test_a_grid_checks_every_cell_before_the_first_trains(tmp_path, monkeypatch):
    acts = make_acts(n=30, d=8, max_len=12)
    small = protocol.memory_estimate(acts, None, FAST, FAST.resolved_train).total
    big = make_acts(n=30, d=8, max_len=60, seed=1)
    # the first hook fits, the second does not: nothing is trained or saved
    with pytest.raises(MemoryBudgetError):
        run_grid(
            {"blocks.1.hook_resid_post": acts, "blocks.2.hook_resid_post": big},
            ["mean"],
            protocol=FAST,
            out=tmp_path / "out",
            max_memory=small,
        )
    assert not (tmp_path / "out").exists()
    cells = run_grid({"h": acts}, ["mean"], protocol=FAST, max_memory=small)
    assert cells[0].result.metrics["accuracy"] >= 0.0


def test_cli_max_memory(tmp_path, capsys):
    from lensprobe.storage import save

    store = tmp_path / "acts"
    save(make_acts(n=30, d=8, max_len=12), store)
    args = ["train", "--acts", str(store), "--out", str(tmp_path / "out"), "--probes", "mean"]
    assert main([*args, "--max-memory", "4XB"]) == 1
    assert "is not a size" in capsys.readouterr().err
    assert main([*args, "--max-memory", "1KB"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "budget is 1.0 KB" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "cells").exists()


def test_a_sweep_step_counts_every_hooks_minibatch():
    kw = dict(n=2000, pos=64, d_model=640, batch_size=32, n_outputs=1, n_heads=1)
    kw.update(pooled=False, lbfgs=False, members=8 * 12)
    one_read = estimate_training_memory(**kw)
    every_hook = estimate_training_memory(**kw, hooks=12)  # 12 x 32 rows held until backward
    extra = 4 * 64 * (12 * 32 - 256) * 3 * 640  # beyond the 256 rows a scoring batch reads
    assert every_hook.total - one_read.total == extra
