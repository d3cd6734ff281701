"""Capture from TransformerLens: a 4.x ``TransformerBridge`` or any ``HookedRootModule``.

Hooks are added by name through the model's own ``hooks()`` context (so only the requested hook
points do any work) and removed when the capture ends. The hook that completes the requested set
ends the forward, so nothing after the deepest hook runs (the same effect as ``stop_at_layer``,
and it also covers hooks after the last block). ``run_with_cache`` is avoided on purpose: the
bridge's version asks the Hugging Face model for attention weights, which forces the slower eager
attention.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lensprobe.backends.hf import Runner, StopForward, eval_mode, first_tensor, model_device
from lensprobe.backends.names import UnknownHookError, nearest_names
from lensprobe.batching import Batch

__all__ = ["check_hooks", "is_transformer_lens_model", "open_runner", "underlying_hf"]


def is_transformer_lens_model(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens hooked model (has a ``hook_dict``)."""
    return isinstance(model, nn.Module) and isinstance(getattr(model, "hook_dict", None), dict)


def underlying_hf(model: nn.Module) -> nn.Module | None:
    """The Hugging Face model a ``TransformerBridge`` wraps, if any."""
    hf = getattr(model, "original_model", None)
    return hf if isinstance(hf, nn.Module) else None


def check_hooks(model: nn.Module, hooks: Sequence[str]) -> None:
    """Raise :class:`UnknownHookError` for a name the model has no hook point for."""
    names = list(model.hook_dict)  # type: ignore[union-attr]
    known = set(names)
    for hook in hooks:
        if hook not in known:
            raise UnknownHookError(
                f"unknown hook name {hook!r} for this {type(model).__name__}; nearest valid "
                f"names: {nearest_names(hook, names)} (all names: model.hook_dict)"
            )


def _call_kwargs(model: nn.Module, batch: Batch) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask}
    if "return_type" in params:
        kwargs["return_type"] = None
    if takes_any or "position_ids" in params:
        # The bridge hands these to the Hugging Face forward: explicit positions (identical for
        # left and right padding) and no KV cache.
        kwargs["position_ids"] = batch.position_ids
        kwargs["use_cache"] = False
    return kwargs


@contextmanager
def open_runner(model: nn.Module, hooks: Sequence[str]) -> Iterator[Runner]:
    """Hooks on a TransformerLens model for the duration of a capture.

    Args:
        model: A ``TransformerBridge`` or another ``HookedRootModule``.
        hooks: Names from ``model.hook_dict``.

    Yields:
        A :class:`~lensprobe.backends.hf.Runner`.
    """
    check_hooks(model, hooks)
    names = list(dict.fromkeys(hooks))
    store: dict[str, Tensor] = {}

    def make_hook(name: str) -> Any:
        def hook_fn(tensor: Any, hook: Any = None) -> None:
            store[name] = first_tensor(tensor)
            if len(store) == len(names):
                raise StopForward

        return hook_fn

    with (
        eval_mode(model, underlying_hf(model)),
        model.hooks(fwd_hooks=[(n, make_hook(n)) for n in names]),
    ):  # type: ignore[operator]

        def run(batch: Batch) -> dict[str, Tensor]:
            store.clear()
            with torch.no_grad():
                try:
                    model(batch.input_ids, **_call_kwargs(model, batch))
                except StopForward:
                    pass
            missing = [n for n in names if n not in store]
            if missing:
                raise RuntimeError(f"the forward never reached hook points {missing}")
            return {hook: store[hook] for hook in hooks}

        yield Runner(backend="transformer_lens", run=run, device=model_device(model))
