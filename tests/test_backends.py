"""The backend layer: one place resolves a hook name for capture, attach, edit, steer and patch.

For every backend and every block-level hook name, the tensor capture stores is the tensor the
backend layer's reader and editor see (and so what ``attach`` and ``edit_activations`` see); an
edit there changes what comes after; an unknown name is the one ``UnknownHookError`` with the
nearest names, everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import torch
from probe_helpers import random_probe

from lensprobe import backends
from lensprobe.backends.core import first_tensor, input_tensor, replace_first, replace_input
from lensprobe.backends.names import UnknownHookError
from lensprobe.capturing import capture
from lensprobe.hooks import attach, edit_activations
from lensprobe.patching import patch_positions
from lensprobe.steering import steer

BACKENDS = ["hf", "nnsight", "transformer_lens"]
HOOKS = [
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
]
DOWNSTREAM = "blocks.2.hook_resid_post"
TEXT = "the big red bird flew over the green tree"
SHIFT = torch.linspace(-1.0, 1.0, 32)
"""An edit along a non-constant direction (a LayerNorm would remove a constant shift)."""


def _load(request: pytest.FixtureRequest, family: str, backend: str) -> Any:
    return request.getfixturevalue(f"tiny_{family}")(backend)


def _token_ids(model: Any, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One text's token ids and what capture stores for it at ``hook``."""
    acts = capture(model, [TEXT], hook, dtype=torch.float32, prepend_bos=True, progress=False)
    return acts[hook].token_ids, acts[hook].sequence(0)


