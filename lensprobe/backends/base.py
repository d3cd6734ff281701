"""What a backend is: one small object that knows how to read and edit one kind of model.

A backend recognises its models (:meth:`Backend.handles`), resolves a hook name to a
:class:`~.core.HookTarget` and installs readers and editors there, runs a stopped forward of token
ids, opens a capture :class:`~.core.Runner`, and answers the small questions capture asks of a
model (its Hugging Face module, device, context length, id, weights' fingerprint).

Each backend is one subclass in its own module, ``lensprobe/backends/<name>.py``, for one name of
:data:`lensprobe.models.BACKENDS`; :func:`lensprobe.backends.get_backend` picks it once per model.
The objects hold no state: every method takes the model it works on.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lensprobe.backends.core import (
    BackendName,
    HookTarget,
    Reduction,
    Runner,
    StopForward,
    model_device,
)
from lensprobe.backends.names import resolve_sites
from lensprobe.errors import UsageError
from lensprobe.models import display_name

__all__ = ["Backend"]


class Backend(ABC):
    """One backend: how lensprobe reads, edits and runs the models it recognises."""

    name: ClassVar[BackendName]
    """The backend's name (one of :data:`lensprobe.models.BACKENDS`), as metadata records it."""

    detect_order: ClassVar[int]
    """When :meth:`handles` is asked, lowest first: a wrapper before the model it wraps."""

    # -- recognising a model -----------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def handles(cls, model: Any) -> bool:
        """Whether ``model`` is one this backend runs (checked without importing its library)."""

    @abstractmethod
    def hf_module(self, model: Any) -> nn.Module | None:
        """The Hugging Face module under ``model`` (None for a TransformerLens model without one)."""

    # -- attach / edit -----------------------------------------------------------------------------
    @abstractmethod
    def resolve_hook(self, model: Any, hook: str) -> HookTarget:
        """Where ``hook`` reads on ``model``.

        Raises:
            lensprobe.backends.names.UnknownHookError: No such hook (nearest names listed).
        """

    @abstractmethod
    def add_reader(
        self, stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], None]
    ) -> None:
        """Call ``fn(activation)`` at ``target`` on every forward, after every other hook there.

        ``stack`` removes the hooks when it closes.
        """

    @abstractmethod
    def add_editor(
        self, stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], Tensor]
    ) -> None:
        """Replace the activation at ``target`` with ``fn(activation)`` on every forward.

        ``stack`` removes the hooks when it closes.
        """

    def call_padding(
        self, target: HookTarget, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Callable[[Tensor], Tensor] | None:
        """How a call of ``target.bridge`` pads its inputs itself, telling the model nothing.

        Returns a function from the token ids the call hands the Hugging Face model to their
        valid-token mask ``(batch, pos)``; None (the default) when the call passes its mask on.
        """
        return None

    # -- running -----------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, model: Any, ids: Tensor) -> None:
        """One plain forward of token ids ``(batch, pos)``: every token valid, no KV cache."""

    def forward_tokens(self, model: Any, ids: Tensor) -> None:
        """:meth:`forward` without gradients; a hook ending it with :class:`~.core.StopForward` ends it quietly."""
        try:
            with torch.no_grad():
                self.forward(model, ids)
        except StopForward:
            pass

    @abstractmethod
    def open_runner(self, model: Any, hooks: Sequence[str]) -> AbstractContextManager[Runner]:
        """A runner that reads ``hooks`` from ``model`` for the duration of a capture."""

    def remote_scope(self, model: Any, remote: bool | str) -> AbstractContextManager[None]:
        """The scope of a capture run by a remote service (``remote``: False for a local one).

        Inside it, nothing loads the model's weights here. Only nnsight models run remotely.
        """
        if remote:
            raise UsageError(
                f"remote capture runs through nnsight's remote service (NDIF), and this is a "
                f"{self.name} model: wrap it with nnsight (lp.load_model(..., backend='nnsight') "
                "or nnsight.LanguageModel(hub_id)), or capture here without remote="
            )
        return nullcontext()

    def open_remote_runner(
        self, model: Any, hooks: Sequence[str], remote: bool | str, reduction: Reduction
    ) -> AbstractContextManager[Runner]:
        """A runner whose forwards run on a remote service, returning what ``reduction`` keeps."""
        self.remote_scope(model, remote)  # raises: this backend runs nothing remotely
        raise AssertionError("unreachable")

    def check_hooks(self, model: Any, hooks: Sequence[str]) -> None:
        """Raise :class:`~.names.UnknownHookError` (with the nearest names) for a hook ``model`` lacks."""
        module = self.hf_module(model)
        assert module is not None
        resolve_sites(module, hooks)

    # -- what capture records ----------------------------------------------------------------------
    def input_device(self, model: Any) -> torch.device:
        """Where ``model`` wants its token ids."""
        module = self.hf_module(model)
        assert module is not None
        return model_device(module)

    def context_length(self, model: Any) -> int | None:
        """The most positions the model was built for (None when its config does not say)."""
        config = getattr(self.hf_module(model), "config", None)
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _checkpoint_path(self, model: Any) -> str:
        """Where the model's weights came from (a hub id or a directory; empty when unknown)."""
        config = getattr(self.hf_module(model), "config", None)
        return getattr(config, "name_or_path", "") or ""

    def model_id(self, model: Any) -> str:
        """A short model name for metadata (the checkpoint's name, else the class name)."""
        module = self.hf_module(model)
        return display_name(str(self._checkpoint_path(model))) or type(module or model).__name__

    def weights_fingerprint(self, model: Any) -> dict[str, str]:
        """What tells this model's weights from others', cheaply (for a store's fingerprint).

        ``compute_dtype``: the dtype of the first floating-point parameter. ``weights_sha256``: a
        digest of every tensor's name, shape and dtype and of up to 64 evenly spaced entries of
        each (a fine-tune or another checkpoint in the same folder changes it; reading them costs
        microseconds; weights a device map offloaded to disk count by name, shape and dtype
        only). Empty for a model without a torch module.
        """
        module = self.hf_module(model)
        if module is None and isinstance(model, nn.Module):
            module = model
        if module is None:
            return {}
        return _fingerprint(module)


def _fingerprint(module: nn.Module) -> dict[str, str]:
    """:meth:`Backend.weights_fingerprint` of a torch module."""
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
