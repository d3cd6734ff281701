"""Capture from a plain Hugging Face model with PyTorch forward hooks.

Hook names are translated to module sites by :mod:`lensprobe.backends.names`. One forward hook (a
pre-hook for ``input`` sites) per site stores its tensor; the hook that completes the set raises
an internal exception that ends the forward, so nothing after the deepest site runs (in particular
not the unembedding). Hooks are registered for the whole capture and removed in ``finally``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lensprobe.backends.names import Site, resolve_sites
from lensprobe.batching import Batch

__all__ = ["Runner", "first_tensor", "forward_kwargs", "open_runner", "site_order"]


class StopForward(Exception):
    """Raised inside a hook once every requested activation is stored (ends the forward)."""


@dataclass(frozen=True)
class Runner:
    """A backend ready to run batches (valid inside its ``open_runner`` context)."""

    backend: str
    """Backend name recorded in the metadata."""

    run: Callable[[Batch], dict[str, Tensor]]
    """Runs one batch and returns hook name -> ``(batch, pos, d_model)`` activations."""

    device: torch.device
    """Where the model wants its inputs."""


def first_tensor(value: Any) -> Tensor:
    """The tensor in a module's output: itself, or the first element of a tuple / model output."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if hasattr(value, "to_tuple"):
        return first_tensor(value.to_tuple())
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(value).__name__}")


def _input_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), Tensor):
        return kwargs["hidden_states"]
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    raise TypeError("the module was called without a tensor input to read")


def model_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def forward_kwargs(module: nn.Module, batch: Batch) -> dict[str, Any]:
    """Keyword arguments for a Hugging Face forward: ids, mask, positions, no KV cache."""
    params = inspect.signature(module.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if "position_ids" in params or takes_any:
        kwargs["position_ids"] = batch.position_ids
    if "use_cache" in params or takes_any:
        kwargs["use_cache"] = False
    return kwargs


@contextmanager
def site_hooks(
    module: nn.Module, sites: Sequence[Site], *, stop: bool = True
) -> Iterator[dict[Site, Tensor]]:
    """Register one hook per site; yields the dict they fill on every forward.

    Args:
        module: The Hugging Face model.
        sites: Distinct sites to read.
        stop: End the forward (raise :class:`StopForward`) once every site is stored.

    Yields:
        Site -> tensor, filled in the order the sites fire (clear it between forwards).
    """
    store: dict[Site, Tensor] = {}
    n = len(sites)
    handles = []

    def _put(site: Site, value: Tensor) -> None:
        store[site] = value
        if stop and len(store) == n:
            raise StopForward

    try:
        for site in sites:
            target = module.get_submodule(site.path)
            if site.side == "input":

                def pre_hook(_mod: nn.Module, args: Any, kwargs: Any, site: Site = site) -> None:
                    _put(site, _input_tensor(args, kwargs))

                handles.append(target.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def hook(_mod: nn.Module, _args: Any, output: Any, site: Site = site) -> None:
                    _put(site, first_tensor(output))

                handles.append(target.register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode for the block and restore every submodule's mode afterwards."""
    present = [m for m in modules if m is not None]
    modes = [(sub, sub.training) for m in present for sub in m.modules()]
    try:
        for m in present:
            m.eval()
        yield
    finally:
        for sub, training in modes:
            sub.training = training


def site_order(module: nn.Module, sites: Sequence[Site], batch: Batch) -> list[Site]:
    """The order in which ``sites`` fire during a forward (found on a one-row, short input)."""
    small = Batch(
        index=batch.index[:1],
        input_ids=batch.input_ids[:1, :2],
        attention_mask=torch.ones_like(batch.attention_mask[:1, :2]),
        position_ids=torch.arange(min(2, batch.input_ids.shape[1]), device=batch.input_ids.device)[
            None
        ],
    )
    with torch.no_grad(), site_hooks(module, sites) as store:
        try:
            module(**forward_kwargs(module, small))
        except StopForward:
            pass
        order = list(store)
    missing = [s for s in sites if s not in order]
    if missing:
        raise RuntimeError(f"the forward never reached {[s.path for s in missing]}")
    return order


@contextmanager
def open_runner(model: nn.Module, hooks: Sequence[str]) -> Iterator[Runner]:
    """Hooks on a Hugging Face model for the duration of a capture.

    Args:
        model: A Hugging Face ``PreTrainedModel`` (or any module with the same forward keywords).
        hooks: Hook names (TransformerLens names of the model's family, or module paths).

    Yields:
        A :class:`Runner`.
    """
    sites = resolve_sites(model, hooks)
    distinct = list(dict.fromkeys(sites.values()))
    with eval_mode(model), site_hooks(model, distinct) as store:

        def run(batch: Batch) -> dict[str, Tensor]:
            store.clear()
            with torch.no_grad():
                try:
                    model(**forward_kwargs(model, batch))
                except StopForward:
                    pass
            missing = [s.path for s in distinct if s not in store]
            if missing:
                raise RuntimeError(f"the forward never reached {missing}")
            return {hook: store[site] for hook, site in sites.items()}

        yield Runner(backend="hf", run=run, device=model_device(model))
