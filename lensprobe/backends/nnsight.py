"""Capture through nnsight (``NNsight(module)``, ``TransformersModel``, ``LanguageModel``).

Hook names are translated to module sites with the same tables as the Hugging Face backend, and
read inside one ``model.trace(...)`` per batch: every site's ``.input`` / ``.output`` is saved in
the order the forward reaches them (nnsight requires that order; it is found once on a tiny
input), then ``tracer.stop()`` ends the forward after the deepest one.

:class:`NnsightBackend` is the backend object: a :class:`~.hf.HFBackend` on the module nnsight
wraps. Attach and edit hook that module with the Hugging Face backend's PyTorch hooks: they see
(and compose with) the edits of a user's own trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lensprobe.backends.core import (
    BackendName,
    Reduction,
    Runner,
    eval_mode,
    first_tensor,
    input_tensor,
    model_device,
)
from lensprobe.backends.hf import HFBackend, forward_kwargs, site_order
from lensprobe.backends.names import Site, resolve_sites
from lensprobe.batching import Batch
from lensprobe.errors import InputTypeError, RemoteServiceError
from lensprobe.pooling import without_first_token

__all__ = ["NnsightBackend", "is_nnsight_model", "underlying_module"]

_PACKAGE = "nnsight"


def is_nnsight_model(model: Any) -> bool:
    """Whether ``model`` is an nnsight wrapper (checked without importing nnsight)."""
    return any(cls.__module__.split(".")[0] == _PACKAGE for cls in type(model).__mro__)


_LOAD_WEIGHTS: ContextVar[bool] = ContextVar("lensprobe_nnsight_load_weights", default=True)
"""False inside :meth:`NnsightBackend.remote_scope`: a remote capture never loads the weights."""


def underlying_module(model: Any) -> nn.Module:
    """The PyTorch module an nnsight wrapper traces.

    Its weights are loaded if still lazy, except in a remote capture, where the weightless
    skeleton is all the client needs.
    """
    lazy = getattr(model, "dispatched", True) is False
    if lazy and _LOAD_WEIGHTS.get() and hasattr(model, "dispatch"):
        model.dispatch()
    module = getattr(model, "_module", None)
    if not isinstance(module, nn.Module):
        raise InputTypeError(
            f"{type(model).__name__} wraps no torch module that lensprobe can read"
        )
    return module


def _envoy(model: Any, path: str) -> Any:
    """The envoy at a dotted module path (``model.layers.9``)."""
    envoy = model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def definition_order(module: nn.Module, sites: Sequence[Site]) -> list[Site]:
    """``sites`` in the order their modules are defined (a module's input before its output)."""
    rank = {name: i for i, (name, _) in enumerate(module.named_modules())}
    return sorted(sites, key=lambda s: (rank.get(s.path, len(rank)), s.side != "input"))


def _kept(saved: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """A remote runner's result for one hook: the activations, or the reduced tensors."""
    if set(saved) == {"values"}:
        return saved["values"]
    return {name: t.cpu() for name, t in saved.items()}


def _is_service_error(err: BaseException) -> bool:
    """Whether ``err`` says the remote service was not reached or did not run the trace."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(
        cls.__name__ == "RemoteError"
        or cls.__module__.split(".")[0] in ("httpx", "websocket", "socketio")
        for cls in type(err).__mro__
    )


def _service_error(err: BaseException, remote: bool | str) -> RemoteServiceError:
    from nnsight import CONFIG

    host = remote if isinstance(remote, str) and remote != "local" else CONFIG.API.HOST
    return RemoteServiceError(
        f"nnsight's remote service at {host} did not run the capture ({type(err).__name__}: "
        f"{err}); check the network, the service (nnsight.ndif_status()) and your API key "
        "(NDIF_API_KEY, or nnsight.CONFIG.set_default_api_key), or capture here without remote="
    )


class NnsightBackend(HFBackend):
    """An nnsight model: the Hugging Face backend on the module it wraps; capture inside a trace."""

    name: ClassVar[BackendName] = "nnsight"
    detect_order: ClassVar[int] = 0  # a wrapper: before the model it wraps

    @classmethod
    def handles(cls, model: Any) -> bool:
        """An nnsight wrapper (:func:`is_nnsight_model`)."""
        return is_nnsight_model(model)

    def hf_module(self, model: Any) -> nn.Module | None:
        """The module the wrapper traces (:func:`underlying_module`)."""
        return underlying_module(model)

    @contextmanager
    def remote_scope(self, model: Any, remote: bool | str) -> Iterator[None]:
        """A remote capture's scope.

        The weights stay unloaded, and the functions its traces call are sent by value
        (:mod:`lensprobe.backends.shipped`).
        """
        if not remote:
            yield
            return
        from lensprobe.backends.shipped import register

        register()
        token = _LOAD_WEIGHTS.set(False)
        try:
            yield
        finally:
            _LOAD_WEIGHTS.reset(token)

    @contextmanager
    def open_remote_runner(
        self, model: Any, hooks: Sequence[str], remote: bool | str, reduction: Reduction
    ) -> Iterator[Runner]:
        """Run each batch as one remote trace (``model.trace(..., remote=remote)``).

        The trace reads every site in the order the modules are defined (the weights are not
        here to find the order a forward reaches them), stops after the deepest one, and saves
        only what the capture keeps, reduced on the server
        (:func:`~lensprobe.backends.shipped.reduce_site`). ``remote`` is nnsight's: True (NDIF),
        a host URL, or ``"local"`` (serialised and run here, as a server would).
        """
        import nnsight

        from lensprobe.backends.shipped import reduce_site

        module = underlying_module(model)
        sites = resolve_sites(module, hooks)
        order = definition_order(module, list(dict.fromkeys(sites.values())))
        # only plain values go into the trace: it is shipped to a server without lensprobe
        plan = [(s.side, _envoy(model, s.path)) for s in order]
        kinds, dtype = reduction.kinds, reduction.dtype

        def run(batch: Batch) -> dict[str, Tensor | dict[str, Tensor]]:
            valid = batch.attention_mask.bool()
            pool = without_first_token(valid) if reduction.drop_first else valid
            saved: list[dict[str, Tensor]] = []
            kwargs = forward_kwargs(module, batch)
            try:
                with torch.no_grad(), model.trace(**kwargs, remote=remote) as tracer:
                    for side, envoy in plan:
                        value = envoy.output if side == "output" else envoy.inputs
                        kept = reduce_site(value, side, pool, kinds, dtype)
                        saved.append({name: nnsight.save(t) for name, t in kept.items()})
                    tracer.stop()
            except Exception as err:
                if not _is_service_error(err):
                    raise
                raise _service_error(err, remote) from err
            return {hook: _kept(saved[order.index(site)]) for hook, site in sites.items()}

        yield Runner(backend=self.name, run=run, device=torch.device("cpu"))

    @contextmanager
    def open_runner(self, model: Any, hooks: Sequence[str]) -> Iterator[Runner]:
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
                order = site_order(module, distinct, batch)
                ordered.extend((s, _envoy(model, s.path)) for s in order)
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
            yield Runner(backend=self.name, run=run, device=model_device(module))
