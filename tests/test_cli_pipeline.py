"""The pipeline commands (run, capture, train, report, demo), in-process, end to end."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from lensprobe.cli import main
from lensprobe.grid import load_results, probe_path
from lensprobe.probes import load_probe


def _records(out):
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def few_resamples(monkeypatch):
    """Cheaper bootstrap intervals (the tests check that they are shown, not their precision)."""
    import lensprobe.train.selection as selection

    monkeypatch.setattr(selection, "BOOTSTRAP_RESAMPLES", 200)


def test_run_then_train_then_report_on_a_tiny_model(
    tiny_gemma3_dir, tmp_path, capsys, few_resamples
):
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
    # the texts' source and class counts are shown before the model is loaded
    counts = "classes (in label order): sports 15, cooking 15, weather 15, technology 15"
    assert counts in printed.split("\n")[1]
    # every accuracy printed with its n and interval; the layer chosen by CV, then compared
    assert printed.count("(95% Wilson, test rows of 1 split, n_test=12)") == 4 + 2  # rows + choices
    assert "attention-2: blocks." in printed and "each split by its own CV accuracy" in printed
    assert "attention-2" in printed.split("paired comparisons")[1]
    records = _records(out)
    assert all(0.0 <= float(r["cv_accuracy"]) <= 1.0 for r in records)
    assert [(r["hook"], r["probe"]) for r in records] == [
        (h, p) for h in hooks.split(",") for p in ("attention-2", "mean")
    ]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in records)
    assert records[0]["entropy_ratio"] and not records[1]["entropy_ratio"]
    probe = load_probe(probe_path(out, "topics", "blocks.1.hook_resid_post", "attention-2"))
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
    (saved,) = load_results(out2).cells
    assert saved.result.test_rows.numel() == int(row["n_test"]) == 12

    # the products' precision is one flag, recorded per cell (L-BFGS always runs in fp64)
    out3 = tmp_path / "bf16"
    flags = ["--hooks", "blocks.3.hook_resid_post", "--probes", "attention-1,mean"]
    flags += ["--max-steps", "5", "--precision", "bf16", "--out", str(out3)]
    assert main(["train", "--acts", str(out / "activations"), *flags]) == 0
    assert {r["probe"]: r["precision"] for r in _records(out3)} == {
        "attention-1": "bf16",
        "mean": "fp64",
    }

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


def test_demo_prints_cv_choices_and_comparisons_per_task(
    tiny_gemma3_dir, tmp_path, capsys, monkeypatch, few_resamples
):
    import lensprobe.cli.steps as cli

    load = cli.load_model
    monkeypatch.setattr(cli, "load_model", lambda name, backend: load(str(tiny_gemma3_dir), "hf"))
    out = tmp_path / "demo"
    hooks = "blocks.1.hook_resid_post,blocks.3.hook_resid_post"
    args = ["demo", "--tasks", "facts,topics", "--hooks", hooks, "--probes", "mean,last"]
    assert main([*args, "--n", "40", "--backend", "hf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    for task in ("facts", "topics"):
        block = printed.split(f"\n{task}: layer chosen per split by cross-validation accuracy")[1]
        for probe in ("mean", "last"):
            recs = [r for r in saved["records"] if r["dataset"] == task and r["probe"] == probe]
            pick = max(recs, key=lambda r: (r["cv_accuracy"], -r["cv_log_loss"]))
            assert f"  {probe}: {pick['hook']} (the one split) (among 2 hooks, each split" in block
        assert "paired comparisons" in block.split("\n\n")[0]
        comps = [c for c in saved["comparisons"] if c["dataset"] == task]
        assert len(comps) == 1 and comps[0]["verdict"] in ("a better", "b better", "undecided")
        assert comps[0]["family"] == 2  # both tasks' comparisons: one family, Holm-adjusted
    assert printed.count("n_test=8") >= 8  # 8 cells, each line with its n
    assert "expected time: about" in printed.split("\nfacts:")[0]  # stated before it starts


def test_the_demo_states_its_expected_time_from_the_measured_presets():
    from lensprobe.cli.commands import DEMO_SECONDS, _demo_expected, _demo_settings
    from lensprobe.cli.options import DemoOptions

    def expected(**flags):
        options, _, hooks = _demo_settings(DemoOptions(**flags))
        return _demo_expected(options, hooks)

    assert f"about {DEMO_SECONDS['quick']:.0f} s" in expected(quick=True)
    assert f"about {DEMO_SECONDS['full'] / 60:.0f} min" in expected()
    one_task = expected(tasks=("facts",))  # a third of the work
    assert f"about {DEMO_SECONDS['full'] / 180:.0f} min" in one_task


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
            probe_path(out, "needle", "blocks.9.hook_resid_post", "last")
        ).config.model_id.lower()
    )


SLOW_CLI = """
import json, sys, time
import lensprobe, lensprobe.models
from lensprobe.cli import main

progress, load = sys.argv[1], lensprobe.models.load_model
seen = [0]

