"""A grid's results folder: every cell saved atomically as it finishes, read back by ``grid.load_results``,
resumed by a rerun, refused when it would mix settings or data, never written outside ``--out``."""

from __future__ import annotations

import json

import pytest
import torch
from test_analysis import make_acts

import lensprobe as lp
import lensprobe.experiment as experiment
from lensprobe import grid as grids
from lensprobe.cli import main
from lensprobe.errors import OutputPathError, ResultsFileError
from lensprobe.experiment import run_grid
from lensprobe.train import ProtocolConfig, TrainConfig

SHORT = TrainConfig(max_steps=20)
FAST = ProtocolConfig(seeds=(0, 1), weight_decays=(0.0, 0.1), n_folds=3, train=SHORT)


def _acts(seed: int = 0) -> dict[str, lp.Activations]:
    """Two hooks of the same 40 sequences (the second one's values scaled)."""
    import dataclasses

    base = make_acts(n=40, seed=seed, min_len=2)
    other = lp.Activations(
        dataclasses.replace(base.meta, hook="blocks.2.hook_resid_post"),
        base.values * 2.0 + 0.1,
        base.offsets,
        base.token_ids,
        base.labels,
    )
    return {base.meta.hook: base, other.meta.hook: other}


def _same_result(a: lp.ProtocolResult, b: lp.ProtocolResult) -> None:
    assert a.config == b.config and a.classes == b.classes
    assert a.metrics == pytest.approx(b.metrics, nan_ok=True)
    for ra, rb in zip(a.runs, b.runs, strict=True):
        for name in ("train_rows", "test_rows", "test_logits", "test_labels", "cv_logits"):
            assert torch.equal(getattr(ra, name), getattr(rb, name)), name
        assert ra.weight_decay == rb.weight_decay and ra.thresholds == pytest.approx(
            rb.thresholds, nan_ok=True
        )
        for k, w in ra.probe.state_dict().items():
            assert torch.equal(rb.probe.state_dict()[k], w)
    assert {k: v.to_dict() for k, v in a.summary.items()} == {
        k: v.to_dict() for k, v in b.summary.items()
    }


def test_a_grid_round_trips_through_its_folder(tmp_path):
    cells = run_grid(_acts(), ["mean", "attention-1"], dataset="toy", protocol=FAST, entropy=True)
    grid = grids.Grid.build(cells)
    grids.save(grid, tmp_path)
    back = grids.load_results(tmp_path)
    assert [c.key for c in back.cells] == [c.key for c in cells] and back.folder == tmp_path
    for a, b in zip(cells, back.cells, strict=True):
        _same_result(a.result, b.result)
        assert b.record() == a.record() and b.resumed and not a.resumed
    assert "entropy_ratio" in back.cell("toy", "blocks.2.hook_resid_post", "attention-1").extra
    assert [c.picks for c in back.choices] == [c.picks for c in grid.choices]
    assert back.comparisons == grid.comparisons and back.comparisons["toy"][0].family == 1
    probe = lp.load_probe(grids.probe_path(tmp_path, *cells[0].key, split=1))
    for k, w in cells[0].result.runs[1].probe.state_dict().items():
        assert torch.equal(probe.state_dict()[k], w)
    assert json.loads((tmp_path / "results.json").read_text())["schema"] == grids.SCHEMA
    assert grids.load_results(tmp_path / "results.json").folder == tmp_path
    table = lp.load_results(tmp_path).to_pandas()  # the top-level name, one row per cell
    assert list(zip(table["hook"], table["probe"], strict=True)) == [c.key[1:] for c in cells]
    assert table["accuracy"].tolist() == [c.record()["accuracy"] for c in cells]


def test_a_grid_killed_after_its_second_cell_resumes_with_both_kept(tmp_path, monkeypatch):
    acts, probes = _acts(), ["mean", "last"]
    seen = []

    def stop_after_two(cell):
        seen.append(cell.key)
        if len(seen) == 2:
            raise KeyboardInterrupt  # Ctrl-C right after the second cell was saved

    with pytest.raises(KeyboardInterrupt):
        run_grid(acts, probes, dataset="toy", protocol=FAST, out=tmp_path, on_row=stop_after_two)
    kept = grids.load_results(tmp_path)
    assert [c.key for c in kept.cells] == seen
    trained = []
    real = experiment.run_sweep
    monkeypatch.setattr(
        experiment, "run_sweep", lambda *a, **k: trained.extend(k["cells"]) or real(*a, **k)
    )
    cells = run_grid(acts, probes, dataset="toy", protocol=FAST, out=tmp_path)
    assert len(trained) == 2  # only the two unfinished cells trained again
    # the sweep trains a probe on every hook at once: both hooks' "mean" cells were saved first
    assert [c.resumed for c in cells] == [True, False, True, False]
    resumed = [c for c in cells if c.resumed]
    assert [c.key for c in resumed] == seen
    for a, b in zip(kept.cells, resumed, strict=True):
        _same_result(a.result, b.result)
    fresh = run_grid(acts, probes, dataset="toy", protocol=FAST)  # one uninterrupted run
    for a, b in zip(fresh, cells, strict=True):
        _same_result(a.result, b.result)