def _run_with(model: Any, backend: str, ids: torch.Tensor, install: Callable) -> None:
    """One forward of ``ids`` with hooks installed by ``install(stack)`` (removed afterwards)."""
    with ExitStack() as stack:
        install(stack)
        backends.forward_tokens(model, backend, ids[None].to(backends.input_device(model, backend)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_capture_reader_and_editor_see_the_same_tensor(request, family, backend):
    model = _load(request, family, backend)
    for hook in HOOKS:
        ids, captured = _token_ids(model, hook)
        target = backends.resolve_hook(model, hook)
        seen: dict[str, torch.Tensor] = {}

        def keep(key: str, x: torch.Tensor, seen: dict = seen) -> torch.Tensor:
            seen[key] = x.detach().clone()
            return x

        def install(stack: ExitStack, target=target, keep=keep) -> None:
            backends.add_reader(stack, target, lambda x: keep("reader", x))
            backends.add_editor(stack, target, lambda x: keep("editor", x))

        _run_with(model, backend, ids, install)
        for key in ("reader", "editor"):
            torch.testing.assert_close(seen[key][0].float(), captured, rtol=1e-5, atol=1e-5)

        # the public API on top of the layer: attach and edit_activations read the same tensor
        probe = random_probe("mean", d_model=32, n_outputs=2, hook=hook)
        with (
            attach(model, probe) as readout,
            edit_activations(model, hook, lambda x, info: keep("edit_activations", x)),
        ):
            backends.forward_tokens(model, backend, ids[None])
        torch.testing.assert_close(readout.activations[0].float(), captured, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(seen["edit_activations"][0].float(), captured)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_an_edit_changes_what_comes_after(request, family, backend):
    model = _load(request, family, backend)
    ids, _ = _token_ids(model, DOWNSTREAM)
    downstream = backends.resolve_hook(model, DOWNSTREAM)

    def read_after(edit_hook: str | None) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}

        def install(stack: ExitStack) -> None:
            if edit_hook is not None:
                target = backends.resolve_hook(model, edit_hook)
                backends.add_editor(stack, target, lambda x: x + SHIFT.to(x))
                backends.add_reader(stack, target, lambda x: seen.setdefault("at", x.clone()))
            backends.add_reader(stack, downstream, lambda x: seen.setdefault("after", x.clone()))

        _run_with(model, backend, ids, install)
        return seen

    plain = read_after(None)["after"]
    for hook in HOOKS:
        seen = read_after(hook)
        _, before = _token_ids(model, hook)
        # the reader at the edited point sees the edit, and the edit reaches later layers
        torch.testing.assert_close(seen["at"][0].float(), before + SHIFT, rtol=1e-5, atol=1e-5)
        assert float((seen["after"] - plain).abs().max()) > 1e-6, hook
    # nothing stays behind: the same forward without edits reads the plain value again
    torch.testing.assert_close(read_after(None)["after"], plain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_names_raise_one_error_with_suggestions(tiny_gemma3, tiny_texts, backend):
    model = tiny_gemma3(backend)
    typo = "blocks.1.hook_resid_pots"
    probe = random_probe("mean", d_model=32, n_outputs=1, hook=typo)
    direction = torch.ones(32)
    attempts = {
        "resolve_hook": lambda: backends.resolve_hook(model, typo),
        "check_hooks": lambda: backends.check_hooks(model, backend, [typo]),
        "capture": lambda: capture(model, tiny_texts, typo, progress=False),
        "attach": lambda: attach(model, probe).__enter__(),
        "edit_activations": lambda: edit_activations(model, typo, lambda x, i: x).__enter__(),
        "steer": lambda: steer(model, typo, direction, 1.0).__enter__(),
        "patch_positions": lambda: patch_positions(model, probe, [2, 4, 5], [2, 5, 4]),
    }
    for name, attempt in attempts.items():
        with pytest.raises(UnknownHookError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith(f"unknown hook name {typo!r} for "), name
        assert "nearest valid names: [" in message and "blocks.1.hook_resid_post" in message, name
    with pytest.raises(UnknownHookError, match="nearest valid names"):
        backends.resolve_hook(model, "blocks.9.hook_resid_post")  # 4 layers


def test_module_paths_resolve_on_hf_and_nnsight(tiny_gemma3):
    for backend in ("hf", "nnsight"):
        model = tiny_gemma3(backend)
        target = backends.resolve_hook(model, "model.layers.1")
        assert (target.backend, target.side) == (backend, "output")
        assert target.module is backends.hf_module(model, backend).model.layers[1]
        with pytest.raises(UnknownHookError, match=r"model\.layers\.1"):
            backends.resolve_hook(model, "model.layers.1x")
    with pytest.raises(TypeError, match="hook name"):
        backends.resolve_hook(tiny_gemma3("hf"), "")


def test_first_tensor_and_its_inverse():
    from transformers.modeling_outputs import BaseModelOutput

    x, new, extra = torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.full((1,), 7.0)
    for value in (x, (x, extra), [x, extra], BaseModelOutput(last_hidden_state=x)):
        assert first_tensor(value) is x
        replaced = replace_first(value, new)
        assert first_tensor(replaced) is new
        assert type(replaced) is type(value)
        if isinstance(value, (tuple, list)):
            assert replaced[1] is extra
    with pytest.raises(TypeError, match="tensor"):
        first_tensor({"a": 1})


def test_input_tensor_and_its_inverse():
    x, new, mask = torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.ones(1, 2)
    args, kwargs = replace_input((x, "a"), {"attention_mask": mask}, lambda t: new)
    assert args == (new, "a") and kwargs["attention_mask"] is mask
    assert input_tensor(args, kwargs) is new
    args, kwargs = replace_input((), {"hidden_states": x, "attention_mask": mask}, lambda t: new)
    assert args == () and kwargs["hidden_states"] is new and kwargs["attention_mask"] is mask
    assert input_tensor(args, kwargs) is new
    with pytest.raises(TypeError, match="tensor input"):
        input_tensor(("text",), {})


def test_an_input_edit_never_guesses_which_keyword_to_replace():
    """Reading falls back to the first tensor keyword (as capture always did); an edit does not."""
    from contextlib import ExitStack

    from lensprobe.backends import hf as hf_backend

    class Keywords(torch.nn.Module):
        def forward(self, *, attention_mask, x):
            return x * attention_mask

    mask, x = torch.ones(2), torch.full((2,), 3.0)
    assert input_tensor((), {"attention_mask": mask, "x": x}) is mask
    with pytest.raises(TypeError, match="will not guess"):
        replace_input((), {"attention_mask": mask, "x": x}, lambda t: t * 0)
    module = Keywords()
    with ExitStack() as stack:
        hf_backend.add_editor(stack, module, "input", lambda t: t * 0, name="blocks.0.hook_x")
        with pytest.raises(TypeError, match=r"^blocks\.0\.hook_x: .*will not guess"):
            module(attention_mask=mask, x=x)
    assert torch.equal(module(attention_mask=mask, x=x), x)  # the editor is gone
