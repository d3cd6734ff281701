"""Capture through nnsight (``NNsight(module)``, ``TransformersModel``, ``LanguageModel``).

Hook names are translated to module sites with the same tables as the Hugging Face backend, and
read inside one ``model.trace(...)`` per batch: every site's ``.input`` / ``.output`` is saved in
the order the forward reaches them (nnsight requires that order; it is found once on a tiny
input), then ``tracer.stop()`` ends the forward after the deepest one.

Attach and edit (:func:`resolve_target`) hook the module nnsight wraps, with the Hugging Face
backend's PyTorch hooks: they see (and compose with) the edits of a user's own trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lensprobe.backends import hf as hf_backend
from lensprobe.backends.core import (
    HookTarget,
    Runner,
    eval_mode,
    first_tensor,
    input_tensor,
    model_device,
)
from lensprobe.backends.hf import forward_kwargs, site_order
from lensprobe.backends.names import Site, resolve_sites
from lensprobe.batching import Batch
from lensprobe.errors import InputTypeError

__all__ = ["is_nnsight_model", "open_runner", "resolve_target", "underlying_module"]


def is_nnsight_model(model: Any) -> bool:
    """Whether ``model`` is an nnsight wrapper (checked without importing nnsight)."""
    return any(cls.__module__.split(".")[0] == "nnsight" for cls in type(model).__mro__)


def underlying_module(model: Any) -> nn.Module:
    """The PyTorch module an nnsight wrapper traces (loading its weights if still lazy)."""
    if getattr(model, "dispatched", True) is False and hasattr(model, "dispatch"):
        model.dispatch()
    module = getattr(model, "_module", None)
    if not isinstance(module, nn.Module):
        raise InputTypeError(
            f"{type(model).__name__} wraps no torch module that lensprobe can read"
        )
    return module


def resolve_target(model: Any, hook: str) -> HookTarget:
    """Where ``hook`` reads: a site of the Hugging Face module the wrapper traces."""
    return hf_backend.resolve_target(underlying_module(model), hook, backend="nnsight")


def _envoy(model: Any, path: str) -> Any:
    """The envoy at a dotted module path (``model.layers.9``)."""
    envoy = model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


@contextmanager
def open_runner(model: Any, hooks: Sequence[str]) -> Iterator[Runner]:
    """Read hooks through nnsight traces for the duration of a capture.

    Args:
        model: An nnsight model wrapping a Hugging Face model.
        hooks: Hook names (TransformerLens names of the model's family, or module paths).

    Yields:
        A :class:`~lensprobe.backends.core.Runner`.
    """
    import nnsight

    module = underlying_module(model)
    sites = resolve_sites(module, hooks)
    distinct = list(dict.fromkeys(sites.values()))
    ordered: list[tuple[Site, Any]] = []

    def run(batch: Batch) -> dict[str, Tensor]:
        if not ordered:
            ordered.extend((s, _envoy(model, s.path)) for s in site_order(module, distinct, batch))
        saved: dict[Site, Tensor] = {}
        kwargs = forward_kwargs(module, batch)
        with torch.no_grad(), model.trace(**kwargs) as tracer:
            for site, envoy in ordered:
                if site.side == "output":
                    value = first_tensor(envoy.output)
                else:
                    value = input_tensor(*envoy.inputs)
                saved[site] = nnsight.save(value)
            tracer.stop()
        return {hook: saved[site] for hook, site in sites.items()}

    with eval_mode(module):
        yield Runner(backend="nnsight", run=run, device=model_device(module))
