"""Tests of the ``lensprobe`` command line, run in-process."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lensprobe.cli import COMMANDS, DATA_DIR_ENV, DatasetsOptions, format_datasets_table, main
from lensprobe.data import DatasetInfo
from lensprobe.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows by dataset name, cells split on runs of two or more spaces."""
    rows = {}
    for line in out.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4:
            rows[cells[0]] = cells
    return rows


def test_datasets_lists_local_copies_with_counts(fixture_data_dir, tmp_path, capsys, monkeypatch):
    import csv

    import datasets
    import pandas as pd

    from lensprobe.data import REGISTRY

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    data = fixture_data_dir
    assert main(["datasets", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    n_banking = sum(len(pd.read_csv(data / "banking77" / f)) for f in ("train.csv", "test.csv"))
    assert rows["banking77"][1:3] == ["local", f"{n_banking:,}"]
    sms = pd.read_csv(
        data / "sms_spam" / "SMSSpamCollection", sep="\t", quoting=csv.QUOTE_NONE, dtype=str
    ).Label.value_counts()
    assert rows["sms_spam"][3] == f"2: ham {sms['ham']:,}, spam {sms['spam']:,}"
    assert rows["needle"][1] == "builtin"
    assert rows["bias_in_bios"][1:3] == ["hub", "-"]
    assert rows["ag_news"][1:3] == ["hub", "-"]  # no local copy in this folder
    assert rows["ag_news"][4] == "fancyzhx/ag_news"
    local = {name for name, r in rows.items() if r[1] == "local"}
    want = {s.name for s in REGISTRY.values() if s.local and (data / s.local.folder).is_dir()}
    # geometry_of_truth/ holds only cities.csv: the entries of its other 10 files are absent
    want -= {n for n in want if n.startswith("geometry_of_truth/")} - {"geometry_of_truth/cities"}
    assert "sst2" in local and local == want
    assert f"{len(want)} local copies found under {data}" in out


def test_datasets_reads_the_environment(fixture_data_dir, capsys, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(fixture_data_dir))
    assert main(["datasets", "--no-count"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["sst2"][1:3] == ["local", "-"]  # listed, not counted


def test_datasets_without_data_dir(capsys, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert "sst2" not in rows  # only a local copy exists
    assert rows["banking77"][1] == "hub"
    assert "No --data-dir" in out


def test_errors_and_usage(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path / "missing")]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    assert "datasets" in capsys.readouterr().out


def test_options_dataclass_matches_flags():
    command = COMMANDS["datasets"]
    assert command.options is DatasetsOptions
    with pytest.raises(AttributeError):
        DatasetsOptions().count = False  # type: ignore[misc]


def test_table_cuts_long_class_lists():
    infos = [
        DatasetInfo(
            "many", "t", "local", None, "/x", 1000, tuple(f"class{i}" for i in range(40)), None
        ),
        DatasetInfo("few", "t", "hub", "a/b", None, None, ("x", "y"), None),
        DatasetInfo("open", "t", "hub", "c/d", None, None, None, None),
    ]
    table = format_datasets_table(infos, classes_width=30)
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "FROM", "ROWS", "CLASSES", "HUB", "ID"]
    rows = _rows(table)
    assert rows["many"][3].endswith("...") and len(rows["many"][3]) == 30
    assert rows["few"][3] == "2: x, y" and rows["few"][4] == "a/b"
    assert rows["open"][3] == "from the data"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "lensprobe", "datasets", "--no-count"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, DATA_DIR_ENV: ""},
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "needle" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_explains_every_option(name):
    parser = argparse.ArgumentParser()
    COMMANDS[name].add_arguments(parser)
    silent = [a.option_strings for a in parser._actions if not a.help]
    assert not silent, f"lensprobe {name}: options without help: {silent}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_shows_what_it_does_and_an_example_that_parses(name, capsys):
    import shlex

    from lensprobe.cli import build_parser

    assert main([name, "--help"]) == 0
    shown = capsys.readouterr().out
    command = COMMANDS[name]
    assert command.help[1:] in shown and f"example:\n  {command.example}" in shown
    argv = shlex.split(command.example)
    assert argv[:2] == ["lensprobe", name]
    assert build_parser().parse_args(argv[1:]).command == name


def test_report_writes_one_page_per_dataset(tmp_path, capsys):
    import torch

    import lensprobe as lp
    from lensprobe.grid import Cell, Grid, save

    gen = torch.Generator().manual_seed(0)
    rows = []
    for dataset in ("facts", "needle"):
        x, y = torch.randn(40, 5, 8, generator=gen), torch.arange(40) % 2
        res = lp.run_protocol(x, y, probe="mean")
        rows.append(
            Cell(dataset=dataset, hook="blocks.1.hook_resid_post", probe="mean", result=res)
        )
    save(Grid.build(rows), tmp_path)
    assert main(["report", "--results", str(tmp_path)]) == 0
    pages = {name: (tmp_path / f"report-{name}.html").read_text() for name in ("facts", "needle")}
    for name, page in pages.items():
        other = "needle" if name == "facts" else "facts"
        assert f"lensprobe: {name}" in page and f"lensprobe: {other}" not in page
    assert not (tmp_path / "report.html").exists()
    capsys.readouterr()
    assert (
        main(
            [
                "report",
                "--results",
                str(tmp_path),
                "--dataset",
                "needle",
                "--out",
                str(tmp_path / "n.html"),
            ]
        )
        == 0
    )
    assert "lensprobe: needle" in (tmp_path / "n.html").read_text()
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 1
    assert "pass --dataset NAME with --out" in capsys.readouterr().err
    assert main(["report", "--results", str(tmp_path), "--dataset", "sst2"]) == 1
    assert "it holds facts, needle" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "status", "user"),
    [
        (InputError("bad --probes: attention-x"), 1, True),
        (OSError(28, "No space left on device"), 1, True),  # a full disk names no path
        (FileNotFoundError(2, "No such file or directory", "/data/missing.csv"), 1, True),
        (ValueError("shapes (3,) and (4,) not aligned"), 70, False),  # a bug's plain ValueError
        (ZeroDivisionError("division by zero"), 70, False),
        (OSError("a socket closed"), 70, False),  # no path, no disk: a bug
    ],
)
def test_named_errors_read_as_one_line_and_bugs_keep_their_traceback(
    error, status, user, monkeypatch, capsys
):
    from dataclasses import replace

    import lensprobe.cli as cli

    def fail(options):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "datasets", replace(cli.COMMANDS["datasets"], run=fail))
    assert main(["datasets"]) == status
    err = capsys.readouterr().err
    if user:
        assert err.strip().count("\n") == 0 and "Traceback" not in err
        assert "error:" in err and "bug" not in err
    else:
        assert "Traceback" in err and type(error).__name__ in err
        assert "bug in lensprobe" in err and "report it" in err
    with pytest.raises(type(error)):  # --debug shows every error with its traceback
        main(["--debug", "datasets"])


def test_errors_under_the_cli_name_its_flags_and_an_empty_dataset_is_refused(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_news.csv").write_text("headline,topic\nhello world,a\nbye now,b\n")
    out = tmp_path / "out"
    assert main(["run", "--dataset", "my_news.csv", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--text-column / --label-column" in err and "text_column=" not in err
    # an unset variable ("$UNSET") would otherwise read every CSV of the current folder
    assert main(["run", "--dataset", "", "--out", str(out)]) == 1
    assert "dataset name is empty" in capsys.readouterr().err
    assert not out.exists()
