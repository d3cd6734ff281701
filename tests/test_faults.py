"""Fault injection: damaged, truncated and deleted store and probe files, and bad inputs.

Every fault must end in a named error (:mod:`lensprobe.errors`) whose one-line message names the
file (or field) and the fix, never in silently wrong numbers or a raw traceback. The tests are
grouped by the rows of issue 14's table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lensprobe.activations import Activations, ActivationsMeta
from lensprobe.cli import main
from lensprobe.errors import (
    DataFileError,
    InputError,
    LensprobeError,
    ModelNotFoundError,
    OutputPathError,
    ProbeFileError,
    StoreCorruptError,
)
from lensprobe.probes import AttentionProbe, MeanProbe, ProbeConfig, load_probe
from lensprobe.storage import load, save

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

D = 8
HOOK = "blocks.1.hook_resid_post"


def make_store(path: Path, n: int = 40, *, shard_tokens: int = 24) -> Activations:
    """A labelled store of ``n`` sequences in several shards (no model needed)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([2 + (5 * i) % 7 for i in range(n)])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    n_tok = int(offsets[-1])
    meta = ActivationsMeta(
        hook=HOOK,
        model_id="tiny",
        backend="hf",
        d_model=D,
        dtype="float32",
        tokenizer="tiny-tok",
        padding_side="right",
        max_length=16,
        n_truncated=0,
        prepend_bos=False,
        class_names=("neg", "pos"),
    )
    acts = Activations(
        meta,
        torch.randn(n_tok, D, generator=gen),
        offsets,
        torch.randint(0, 50, (n_tok,), generator=gen),
        torch.arange(n) % 2,
        token_strs=[[f"t{j}" for j in range(int(k))] for k in lengths],
        texts=[f"text {i}" for i in range(n)],
    )
    save(acts, path, shard_tokens=shard_tokens)
    return acts


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    """Flip bits of one byte (negative offsets count from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def header_len(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"lensprobe {command}: error: ")
    assert "Traceback" not in err
    return lines[0]


# -- row: bytes flipped in a shard's values or labels ---------------------------------------------


def test_flipped_values_are_detected_by_default(tmp_path):
    acts = make_store(tmp_path / "s")
    shard = tmp_path / "s" / HOOK / "shard-00002.safetensors"
    flip(shard, -5)
    loaded = load(tmp_path / "s")[HOOK]  # loading maps; the shard is hashed when first read
    torch.testing.assert_close(loaded.sequence(0), acts.sequence(0))  # shard 0 is intact
    with pytest.raises(StoreCorruptError, match=r"shard-00002\.safetensors fails its checksum"):
        loaded.pad()
    with pytest.raises(StoreCorruptError, match="to recompute shard 2"):
        loaded[list(range(len(loaded)))[::-1]].pad()  # every view checks the shards it reads
    with pytest.raises(StoreCorruptError, match="fails its checksum"):
        load(tmp_path / "s", verify="full")


def test_flipped_labels_fail_at_load(tmp_path):
    make_store(tmp_path / "s")
    tokens = tmp_path / "s" / "tokens" / "shard-00001.safetensors"
    flip(tokens, -1)  # labels are the last tensor of a token shard
    with pytest.raises(
        StoreCorruptError, match=r"tokens/shard-00001\.safetensors fails its checksum"
    ):
        load(tmp_path / "s")


def test_cli_train_on_a_flipped_store_fails_instead_of_training_nan(tmp_path, capsys):
    make_store(tmp_path / "s")
    flip(tmp_path / "s" / HOOK / "shard-00001.safetensors", -3, 0x7F)
    code = main(
        ["train", "--acts", str(tmp_path / "s"), "--probes", "mean", "--out", str(tmp_path / "o")]
    )
    assert code == 1
    line = one_line_error(capsys, "train")
    assert "shard-00001.safetensors" in line and "recompute shard 1" in line
    assert not (tmp_path / "o" / "results.csv").exists()


# -- row: bytes flipped in token ids / a shard header --------------------------------------------


def test_flipped_token_ids_fail_at_load(tmp_path):
    make_store(tmp_path / "s")
    tokens = tmp_path / "s" / "tokens" / "shard-00000.safetensors"
    flip(tokens, header_len(tokens) + 8 + 1)  # first bytes of the data: token ids come first
    with pytest.raises(StoreCorruptError, match="recompute shard 0"):
        load(tmp_path / "s")


@pytest.mark.parametrize("where", ["tokens", HOOK])
@pytest.mark.parametrize("damage", ["rename_tensor", "bad_utf8", "bad_json", "header_length"])
def test_damaged_shard_headers_fail_at_load(tmp_path, where, damage):
    make_store(tmp_path / "s")
    shard = tmp_path / "s" / where / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    n = header_len(shard)
    header = data[8 : 8 + n]
    if damage == "rename_tensor":
        name = b'"values"' if where == HOOK else b'"lengths"'
        i = bytes(header).index(name)
        header[i + 2] ^= 0x01
    elif damage == "bad_utf8":
        header[1] = 0xFF
    elif damage == "bad_json":
        header[0] = ord("[")
    else:
        data[0:8] = (n + 10**6).to_bytes(8, "little")
    if damage != "header_length":
        data[8 : 8 + n] = header
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match="recompute shard 1") as err:
        load(tmp_path / "s", verify="off")  # caught without hashing: the header is checked
    assert "shard-00001.safetensors" in str(err.value)


def test_deleted_and_truncated_shards(tmp_path):
    make_store(tmp_path / "s")
    values = tmp_path / "s" / HOOK / "shard-00003.safetensors"
    values.write_bytes(values.read_bytes()[:-16])
    with pytest.raises(
        StoreCorruptError, match=r"shard-00003\.safetensors has .* bytes.*truncated"
    ):
        load(tmp_path / "s")
    values.unlink()
    with pytest.raises(StoreCorruptError, match=r"shard-00003\.safetensors is missing.*shard 3"):
        load(tmp_path / "s")
    make_store(tmp_path / "t")
    (tmp_path / "t" / "texts.json").unlink()
    with pytest.raises(StoreCorruptError, match=r"texts\.json is missing"):
        load(tmp_path / "t")


# -- row: manifest truncated / empty / missing `plan` / a JSON list --------------------------------


def _damage_manifest(path: Path, how: str) -> None:
    manifest = path / "manifest.json"
    text = manifest.read_text()
    if how == "truncated":
        manifest.write_text(text[: len(text) // 2])
    elif how == "empty":
        manifest.write_text("")
    elif how == "no_plan":
        data = json.loads(text)
        del data["plan"]
        data.pop("checksum")
        manifest.write_text(json.dumps(data))
    elif how == "list":
        manifest.write_text("[1, 2, 3]")
    elif how == "edited":  # still valid JSON, one value changed
        data = json.loads(text)
        data["hooks"][HOOK]["meta"]["d_model"] += 1
        manifest.write_text(json.dumps(data))
    elif how == "bad_dir":
        data = json.loads(text)
        data["hooks"][HOOK]["dir"] = "../elsewhere"
        data.pop("checksum")
        manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "no_plan", "list", "edited", "bad_dir"])
def test_damaged_manifest_is_named_with_the_fix(tmp_path, how):
    make_store(tmp_path / "s")
    _damage_manifest(tmp_path / "s", how)
    with pytest.raises(StoreCorruptError, match=r"manifest\.json .*rerun the same capture"):
        load(tmp_path / "s")


def test_rerunning_the_capture_rebuilds_a_store_with_a_damaged_manifest(
    tiny_gemma3, tiny_texts, tmp_path
):
    from lensprobe.capturing import capture

    model = tiny_gemma3("hf")
    kw = {"dtype": torch.float32, "progress": False, "shard_tokens": 12}
    first = capture(model, tiny_texts, HOOK, out=tmp_path / "s", **kw)[HOOK]
    want = first.values.clone()
    _damage_manifest(tmp_path / "s", "truncated")
    again = capture(model, tiny_texts, HOOK, out=tmp_path / "s", **kw)
    assert again.stats.n_tokens_run == first.n_tokens  # nothing trusted, everything recomputed
    assert torch.equal(load(tmp_path / "s", verify="full")[HOOK].values, want)
    assert (tmp_path / "s" / "manifest.json.damaged").is_file()  # kept for inspection


def test_rerunning_the_capture_recomputes_only_the_damaged_shard(tiny_gemma3, tiny_texts, tmp_path):
    from lensprobe.capturing import capture

    model = tiny_gemma3("hf")
    kw = {"dtype": torch.float32, "progress": False, "shard_tokens": 12}
    first = capture(model, tiny_texts, HOOK, out=tmp_path / "s", **kw)
    want = first[HOOK].values.clone()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    flip(tmp_path / "s" / HOOK / "shard-00001.safetensors", -2)
    again = capture(model, tiny_texts, HOOK, out=tmp_path / "s", **kw)
    assert again.stats.n_tokens_run == manifest["shards"]["1"]["n_tokens"]
    assert torch.equal(again[HOOK].values, want)


# -- row: a saved probe whose weights or config changed ------------------------------------------


def _probe(seed: int, **config) -> AttentionProbe:
    probe = AttentionProbe(
        D, 2, 3, config=ProbeConfig(kind="attention", d_model=D, n_heads=2, n_outputs=3, **config)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return probe


@pytest.mark.parametrize("change", ["other_weights", "flipped_byte", "position", "exclude_bos"])
def test_probe_weights_and_config_saved_together(tmp_path, change):
    _probe(0).save(tmp_path / "p")
    _probe(1).save(tmp_path / "q")
    load_probe(tmp_path / "p")  # intact
    weights, config = tmp_path / "p" / "model.safetensors", tmp_path / "p" / "config.json"
    if change == "other_weights":  # same shapes, another probe
        weights.write_bytes((tmp_path / "q" / "model.safetensors").read_bytes())
    elif change == "flipped_byte":
        flip(weights, -2, 0x40)
    else:
        data = json.loads(config.read_text())
        data[change] = "first" if change == "position" else True
        config.write_text(json.dumps(data))
    with pytest.raises(ProbeFileError, match=r"were not saved together") as err:
        load_probe(tmp_path / "p")
    assert str(tmp_path / "p") in str(err.value)


def test_a_probe_config_without_its_digest_is_refused(tmp_path):
    _probe(0).save(tmp_path / "p")
    config = tmp_path / "p" / "config.json"
    data = json.loads(config.read_text())
    del data["digest"]
    config.write_text(json.dumps(data))
    with pytest.raises(ProbeFileError, match=r"has no 'digest'.*save the probe again"):
        load_probe(tmp_path / "p")


# -- row: a saved probe with a malformed config or weights file ------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_kind", r"config\.json: the field 'kind' is missing"),
        ("str_width", r"config\.json: the field 'd_model' must be an integer, got '8'"),
        ("bad_json", r"config\.json is not valid JSON"),
        ("json_list", r"config\.json holds a JSON list"),
        ("truncated_weights", r"model\.safetensors is not a readable safetensors file"),
        ("empty_weights", r"model\.safetensors is not a readable safetensors file"),
    ],
)
def test_malformed_saved_probe_is_one_named_error(tmp_path, damage, message):
    MeanProbe(D).save(tmp_path / "p")
    weights, config = tmp_path / "p" / "model.safetensors", tmp_path / "p" / "config.json"
    data = json.loads(config.read_text())
    if damage == "no_kind":
        del data["kind"]
        config.write_text(json.dumps(data))
    elif damage == "str_width":
        data["d_model"] = str(data["d_model"])
        config.write_text(json.dumps(data))
    elif damage == "bad_json":
        config.write_text(config.read_text()[:-5])
    elif damage == "json_list":
        config.write_text("[]")
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-7])
    else:
        weights.write_bytes(b"")
    with pytest.raises(ProbeFileError, match=message) as err:
        load_probe(tmp_path / "p")
    assert str(tmp_path / "p") in str(err.value) and "\n" not in str(err.value)


def test_deleted_probe_file(tmp_path):
    MeanProbe(D).save(tmp_path / "p")
    (tmp_path / "p" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found"):
        load_probe(tmp_path / "p")


# -- row: empty texts ------------------------------------------------------------------------------


def test_capture_rejects_empty_texts(tiny_gemma3, tmp_path):
    from lensprobe.capturing import capture, check_capture_out

    model = tiny_gemma3("hf")
    with pytest.raises(InputError, match=r"texts \[1\] are empty"):
        capture(model, ["the cat", "", "a dog"], HOOK, progress=False)
    with pytest.raises(InputError, match=r"texts \[0, 2\] are empty or only whitespace"):
        capture(model, [" ", "cat", "\n"], HOOK, progress=False, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError, match="empty"):
        check_capture_out(tmp_path / "s", ["cat", ""], HOOK)


# -- rows: the command line's output folders, model and data files --------------------------------


def test_cli_out_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["run", "--dataset", "topics", "--probes", "mean", "--out", str(afile)]) == 1
    line = one_line_error(capsys, "run")
    assert "--out" in line and "is a file" in line
    assert main(["capture", "--dataset", "topics", "--out", str(afile)]) == 1
    assert "is a file, not a folder" in one_line_error(capsys, "capture")
    assert afile.read_text() == "mine"


def test_cli_capture_into_a_folder_of_other_things(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["capture", "--dataset", "topics", "--out", str(folder)]) == 1
    line = one_line_error(capsys, "capture")
    assert "not empty" in line and "not an activation store" in line
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_cli_capture_into_a_store_of_another_capture(tmp_path, capsys):
    make_store(tmp_path / "s")  # other texts, other hooks
    assert main(["capture", "--dataset", "topics", "--out", str(tmp_path / "s")]) == 1
    assert "holds a different capture" in one_line_error(capsys, "capture")


def test_cli_unknown_model_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    args = ["capture", "--dataset", "topics", "--n", "12", "--out", str(tmp_path / "s")]
    assert main([*args, "--model", "no-such-model"]) == 1
    line = one_line_error(capsys, "capture")
    assert "--model no-such-model" in line and "HF_HUB_OFFLINE" in line
    assert main([*args, "--model", str(tmp_path / "nothing")]) == 1
    assert "no such model folder" in one_line_error(capsys, "capture")
    with pytest.raises(ModelNotFoundError):  # --debug: the traceback, with the named error
        main(["--debug", *args, "--model", "no-such-model"])


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_cli_empty_and_header_only_csv(tmp_path, capsys, content):
    data = tmp_path / "data.csv"
    data.write_text(content)
    assert main(["capture", "--dataset", str(data), "--out", str(tmp_path / "s")]) == 1
    line = one_line_error(capsys, "capture")
    assert str(data) in line and ("0 bytes" in line if not content else "no rows" in line)
    with pytest.raises(DataFileError):
        main(["capture", "--dataset", str(data), "--out", str(tmp_path / "s"), "--debug"])


def test_cli_train_out_file_fails_before_training(tmp_path, capsys, monkeypatch):
    make_store(tmp_path / "s")
    trained = []
    import lensprobe.experiment

    monkeypatch.setattr(lensprobe.experiment, "run_grid", lambda *a, **k: trained.append(1) or [])
    afile = tmp_path / "results"
    afile.write_text("mine")
    code = main(["train", "--acts", str(tmp_path / "s"), "--probes", "mean", "--out", str(afile)])
    assert code == 1 and not trained
    assert "--out" in one_line_error(capsys, "train")
    assert afile.read_text() == "mine"


# -- row: rare class / --n 1, refused before any model loads -----------------------------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("n", [None, "1"])
def test_cli_rare_class_is_refused_before_the_model_loads(
    tmp_path, capsys, tiny_gemma3_dir, no_model_loads, n
):
    data = tmp_path / "data.csv"
    rows = [("the cat sat", "a")] * 30 + [("a dog ran", "b")] * 3
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    args = ["run", "--dataset", str(data), "--model", str(tiny_gemma3_dir), "--backend", "hf"]
    args += ["--hooks", HOOK, "--probes", "mean", "--out", str(tmp_path / "o")]
    if n:
        args += ["--n", n]
    assert main(args) == 1
    line = one_line_error(capsys, "run")
    assert "n_folds" not in line
    if n:
        assert "one class" in line and "larger --n-texts" in line
    else:
        assert "class 'b' has 3 text(s)" in line and "--n" not in line


def test_every_named_error_is_a_lensprobe_error():
    for cls in (DataFileError, InputError, ModelNotFoundError, OutputPathError, ProbeFileError):
        assert issubclass(cls, LensprobeError)
    assert issubclass(StoreCorruptError, ValueError) and issubclass(
        OutputPathError, FileExistsError
    )


# --- a store never mixes two models (issue 24, item 8) ------------------------------------------


def test_a_store_refuses_to_resume_with_another_dtype_or_other_weights(tmp_path, tiny_gemma3_dir):
    import lensprobe as lp
    from lensprobe.errors import StoreError

    texts = [f"word{i} word{i + 1} word{i + 2}" for i in range(12)]
    out = tmp_path / "store"

    def capture(model):
        return lp.capture(model, texts, [HOOK], out=out, shard_tokens=8, progress=False)

    model = lp.load_model(str(tiny_gemma3_dir), backend="hf", dtype=torch.float32)
    first = capture(model)[HOOK]
    again = capture(model)[HOOK]  # the same model: the store is reused
    assert torch.equal(first.values, again.values)
    with pytest.raises(StoreError, match=r"computes in bfloat16 now, in float32 when"):
        capture(lp.load_model(str(tiny_gemma3_dir), backend="hf", dtype=torch.bfloat16))
    with torch.no_grad():  # new weights saved into the same model folder, e.g. a fine-tune
        for p in model.parameters():
            p.mul_(1.01)
    with pytest.raises(StoreError, match="weights changed since the store was started"):
        capture(model)
    from lensprobe.storage.manifest import check_same_capture

    older = {"n_tokens": 3}  # a store written before lensprobe recorded the model's weights
    check_same_capture(out, older, {**older, "compute_dtype": "float32", "weights_sha256": "x"})


def test_a_second_capture_into_a_store_being_written_is_refused(tmp_path, tiny_gemma3_dir):
    import json
    import socket
    import subprocess
    import sys

    import lensprobe as lp
    from lensprobe.errors import StoreError
    from lensprobe.storage.manifest import LOCK

    texts = [f"word{i} word{i + 1}" for i in range(10)]
    model = lp.load_model(str(tiny_gemma3_dir), backend="hf")
    out = tmp_path / "store"
    lp.capture(model, texts[:4], [HOOK], out=out, progress=False)  # the other capture's store
    busy = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0}  # a live process
    (out / LOCK).write_text(json.dumps(busy))
    (out / "manifest.json.tmp-123").write_text("the other capture's half-written file")
    with pytest.raises(StoreError, match=r"being written by another capture \(pid \d+ on"):
        lp.capture(model, texts[:4], [HOOK], out=out, progress=False)
    assert (out / "manifest.json.tmp-123").exists()  # nothing of the other capture is touched
    # a lock left by a killed capture (its process is gone) is taken over
    (out / "manifest.json.tmp-123").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps({**busy, "pid": dead.pid}))
    acts = lp.capture(model, texts[:4], [HOOK], out=out, progress=False)[HOOK]
    assert len(acts) == 4 and not (out / LOCK).exists()  # released when the capture ends


def test_a_failed_capture_releases_its_lock(tmp_path, tiny_gemma3_dir, monkeypatch):
    import lensprobe as lp
    import lensprobe.capturing as capturing
    from lensprobe.storage.manifest import LOCK

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(capturing, "run_capture", interrupted)
    model = lp.load_model(str(tiny_gemma3_dir), backend="hf")
    with pytest.raises(KeyboardInterrupt):
        lp.capture(model, ["a b", "c d"], [HOOK], out=tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / LOCK).exists()


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_a_text_past_the_models_context_is_a_named_error(tiny_gpt2, backend):
    import lensprobe as lp

    model = tiny_gpt2(backend)  # built for 64 positions
    long_text = " ".join(f"w{i % 20}" for i in range(100))
    with pytest.raises(InputError, match=r"text 1 has \d+ tokens but the model was built for 64"):
        lp.capture(
            model,
            ["w1 w2", long_text],
            ["blocks.0.hook_resid_post"],
            max_length=None,
            progress=False,
        )
    cut = lp.capture(
        model, ["w1 w2", long_text], ["blocks.0.hook_resid_post"], max_length=64, progress=False
    )["blocks.0.hook_resid_post"]
    assert int(cut.lengths.max()) == 64


def test_a_full_disk_is_a_named_error_that_leaves_no_half_written_file(tmp_path, monkeypatch):
    import errno

    import lensprobe.storage.files as files
    from lensprobe.errors import DiskFullError

    acts = make_store(tmp_path / "first")  # several shards
    real, calls = files.os.fsync, [0]

    def fills_up(fd):
        calls[0] += 1
        if calls[0] > 3:  # the disk fills after a few files
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fills_up)
    out = tmp_path / "second"
    with pytest.raises(DiskFullError, match=r"no space left on the disk of .*second.*free space"):
        save(acts, out)
    assert not list(out.rglob("*.tmp-*"))  # no half-written file is left behind
    monkeypatch.setattr(files.os, "fsync", real)
    save(acts, tmp_path / "third")
    assert torch.equal(load(tmp_path / "third")[HOOK].values, acts.values)
