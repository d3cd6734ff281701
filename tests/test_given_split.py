"""A given test part (a dataset's official test split) is used as given, never pooled."""

from __future__ import annotations

import csv

import pytest
import torch
from test_analysis import make_acts

import lensprobe as lp
from lensprobe.cli import main
from lensprobe.errors import InputError, OutputPathError
from lensprobe.grid import load_results
from lensprobe.storage import load


def _toy(n=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 5, 8, generator=gen)
    x[:, :, 0] += y[:, None].float()
    return x, y


@pytest.mark.parametrize("probe", ["attention", "mean"])
def test_run_protocol_tests_on_exactly_the_given_rows(probe):
    x, y = _toy()
    test = (45, 3, 50, 7, 12, 30, 31, 59)
    res = lp.run_protocol(x, y, probe=probe, test_rows=test, n_folds=3)
    (run,) = res.runs
    assert run.test_rows.tolist() == sorted(test)
    assert run.train_rows.tolist() == [i for i in range(60) if i not in test]
    assert res.summary["accuracy"].n_test == len(test)
    # the same split whatever the split seed: nothing is drawn at random
    other = lp.run_protocol(x, y, probe=probe, test_rows=test, n_folds=3, split_seed=5)
    assert other.runs[0].test_rows.tolist() == sorted(test)
    # a sweep shares the given split across hooks and kinds
    acts = make_acts(n=60, n_classes=3)
    grid = lp.sweep(
        {"a": acts, "b": acts},
        ["attention-1", "last"],
        dataset="toy",
        protocol=lp.ProtocolConfig(test_rows=test, n_folds=3, train=lp.TrainConfig(max_steps=30)),
    )
    assert all(c.result.runs[0].test_rows.tolist() == sorted(test) for c in grid.cells)


def test_given_split_errors_name_the_fix():
    x, y = _toy()
    with pytest.raises(InputError, match="one split"):
        lp.ProtocolConfig(test_rows=(1, 2), seeds=3)
    with pytest.raises(InputError, match="distinct row indices"):
        lp.ProtocolConfig(test_rows=(1, 1))
    with pytest.raises(InputError, match="data has 60 rows"):
        lp.run_protocol(x, y, probe="mean", test_rows=(1, 60))
    every_class_2 = tuple(i for i in range(60) if y[i] == 2)
    with pytest.raises(InputError, match=r"no row of class id\(s\) \[2\]"):
        lp.run_protocol(x, y, probe="mean", test_rows=every_class_2)
    config = lp.ProtocolConfig(test_rows=(3, 1))
    assert lp.ProtocolConfig.from_dict(config.to_dict()) == config


def test_a_results_folder_refuses_cells_of_another_given_split(tmp_path):
    acts = {"a": make_acts(n=60, n_classes=3)}
    first = lp.ProtocolConfig(test_rows=tuple(range(10)), n_folds=3)
    lp.sweep(acts, ["mean"], dataset="toy", out=tmp_path, protocol=first)
    other = lp.ProtocolConfig(test_rows=tuple(range(10, 20)), n_folds=3)
    with pytest.raises(OutputPathError, match="test_rows"):
        lp.sweep(acts, ["last"], dataset="toy", out=tmp_path, protocol=other)


def _run(args, tiny_gemma3_dir, out):
    return main(
        [
            "run",
            "--model",
            str(tiny_gemma3_dir),
            "--backend",
            "hf",
            "--hooks",
            "blocks.1.hook_resid_post",
            "--probes",
            "mean",
            "--max-length",
            "24",
            "--out",
            str(out),
            *args,
        ]
    )


def test_cli_trains_on_the_train_split_and_tests_on_the_test_split(
    tiny_gemma3_dir, fixture_data_dir, tmp_path, capsys
):
    flags = [
        "--dataset",
        "jailbreak",
        "--data-dir",
        str(fixture_data_dir),
        "--split",
        "train",
        "--test-split",
        "test",
        "--n",
        "40",
    ]
    assert _run(flags, tiny_gemma3_dir, tmp_path / "run") == 0
    printed = capsys.readouterr().out
    before = printed.split("captured at")[0]  # shown before the capture starts:
    assert "test: local:" in before  # both splits,
    assert "text prompt, label type" in before  # the columns read,
    assert "texts are cut to their first 24 tokens (--max-length to change)" in before
    (cell,) = load_results(tmp_path / "run").cells
    run = cell.result.runs[0]
    assert run.train_rows.tolist() == list(range(40))  # the train split, as given
    k = len(lp.load_dataset("jailbreak", data_dir=fixture_data_dir, split="test", n=40))
    assert run.test_rows.tolist() == list(range(40, 40 + k))  # then the test split, whole
    assert f"n_test={k}" in printed and "1 split" in printed
    # a given split is one split, and needs a training split
    assert _run([*flags, "--seeds", "3"], tiny_gemma3_dir, tmp_path / "r2") == 1
    assert "--test-split gives one split" in capsys.readouterr().err
    no_split = [f for f in flags if f not in ("--split", "train")]
    assert _run(no_split, tiny_gemma3_dir, tmp_path / "r3") == 1
    assert "needs the training split as --split" in capsys.readouterr().err


def test_cli_reads_a_csv_with_other_columns_joined_in_a_fixed_class_order(
    tiny_gemma3_dir, tmp_path, capsys
):
    path = tmp_path / "my_news.csv"
    topics = ["Sports", "World", "Business"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "description", "topic"])
        for i in range(45):
            t = topics[i % 3]
            w.writerow([f"{t.lower()} headline {i}", f"about {t.lower()} things", t])
    flags = [
        "--dataset",
        str(path),
        "--text-column",
        "title,description",
        "--label-column",
        "topic",
        "--classes",
        "World,Sports,Business",
    ]
    assert _run(flags, tiny_gemma3_dir, tmp_path / "run") == 0
    printed = capsys.readouterr().out
    assert "my_news: 45 texts" in printed and "text title+description, label topic" in printed
    assert "classes (in label order): World 15, Sports 15, Business 15" in printed
    (cell,) = load_results(tmp_path / "run").cells
    assert cell.dataset == "my_news"
    assert cell.result.probe.config.class_names == ("World", "Sports", "Business")
    stored = next(iter(load(tmp_path / "run" / "activations").values()))
    assert stored.texts[0] == "sports headline 0 about sports things"  # both columns, joined
    ds = lp.load_dataset(str(path), text_column=["title", "description"], label_column="topic")
    assert ds.texts == tuple(stored.texts)