def slow_model(*args, **kwargs):
    model = load(*args, **kwargs)

    def pace(_module, inputs):
        seen[0] += inputs[0].shape[0]
        with open(progress, "w") as f:
            f.write(str(seen[0]))  # sequences whose forward has started
        time.sleep(0.05)

    model.model.layers[0].register_forward_pre_hook(pace)
    return model

lensprobe.models.load_model = slow_model
sys.exit(main(sys.argv[2:]))
"""


def _cli_texts(n: int) -> list[str]:
    from conftest import TINY_WORDS

    return [
        " ".join(TINY_WORDS[(7 * i + 3 * j) % len(TINY_WORDS)] for j in range(20 + i % 17))
        for i in range(n)
    ]


def test_killed_default_sized_cli_capture_resumes_bit_identical(tiny_gemma3_dir, tmp_path):
    """SIGKILL `lensprobe capture` (default shard size) midway: at most one shard is recomputed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from lensprobe.storage import load as load_store

    data = tmp_path / "data.csv"
    texts = _cli_texts(600)
    data.write_text("text,label\n" + "".join(f"{t},{'ab'[i % 2]}\n" for i, t in enumerate(texts)))
    args = ["capture", "--model", str(tiny_gemma3_dir), "--backend", "hf"]
    args += ["--hooks", "blocks.1.hook_resid_post", "--dataset", str(data), "--batch-size", "8"]
    out, progress = tmp_path / "s", tmp_path / "progress"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, str(progress), *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = out / "manifest.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if manifest.exists():
                state = json.loads(manifest.read_text())
                done = len(state["shards"])
                # kill once two shards are kept and the third is well under way
                if done >= 2 and int(progress.read_text() or 0) > state["plan"][done][0] + 8:
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the CLI capture wrote no shards in time")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    state = json.loads(manifest.read_text())
    plan, kept = state["plan"], sorted(int(k) for k in state["shards"])
    assert not state["complete"] and 3 <= len(plan) < 100  # the default made several shards
    assert kept == list(range(len(kept)))
    kept_rows = plan[kept[-1]][1]
    started = int(progress.read_text())
    in_progress = plan[len(kept)]
    assert kept_rows < started <= in_progress[1], "work lost beyond the shard in progress"

    seen = []
    import lensprobe

    load = lensprobe.models.load_model

    def counting(*a, **k):
        model = load(*a, **k)
        model.model.layers[0].register_forward_pre_hook(
            lambda _m, inputs: seen.append(inputs[0].shape[0])
        )
        return model

    mp = pytest.MonkeyPatch()
    mp.setattr(lensprobe.models, "load_model", counting)
    try:
        assert main([*args, "--out", str(out)]) == 0
    finally:
        mp.undo()
    assert sum(seen) == len(texts) - kept_rows  # the kept shards are not recomputed
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0
    resumed = load_store(out, verify="full")["blocks.1.hook_resid_post"]
    fresh = load_store(tmp_path / "fresh", verify="full")["blocks.1.hook_resid_post"]
    assert torch.equal(resumed.values, fresh.values)
    assert torch.equal(resumed.token_ids, fresh.token_ids)
    assert torch.equal(resumed.labels, fresh.labels)


def test_layers_expands_from_the_models_own_layer_count(tiny_gemma3_dir, tmp_path, capsys):
    from lensprobe.errors import InputError
    from lensprobe.storage import load as load_store

    out = tmp_path / "store"
    args = ["capture", "--model", str(tiny_gemma3_dir), "--backend", "hf", "--dataset", "topics"]
    assert main([*args, "--n", "16", "--layers", "1-3:2", "--out", str(out)]) == 0
    assert sorted(load_store(out)) == ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    assert main([*args, "--n", "16", "--layers", "0-4", "--out", str(tmp_path / "no")]) == 1
    assert "has layers 0-3, not [4]" in capsys.readouterr().err  # 4 layers, read from config
    assert not (tmp_path / "no").exists()
    from lensprobe.cli.steps import layers_flag

    assert layers_flag("all", str(tiny_gemma3_dir)) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="pass all, a range"):
        layers_flag("some", str(tiny_gemma3_dir))


def test_device_and_dtype_flags_set_compute_and_storage(tiny_gemma3_dir, tmp_path, capsys):
    from lensprobe.storage import load

    base = ["capture", "--model", str(tiny_gemma3_dir), "--backend", "hf", "--hooks"]
    base += ["blocks.1.hook_resid_post", "--dataset", "topics", "--n", "12", "--device", "cpu"]
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main([*base, "--dtype", dtype, "--out", str(out)]) == 0
        (acts,) = load(out).values()
        assert acts.meta.dtype == dtype and acts.values.dtype == getattr(torch, dtype)
    fp32, bf16 = (next(iter(load(tmp_path / d).values())) for d in ("float32", "bfloat16"))
    # bf16 compute moves the activations a little, never much
    gap = (fp32.values - bf16.values.float()).norm() / fp32.values.norm()
    assert 0 < float(gap) < 0.05
    assert main([*base[:-2], "--device", "no-such-device", "--out", str(tmp_path / "x")]) == 1
    assert "--device no-such-device" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
