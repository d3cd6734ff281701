"""The pipeline commands (run, capture, train, report, demo), in-process, end to end."""

from __future__ import annotations

import csv
import json

import pytest

from lensprobe.cli import main
from lensprobe.probes import load_probe


def _records(out):
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_run_then_train_then_report_on_a_tiny_model(tiny_gemma3_dir, tmp_path, capsys):
    out = tmp_path / "run"
    hooks = "blocks.1.hook_resid_post,blocks.3.hook_resid_post"
    code = main(
        [
            "run",
            "--model",
            str(tiny_gemma3_dir),
            "--backend",
            "hf",
            "--hooks",
            hooks,
            "--dataset",
            "topics",
            "--n",
            "60",
            "--probes",
            "attention-2,mean",
            "--max-steps",
            "20",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "attention-2" in printed and "H/H_unif" in printed
    records = _records(out)
    assert [(r["hook"], r["probe"]) for r in records] == [
        (h, p) for h in hooks.split(",") for p in ("attention-2", "mean")
    ]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in records)
    assert records[0]["entropy_ratio"] and not records[1]["entropy_ratio"]
    probe = load_probe(out / "probes" / "topics" / "blocks.1.hook_resid_post" / "attention-2")
    assert probe.config.hook == "blocks.1.hook_resid_post" and probe.config.n_outputs == 4
    assert probe.config.class_names == ("sports", "cooking", "weather", "technology")
    html = (out / "report-topics.html").read_text()
    assert "attention-2" in html and "https://" not in html.split("<script")[0]

    # train again on the stored capture: no model needed
    out2 = tmp_path / "train"
    assert (
        main(
            [
                "train",
                "--acts",
                str(out / "activations"),
                "--hooks",
                "blocks.3.hook_resid_post",
                "--probes",
                "last",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    (row,) = _records(out2)
    assert row["probe"] == "last" and row["hook"] == "blocks.3.hook_resid_post"
    saved = json.loads((out2 / "results.json").read_text())["results"][0]
    assert len(saved["test_rows"]) == int(row["n_test"]) == 12

    # and rebuild the report from the saved results
    assert main(["report", "--results", str(out2)]) == 0
    assert "last" in (out2 / "report.html").read_text()


def test_pipeline_errors_name_the_fix(tmp_path, capsys):
    assert main(["train", "--acts", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert "lensprobe train: error" in capsys.readouterr().err
    out = tmp_path / "never"
    assert main(["run", "--dataset", "topics", "--probes", "attention-x", "--out", str(out)]) == 1
    assert "KIND[-HEADS][-OPTIMIZER]" in capsys.readouterr().err
    assert not out.exists(), "nothing may be computed or written before the options are checked"
    assert main(["run", "--dataset", "topics", "--probes", "attention-0", "--out", str(out)]) == 1
    assert "at least one head (attention-1)" in capsys.readouterr().err
    assert not out.exists()


def test_every_command_has_help(capsys):
    for name in ("demo", "run", "capture", "train", "report", "datasets"):
        assert main([name, "--help"]) == 0
        assert "usage: lensprobe " + name in capsys.readouterr().out


@pytest.mark.slow
def test_demo_quick_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--quick",
                "--tasks",
                "needle",
                "--probes",
                "attention-2,last",
                "--n",
                "60",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = _records(out)
    assert {r["probe"] for r in records} == {"attention-2", "last"}
    assert all(r["hook"] == "blocks.9.hook_resid_post" for r in records)
    assert (out / "report-needle.html").is_file()
    assert (
        "gemma"
        in load_probe(
            out / "probes" / "needle" / "blocks.9.hook_resid_post" / "last"
        ).config.model_id.lower()
    )
