"""Attaching a trained probe back onto a running model: a live readout at its hook name.

``with attach(model, probe, "blocks.9.hook_resid_post") as readout:`` runs the probe on the
activations at that hook during every forward of ``model`` (a TransformerLens ``TransformerBridge``,
an nnsight model or a plain Hugging Face model) until the block ends, and records its logits and,
for an attention probe, its per-head attention. The same plumbing lets other code edit the
activations at a hook (:func:`edit_activations`; steering and patching build on it).

How it works, for every backend:

- *Where*: the model's backend object (:func:`lensprobe.backends.get_backend`) resolves the name
  (:func:`lensprobe.backends.resolve_hook`): a TransformerLens name to the bridge's
  ``HookPoint``; on nnsight and Hugging Face models a module's input or output
  (:mod:`lensprobe.backends.names`; module paths such as ``model.layers.9`` work too). It also
  installs the reader or editor there (:meth:`~lensprobe.backends.base.Backend.add_reader`,
  :meth:`~lensprobe.backends.base.Backend.add_editor`): plain PyTorch hooks, registered for the
  ``with`` block and removed in ``finally``, so they compose with the user's own
  ``run_with_hooks`` hooks, nnsight traces and ``generate``.
- *Which tokens are valid*: a pre-hook on the Hugging Face model (the bridge's ``original_model``,
  the module an nnsight wrapper traces) reads the ``attention_mask`` each forward is given, and the
  length of the KV cache. Without a mask every token is valid, except that a TransformerLens bridge
  given a list of texts pads them itself: the padding is then found the way TransformerLens finds
  it.
- *Generation*: with a KV cache each forward computes only the new tokens. The readout keeps the
  activations of the tokens so far (per sequence, in the model's dtype) and runs the probe on the
  whole prefix, so each step's entry is the probe's running prediction over everything generated
  until then. Keeping the prefix is cheap next to the model's own KV cache (one ``d_model`` vector
  per token instead of two per layer), and rerunning the probe on it costs ``pos * d_model *
  probe_head`` multiply-adds per step, far below a forward of the model.
- *Order*: the readout always sees the value after every other forward hook at the same hook point
  (yours from ``run_with_hooks``, lensprobe's steering), i.e. exactly what flows on into the rest
  of the model. nnsight edits of a module's ``.output`` are seen too (they happen inside the
  module's call).

Limitations: beam search reorders the cache between steps, which a forward hook cannot see, so the
running prefix would mix beams; use greedy or sampling for live readouts during ``generate``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from lensprobe.backends import Backend, HookTarget, backend_named, resolve_hook
from lensprobe.backends.core import StopForward, cache_length, forward_arguments
from lensprobe.errors import InputError, InputTypeError, UsageError
from lensprobe.probes.base import Probe

logger = logging.getLogger(__name__)

__all__ = [
    "ForwardInfo",
    "HookTarget",
    "Readout",
    "ReadoutStep",
    "StopForward",
    "attach",
    "edit_activations",
    "read_activations",
    "resolve_hook",
]

EditFn = Callable[[Tensor, "ForwardInfo"], Tensor]
"""``fn(x (batch, pos, d_model), info) -> x'``: the new activations for the positions computed."""


# ---------------------------------------------------------------------------------------------
# Which tokens a forward computes: mask and cached prefix
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardInfo:
    """What the current forward computes at a hook: its valid tokens and the cached prefix."""

    mask: Bool[Tensor, "batch pos"]
    """True at the valid (non-padding) tokens among the positions this forward computes."""

    past: int
    """Tokens already in the KV cache before this forward (0 without a cache); the forward's
    first position is token ``past`` of each (padded) sequence."""

    ids: Int[Tensor, "batch pos"] | None = None
    """The token ids of the positions computed, when the forward was given ids."""

    @property
    def positions(self) -> Int[Tensor, " pos"]:
        """Index of each computed position in the whole padded sequence: ``past + arange(pos)``."""
        return torch.arange(self.mask.shape[1], device=self.mask.device) + self.past


