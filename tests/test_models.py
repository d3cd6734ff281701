"""Loading models for each backend (tiny local checkpoints; the bundled Gemma when slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lensprobe.errors import InputError
from lensprobe.models import (
    BUNDLED_MODELS,
    bundled_model_dir,
    cache_dir,
    compute_dtype,
    display_name,
    load_model,
)


def test_unknown_backend_names_the_choices(tiny_gemma3_dir: Path):
    with pytest.raises((ValueError, TypeError), match="transformer_lens"):
        load_model(str(tiny_gemma3_dir), backend="jax")  # type: ignore[arg-type]


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="gemma-3-270m"):
        bundled_model_dir("gemma-9-000m")


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LENSPROBE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert display_name(str(tmp_path / "c" / "models" / "gemma-3-270m")) == "gemma-3-270m"
    assert display_name(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")
    assert display_name("google/gemma-3-270m") == "google/gemma-3-270m"
    monkeypatch.delenv("LENSPROBE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "lensprobe"


@pytest.mark.parametrize("backend", ["hf", "nnsight", "transformer_lens"])
def test_load_each_backend_from_a_local_directory(backend: str, tiny_gemma3_dir: Path):
    model = load_model(str(tiny_gemma3_dir), backend=backend)
    tok = model.tokenizer
    assert tok("the cat")["input_ids"][0] == tok.bos_token_id
    if backend == "hf":
        assert type(model).__name__ == "Gemma3ForCausalLM" and not model.training
        assert next(model.parameters()).dtype == compute_dtype("auto")
    elif backend == "nnsight":
        assert type(model._module).__name__ == "Gemma3ForCausalLM"
    else:
        assert "blocks.1.hook_resid_post" in model.hook_dict


def test_dtype_is_honoured(tiny_gemma3_dir: Path):
    model = load_model(str(tiny_gemma3_dir), backend="hf", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    model = load_model(str(tiny_gemma3_dir), backend="hf", dtype="float32")
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_is_bfloat16_exactly_where_the_hardware_is_fast_at_it(
    fast: bool, tiny_gemma3_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    import lensprobe.hardware

    monkeypatch.setattr(lensprobe.hardware, "_cpu_has_bf16", lambda: fast)
    expected = torch.bfloat16 if fast else torch.float32
    assert compute_dtype("auto") == compute_dtype(None) == expected
    assert (
        compute_dtype("float32") == torch.float32
        and compute_dtype(torch.bfloat16) == torch.bfloat16
    )
    model = load_model(str(tiny_gemma3_dir), backend="hf")
    assert next(model.parameters()).dtype == expected
    with pytest.raises(InputError, match="no torch dtype"):
        compute_dtype("fp32")


@pytest.mark.slow
def test_bundled_gemma_loads(gemma_hf):
    assert "gemma-3-270m" in BUNDLED_MODELS
    config = gemma_hf.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (640, 18, 262144)
    assert display_name(config.name_or_path) == "gemma-3-270m"
    ids = gemma_hf.tokenizer("Hello world")["input_ids"]
    assert ids[0] == gemma_hf.tokenizer.bos_token_id == 2


def test_the_nnsight_model_traces_plain_strings(tiny_gemma3_dir: Path, tiny_texts: list[str]):
    model = load_model(str(tiny_gemma3_dir), backend="nnsight")
    with model.trace(tiny_texts[:2]):
        hidden = model.model.layers[0].output.save()
    enc = model.tokenizer(tiny_texts[:2], return_tensors="pt", padding=True)
    with model.trace(**enc):
        same = model.model.layers[0].output.save()
    assert hidden.shape[:2] == enc["input_ids"].shape
    torch.testing.assert_close(hidden, same)


def test_cuda_under_torchrun_is_each_ranks_own_gpu(monkeypatch: pytest.MonkeyPatch):
    from lensprobe.models import rank_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert rank_device("cuda") == "cuda" and rank_device(None) is None
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_device("cuda") == "cuda:1"
    assert rank_device("cuda:0") == "cuda:0" and rank_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_device("cuda") == "cuda"


@pytest.mark.parametrize("watched", [False, True])
def test_the_weight_loading_bar_shows_only_where_someone_watches(
    watched: bool, tiny_gemma3_dir: Path, monkeypatch: pytest.MonkeyPatch, capfd
):
    from transformers.utils import logging as hf_logging

    import lensprobe.models

    monkeypatch.setattr(lensprobe.models, "wanted", lambda progress: watched)
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # whatever the environment says
    try:
        load_model(str(tiny_gemma3_dir), backend="hf")
        assert ("Loading weights" in capfd.readouterr().err) == watched
        assert hf_logging.is_progress_bar_enabled()  # the user's setting is restored
    finally:
        if not was:
            hf_logging.disable_progress_bar()
