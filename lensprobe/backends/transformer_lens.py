"""TransformerLens models: a 4.x ``TransformerBridge`` or any ``HookedRootModule``.

:class:`TransformerLensBackend` is the backend object. A hook name is a ``HookPoint`` of
``model.hook_dict`` (:func:`hook_point`). *Capture* (:meth:`TransformerLensBackend.open_runner`): hooks are added by name through the model's own ``hooks()`` context (so only the requested hook
points do any work) and removed when the capture ends. The hook that completes the requested set
ends the forward, so nothing after the deepest hook runs (the same effect as ``stop_at_layer``,
and it also covers hooks after the last block). ``run_with_cache`` is avoided on purpose: the
bridge's version asks the Hugging Face model for attention weights, which forces the slower eager
attention.

*Attach / edit* (:func:`resolve_target`, :func:`add_reader`, :func:`add_editor`): the reader is a
PyTorch forward hook on the ``HookPoint`` that sees the value after every other hook (converted
like the bridge's own hooks); the editor is a hook added through the ``HookPoint``'s own API, like
a user's. A bridge given a list of texts pads it itself and tells the Hugging Face model nothing
about it: :func:`text_padding` and :func:`padding_mask` recover that padding
(:meth:`TransformerLensBackend.call_padding`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lensprobe.backends import hf as hf_backend
from lensprobe.backends.base import Backend
from lensprobe.backends.core import (
    BackendName,
    HookTarget,
    Runner,
    StopForward,
    eval_mode,
    first_tensor,
    model_device,
)
from lensprobe.backends.names import unknown_hook
from lensprobe.batching import Batch
from lensprobe.errors import UsageError

__all__ = [
    "TransformerLensBackend",
    "add_editor",
    "add_reader",
    "check_hooks",
    "forward_tokens",
    "hook_point",
    "is_transformer_lens_model",
    "padding_mask",
    "resolve_target",
    "text_padding",
    "underlying_hf",
]


def is_transformer_lens_model(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens hooked model (has a ``hook_dict``)."""
    return isinstance(model, nn.Module) and isinstance(getattr(model, "hook_dict", None), dict)


def underlying_hf(model: nn.Module) -> nn.Module | None:
    """The Hugging Face model a ``TransformerBridge`` wraps, if any."""
    hf = getattr(model, "original_model", None)
    return hf if isinstance(hf, nn.Module) else None


def hook_point(model: nn.Module, hook: str) -> nn.Module:
    """The ``HookPoint`` named ``hook``.

    Raises:
        lensprobe.backends.names.UnknownHookError: The model has no such hook point (nearest
            names listed).
    """
    hook_dict = model.hook_dict  # type: ignore[union-attr]
    point = hook_dict.get(hook)
    if point is None:
        owner = f"this {type(model).__name__}"
        raise unknown_hook(hook, owner, list(hook_dict), "all names: model.hook_dict")
    return point


def check_hooks(model: nn.Module, hooks: Sequence[str]) -> None:
    """Raise :class:`~.names.UnknownHookError` for a name the model has no hook point for."""
    for hook in hooks:
        hook_point(model, hook)


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


def forward_tokens(model: nn.Module, ids: Tensor) -> None:
    """One forward of token ids ``(batch, pos)``: every token valid, no KV cache, no logits."""
    model(ids, return_type=None, use_cache=False)


def resolve_target(
    model: nn.Module, hook: str, backend: BackendName = "transformer_lens"
) -> HookTarget:
    """The ``HookPoint`` behind ``hook``, and the models whose inputs tell the valid tokens."""
    hf = underlying_hf(model)
    return HookTarget(
        name=hook,
        backend=backend,
        module=hook_point(model, hook),
        side="output",
        root=hf,
        bridge=model if hf is not None else None,
    )


def add_reader(stack: ExitStack, point: nn.Module, fn: Callable[[Tensor], None]) -> None:
    """Call ``fn(activation)`` on every forward, after every other hook at the hook point.

    The value is converted the way the bridge converts it for its own hooks.
    """
    conversion = getattr(point, "hook_conversion", None)
    convert = conversion.convert if conversion is not None else None
    hf_backend.add_reader(stack, point, "output", fn, convert=convert)


def add_editor(stack: ExitStack, point: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
    """Replace the activation with ``fn(activation)``: a hook added through the HookPoint's API."""

    def tl_hook(tensor: Tensor, hook: Any = None) -> Tensor:
        return fn(tensor)

    handle = point.add_hook(tl_hook, dir="fwd", is_permanent=True)  # type: ignore[operator]

    def remove() -> None:
        handle.hook.remove()
        point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]  # type: ignore[union-attr]

    stack.callback(remove)


