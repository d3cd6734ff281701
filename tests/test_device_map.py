"""Models spread over devices (accelerate device maps) capture what the model on one device does.

This machine has one device (the CPU), so the tiny model is split between the CPU and accelerate's
disk offload: layers 1 and 2 live on disk (meta tensors in the module) and are loaded into the CPU
by accelerate's hooks for their forward, which is how a model larger than its GPUs runs.
"""

from __future__ import annotations

import pytest
import torch

from lensprobe import backends
from lensprobe.capturing import capture
from lensprobe.errors import InputError
from lensprobe.models import load_model

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.layers.3": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.mark.parametrize("backend", ["hf", "nnsight", "transformer_lens"])
def test_a_model_split_over_cpu_and_disk_captures_like_one_on_the_cpu(
    backend, tiny_gemma3_dir, tiny_texts, tmp_path, monkeypatch
):
    monkeypatch.setenv("LENSPROBE_CACHE", str(tmp_path / "cache"))
    whole = load_model(str(tiny_gemma3_dir), backend=backend, dtype="float32")
    split = load_model(str(tiny_gemma3_dir), backend=backend, dtype="float32", device_map=SPLIT)
    module = backends.hf_module(split, backend)
    assert module.hf_device_map == SPLIT
    assert next(module.model.layers[1].parameters()).is_meta  # really offloaded
    ran = []  # layer 3 runs through the HF module, or the bridge's own block for TransformerLens
    layer3 = split.hook_dict["blocks.3.hook_resid_pre"] if backend == "transformer_lens" else None
    (layer3 or module.model.layers[3]).register_forward_hook(lambda *_: ran.append(3))
    expected = capture(whole, tiny_texts, HOOKS, dtype=torch.float32)
    got = capture(split, tiny_texts, HOOKS, dtype=torch.float32, out=tmp_path / "store")
    for hook in HOOKS:
        assert got[hook].values.device.type == "cpu"
        assert torch.equal(got[hook].values, expected[hook].values)
    assert ran == []  # the forward still stops after the deepest hook (layer 2)...
    capture(split, tiny_texts[:1], "blocks.3.hook_resid_post")
    assert ran == [3]  # ...and the witness sees layer 3 when it runs


def test_device_and_device_map_together_are_refused(tiny_gemma3_dir):
    with pytest.raises(InputError, match="device or device_map"):
        load_model(str(tiny_gemma3_dir), backend="hf", device="cpu", device_map="auto")
