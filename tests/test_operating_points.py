"""Operating points: thresholds fixed on training data or a control set, saved with the probe."""

from __future__ import annotations

import math

import pytest
import torch
from probe_helpers import token_task

import lensprobe as lp
from lensprobe.errors import InputError, OutputPathError
from lensprobe.grid import control_fingerprint
from lensprobe.metrics import MONITORING_FPRS, false_positive_rate, fpr_threshold, tpr_at_fpr
from lensprobe.monitoring import operating_threshold
from lensprobe.train import TrainConfig

KW = dict(probe="mean", weight_decays=(0.0, 1e-2), n_folds=3, train=TrainConfig(max_steps=30))


def _task(n=300, seed=0):
    return token_task(n, 6, 8, 2, seed, min_length=2, strength=1.0)


def test_thresholds_fixed_on_training_logits_are_saved_with_the_probe(tmp_path):
    x, mask, y = _task()
    res = lp.run_protocol(x, y, mask=mask, seeds=(0, 1), **KW)
    for run in res.runs:
        saved = run.probe.config.thresholds
        assert set(saved) == set(MONITORING_FPRS)
        n_neg = int((y[run.train_rows] == 0).sum())
        assert f"({len(run.train_rows)} rows, {n_neg} negatives)" in run.probe.config.fixed_on
        assert saved["tpr_at_1pct_fpr"] == run.thresholds["tpr_at_1pct_fpr"]
        assert saved["tpr_at_0.1pct_fpr"] is None  # 1,000 negatives needed: said, not faked
        assert math.isnan(run.metrics["tpr_at_0.1pct_fpr"])
        # the threshold is in the saved probe's own logits on raw activations
        with torch.no_grad():
            logits = run.probe(x[run.test_rows], mask[run.test_rows])
        t = saved["tpr_at_1pct_fpr"]
        labels = y[run.test_rows]
        assert run.metrics["tpr_at_1pct_fpr"] == pytest.approx(
            tpr_at_fpr(logits, labels, 0.01, threshold=t), abs=1e-6
        )
        assert run.metrics["fpr_at_1pct_threshold"] == pytest.approx(
            false_positive_rate(logits, labels, t), abs=1e-6
        )
    res.probe.save(tmp_path / "p")
    loaded = lp.load_probe(tmp_path / "p")
    assert loaded.config.thresholds == res.probe.config.thresholds
    assert loaded.config.fixed_on == res.probe.config.fixed_on
    assert operating_threshold(loaded, "tpr_at_1pct_fpr") == saved_first(res)


def saved_first(res):
    return res.runs[0].probe.config.thresholds["tpr_at_1pct_fpr"]


def test_a_control_set_fixes_the_thresholds_instead():
    x, mask, y = _task()
    xc, mc, _ = _task(n=400, seed=9)
    res = lp.run_protocol(x, y, mask=mask, control=(xc, mc), **KW)
    run = res.runs[0]
    with torch.no_grad():
        control_logits = run.probe(xc, mc)
    negatives = torch.zeros(400, dtype=torch.long)
    for name, fpr in MONITORING_FPRS.items():
        if fpr >= 1 / 400:
            assert run.thresholds[name] == pytest.approx(
                fpr_threshold(control_logits, negatives, fpr), abs=1e-6
            )
    assert run.probe.config.fixed_on == "control set (400 rows, all negatives)"
    plain = lp.run_protocol(x, y, mask=mask, **KW)
    assert plain.runs[0].thresholds != run.thresholds  # same probe, other negatives
    torch.testing.assert_close(plain.runs[0].test_logits, run.test_logits)


def test_a_bare_padded_control_counts_every_position():
    x, mask, y = _task()
    xc, _, _ = _task(n=100, seed=9)  # more rows than one control batch
    run = lp.run_protocol(x, y, mask=mask, control=xc, **KW).runs[0]
    with torch.no_grad():
        logits = run.probe(xc, torch.ones(xc.shape[:2], dtype=torch.bool))
    negatives = torch.zeros(100, dtype=torch.long)
    assert run.thresholds["tpr_at_5pct_fpr"] == pytest.approx(
        fpr_threshold(logits, negatives, 0.05), abs=1e-6
    )