def text_padding(
    bridge: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[str, bool] | None:
    """How a bridge call pads a list of texts itself: ``(padding_side, prepend_bos)``.

    ``None`` unless the call is a list of several texts without an ``attention_mask``: then the
    bridge tokenises and pads them and, for right padding, gives the Hugging Face model no mask
    (causal attention makes it harmless to the logits).
    """
    text = args[0] if args else kwargs.get("input")
    if not (
        isinstance(text, list)
        and len(text) > 1
        and all(isinstance(t, str) for t in text)
        and kwargs.get("attention_mask") is None
    ):
        return None
    tokenizer = getattr(bridge, "tokenizer", None)
    side = kwargs.get("padding_side") or getattr(tokenizer, "padding_side", "right")
    bos = kwargs.get("prepend_bos")
    if bos is None:
        bos = bool(getattr(getattr(bridge, "cfg", None), "default_prepend_bos", True))
    return str(side), bool(bos)


def padding_mask(bridge: nn.Module, ids: Tensor, padding: tuple[str, bool]) -> Tensor:
    """The valid tokens of ids a bridge padded (as TransformerLens itself finds them)."""
    from transformer_lens import utilities as tl_utils

    side, bos = padding
    tokenizer = bridge.tokenizer  # type: ignore[union-attr]
    mask = tl_utils.get_attention_mask(tokenizer, ids, prepend_bos=bos, padding_side=side)
    return mask.to(device=ids.device).bool()


class TransformerLensBackend(Backend):
    """A TransformerLens model: hooks through its ``HookPoint``s, by name."""

    name: ClassVar[BackendName] = "transformer_lens"
    detect_order: ClassVar[int] = 1  # a bridge wraps a Hugging Face model: before "hf"

    @classmethod
    def handles(cls, model: Any) -> bool:
        """A ``HookedRootModule`` (:func:`is_transformer_lens_model`)."""
        return is_transformer_lens_model(model)

    def hf_module(self, model: Any) -> nn.Module | None:
        """The Hugging Face model a bridge wraps (:func:`underlying_hf`)."""
        return underlying_hf(model)

    def resolve_hook(self, model: Any, hook: str) -> HookTarget:
        """The ``HookPoint`` behind ``hook`` (see :func:`resolve_target`).

        Raises:
            lensprobe.backends.names.UnknownHookError: No such hook point (nearest names listed).
        """
        return resolve_target(model, hook, backend=self.name)

    def add_reader(
        self, stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], None]
    ) -> None:
        """A forward hook on the ``HookPoint`` (see :func:`add_reader`)."""
        add_reader(stack, target.module, fn)

    def add_editor(
        self, stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], Tensor]
    ) -> None:
        """A hook added through the ``HookPoint``'s API (see :func:`add_editor`)."""
        add_editor(stack, target.module, fn)

    def call_padding(
        self, target: HookTarget, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Callable[[Tensor], Tensor] | None:
        """A bridge given a list of texts pads them itself (:func:`text_padding`)."""
        if target.bridge is None:
            return None
        padding = text_padding(target.bridge, args, kwargs)
        if padding is None:
            return None
        return functools.partial(padding_mask, target.bridge, padding=padding)

    def forward(self, model: Any, ids: Tensor) -> None:
        """A forward of the model itself, without logits (see :func:`forward_tokens`)."""
        forward_tokens(model, ids)

    def check_hooks(self, model: Any, hooks: Sequence[str]) -> None:
        """Raise :class:`~.names.UnknownHookError` for a name without a ``HookPoint``."""
        check_hooks(model, hooks)

    def input_device(self, model: Any) -> torch.device:
        """The device of the model's first parameter."""
        return model_device(model)

    def context_length(self, model: Any) -> int | None:
        """``cfg.n_ctx``, else what the Hugging Face config says."""
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        if isinstance(n_ctx, int) and n_ctx > 0:
            return n_ctx
        return super().context_length(model)

    def _checkpoint_path(self, model: Any) -> str:
        return (
            super()._checkpoint_path(model)
            or getattr(getattr(model, "cfg", None), "model_name", "")
            or ""
        )

    @contextmanager
    def open_runner(self, model: Any, hooks: Sequence[str]) -> Iterator[Runner]:
        """Hooks on a TransformerLens model for the duration of a capture.

        Args:
            model: A ``TransformerBridge`` or another ``HookedRootModule``.
            hooks: Names from ``model.hook_dict``.

        Yields:
            A :class:`~lensprobe.backends.core.Runner`.
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
                    raise UsageError(f"the forward never reached hook points {missing}")
                return {hook: store[hook] for hook in hooks}

            yield Runner(backend=self.name, run=run, device=model_device(model))
