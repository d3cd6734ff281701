"""The layer is chosen per split by cross-validation on its training part; every number shows its n.

The data are built so that cross-validation and the test part disagree: at ``blocks.1`` the
training part is cleanly separable but the test part has its features flipped (CV accuracy high,
test accuracy low); at ``blocks.3`` the training part is noisy and the test part clean (CV
accuracy low, test accuracy high). Choosing by test accuracy would pick ``blocks.3``; the
protocol's own split function says which rows are the test part.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re

import pytest
import torch
from test_analysis import make_acts

import lensprobe as lp
from lensprobe import grid as grids
from lensprobe.cli import main
from lensprobe.errors import InputError
from lensprobe.experiment import (
    CV_FAR_NOTE,
    choose_layer,
    format_choices,
    format_table,
    run_grid,
)
from lensprobe.train import ProtocolConfig
from lensprobe.train.selection import result_record
from lensprobe.train.split import stratified_split
from lensprobe.viz import ReportEntry, render_report

N, LEN, D = 60, 3, 4
CV_HOOK, TEST_HOOK = "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"


def disagreeing_acts(seed: int = 0) -> dict[str, lp.Activations]:
    """Two hooks of the same sequences where CV and the test part rank the hooks oppositely."""
    base = make_acts(n=N, d=D, seed=seed)
    labels = torch.arange(N) % 2
    _, test_rows = stratified_split(labels, 0.2, seed=0)  # the protocol's split at split_seed 0
    is_test = torch.zeros(N, dtype=torch.bool)
    is_test[test_rows] = True
    sign = (2.0 * labels - 1.0)[:, None, None]  # -1 / +1 per sequence
    direction = torch.zeros(D)
    direction[0] = 1.0
    gen = torch.Generator().manual_seed(seed)

    def hook(train_signal: float, train_noise: float, test_signal: float, test_noise: float):
        signal = torch.where(is_test, test_signal, train_signal)[:, None, None]
        noise = torch.where(is_test, test_noise, train_noise)[:, None, None]
        return sign * signal * direction + noise * torch.randn(N, LEN, D, generator=gen)

    values = {
        CV_HOOK: hook(2.0, 0.3, -2.0, 0.3),  # clean training part, flipped test part
        TEST_HOOK: hook(0.25, 1.0, 2.0, 0.3),  # noisy training part, clean test part
    }
    offsets = torch.arange(0, N * LEN + 1, LEN)
    ids = torch.zeros(N * LEN, dtype=torch.long)
    out = {}
    for name, x in values.items():
        meta = dataclasses.replace(base.meta, hook=name)
        out[name] = lp.Activations(meta, x.reshape(N * LEN, D), offsets, ids, labels)
    return out


FAST = dict(weight_decays=(0.0, 0.1), n_folds=3)


@pytest.fixture(scope="module")
def grid():
    acts = disagreeing_acts()
    rows = run_grid(acts, ["mean"], dataset="toy", protocol=ProtocolConfig(**FAST))
    return acts, rows


def test_cv_and_test_disagree_on_the_constructed_grid(grid):
    _, rows = grid
    by_hook = {r.hook: r.result for r in rows}
    cv = {
        h: sum(
            next(c["accuracy"] for c in run.cv_summary if c["weight_decay"] == run.weight_decay)
            for run in res.runs
        )
        / len(res.runs)
        for h, res in by_hook.items()
    }
    test = {h: res.metrics["accuracy"] for h, res in by_hook.items()}
    assert max(cv, key=cv.get) == CV_HOOK and max(test, key=test.get) == TEST_HOOK


def test_choose_layer_picks_by_cv_and_reports_the_test_score_of_the_pick(grid):
    _, rows = grid
    records = [r.record() for r in rows]
    choice = choose_layer(records)
    res = {r.hook: r.result for r in rows}[CV_HOOK]
    run = res.runs[0]
    cv = next(c for c in run.cv_summary if c["weight_decay"] == run.weight_decay)["accuracy"]
    assert choice.hook == CV_HOOK and choice.probe == "mean" and choice.by == "cv_accuracy"
    assert choice.picks == (CV_HOOK,) and choice.split_seeds == (0,)
    assert choice.cv_score == pytest.approx(cv, abs=1e-9)
    assert choice.test["accuracy"] == pytest.approx(res.metrics["accuracy"], abs=1e-9)
    assert choice.n_test == res.n_test == 12 and choice.seeds == 1
    assert choice.hooks == (CV_HOOK, TEST_HOOK)
    text = str(choice)
    assert CV_HOOK in text and "n_test=12" in text and "Wilson, test rows of 1 split" in text
    # the test part never decides: a test metric is refused with the fix
    with pytest.raises(InputError, match="pass by='cv_accuracy'"):
        choose_layer(records, by="accuracy")
    # lower-is-better CV scores choose the minimum
    assert choose_layer(records, by="cv_log_loss").hook == CV_HOOK


def _split(seed, cv, test, log_loss=0.5):
    return {
        "split_seed": seed,
        "weight_decay": 0.0,
        "n_train": 16,
        "n_test": 4,
        "cv": {"accuracy": cv, "log_loss": log_loss},
        "test": {"accuracy": test, "auroc": test},
    }


def test_each_split_picks_its_own_hook_and_reports_its_own_test_score():
    a = [_split(0, 0.9, 0.5), _split(1, 0.6, 1.0), _split(2, 0.7, 0.75)]
    b = [_split(0, 0.8, 1.0), _split(1, 0.7, 0.25), _split(2, 0.7, 0.5, 0.4)]
    recs = [
        {"dataset": "d", "hook": "a", "probe": "p", "splits": a},
        {"dataset": "d", "hook": "b", "probe": "p", "splits": b},
    ]
    c = choose_layer(recs)
    # split 0 picks a (0.9), split 1 picks b (0.7), split 2 ties on CV and b wins on log loss
    assert c.picks == ("a", "b", "b") and c.hook == "b" and c.count("a") == 1
    assert c.test["accuracy"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert c.cv_score == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert c.estimates["accuracy"].method == "corrected_t" and c.estimates["accuracy"].n_train == 16
    assert "per split: a, b, b" in str(c)
    # pooled over splits, hook a's mean CV (0.733) beats b's (0.733 - tie) ... the pooled choice
    # would give every split one hook; per split, each test score is read at that split's pick
    recs[1]["splits"][1]["split_seed"] = 7
    with pytest.raises(InputError, match="different splits"):
        choose_layer(recs)


def test_choose_layer_needs_one_group_and_per_split_scores():
    recs = [
        {"dataset": "d", "hook": h, "probe": p, "splits": [_split(0, 0.5, 0.5)]}
        for h in ("a", "b")
        for p in ("mean", "last")
    ]
    with pytest.raises(InputError, match="pass dataset= and probe="):
        choose_layer(recs)
    assert choose_layer(recs, probe="last").hook == "a"  # a tie goes to the earlier record
    recs[3]["splits"] = [_split(0, 0.5, 0.5, log_loss=0.1)]  # ... unless CV log loss breaks it
    assert choose_layer(recs, probe="last").hook == "b"
    flat = [{k: v for k, v in r.items() if k != "splits"} for r in recs]
    with pytest.raises(InputError, match=r"no per-split scores.*grid\.load"):
        choose_layer(flat, probe="mean")
    with pytest.raises(
        InputError,
        match=r"no records for dataset='e', probe='mean'; .* \[\('d', 'last'\), \('d', 'mean'\)\]",
    ):
        choose_layer(recs, dataset="e", probe="mean")
    with pytest.raises(InputError, match=r"hooks \['a'\] appear in more than one record"):
        choose_layer([*recs, dict(recs[0])], probe="mean")


def test_results_files_round_trip_the_cv_score_and_the_choice(grid, tmp_path):
    _, rows = grid
    built = grids.Grid.build(rows)
    grids.save(built, tmp_path)
    saved = grids.load_results(tmp_path)
    with (tmp_path / "results.csv").open() as f:
        from_csv = list(csv.DictReader(f))
    for rec, back, row in zip(built.records(), saved.records(), from_csv, strict=True):
        assert back["cv_accuracy"] == rec["cv_accuracy"] and back["splits"] == rec["splits"]
        assert float(row["cv_accuracy"]) == pytest.approx(rec["cv_accuracy"])
        assert float(row["accuracy_low"]) == pytest.approx(rec["accuracy_low"])
        assert row["accuracy_interval"] == "wilson" and "splits" not in row
    (expected,), (again,) = built.choices, saved.choices
    assert (again.picks, again.cv_score, again.n_test) == (
        expected.picks,
        expected.cv_score,
        expected.n_test,
    )
    assert again.test["accuracy"] == pytest.approx(expected.test["accuracy"])
    with pytest.raises(InputError, match=r"results\.csv has none"):
        choose_layer(from_csv)
    index = json.loads((tmp_path / "results.json").read_text())
    assert index["schema"] == grids.SCHEMA and index["choices"][0]["picks"] == list(expected.picks)
    assert not list(tmp_path.rglob("*.tmp"))  # written through temporary names, then renamed


def _row_html(page: str, hook: str, probe: str) -> str:
    (row,) = re.findall(
        rf"<tr[^>]*><td class=\"left\"><code>{re.escape(hook)}</code></td>"
        rf"<td class=\"left\">(?:<a [^>]*>)?{re.escape(probe)}.*?</tr>",
        page,
    )
    return row


def test_report_bolds_the_cv_pick_and_shows_n_and_intervals(grid):
    _, rows = grid
    entries = [ReportEntry.from_result(r.result, label=r.probe, hook=r.hook) for r in rows]
    page = render_report(entries)
    picked, other = _row_html(page, CV_HOOK, "mean"), _row_html(page, TEST_HOOK, "mean")
    assert picked.startswith('<tr class="chosen">') and other.startswith('<tr class="">')
    assert "<td>1/1</td>" in picked and "<td>0/1</td>" in other
    for row, r in ((picked, rows[0]), (other, rows[1])):
        rec = r.record()
        assert f"[{rec['accuracy_low']:.3f}, {rec['accuracy_high']:.3f}]" in row
        assert f"{rec['cv_accuracy']:.3f}" in row and f"{rec['n_train']} / 12" in row
        assert "1 split (wilson)" in row
    assert "Layer chosen by cross-validation, split by split" in page
    assert "its test part plays no role" in page
    assert "bold: best accuracy at the hook" not in page


def test_report_intervals_over_seeds_and_comparisons_through_lp_compare():
    acts = make_acts(n=60, seed=9, min_len=3)
    kw = dict(FAST, seeds=(0, 1, 2))
    mean = lp.run_protocol(acts, probe="mean", **kw)
    last = lp.run_protocol(acts, probe="last", **kw)
    page = render_report([ReportEntry.from_result(mean, acts), ReportEntry.from_result(last, acts)])
    for res, probe in ((mean, "mean"), (last, "last")):
        row = _row_html(page, acts.meta.hook, probe)
        est = res.summary["accuracy"]
        assert f"[{est.low:.3f}, {est.high:.3f}]" in row and "3 splits (corrected t)" in row
        auc = result_record(res)  # (rounded to 5 digits, as the report shows it)
        assert f"[{auc['auroc_low']:.3f}, {auc['auroc_high']:.3f}]" in row
    cmp = lp.compare(mean, last)
    assert "Paired comparisons" in page and "Holm (1)" in page
    ci = "–" if math.isnan(cmp.low) else f"[{cmp.low:+.3f}, {cmp.high:+.3f}]"
    assert f"{cmp.difference:+.3f}</td><td>{ci}" in page
    who = {"a better": "mean better", "b better": "last better"}.get(cmp.verdict, "undecided")
    assert who in page.split('id="comparisons"')[1]


def test_table_and_choices_print_n_intervals_and_the_picks(grid):
    _, rows = grid
    built = grids.Grid.build(rows)
    records = built.records()
    table = format_table(built)
    header, _, first, second, note = table.splitlines()
    # CV and the test part disagree at both hooks by construction: flagged, with the legend
    assert "cv!" in header and note == CV_FAR_NOTE
    assert first.split()[8] == "!" and second.split()[7] == "!"
    assert "CV picks" in header and "cv acc" in header and "n_test" in header
    assert first.split()[2:4] == ["mean", "1/1"] and second.split()[2] == "mean"
    assert "1/1" not in second and "wilson, 1 split" in first
    text = format_choices(built.choices, [])
    assert "chosen per split by cross-validation accuracy on that split's training part" in text
    rec = records[0]
    lo, hi = rec["accuracy_low"], rec["accuracy_high"]
    assert f"mean: {CV_HOOK} (the one split) (among 2 hooks, each split by its own CV" in text
    assert (
        f"{rec['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] (95% Wilson, test rows of 1 split, n_test=12)"
        in text
    )


def test_cli_train_chooses_per_split_and_prints_n_intervals_and_holm(tmp_path, capsys):
    from lensprobe.storage import save

    store = tmp_path / "acts"
    save(disagreeing_acts(), store)
    out = tmp_path / "out"
    args = ["train", "--acts", str(store), "--probes", "mean,last", "--out", str(out)]
    assert main([*args, "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    saved = grids.load_results(out)
    for cell in saved.cells:  # every per-row line and table row: n_test and the corrected t
        acc = cell.result.summary["accuracy"]
        line = next(ln for ln in printed.splitlines() if f"  {cell.hook}  {cell.probe} " in ln)
        if acc.has_interval:
            assert f"[{acc.low:.3f}, {acc.high:.3f}] (95% corrected t over 2 splits" in line
        assert "n_test=12" in line and "cv acc" in line
    assert "interval" in printed and "2 splits" in printed
    for c in saved.choices:
        assert f"{c.probe}: {c.picks_text()} (among 2 hooks, each split by its own CV" in printed
    assert "paired comparisons (at each split's chosen layer" in printed
    assert "after Holm's adjustment for" in printed
    for comps in saved.comparisons.values():
        for c in comps:
            assert str(c) in printed and c.holm_verdict is not None
    # the report command redoes the choice from the saved records and prints it again
    assert main(["report", "--results", str(out)]) == 0
    again = capsys.readouterr().out
    assert "each split by its own CV" in again and "n_test=12" in again
    page = (out / "report.html").read_text()
    assert page.count('<tr class="chosen">') == 2 and "Paired comparisons" in page
    assert not math.isnan(saved.records()[0]["cv_accuracy"])
