"""What every backend hands back, and how a hooked module's values are read and replaced.

- :class:`Runner` (capture) and :class:`HookTarget` (attach / edit): a backend's answer for a list
  of hook names, or for one.
- :func:`first_tensor` / :func:`replace_first` read and replace the activation in a module's
  output; :func:`input_tensor` / :func:`replace_input` in its call's arguments. Capture, readers
  and editors of every backend go through these, so they agree on what a name reads.
- :func:`forward_arguments` and :func:`cache_length`: what a Hugging Face forward was given (ids,
  mask, KV cache), from which a readout tells the valid tokens and the cached prefix; every
  backend's model runs one underneath.
- :class:`StopForward` ends a forward from inside a hook; :func:`eval_mode` and
  :func:`model_device` are shared by the adapters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lensprobe.backends.names import Side
from lensprobe.batching import Batch
from lensprobe.errors import InputTypeError
from lensprobe.models import Backend

__all__ = [
    "CACHE_ARGS",
    "BackendName",
    "HookTarget",
    "Runner",
    "StopForward",
    "cache_length",
    "eval_mode",
    "first_tensor",
    "forward_arguments",
    "input_tensor",
    "model_device",
    "replace_first",
    "replace_input",
]

BackendName = Backend


class StopForward(Exception):
    """Raised inside a hook once every requested activation is stored (ends the forward)."""


@dataclass(frozen=True)
class Runner:
    """A backend ready to run batches (valid inside its ``open_runner`` context)."""

    backend: str
    """Backend name recorded in the metadata."""

    run: Callable[[Batch], dict[str, Tensor | dict[str, Tensor]]]
    """Runs one batch and returns hook name -> ``(batch, pos, d_model)`` activations, or (a
    remote runner) what the capture keeps of them, computed where the model ran
    (:func:`lensprobe.backends.shipped.reduce_site`)."""

    device: torch.device
    """Where the model wants its inputs."""


@dataclass(frozen=True)
class Reduction:
    """What a capture keeps of each hooked activation (see :mod:`lensprobe.reduced`)."""

    kinds: tuple[str, ...]
    """Pooled kinds to keep per sequence; empty: every token."""
    drop_first: bool
    """Pool without each sequence's first token (a prepended BOS; one token alone is kept)."""
    dtype: torch.dtype
    """Storage dtype the activations are rounded to (before any pooling)."""


@dataclass(frozen=True)
class HookTarget:
    """A hook name resolved on a model: the module to hook and the model whose inputs to follow."""

    name: str
    """The hook name as given (``blocks.9.hook_resid_post`` or a module path)."""

    backend: BackendName
    """Which backend the model belongs to."""

    module: nn.Module
    """The module whose input or output is the activation (a ``HookPoint`` on TransformerLens)."""

    side: Side
    """Whether the activation is the module's first input or its output."""

    root: nn.Module | None
    """The Hugging Face model whose forward inputs (mask, cache) are followed."""

    bridge: nn.Module | None = None
    """The TransformerBridge, on the TransformerLens backend."""


def first_tensor(value: Any) -> Tensor:
    """The activation in a module's output.

    The output itself, the first element of a tuple / list, or the first field of a Hugging Face
    ``ModelOutput``.

    Raises:
        TypeError: The output holds no such tensor.
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if hasattr(value, "to_tuple"):
        return first_tensor(value.to_tuple())
    raise InputTypeError(
        f"the hooked module returned a {type(value).__name__}, not a tensor or a tuple starting "
        "with one; hook a module whose output is the (batch, pos, d_model) activation"
    )


def replace_first(value: Any, new: Tensor) -> Any:
    """``value`` with the tensor :func:`first_tensor` reads replaced by ``new`` (its inverse)."""
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    if hasattr(value, "to_tuple"):  # a ModelOutput: its first set field
        value[next(iter(value.keys()))] = new
        return value
    raise InputTypeError(f"cannot replace the activation in a {type(value).__name__}")


def _input_key(args: tuple[Any, ...], kwargs: Mapping[str, Any], *, strict: bool) -> int | str:
    """Where a module's input activation is (``strict``: argument 0 or ``hidden_states`` only)."""
    if args and isinstance(args[0], Tensor):
        return 0
    if isinstance(kwargs.get("hidden_states"), Tensor):
        return "hidden_states"
    if not strict:
        for key, value in kwargs.items():
            if isinstance(value, Tensor):
                return key
        raise InputTypeError("the module was called without a tensor input to read")
    raise InputTypeError(
        "the module was called without its activation as argument 0 or hidden_states=; an edit "
        "will not guess which tensor keyword to replace: edit a module whose input is its first "
        "argument, or its output"
    )


def input_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tensor:
    """The activation a module was called with: argument 0, ``hidden_states``, or the first tensor keyword."""
    key = _input_key(args, kwargs, strict=False)
    return args[0] if key == 0 else kwargs[key]  # type: ignore[index]


def replace_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[[Tensor], Tensor]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with the activation replaced by ``fn(activation)``.

    Only argument 0 or ``hidden_states`` is replaced: a ``TypeError`` otherwise, never a guess.
    """
    key = _input_key(args, kwargs, strict=True)
    if key == 0:
        return (fn(args[0]), *args[1:]), kwargs
    return args, {**kwargs, str(key): fn(kwargs[key])}


CACHE_ARGS = ("cache", "past_key_values", "past_key_value")
"""Names a Hugging Face forward has given its KV cache: ``cache`` (transformers >= 5.2x, which
deprecates the older ``past_key_values``) and the older spellings."""


def cache_length(call: dict[str, Any]) -> int | None:
    """Tokens in the KV cache before a forward, or ``None`` when the call says nothing about it.

    ``call`` is the forward's bound arguments. The cache is read wherever this transformers
    version passes it (:data:`CACHE_ARGS`); a ``Cache`` object tells its length, a legacy tuple
    of per-layer ``(key, value)`` tensors its key length, and ``cache_position`` (older versions)
    its first position.
    """
    for name in CACHE_ARGS:
        cache = call.get(name)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        try:  # legacy tuple of (key, value) per layer
            return int(cache[0][0].shape[-2])
        except (TypeError, IndexError, AttributeError, KeyError):
            continue
    position = call.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.flatten()[0])
    return None


@functools.cache
def _forward_signature(cls: type) -> inspect.Signature | None:
    try:
        return inspect.signature(cls.forward)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None


def forward_arguments(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """A forward call's arguments by name (``input_ids``, ``attention_mask``, the cache...).

    Bound to the module's ``forward`` signature (``**kwargs`` flattened in); without a usable
    signature, the keywords and the first positional argument as ``input_ids``.
    """
    signature = _forward_signature(type(module))
    if signature is not None:
        try:
            bound = signature.bind_partial(module, *args, **kwargs)
        except TypeError:
            pass
        else:
            out = dict(bound.arguments)
            for name, param in signature.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD and name in out:
                    out.update(out.pop(name))
            return out
    out = dict(kwargs)
    if args:
        out.setdefault("input_ids", args[0])
    return out


def model_device(module: nn.Module) -> torch.device:
    """Where the module's inputs go: the device of its first parameter (CPU without any).

    For a model loaded with a device map (accelerate's ``hf_device_map``), the device of its first
    placed module: CPU when that was offloaded to disk or CPU, whose hooks then move the weights.
    """
    device_map = getattr(module, "hf_device_map", None)
    if isinstance(device_map, dict) and device_map:
        first = next(iter(device_map.values()))
        return torch.device("cpu" if first in ("cpu", "disk") else first)
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


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
