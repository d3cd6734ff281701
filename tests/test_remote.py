"""Remote capture through nnsight (NDIF), checked without a network.

``remote="local"`` is nnsight's dry run of the remote path: the trace is serialised as for the
service and deserialised before it runs. The fixture below also makes lensprobe unimportable
during that deserialisation, as on a server that has torch and nnsight but not lensprobe.
"""

from __future__ import annotations

import importlib.abc
import sys

import pytest
import torch
from test_reduced import HOOKS, _texts

from lensprobe.capturing import capture
from lensprobe.errors import RemoteServiceError, UsageError

pytest.importorskip("nnsight")


class _NoLensprobe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "lensprobe":
            raise ModuleNotFoundError(f"No module named {name!r} (a server without lensprobe)")
        return None


@pytest.fixture
def server_without_lensprobe(monkeypatch):
    """Deserialise remote traces with every lensprobe module gone and unimportable."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    hide, restore = LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore
    blocker = _NoLensprobe()
    calls = []

    def hide_all(self):
        hidden = hide(self)
        for name in list(sys.modules):
            if name.split(".")[0] == "lensprobe":
                hidden["modules"][name] = sys.modules.pop(name)
        sys.meta_path.insert(0, blocker)
        calls.append(1)
        return hidden

    def restore_all(self, hidden):
        sys.meta_path.remove(blocker)
        restore(self, hidden)

    monkeypatch.setattr(LocalSimulationBackend, "_hide_local_modules", hide_all)
    monkeypatch.setattr(LocalSimulationBackend, "_restore", restore_all)
    return calls


@pytest.fixture
def saved_shapes(monkeypatch):
    """The shape of every value a trace saves (what would cross the network)."""
    import nnsight

    shapes: list[tuple[int, ...]] = []
    save = nnsight.save

    def spy(value):
        shapes.append(tuple(value.shape))
        return save(value)

    monkeypatch.setattr(nnsight, "save", spy)
    return shapes


@pytest.mark.parametrize("keep", ["tokens", "last", "pooled"])
def test_a_remote_capture_equals_the_local_one_and_sends_back_only_what_is_kept(
    tiny_gemma3, keep, server_without_lensprobe, saved_shapes
):
    model = tiny_gemma3("nnsight")
    texts, labels = _texts(20)
    kw = dict(keep=keep, batch_size=6, dtype=torch.float32)
    local = capture(model, texts, HOOKS, labels, **kw)
    saved_shapes.clear()
    remote = capture(model, texts, HOOKS, labels, remote="local", **kw)
    assert server_without_lensprobe  # every batch went through the simulated server
    assert len(server_without_lensprobe) == 4  # one request per batch of 6
    for hook in HOOKS:
        a, b = local[hook], remote[hook]
        if keep == "tokens":
            assert torch.equal(a.values, b.values)
        else:
            assert torch.equal(a.features, b.features) and torch.equal(a.norms, b.norms)
    d = local[HOOKS[0]].d_model
    for shape in saved_shapes:  # 2 hooks x 4 batches
        if keep == "tokens":
            assert len(shape) == 3 and shape[-1] == d
        else:  # never a (batch, pos, d_model) tensor: pooled vectors and one norm per token
            assert shape[1:] in ((len(local[HOOKS[0]].kinds), d),) or len(shape) == 2
    assert len(saved_shapes) == 4 * 2 * (1 if keep == "tokens" else 2)


def test_a_remote_trace_stops_after_the_deepest_hook(tiny_gemma3, server_without_lensprobe):
    model = tiny_gemma3("nnsight")
    calls = []
    last = model._module.model.layers[3]
    handle = last.register_forward_hook(lambda *args: calls.append(1))
    try:
        capture(model, _texts(8)[0], "blocks.1.hook_resid_post", keep="last", remote="local")
    finally:
        handle.remove()
    assert calls == []


def test_an_unreachable_service_is_a_named_error_and_loads_no_weights(
    tiny_gemma3_dir, tmp_path, monkeypatch
):
    import nnsight
    from nnsight.modeling import huggingface
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gemma3_dir)
    lazy = nnsight.TransformersModel(str(tiny_gemma3_dir), task="text-generation", tokenizer=tok)
    assert lazy.dispatched is False  # the weights are not loaded
    # the hub id the service would know it by (resolving it needs the hub, unreachable here)
    monkeypatch.setitem(huggingface._ID_CACHE, lazy.repo_id, "lensprobe-tests/tiny-gemma3")
    texts = ["a cat", "a dog"]
    unreachable = "http://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(RemoteServiceError, match=r"127\.0\.0\.1:9.*NDIF_API_KEY.*without remote="):
        capture(lazy, texts, HOOKS, keep="pooled", remote=unreachable, out=tmp_path / "s")
    assert lazy.dispatched is False  # nothing on the remote path loaded the weights here
    assert not list((tmp_path / "s").glob("blocks*/shard-*"))  # no shard was written


def test_remote_capture_of_a_model_nnsight_does_not_wrap_is_refused(tiny_gemma3):
    with pytest.raises(UsageError, match="backend='nnsight'"):
        capture(tiny_gemma3("hf"), ["a cat"], HOOKS, remote=True)


@pytest.mark.slow
def test_the_real_model_captured_remotely_equals_the_local_capture(
    gemma_nnsight, fixture_data_dir, server_without_lensprobe
):
    import csv

    rows = list(csv.DictReader(open(fixture_data_dir / "sst2" / "92_glue_sst2.csv")))[:24]
    texts = [r["prompt"] for r in rows]
    hooks = ["blocks.3.hook_resid_post", "blocks.9.hook_resid_post"]
    local = capture(gemma_nnsight, texts, hooks, keep="pooled", batch_size=12)
    remote = capture(gemma_nnsight, texts, hooks, keep="pooled", batch_size=12, remote="local")
    assert len(server_without_lensprobe) >= 2  # one request per batch
    for hook in hooks:
        assert torch.equal(local[hook].features, remote[hook].features)
        assert torch.equal(local[hook].norms, remote[hook].norms)
