"""Model backends: where a hook name reads and edits on TransformerLens, nnsight and Hugging Face models.

This package alone turns a hook name into "where to read / where to edit". Each backend is one
object, a :class:`~.base.Backend`, defined in the module named after it (:mod:`.hf`,
:mod:`.nnsight`, :mod:`.transformer_lens`; one per name of :data:`lensprobe.models.BACKENDS`).
:func:`get_backend` picks the one that runs a model, :func:`backend_named` the one a name
recorded. The functions below are what capture, ``attach``, steering and patching call:

- *capture*: :func:`open_runner` opens a :class:`~.core.Runner` for a list of hook names;
- *attach / edit*: :func:`resolve_hook` gives a :class:`~.core.HookTarget`, on which
  :func:`add_reader` and :func:`add_editor` install a reader or an editor for a ``with`` block;
- :mod:`.core`: what every backend hands back (:class:`~.core.Runner`,
  :class:`~.core.HookTarget`) and how a module's activation is read and replaced;
- names: :mod:`.names` translates TransformerLens names to module sites of Hugging Face models
  (one table per family) and raises the one :class:`~.names.UnknownHookError`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from lensprobe.backends.base import Backend
from lensprobe.backends.core import BackendName, HookTarget, Reduction, Runner
from lensprobe.errors import InputError, InputTypeError
from lensprobe.models import BACKENDS

__all__ = [
    "Backend",
    "BackendName",
    "HookTarget",
    "add_editor",
    "add_reader",
    "backend_named",
    "check_hooks",
    "context_length",
    "detect_backend",
    "forward_tokens",
    "get_backend",
    "hf_module",
    "input_device",
    "model_id",
    "open_runner",
    "registry",
    "remote_scope",
    "resolve_hook",
    "weights_fingerprint",
]


@functools.cache
def registry() -> Mapping[BackendName, Backend]:
    """One object per backend, by name, in the order :func:`get_backend` asks them.

    For each name of :data:`lensprobe.models.BACKENDS`, the one :class:`~.base.Backend`
    subclass defined in ``lensprobe/backends/<name>.py`` (its modules are imported here, on first
    use).

    Raises:
        RuntimeError: A backend module defines no such class, several, or one of another name.
    """
    found: dict[BackendName, Backend] = {}
    for name in BACKENDS:
        module = importlib.import_module(f"{__name__}.{name}")
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Backend)
            and obj.__module__ == module.__name__
        ]
        if len(classes) != 1 or classes[0].name != name:
            raise RuntimeError(
                f"{module.__name__} must define one Backend subclass named {name!r}, found "
                f"{[(c.__name__, getattr(c, 'name', None)) for c in classes]}"
            )
        found[name] = classes[0]()  # type: ignore[index]
    ordered = sorted(found.items(), key=lambda item: item[1].detect_order)
    return MappingProxyType(dict(ordered))


def get_backend(model: Any) -> Backend:
    """The backend that runs ``model`` (each asked in turn whether it :meth:`~.base.Backend.handles` it).

    Raises:
        TypeError: For a model no backend understands (the message says what to pass).
    """
    for backend in registry().values():
        if backend.handles(model):
            return backend
    raise InputTypeError(
        f"capture() cannot run a {type(model).__module__}.{type(model).__name__}: pass a "
        "TransformerLens TransformerBridge (or HookedRootModule), an nnsight model "
        "(nnsight.NNsight(hf_model) or TransformersModel) or a Hugging Face PreTrainedModel, "
        "e.g. lensprobe.load_model('gemma-3-270m', backend='hf')"
    )


def backend_named(name: str) -> Backend:
    """The backend of a recorded name (``"hf"``, ``"nnsight"``, ``"transformer_lens"``).

    Raises:
        ValueError: No backend has that name.
    """
    backend = registry().get(name)  # type: ignore[call-overload]
    if backend is None:
        raise InputError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")
    return backend


def detect_backend(model: Any) -> BackendName:
    """Which backend runs ``model`` (the name of :func:`get_backend`'s choice).

    Raises:
        TypeError: For a model no backend understands (the message says what to pass).
    """
    return get_backend(model).name


def hf_module(model: Any, backend: BackendName) -> nn.Module | None:
    """The Hugging Face module under ``model`` (None for a TransformerLens model without one)."""
    return backend_named(backend).hf_module(model)


def weights_fingerprint(model: Any, backend: BackendName) -> dict[str, str]:
    """What tells this model's weights from others', cheaply (for a store's fingerprint).

    See :meth:`.base.Backend.weights_fingerprint`.
    """
    return backend_named(backend).weights_fingerprint(model)


def context_length(model: Any, backend: BackendName) -> int | None:
    """The most positions the model was built for (None when its config does not say)."""
    return backend_named(backend).context_length(model)


def model_id(model: Any, backend: BackendName) -> str:
    """A short model name for metadata (the checkpoint's name, else the class name)."""
    return backend_named(backend).model_id(model)


def open_runner(
    model: Any,
    backend: BackendName,
    hooks: Sequence[str],
    *,
    remote: bool | str = False,
    reduction: Reduction | None = None,
) -> AbstractContextManager[Runner]:
    """A runner that reads ``hooks`` from ``model`` through its backend.

    ``remote``: run the forwards on a remote service, where ``reduction`` (required then) is
    computed so only what the capture keeps comes back.
    """
    if remote:
        assert reduction is not None
        return backend_named(backend).open_remote_runner(model, hooks, remote, reduction)
    return backend_named(backend).open_runner(model, hooks)


def remote_scope(
    model: Any, backend: BackendName, remote: bool | str
) -> AbstractContextManager[None]:
    """The scope of a capture run remotely (see :meth:`.base.Backend.remote_scope`)."""
    return backend_named(backend).remote_scope(model, remote)


def check_hooks(model: Any, backend: BackendName, hooks: Sequence[str]) -> None:
    """Raise :class:`~.names.UnknownHookError` (with the nearest names) for a hook ``model`` lacks."""
    backend_named(backend).check_hooks(model, hooks)


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
    return get_backend(model).resolve_hook(model, hook)


def add_reader(stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], None]) -> None:
    """Call ``fn(activation)`` at ``target`` on every forward, after every other hook there.

    ``stack`` removes the hooks when it closes.
    """
    backend_named(target.backend).add_reader(stack, target, fn)


def add_editor(stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], Tensor]) -> None:
    """Replace the activation at ``target`` with ``fn(activation)`` on every forward.

    ``stack`` removes the hooks when it closes.
    """
    backend_named(target.backend).add_editor(stack, target, fn)


def input_device(model: Any, backend: BackendName) -> torch.device:
    """Where ``model`` wants its token ids."""
    return backend_named(backend).input_device(model)


def forward_tokens(model: Any, backend: BackendName, ids: Tensor) -> None:
    """One forward of token ids ``(batch, pos)``: no gradients, every token valid, no KV cache.

    A hook that ends it early with :class:`~.core.StopForward` ends it quietly.
    """
    backend_named(backend).forward_tokens(model, ids)