def test_too_few_control_negatives_are_said_and_the_monitor_refuses_them():
    x, mask, y = _task()
    xc, mc, _ = _task(n=50, seed=9)
    res = lp.run_protocol(x, y, mask=mask, control=(xc, mc), **KW)
    assert res.probe.config.thresholds["tpr_at_1pct_fpr"] is None
    assert res.probe.config.thresholds["tpr_at_5pct_fpr"] is not None
    assert math.isnan(res.runs[0].metrics["tpr_at_1pct_fpr"])
    with pytest.raises(InputError, match="too few negatives in the control set"):
        operating_threshold(res.probe, "tpr_at_1pct_fpr")
    with pytest.raises(InputError, match="holds no operating point 'tpr_at_2pct_fpr'"):
        operating_threshold(res.probe, "tpr_at_2pct_fpr")


def test_control_errors_come_before_any_training():
    x, mask, y = _task()
    xc, mc, _ = _task(n=20, seed=9)
    with pytest.raises(InputError, match="binary probe; this task has 3 classes"):
        lp.run_protocol(x, torch.arange(300) % 3, mask=mask, control=(xc, mc), **KW)
    with pytest.raises(InputError, match="width 4 but the activations have 8"):
        lp.run_protocol(x, y, mask=mask, control=torch.zeros(5, 3, 4), **KW)
    with pytest.raises(InputError, match="empty"):
        lp.run_protocol(x, y, mask=mask, control=torch.zeros(0, 3, 8), **KW)
    with pytest.raises(TypeError, match="control must be"):
        lp.run_protocol(x, y, mask=mask, control=[1, 2], **KW)


def test_a_sweep_fixes_each_hooks_thresholds_on_its_own_control():
    from test_analysis import make_acts

    acts = {"a": make_acts(n=60, seed=1), "b": make_acts(n=60, seed=2)}
    controls = {"a": make_acts(n=30, seed=3), "b": make_acts(n=30, seed=4)}
    protocol = lp.ProtocolConfig(weight_decays=(0.0,), n_folds=3)
    grid = lp.sweep(acts, ["mean"], protocol=protocol, controls=controls)
    for cell in grid.cells:
        alone = lp.run_protocol(
            acts[cell.hook], config=lp.ProtocolConfig(probe="mean", weight_decays=(0.0,), n_folds=3),
            control=controls[cell.hook],
        )  # fmt: skip
        assert cell.result.runs[0].thresholds == alone.runs[0].thresholds
        assert "control set (30 rows" in cell.result.probe.config.fixed_on
    with pytest.raises(InputError, match="no control set for hook 'b'"):
        lp.sweep(acts, ["mean"], protocol=protocol, controls={"a": controls["a"]})


def test_a_resumed_cell_keeps_to_the_control_set_its_thresholds_were_fixed_on(tmp_path):
    from test_analysis import make_acts

    acts = {"a": make_acts(n=60, seed=1), "b": make_acts(n=60, seed=2)}
    controls = {"a": make_acts(n=30, seed=3), "b": make_acts(n=30, seed=4)}
    other = {"a": controls["a"], "b": make_acts(n=30, seed=5)}
    protocol = lp.ProtocolConfig(weight_decays=(0.0,), n_folds=3)
    first = lp.sweep(acts, ["mean"], protocol=protocol, controls=controls, out=tmp_path / "c")
    again = lp.sweep(acts, ["mean"], protocol=protocol, controls=controls, out=tmp_path / "c")
    assert all(cell.resumed for cell in again.cells)
    assert [c.result.runs[0].thresholds for c in again.cells] == [
        c.result.runs[0].thresholds for c in first.cells
    ]
    with pytest.raises(OutputPathError, match="at b with thresholds fixed on another control"):
        lp.sweep(acts, ["mean"], protocol=protocol, controls=other, out=tmp_path / "c")
    with pytest.raises(OutputPathError, match="another control set, not the training logits"):
        lp.sweep(acts, ["mean"], protocol=protocol, out=tmp_path / "c")
    lp.sweep(acts, ["mean"], protocol=protocol, out=tmp_path / "plain")
    with pytest.raises(OutputPathError, match="its training logits, not this control set"):
        lp.sweep(acts, ["mean"], protocol=protocol, controls=controls, out=tmp_path / "plain")
    x, mask, _ = _task(n=20, seed=9)
    assert control_fingerprint((x, mask)) == control_fingerprint((x.clone(), mask.clone()))
    assert control_fingerprint((x, mask)) != control_fingerprint((x, ~mask))
    assert control_fingerprint(None) == ""