class _InputTracker:
    """Follows the inputs of each forward of the Hugging Face model under a hook.

    A forward pre-hook on the model's root reads its token ids (or embeddings), attention mask
    and KV cache; :meth:`info` then tells a hook deeper in the same forward which of the positions
    it sees are valid and where they sit in the whole sequence. A pre-hook on the target's
    wrapper (a TransformerBridge) asks the backend whether that call pads its inputs itself.
    """

    def __init__(self, target: HookTarget, backend: Backend):
        self.target = target
        self.backend = backend
        self.root = target.root
        self.bridge = target.bridge
        self.current: ForwardInfo | None = None
        self._pad_from_ids: Callable[[Tensor], Tensor] | None = None

    def install(self, stack: ExitStack) -> None:
        """Register the hooks; ``stack`` removes them."""
        if self.root is not None:
            pre = self.root.register_forward_pre_hook(self._root_pre, with_kwargs=True)
            post = self.root.register_forward_hook(self._root_post, always_call=True)
            stack.callback(pre.remove)
            stack.callback(post.remove)
        if self.bridge is not None:
            pre = self.bridge.register_forward_pre_hook(self._bridge_pre, with_kwargs=True)
            post = self.bridge.register_forward_hook(self._bridge_post, always_call=True)
            stack.callback(pre.remove)
            stack.callback(post.remove)

    def info(self, x: Tensor) -> ForwardInfo:
        """Valid tokens and cached prefix for the activations ``x (batch, pos, ...)`` at a hook."""
        cur = self.current
        if cur is None:
            # Not inside a forward of the root model (e.g. a submodule called directly).
            return ForwardInfo(torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), 0)
        if tuple(cur.mask.shape) != tuple(x.shape[:2]):
            raise UsageError(
                f"the activations at the hook have shape {tuple(x.shape)} but the model was given "
                f"{tuple(cur.mask.shape)} (batch, pos) tokens; lensprobe hooks need hooks whose "
                "activations are (batch, pos, d_model), such as the residual stream"
            )
        if cur.mask.device == x.device:
            return cur
        return ForwardInfo(cur.mask.to(x.device), cur.past, cur.ids)

    # -- hooks ------------------------------------------------------------------------------------
    def _root_pre(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self.root is not None
        call = forward_arguments(self.root, args, kwargs)
        ids, embeds = call.get("input_ids"), call.get("inputs_embeds")
        ref = ids if isinstance(ids, Tensor) else embeds if isinstance(embeds, Tensor) else None
        if ref is None or ref.ndim < 2:
            self.current = None
            return
        batch, new = int(ref.shape[0]), int(ref.shape[1])
        cached = cache_length(call)
        mask = call.get("attention_mask")
        if (
            isinstance(mask, Tensor)
            and mask.ndim == 2
            and mask.shape[0] == batch
            and mask.shape[1] >= new
        ):
            # An HF mask spans the cached prefix and the new tokens.
            prefix = int(mask.shape[1]) - new
            if cached == 0 and prefix > 0:
                raise UsageError(
                    f"the model was given an attention mask over {prefix} earlier tokens but an "
                    "empty KV cache: its cache was lost between generation steps, so the model "
                    "and the readout see no context (TransformerLens <= 4.3 bridges do this on "
                    "transformers >= 5.24); generate with use_past_kv_cache=False, or install "
                    "transformers<5.24"
                )
            past = cached if cached is not None else prefix
            valid = mask[:, mask.shape[1] - new :].bool()
        else:
            past = cached or 0
            valid = torch.ones(batch, new, dtype=torch.bool, device=ref.device)
            if self._pad_from_ids is not None and isinstance(ids, Tensor) and past == 0:
                valid = self._pad_from_ids(ids)
        self.current = ForwardInfo(valid, past, ids if isinstance(ids, Tensor) else None)

    def _root_post(self, *_: Any) -> None:
        self.current = None

    def _bridge_pre(
        self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        assert self.bridge is not None
        self._pad_from_ids = self.backend.call_padding(self.target, args, kwargs)

    def _bridge_post(self, *_: Any) -> None:
        self._pad_from_ids = None


@contextmanager
def edit_activations(model: Any, hook: str, fn: EditFn) -> Iterator[HookTarget]:
    """Replace the activations at a hook with ``fn(x, info)`` during every forward in the block.

    ``x`` is the ``(batch, pos, d_model)`` activation of the positions the forward computes (only
    the new tokens when a KV cache holds the rest); ``info`` says which are valid tokens and where
    they sit in the sequence (:class:`ForwardInfo`). ``fn`` must return a tensor of the same shape
    and must not modify ``x`` in place. On TransformerLens the edit is a hook on the bridge's
    ``HookPoint``; on nnsight / Hugging Face models a PyTorch hook on the module behind the name.

    Args:
        model: A TransformerBridge, an nnsight model or a Hugging Face model.
        hook: Hook name (see :func:`lensprobe.backends.resolve_hook`).
        fn: The edit.

    Yields:
        The resolved hook. Every hook is removed when the block ends, also on error.
    """

    def apply(x: Tensor, info: ForwardInfo) -> Tensor:
        out = fn(x, info)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise InputError(
                f"the edit at {hook!r} must return a tensor of shape {tuple(x.shape)}, got "
                f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
            )
        return out

    with _at_hook(model, hook, apply, edit=True) as target:
        yield target


@contextmanager
def read_activations(
    model: Any, hook: str, fn: Callable[[Tensor, ForwardInfo], None]
) -> Iterator[HookTarget]:
    """Call ``fn(x, info)`` with the activations at a hook during every forward in the block.

    As :func:`edit_activations`, but ``fn`` only reads (after every edit at that hook point).

    Yields:
        The resolved hook. Every hook is removed when the block ends, also on error.
    """
    with _at_hook(model, hook, fn, edit=False) as target:
        yield target


@contextmanager
def _at_hook(
    model: Any, hook: str, fn: Callable[[Tensor, ForwardInfo], Any], *, edit: bool
) -> Iterator[HookTarget]:
    """Run ``fn(x, info)`` at a hook in every forward of the block, as an editor or a reader.

    An editor's result replaces ``x``. The tracker of valid tokens is installed beside it.
    """
    target = resolve_hook(model, hook)
    backend = backend_named(target.backend)
    tracker = _InputTracker(target, backend)
    with ExitStack() as stack:
        tracker.install(stack)
        add = backend.add_editor if edit else backend.add_reader
        add(stack, target, lambda x: fn(x, tracker.info(x)))
        yield target


# ---------------------------------------------------------------------------------------------
# The live readout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadoutStep:
    """The probe's output after one forward (one step of ``generate``)."""

    logits: Float[Tensor, "batch n_outputs"]
    """The probe's logits over each sequence's valid tokens so far (NaN for a sequence without
    any valid token yet)."""

    attention: Float[Tensor, "batch pos probe_head"] | None
    """Per-head attention over the tokens so far (attention probes; ``None`` otherwise); zero at
    padding."""

    mask: Bool[Tensor, "batch pos"]
    """Valid tokens among the tokens so far (the positions of ``attention``)."""

    past: int
    """Tokens that came from earlier forwards (the KV cache); the rest are new."""


class Readout:
    """A probe's live outputs at one hook, one :class:`ReadoutStep` per forward.

    Filled by :func:`attach`. The properties describe the latest forward; :attr:`steps` keeps
    every forward's (e.g. one per generated token).
    """

    def __init__(self, probe: Probe, hook: str, *, stop: bool = False):
        self.probe = probe
        self.hook = hook
        self.steps: list[ReadoutStep] = []
        self._stop = stop
        self._x: Tensor | None = None
        self._mask: Tensor | None = None
        self._probes: dict[torch.device, Probe] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Readout(hook={self.hook!r}, probe={self.probe.config.kind}, steps={len(self)})"

    def _latest(self) -> ReadoutStep:
        if not self.steps:
            raise UsageError(
                f"the readout at {self.hook!r} has seen no forward yet: run the model inside the "
                "`with attach(...)` block"
            )
        return self.steps[-1]

    @property
    def logits(self) -> Float[Tensor, "batch n_outputs"]:
        """The probe's logits after the latest forward."""
        return self._latest().logits

    @property
    def attention(self) -> Float[Tensor, "batch pos probe_head"] | None:
        """Per-head attention after the latest forward (``None`` for pooled probes)."""
        return self._latest().attention

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """Valid tokens of the latest forward's sequences (cached prefix included)."""
        return self._latest().mask

    @property
    def activations(self) -> Float[Tensor, "batch pos d_model"]:
        """The activations the probe read at the latest forward (cached prefix included)."""
        self._latest()
        assert self._x is not None
        return self._x

    @property
    def probabilities(self) -> Float[Tensor, "batch n_classes"]:
        """Class probabilities after the latest forward (sigmoid for one logit, else softmax)."""
        from lensprobe.metrics import probabilities

        return probabilities(self.logits)

    @property
    def predictions(self) -> Int[Tensor, " batch"]:
        """Predicted class of each sequence after the latest forward."""
        return self.probabilities.argmax(dim=-1)

    def history(self) -> Float[Tensor, "step batch n_outputs"]:
        """Logits after every forward, stacked (e.g. the running prediction during generation).

        Raises:
            RuntimeError: The forwards had different batch sizes (read :attr:`steps` instead).
        """
        self._latest()
        sizes = {s.logits.shape[0] for s in self.steps}
        if len(sizes) > 1:
            raise UsageError(
                f"the forwards had batch sizes {sorted(sizes)}; read readout.steps one by one, "
                "or call readout.clear() between batches"
            )
        return torch.stack([s.logits for s in self.steps])

    def clear(self) -> None:
        """Forget every recorded step (the hook stays attached)."""
        self.steps.clear()
        self._x = self._mask = None

    # -- called by the hook -----------------------------------------------------------------------
    def _probe_for(self, device: torch.device) -> Probe:
        probe = self._probes.get(device)
        if probe is None:
            here = next(self.probe.parameters()).device
            # A private copy on the model's device: never move the caller's probe.
            probe = self.probe if here == device else copy.deepcopy(self.probe).to(device)
            self._probes[device] = probe
        return probe

    @torch.no_grad()
    def _observe(self, x: Tensor, info: ForwardInfo) -> None:
        if x.ndim != 3:
            raise InputError(
                f"the activations at {self.hook!r} have shape {tuple(x.shape)}; a probe reads "
                "(batch, pos, d_model) activations such as the residual stream"
            )
        x = x.detach()
        if info.past == 0:
            acts, mask = x, info.mask
        else:
            prev = self._x
            if prev is None or prev.shape[0] != x.shape[0] or prev.shape[1] != info.past:
                held = None if prev is None else tuple(prev.shape[:2])
                raise UsageError(
                    f"the readout at {self.hook!r} saw a forward continuing a cached prefix of "
                    f"{info.past} tokens (batch {x.shape[0]}) but holds {held}: attach the probe "
                    "before the first forward of the generation (beam search is not supported)"
                )
            assert self._mask is not None
            acts = torch.cat([prev, x.to(prev.dtype)], dim=1)
            mask = torch.cat([self._mask, info.mask.to(self._mask.device)], dim=1)
        self._x, self._mask = acts, mask
        probe = self._probe_for(acts.device)
        rows = mask.any(dim=1)
        n_out, n_heads = probe.config.n_outputs, probe.config.n_heads
        logits = acts.new_full((acts.shape[0], n_out), float("nan"), dtype=torch.float32)
        attention = None
        if probe.attends:
            attention = acts.new_zeros((*acts.shape[:2], n_heads), dtype=torch.float32)
        if bool(rows.any()):
            sub_x, sub_mask = acts[rows], mask[rows]
            if attention is not None:
                sub_logits, sub_attn = probe(sub_x, sub_mask, return_attention=True)
                attention[rows] = sub_attn.float()
            else:
                sub_logits = probe(sub_x, sub_mask)
            logits[rows] = sub_logits.float()
        self.steps.append(ReadoutStep(logits, attention, mask, info.past))
        if self._stop:
            raise StopForward


def probe_hook(probe: Probe, hook: str | None, verb: str) -> str:
    """The hook a probe is attached at: ``hook``, or the one its config records.

    Raises:
        InputTypeError: ``probe`` is not a lensprobe probe.
        InputError: No hook given and none recorded.
    """
    if not isinstance(probe, Probe):
        raise InputTypeError(
            f"{verb}() needs a lensprobe probe (lp.AttentionProbe, lp.MeanProbe, ...), got "
            f"{type(probe).__name__}"
        )
    recorded = probe.config.hook
    if hook is None:
        if recorded is None:
            raise InputError(
                f"the probe records no hook name; pass one: {verb}(model, probe, "
                "'blocks.9.hook_resid_post')"
            )
        return recorded
    if recorded is not None and recorded != hook:
        logger.warning("probe trained at %r is attached at %r", recorded, hook)
    return hook


@contextmanager
def attach(
    model: Any, probe: Probe, hook: str | None = None, *, stop: bool = False
) -> Iterator[Readout]:
    """Run a probe on the live activations at its hook during every forward in the block.

    Example::

        with lp.attach(model, probe, "blocks.9.hook_resid_post") as readout:
            model.generate("The movie was", max_new_tokens=20)
        readout.history()      # (step, batch, n_outputs): the running prediction per token

    Works with a TransformerLens ``TransformerBridge`` (``model(...)``, ``run_with_hooks`` with
    your own hooks, ``generate``), an nnsight model (run your ``model.trace(...)`` inside the
    block; the readout sees your edits of the module's output) and a plain Hugging Face model
    (``model(...)``, ``model.generate(...)``). The probe sees exactly the valid tokens: those the
    ``attention_mask`` given to the model marks (all tokens when none is given; the padding a
    TransformerBridge adds to a list of texts is recognised). Each step of a generation with KV
    cache gives the probe's prediction over all tokens so far.

    Args:
        model: A TransformerBridge, an nnsight model or a Hugging Face model.
        probe: A trained probe (not modified; a copy is made if the model runs on another device).
        hook: Hook name; default the one recorded in the probe's config.
        stop: End each forward right after the readout by raising :class:`StopForward`, which
            the caller catches (``try: model(x) except StopForward: pass``): nothing after the
            hook runs, the unembedding included. For runners that only need the readout.

    Yields:
        The :class:`Readout`, filled during the block and kept afterwards. The hooks are removed
        when the block ends, also on error.

    Raises:
        ValueError: No hook given and none recorded in the probe.
        lensprobe.backends.names.UnknownHookError: The model has no such hook.
    """
    hook = probe_hook(probe, hook, "attach")
    readout = Readout(probe, hook, stop=stop)
    with read_activations(model, hook, readout._observe):
        yield readout