def test_a_rerun_with_other_settings_or_data_is_refused_before_training(tmp_path, monkeypatch):
    acts = _acts()
    run_grid(acts, ["mean"], dataset="toy", protocol=FAST, out=tmp_path)
    monkeypatch.setattr(experiment, "run_sweep", lambda *a, **k: pytest.fail("trained"))
    other_seeds = ProtocolConfig(seeds=(0, 1, 2), weight_decays=(0.0, 0.1), n_folds=3, train=SHORT)
    with pytest.raises(OutputPathError, match=r"split otherwise \(seeds"):
        run_grid(acts, ["last"], dataset="toy", protocol=other_seeds, out=tmp_path)
    with pytest.raises(OutputPathError, match="other texts, labels or model"):
        run_grid(_acts(seed=5), ["last"], dataset="toy", protocol=FAST, out=tmp_path)
    other_decays = ProtocolConfig(seeds=(0, 1), weight_decays=(0.0, 1.0), n_folds=3, train=SHORT)
    with pytest.raises(OutputPathError, match=r"trained with other settings.*weight_decays"):
        run_grid(acts, ["mean"], dataset="toy", protocol=other_decays, out=tmp_path)


def test_names_cannot_leave_the_folder_and_damaged_cells_are_named(tmp_path):
    out = tmp_path / "out"
    (cell,) = run_grid(
        {"blocks.1/../../x": next(iter(_acts().values()))},
        ["mean"],
        dataset="../../escape",
        protocol=FAST,
        out=out,
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(out in p.parents for p in written)
    path = grids.cell_path(out, *cell.key)
    (path / "cell.json").write_text("{not json")
    with pytest.raises(ResultsFileError, match="not valid JSON"):
        grids.load_results(out)
    (path / "cell.json").write_text(json.dumps({"schema": 1}))
    with pytest.raises(ResultsFileError, match="schema 1"):
        grids.load_results(out)
    (path / "cell.json").write_text(json.dumps({"schema": grids.SCHEMA, "dataset": "d"}))
    with pytest.raises(ResultsFileError, match="damaged cell"):
        grids.load_results(out)
    with pytest.raises(FileNotFoundError, match="holds no finished cell"):
        grids.load_results(tmp_path / "nothing")


def test_a_second_cli_train_adds_to_the_folder_or_refuses(tmp_path, capsys):
    from lensprobe.storage import save

    store = tmp_path / "acts"
    save(_acts(), store)
    out = tmp_path / "out"
    args = ["train", "--acts", str(store), "--out", str(out), "--seeds", "2"]
    assert main([*args, "--probes", "mean"]) == 0
    first = grids.load_results(out)
    assert main([*args, "--probes", "mean,last"]) == 0
    printed = capsys.readouterr().out
    assert "[saved earlier: resumed]" in printed
    both = grids.load_results(out)
    assert sorted({c.probe for c in both.cells}) == ["last", "mean"] and len(both.cells) == 4
    for c in first.cells:
        _same_result(c.result, both.cell(*c.key).result)
    assert len(both.comparisons["acts"]) == 1  # mean vs last, each at its per-split picks
    assert main([*args[:-1], "3", "--probes", "mean"]) == 1
    assert "split otherwise (seeds" in capsys.readouterr().err
    assert [c.key for c in grids.load_results(out).cells] == [
        c.key for c in both.cells
    ]  # untouched


def test_one_dataset_that_cannot_be_chosen_leaves_the_others_their_choices(caplog):
    x, y = torch.randn(40, 4, 6, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 2

    def cell(dataset, hook, seeds):
        res = lp.run_protocol(x, y, probe="mean", seeds=seeds, weight_decays=(0.0,), n_folds=3)
        return grids.Cell(dataset, hook, "mean", res)

    grid = grids.Grid.build(
        [
            cell("a", "h1", (0, 1)),
            cell("a", "h2", (0, 1)),
            cell("b", "h1", (0, 1)),
            cell("b", "h2", (0, 1, 2)),  # other splits than b's h1: no choice for b
        ]
    )
    assert [(c.dataset, c.probe) for c in grid.choices] == [("a", "mean")]
    assert "b: no layer choice" in caplog.text
