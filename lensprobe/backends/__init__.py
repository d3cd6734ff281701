"""Model backends: where a hook name reads and edits on TransformerLens, nnsight and Hugging Face models.

This package alone turns a hook name into "where to read / where to edit". :func:`detect_backend`
tells which adapter runs a model; each adapter module (:mod:`.hf`, :mod:`.nnsight`,
:mod:`.transformer_lens`) holds that backend's knowledge:

- *capture*: :func:`open_runner` opens a :class:`~.core.Runner` for a list of hook names;
- *attach / edit*: :func:`resolve_hook` gives a :class:`~.core.HookTarget`, on which
  :func:`add_reader` and :func:`add_editor` install a reader or an editor for a ``with`` block;
- :mod:`.core`: what every backend hands back (:class:`~.core.Runner`,
  :class:`~.core.HookTarget`) and how a module's activation is read and replaced;
- names: :mod:`.names` translates TransformerLens names to module sites of Hugging Face models
  (one table per family) and raises the one :class:`~.names.UnknownHookError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from lensprobe.backends import hf as hf_backend
from lensprobe.backends import nnsight as nnsight_backend
from lensprobe.backends import transformer_lens as tl_backend
from lensprobe.backends.core import BackendName, HookTarget, Runner, StopForward, model_device
from lensprobe.backends.names import resolve_sites
from lensprobe.errors import InputTypeError
from lensprobe.models import display_name

__all__ = [
    "BackendName",
    "HookTarget",
    "add_editor",
    "add_reader",
    "check_hooks",
    "detect_backend",
    "forward_tokens",
    "hf_module",
    "input_device",
    "model_id",
    "open_runner",
    "resolve_hook",
]


def detect_backend(model: Any) -> BackendName:
    """Which backend runs ``model``.

    Raises:
        TypeError: For a model no backend understands (the message says what to pass).
    """
    if nnsight_backend.is_nnsight_model(model):
        return "nnsight"
    if tl_backend.is_transformer_lens_model(model):
        return "transformer_lens"
    if isinstance(model, nn.Module) and hasattr(getattr(model, "config", None), "model_type"):
        return "hf"
    raise InputTypeError(
        f"capture() cannot run a {type(model).__module__}.{type(model).__name__}: pass a "
        "TransformerLens TransformerBridge (or HookedRootModule), an nnsight model "
        "(nnsight.NNsight(hf_model) or TransformersModel) or a Hugging Face PreTrainedModel, "
        "e.g. lensprobe.load_model('gemma-3-270m', backend='hf')"
    )


def hf_module(model: Any, backend: BackendName) -> nn.Module | None:
    """The Hugging Face module under ``model`` (None for a TransformerLens model without one)."""
    if backend == "nnsight":
        return nnsight_backend.underlying_module(model)
    if backend == "transformer_lens":
        return tl_backend.underlying_hf(model)
    return model


def weights_fingerprint(model: Any, backend: BackendName) -> dict[str, str]:
    """What tells this model's weights from others', cheaply (for a store's fingerprint).

    ``compute_dtype``: the dtype of the first floating-point parameter. ``weights_sha256``: a
    digest of every tensor's name, shape and dtype and of up to 64 evenly spaced entries of each
    (a fine-tune or another checkpoint in the same folder changes it; reading them costs
    microseconds; weights a device map offloaded to disk count by name, shape and dtype only).
    Empty for a model without a torch module.
    """
    import hashlib

    module = hf_module(model, backend)
    if module is None and isinstance(model, nn.Module):
        module = model
    if module is None:
        return {}
    h = hashlib.sha256()
    compute = None
    with torch.no_grad():
        for name, t in module.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            if compute is None and t.is_floating_point():
                compute = str(t.dtype).removeprefix("torch.")
            flat = t.detach().reshape(-1)  # weights offloaded by a device map are meta: no data
            if flat.numel() and not flat.is_meta:
                sample = flat[:: max(1, flat.numel() // 64)][:64].to("cpu", copy=True)
                if sample.dtype == torch.bool:
                    sample = sample.to(torch.uint8)
                h.update(sample.contiguous().view(torch.uint8).numpy().tobytes())
    return {"compute_dtype": compute or "none", "weights_sha256": h.hexdigest()}


def context_length(model: Any, backend: BackendName) -> int | None:
    """The most positions the model was built for (None when its config does not say)."""
    if backend == "transformer_lens":
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        if isinstance(n_ctx, int) and n_ctx > 0:
            return n_ctx
    config = getattr(hf_module(model, backend), "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_id(model: Any, backend: BackendName) -> str:
    """A short model name for metadata (the checkpoint's name, else the class name)."""
    module = hf_module(model, backend)
    path = getattr(getattr(module, "config", None), "name_or_path", "") or ""
    if not path and backend == "transformer_lens":
        path = getattr(getattr(model, "cfg", None), "model_name", "") or ""
    return display_name(str(path)) or type(module or model).__name__


def open_runner(
    model: Any, backend: BackendName, hooks: Sequence[str]
) -> AbstractContextManager[Runner]:
    """A runner that reads ``hooks`` from ``model`` through its backend's adapter."""
    if backend == "nnsight":
        return nnsight_backend.open_runner(model, hooks)
    if backend == "transformer_lens":
        return tl_backend.open_runner(model, hooks)
    return hf_backend.open_runner(model, hooks)


def check_hooks(model: Any, backend: BackendName, hooks: Sequence[str]) -> None:
    """Raise :class:`~.names.UnknownHookError` (with the nearest names) for a hook ``model`` lacks."""
    if backend == "transformer_lens":
        tl_backend.check_hooks(model, hooks)
        return
    module = hf_module(model, backend)
    assert module is not None
    resolve_sites(module, hooks)


def resolve_hook(model: Any, hook: str) -> HookTarget:
    """Resolve a hook name on a TransformerLens, nnsight or Hugging Face model.

    Args:
        model: A ``TransformerBridge`` (or another TransformerLens ``HookedRootModule``), an
            nnsight model, or a Hugging Face model.
        hook: A TransformerLens hook name (``blocks.9.hook_resid_post``) or, on the nnsight and
            Hugging Face backends, a module path (``model.layers.9``, read at its output).

    Returns:
        The resolved :class:`~.core.HookTarget`.

    Raises:
        lensprobe.backends.names.UnknownHookError: The model has no such hook (nearest names
            listed).
        TypeError: A model no backend understands, or a hook that is not a name.
    """
    if not isinstance(hook, str) or not hook:
        raise InputTypeError(
            f"hook must be a hook name such as 'blocks.9.hook_resid_post', got {hook!r}"
        )
    backend = detect_backend(model)
    if backend == "transformer_lens":
        return tl_backend.resolve_target(model, hook)
    if backend == "nnsight":
        return nnsight_backend.resolve_target(model, hook)
    return hf_backend.resolve_target(model, hook)


def add_reader(stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], None]) -> None:
    """Call ``fn(activation)`` at ``target`` on every forward, after every other hook there.

    ``stack`` removes the hooks when it closes.
    """
    if target.backend == "transformer_lens":
        tl_backend.add_reader(stack, target.module, fn)
    else:
        hf_backend.add_reader(stack, target.module, target.side, fn)


def add_editor(stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], Tensor]) -> None:
    """Replace the activation at ``target`` with ``fn(activation)`` on every forward.

    ``stack`` removes the hooks when it closes.
    """
    if target.backend == "transformer_lens":
        tl_backend.add_editor(stack, target.module, fn)
    else:
        hf_backend.add_editor(stack, target.module, target.side, fn, name=target.name)


def input_device(model: Any, backend: BackendName) -> torch.device:
    """Where ``model`` wants its token ids."""
    module = model if backend == "transformer_lens" else hf_module(model, backend)
    assert module is not None
    return model_device(module)


def forward_tokens(model: Any, backend: BackendName, ids: Tensor) -> None:
    """One forward of token ids ``(batch, pos)``: no gradients, every token valid, no KV cache.

    A hook that ends it early with :class:`~.core.StopForward` ends it quietly.
    """
    try:
        with torch.no_grad():
            if backend == "transformer_lens":
                tl_backend.forward_tokens(model, ids)
            else:
                module = hf_module(model, backend)
                assert module is not None
                hf_backend.forward_tokens(module, ids)
    except StopForward:
        pass
