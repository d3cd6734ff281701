"""Data-parallel capture under torchrun: 2 gloo ranks write the store one process would write.

Every launch here is a real ``torchrun --standalone --nproc-per-node 2`` on CPU. A store from two
ranks is compared byte for byte with one from a single process with the same threads per process
(torchrun starts each rank with ``OMP_NUM_THREADS=1``; a single process on two threads rounds
some bf16 values of the real model differently, so it is run on one thread too).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_WORDS

from lensprobe.capturing.ranks import Ranks
from lensprobe.storage import load

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(args: list[str], *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    if ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _files(store: Path) -> dict[str, str]:
    """Every file of a store (lock and journals would show up here) -> its SHA-256."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(8, 40))) for _ in range(n)]


@pytest.mark.parametrize("world", [1, 2, 3, 5, 40])  # 40: more ranks than shards
def test_each_unfinished_shard_goes_to_one_rank_and_loads_balance(world):
    rng = random.Random(world)
    tokens = {k: rng.randint(1, 500) for k in range(23) if k % 4}  # a resumed store: gaps
    shares = [Ranks(r, world).share(tokens) for r in range(world)]
    assert sorted(k for share in shares for k in share) == sorted(tokens)
    loads = [sum(tokens[k] for k in share) for share in shares]
    assert max(loads) - min(loads) <= max(tokens.values())
    assert shares == [Ranks(r, world).share(dict(reversed(tokens.items()))) for r in range(world)]


def test_torchrun_cli_capture_equals_one_process(tmp_path, tiny_gemma3_dir):
    """The issue's command: a 64-text CSV, with a subsample flag, under torchrun and without."""
    data = tmp_path / "texts.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, text in enumerate(_texts(64)):
            writer.writerow([text, ["pos", "neg"][i % 2]])
    args = ["--model", str(tiny_gemma3_dir), "--dataset", str(data), "--hooks", ",".join(HOOKS)]
    args += ["--max-length", "32", "--n-texts", "56"]
    _run([sys.executable, "-m", "lensprobe", "capture", *args, "--out", str(tmp_path / "one")])
    two = _run([*TORCHRUN, "-m", "lensprobe", "capture", *args, "--out", str(tmp_path / "two")])
    one_files, two_files = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one_files == two_files
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) >= 2  # both ranks had work
    assert two.stdout.count("store: ") == 1  # rank 1 does not repeat the command's output
    _run([*TORCHRUN, "-m", "lensprobe", "capture", *args, "--out", str(tmp_path / "two")])
    assert _files(tmp_path / "two") == two_files  # rerun on the finished store: nothing to do


SCRIPT = """
import json, os, sys
import lensprobe as lp
from lensprobe.storage import StoreWriter

model_dir, texts, out, die = sys.argv[1:5]
if die == "yes" and os.environ["RANK"] == "1":
    write_shard = StoreWriter.write_shard

    def write_then_die(self, *args, **kwargs):
        write_shard(self, *args, **kwargs)
        os._exit(3)  # killed after its first finished shard

    StoreWriter.write_shard = write_then_die
model = lp.load_model(model_dir)
result = lp.capture(
    model, json.loads(texts), {hooks}, out=out, max_length=32, shard_tokens=256, progress=False
)
if os.environ.get("RANK", "0") == "0":
    stats = {{"run": result.stats.n_tokens_run, "all": result.stats.n_tokens}}
    print("STATS", json.dumps(stats))
"""


@pytest.fixture
def capture_script(tmp_path):
    path = tmp_path / "capture_script.py"
    path.write_text(SCRIPT.format(hooks=HOOKS))
    return path


