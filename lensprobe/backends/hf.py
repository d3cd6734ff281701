"""Plain Hugging Face models: reading and editing a hook name with PyTorch hooks.

:class:`HFBackend` is the backend object. Hook names are translated to module sites by
:mod:`lensprobe.backends.names`; a site is a module's first input or its output, read and replaced
with :mod:`lensprobe.backends.core`'s helpers.

- *Capture* (:meth:`HFBackend.open_runner`): one reader per site (the same :func:`add_reader`
  that attach uses) stores its tensor; the one that completes the set raises
  :class:`StopForward`, so nothing after the deepest site runs (in particular not the
  unembedding). Hooks are registered for the whole capture and removed in ``finally``.
- *Attach / edit* (:func:`resolve_target`, :func:`add_reader`, :func:`add_editor`): a name resolves
  to a :class:`HookTarget`, on which a reader or an editor is installed for a ``with`` block.
  The nnsight backend resolves on the module it wraps and reuses all of this.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lensprobe.backends.base import Backend
from lensprobe.backends.core import (
    BackendName,
    HookTarget,
    Runner,
    StopForward,
    eval_mode,
    first_tensor,
    input_tensor,
    model_device,
    replace_first,
    replace_input,
)
from lensprobe.backends.names import Side, Site, resolve_sites
from lensprobe.batching import Batch
from lensprobe.errors import InputTypeError, UsageError

__all__ = [
    "HFBackend",
    "add_editor",
    "add_reader",
    "forward_kwargs",
    "forward_tokens",
    "resolve_target",
    "site_hooks",
    "site_order",
]


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
    """Register one reader (:func:`add_reader`, as attach uses) per site; yields what they read.

    Args:
        module: The Hugging Face model.
        sites: Distinct sites to read.
        stop: End the forward (raise :class:`StopForward`) once every site is stored.

    Yields:
        Site -> tensor, filled in the order the sites fire (clear it between forwards).
    """
    store: dict[Site, Tensor] = {}

    def put(site: Site, value: Tensor) -> None:
        store[site] = value
        if stop and len(store) == len(sites):
            raise StopForward

    with ExitStack() as stack:
        for site in sites:
            reader = functools.partial(put, site)
            add_reader(stack, module.get_submodule(site.path), site.side, reader)
        yield store


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
        raise UsageError(f"the forward never reached {[s.path for s in missing]}")
    return order


def forward_tokens(module: nn.Module, ids: Tensor) -> None:
    """One forward of token ids ``(batch, pos)``: every token valid, no KV cache."""
    module(input_ids=ids, use_cache=False)


def resolve_target(model: nn.Module, hook: str, backend: BackendName = "hf") -> HookTarget:
    """Where ``hook`` reads on a Hugging Face model (a table name or a module path).

    Raises:
        lensprobe.backends.names.UnknownHookError: No such name (nearest names listed).
    """
    site = resolve_sites(model, [hook])[hook]
    module = model.get_submodule(site.path)
    return HookTarget(name=hook, backend=backend, module=module, side=site.side, root=model)


def add_reader(
    stack: ExitStack,
    module: nn.Module,
    side: Side,
    fn: Callable[[Tensor], None],
    *,
    convert: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Call ``fn(activation)`` on every forward, after every other hook at the same point.

    Args:
        stack: Removes the hooks when it closes.
        module: The module to read.
        side: Its first input or its output.
        fn: Receives the activation.
        convert: Applied to an output before ``fn`` sees it.
    """
    if side == "input":

        def read_input(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            fn(input_tensor(args, kwargs))

        # Appended: the editors (prepended) run first, so the reader sees their result.
        handle = module.register_forward_pre_hook(read_input, with_kwargs=True)
        stack.callback(handle.remove)
        return

    def read_output(_m: nn.Module, _args: Any, output: Any) -> None:
        x = first_tensor(output)
        fn(convert(x) if convert is not None else x)

    _register_last(stack, module, read_output)


def _register_last(stack: ExitStack, module: nn.Module, hook: Callable[..., None]) -> None:
    """Register a forward hook that runs after every other forward hook of ``module``.

    Forward hooks run in registration order. Moving ours to the end just before each call (a
    pre-hook runs before any forward hook) makes it read what every other hook left, including
    hooks added after it (``run_with_hooks``, steering).
    """
    state = {"handle": module.register_forward_hook(hook)}

    def move_last(_m: nn.Module, _args: Any) -> None:
        state["handle"].remove()
        state["handle"] = module.register_forward_hook(hook)

    pre = module.register_forward_pre_hook(move_last)
    stack.callback(lambda: state["handle"].remove())
    stack.callback(pre.remove)


def add_editor(
    stack: ExitStack,
    module: nn.Module,
    side: Side,
    fn: Callable[[Tensor], Tensor],
    *,
    name: str = "",
) -> None:
    """Replace the activation at a module's input or output with ``fn(activation)``.

    An input edit is prepended, so it runs before any reader registered at the same input.
    ``name`` (the hook name) starts the message of an input the edit cannot find.
    """
    if side == "input":

        def edit_input(
            _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            try:
                return replace_input(args, kwargs, fn)
            except TypeError as e:
                if "an edit will not guess" not in str(e):
                    raise
                raise InputTypeError(f"{name or type(_m).__name__}: {e}") from None

        handle = module.register_forward_pre_hook(edit_input, with_kwargs=True, prepend=True)
    else:

        def edit_output(_m: nn.Module, _args: Any, output: Any) -> Any:
            return replace_first(output, fn(first_tensor(output)))

        handle = module.register_forward_hook(edit_output)
    stack.callback(handle.remove)


class HFBackend(Backend):
    """A plain Hugging Face model (``PreTrainedModel``), read and edited with PyTorch hooks."""

    name: ClassVar[BackendName] = "hf"
    detect_order: ClassVar[int] = 2  # any module with a config: after the wrappers

    @classmethod
    def handles(cls, model: Any) -> bool:
        """A torch module with a Hugging Face ``config`` (one that names its ``model_type``)."""
        return isinstance(model, nn.Module) and hasattr(
            getattr(model, "config", None), "model_type"
        )

    def hf_module(self, model: Any) -> nn.Module | None:
        """The model itself."""
        return model

    def resolve_hook(self, model: Any, hook: str) -> HookTarget:
        """Where ``hook`` reads: a site of the Hugging Face module (a table name or a module path).

        Raises:
            lensprobe.backends.names.UnknownHookError: No such name (nearest names listed).
        """
        module = self.hf_module(model)
        assert module is not None
        return resolve_target(module, hook, backend=self.name)

    def add_reader(
        self, stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], None]
    ) -> None:
        """A PyTorch hook at the target module's input or output (see :func:`add_reader`)."""
        add_reader(stack, target.module, target.side, fn)

    def add_editor(
        self, stack: ExitStack, target: HookTarget, fn: Callable[[Tensor], Tensor]
    ) -> None:
        """A PyTorch hook at the target module's input or output (see :func:`add_editor`)."""
        add_editor(stack, target.module, target.side, fn, name=target.name)

    def forward(self, model: Any, ids: Tensor) -> None:
        """A forward of the Hugging Face module (see :func:`forward_tokens`)."""
        module = self.hf_module(model)
        assert module is not None
        forward_tokens(module, ids)

    @contextmanager
    def open_runner(self, model: Any, hooks: Sequence[str]) -> Iterator[Runner]:
        """Hooks on a Hugging Face model for the duration of a capture.

        Args:
            model: A Hugging Face ``PreTrainedModel`` (or any module with the same forward
                keywords).
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
                    raise UsageError(f"the forward never reached {missing}")
                return {hook: store[site] for hook, site in sites.items()}

            yield Runner(backend=self.name, run=run, device=model_device(model))