def _stats(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    line = next(x for x in result.stdout.splitlines() if x.startswith("STATS "))
    return json.loads(line.removeprefix("STATS "))


@pytest.mark.parametrize("resume", ["torchrun", "one process"])
def test_a_killed_rank_resumes_and_the_store_equals_one_process(
    tmp_path, tiny_gemma3_dir, capture_script, resume
):
    """Through the Python API in a torchrun-launched script: rank 1 dies after one shard."""
    texts = json.dumps(_texts(48, seed=1))
    base = [str(capture_script), str(tiny_gemma3_dir), texts]
    one = _stats(_run([sys.executable, *base, str(tmp_path / "one"), "no"]))
    killed = _run([*TORCHRUN, *base, str(tmp_path / "two"), "yes"], ok=False)
    assert killed.returncode != 0
    journals = list((tmp_path / "two").glob("manifest.json.rank-*"))
    assert journals  # what the ranks finished is recorded outside the manifest
    launcher = TORCHRUN if resume == "torchrun" else [sys.executable]
    resumed = _stats(_run([*launcher, *base, str(tmp_path / "two"), "no"]))
    assert resumed["all"] == one["all"] == one["run"]
    assert resumed["run"] < one["run"]  # the dead rank's finished shard was kept
    assert _files(tmp_path / "one") == _files(tmp_path / "two")  # no journal, no lock left
    a, b = load(tmp_path / "one"), load(tmp_path / "two")
    for hook in HOOKS:
        assert torch.equal(a[hook].values, b[hook].values)
        assert torch.equal(a[hook].offsets, b[hook].offsets)


def test_an_error_on_the_leader_is_raised_on_every_rank(tmp_path, tiny_gemma3_dir, capture_script):
    """A store another capture holds: the leader is refused, and rank 1 stops too (no hang)."""
    store = tmp_path / "held"
    store.mkdir()
    lock = {"pid": os.getpid(), "host": os.uname().nodename, "started": 0}
    (store / "manifest.json.lock").write_text(json.dumps(lock))
    texts = json.dumps(_texts(8))
    result = _run(
        [*TORCHRUN, str(capture_script), str(tiny_gemma3_dir), texts, str(store), "no"], ok=False
    )
    assert result.returncode != 0
    assert result.stderr.count("is being written by another capture") >= 2  # both ranks
    assert [p.name for p in store.iterdir()] == ["manifest.json.lock"]  # nothing written


def test_torchrun_capture_without_a_store_is_refused(tmp_path, tiny_gemma3_dir):
    script = tmp_path / "memory.py"
    script.write_text(
        "import sys, lensprobe as lp\n"
        "lp.capture(lp.load_model(sys.argv[1]), ['the cat'], 'blocks.1.hook_resid_post')\n"
    )
    result = _run([*TORCHRUN, str(script), str(tiny_gemma3_dir)], ok=False)
    assert "pass out=DIR" in result.stderr


@pytest.mark.slow
def test_torchrun_capture_of_the_real_model_equals_one_process(tmp_path, fixture_data_dir):
    rows = list(csv.DictReader(open(fixture_data_dir / "banking77" / "train.csv")))[:96]
    data = tmp_path / "banking.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([r["text"], r["category"]] for r in rows)
    args = ["--model", "gemma-3-270m", "--dataset", str(data), "--max-length", "32"]
    args += ["--hooks", "blocks.3.hook_resid_post,blocks.9.hook_resid_post"]
    _run([sys.executable, "-m", "lensprobe", "capture", *args, "--out", str(tmp_path / "one")])
    _run([*TORCHRUN, "-m", "lensprobe", "capture", *args, "--out", str(tmp_path / "two")])
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert len(json.loads((tmp_path / "two" / "manifest.json").read_text())["shards"]) >= 2


@pytest.mark.parametrize("command", ["run", "train", "demo"])
def test_commands_other_than_capture_are_refused_under_torchrun(command, monkeypatch, capsys):
    from lensprobe.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    args = {"run": ["--dataset", "x.csv"], "train": ["--acts", "store"], "demo": []}[command]
    assert main([command, *args]) == 2
    assert "only capture runs under torchrun" in capsys.readouterr().err


def test_a_rank_with_no_shard_to_compute_still_finishes_the_store(
    tmp_path, tiny_gemma3_dir, capture_script
):
    """Eight short texts make one shard: rank 1 computes nothing, and the store is still whole."""
    base = [str(capture_script), str(tiny_gemma3_dir), json.dumps(_texts(8, seed=2))]
    _run([sys.executable, *base, str(tmp_path / "one"), "no"])
    _run([*TORCHRUN, *base, str(tmp_path / "two"), "no"])
    assert len(json.loads((tmp_path / "two" / "manifest.json").read_text())["shards"]) == 1
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
