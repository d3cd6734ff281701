"""What every probe shares: the ``forward(x, mask)`` contract and the tokens a probe reads.

Every probe kind writes its math once, for parameters with a leading ``member`` dimension
(``forward_members``). A lone probe is the one-member case of the same function, so a probe
trained inside a batched sweep and the same probe trained alone run identical code.

A kind is one subclass in one file. Its class says everything the rest of lensprobe needs: its
name (``kind``), whether it has heads, attends or pools, its default optimizer and its own options;
the spec parser, the protocol, saving, ``attach``, the analyses and the command line read these
attributes and never list the kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from lensprobe._types import Acts, Logits, Mask, ProbeAttention
from lensprobe.errors import InputError, InputTypeError
from lensprobe.pooling import without_first_token
from lensprobe.probes.config import PROBE_CLASSES, ProbeConfig
from lensprobe.probes.saving import save_probe
from lensprobe.probes.stream import FirstTokenAside, PrefixStream, TokenStream


def tokens_read(config: ProbeConfig, mask: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """The tokens a probe reads, given the valid-token ``mask`` of its input.

    The one rule for which tokens count, shared by training (``fit``, ``fit_members``,
    ``run_protocol``), ``forward``, the analyses and ``attach``: every valid token, less each
    sequence's first when ``config.exclude_bos`` (a sequence of one token keeps it). Always pass
    the mask of the input as captured; applying the rule twice would drop two tokens.
    """
    return without_first_token(mask) if config.exclude_bos else mask


def check_inputs(x: Tensor, mask: Tensor, d_model: int) -> None:
    """Shape, width and empty-row checks shared by every probe (errors name the fix)."""
    if x.ndim != 3:
        raise InputError(
            f"expected activations of shape (batch, pos, d_model), got {tuple(x.shape)}; "
            "add a batch dimension with x[None] for one sequence"
        )
    if x.shape[-1] != d_model:
        raise InputError(
            f"the probe reads width d_model={d_model} but the activations have width "
            f"{x.shape[-1]}: train a probe for this hook, or capture the hook it was trained at"
        )
    if mask.shape != x.shape[:2]:
        raise InputError(f"mask shape {tuple(mask.shape)} does not match x's {tuple(x.shape[:2])}")
    if mask.dtype != torch.bool:
        raise InputTypeError(f"mask must be a bool tensor, got {mask.dtype}")
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten()[:10].tolist()
        raise InputError(
            f"sequences {rows} have no valid token (all-masked rows); drop them or fix the mask"
        )


class Probe(nn.Module):
    """Base class: ``forward(x, mask) -> logits (batch, n_outputs)``.

    Subclasses define ``param_shapes`` (shapes without the member dimension), ``init_members``
    and ``forward_members``; this class turns them into an ordinary module.
    """

    kind: ClassVar[str]
    decay_params: ClassVar[tuple[str, ...]]
    """Parameters weight decay applies to (weight matrices; never biases or position slopes)."""
    ignores_masked: ClassVar[bool] = False
    """Whether :meth:`forward_members` never reads ``x`` at masked positions, so callers need not
    zero them (a training minibatch is then not zeroed first)."""
    has_heads: ClassVar[bool] = False
    """Whether ``n_heads`` may exceed 1 (a spec then writes them: ``attention-8``)."""
    attends: ClassVar[bool] = False
    """Whether :meth:`forward_members` returns each head's weights over the tokens read,
    ``(member, batch, pos, head)``, summing to 1 per head, with :meth:`head_values` such that
    ``logits = sum over (pos, head) of weight * value + bias``: ``attach`` records them and the
    attention entropy, widgets and report show them."""
    pooled: ClassVar[bool] = False
    """Whether the probe is linear on one vector per sequence that a classmethod
    ``pool(config, x, mask)`` computes with no parameters (and that commutes with a positive
    scale, ``pool(x / s) == pool(x) / s``): training pools once and solves on the pooled
    vectors, and the protocol's streaming pass computes them while it reads the store."""
    default_optimizer: ClassVar[Literal["adamw", "lbfgs"]] = "adamw"
    """What ``optimizer="auto"`` trains the kind with."""
    option_defaults: ClassVar[Mapping[str, int | float | str]] = {}
    """The kind's own settings and their defaults (a config holds them in ``options``; a spec
    writes them as ``KIND:NAME=VALUE``)."""
    stream_class: ClassVar[type[TokenStream]] = PrefixStream
    """The running state a live monitor keeps over the tokens read (:meth:`stream`); the
    default keeps the prefix and reruns the probe, O(prefix) per token."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Record a subclass that names a new ``kind`` in :data:`PROBE_CLASSES` (loading reads it).

        A kind already recorded keeps its class: a subclass that reuses ``kind = "mean"`` does not
        change what ``load_probe`` or the protocol build for ``mean``.
        """
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            PROBE_CLASSES.setdefault(cls.kind, cls)

    def __init__(self, config: ProbeConfig):
        super().__init__()
        if config.kind != self.kind:
            raise InputError(f"{type(self).__name__} needs kind={self.kind!r}, got {config.kind!r}")
        self.config = config
        for name, tensor in self.init_members(config, seeds=[0]).items():
            self.register_parameter(name, nn.Parameter(tensor[0]))

    @classmethod
    def config_from(
        cls,
        d_model: int,
        n_outputs: int,
        hook: str | None,
        model_id: str | None,
        class_names: tuple[str, ...] | None,
        **shape: Any,
    ) -> ProbeConfig:
        """The config of a probe of this kind from its constructor's arguments.

        ``shape`` holds the kind's own fields (``n_heads``, ``position`` for attention probes).
        """
        return ProbeConfig(
            kind=cls.kind,  # type: ignore[arg-type]
            d_model=d_model,
            n_outputs=n_outputs,
            hook=hook,
            model_id=model_id,
            class_names=class_names,
            **shape,
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked against :attr:`option_defaults`, the missing ones at their defaults.

        A value must have its default's type (an integer passes for a float);
        :meth:`check_option_values` then checks ranges.
        """
        unknown = sorted(set(options) - set(cls.option_defaults))
        if unknown:
            known = ", ".join(cls.option_defaults) or "none"
            raise InputError(
                f"a {cls.kind} probe has no option {unknown[0]!r}; its options: {known}"
            )
        out = dict(cls.option_defaults)
        for name, value in options.items():
            default = out[name]
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(default, float) and numeric:
                value = float(value)
            elif not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(
                default, bool
            ):
                raise InputError(
                    f"{cls.kind} option {name}={value!r}: expected a {type(default).__name__}, "
                    f"e.g. {name}={default!r}"
                )
            out[name] = value
        cls.check_option_values(out)
        return out

    @classmethod
    def check_option_values(cls, options: Mapping[str, Any]) -> None:
        """Refuse option values out of range (a subclass with options says which)."""

    @classmethod
    def floats_per_head_token(cls, n_outputs: int, options: Mapping[str, Any]) -> int:
        """Numbers a forward keeps per token and head (score, weight, values): memory estimates."""
        return 2 + n_outputs

    # -- the member-batched core, one per subclass ----------------------------------------------
    @classmethod
    def param_shapes(cls, config: ProbeConfig) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter, without the member dimension."""
        raise NotImplementedError

    @classmethod
    def init_members(cls, config: ProbeConfig, seeds: list[int]) -> dict[str, Tensor]:
        """Initial parameters for one member per seed, stacked on a leading ``member`` dim.

        A member's initial values depend on its seed only, never on how many members there are.
        """
        raise NotImplementedError

    @classmethod
    def forward_members(
        cls,
        config: ProbeConfig,
        params: Mapping[str, Tensor],
        x: Tensor,
        mask: Tensor,
        *,
        matmul_dtype: torch.dtype | None = None,
        input_scale: float = 1.0,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits ``(member, batch, n_outputs)`` and attention (or None) for stacked params.

        ``x`` must be zero at masked positions (``forward`` ensures it for user input), unless
        the class :attr:`ignores_masked`.
        ``matmul_dtype``: the dtype of the large products over the activations (e.g. bfloat16
        where the hardware is fast at it); None: ``x``'s dtype. Everything else, and the
        results, is in the parameters' dtype. ``input_scale``: the probe reads ``x /
        input_scale`` (applied to the products' outputs: the same math on fewer numbers).
        """
        raise NotImplementedError

    # -- the module API --------------------------------------------------------------------------
    def member_params(self) -> dict[str, Tensor]:
        """This probe's parameters as a one-member stack."""
        return {name: p.unsqueeze(0) for name, p in self.named_parameters()}

    @classmethod
    def from_member(cls, config: ProbeConfig, params: Mapping[str, Tensor], index: int) -> Probe:
        """A standalone probe holding member ``index`` of stacked parameters (copied)."""
        probe = cls(config.d_model, config=config)  # type: ignore[call-arg]
        with torch.no_grad():
            for name, p in probe.named_parameters():
                p.copy_(params[name][index].to(p.dtype))
        return probe

    def effective_mask(self, mask: Mask) -> Mask:
        """The tokens the probe reads: ``mask``, less BOS when the config excludes it.

        See :func:`tokens_read`, the rule training applies too.
        """
        return tokens_read(self.config, mask)

    def _prepare(self, x: Acts, mask: Mask) -> tuple[Tensor, Tensor]:
        check_inputs(x, mask, self.config.d_model)
        mask = self.effective_mask(mask)
        dtype = next(self.parameters()).dtype
        x = x.to(dtype).masked_fill(~mask[..., None], 0.0)
        return x, mask

    def forward(
        self, x: Acts, mask: Mask, *, return_attention: bool = False
    ) -> Logits | tuple[Logits, ProbeAttention]:
        """Logits ``(batch, n_outputs)`` for a padded batch and its valid-token mask.

        With ``return_attention`` (kinds that :attr:`attend <attends>`), also each head's weights
        ``(batch, pos, probe_head)``; masked positions get exactly zero.
        """
        if return_attention and not self.attends:
            raise InputTypeError(
                f"a {self.kind} probe has no attention over tokens; "
                "lp.analysis.token_contributions(probe, x, mask) shows which tokens it reads"
            )
        x, mask = self._prepare(x, mask)
        logits, attn = self.forward_members(self.config, self.member_params(), x, mask)
        if return_attention:
            assert attn is not None
            return logits[0], attn[0]
        return logits[0]

    def attention(self, x: Acts, mask: Mask) -> ProbeAttention:
        """Each head's weights ``(batch, pos, probe_head)`` over each sequence's tokens."""
        return self(x, mask, return_attention=True)[1]

    def head_values(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos probe_head n_outputs"]:
        """What each head adds per unit of weight on each token (kinds that attend)."""
        raise InputTypeError(f"a {self.kind} probe has no heads attending to tokens")

    @torch.no_grad()
    def token_contributions(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos n_outputs"]:
        """Each token's exact share of each logit: ``logits == out.sum(1) + bias``.

        ``x`` in the probe's dtype, zero where ``mask`` is False; ``mask`` the tokens the probe
        reads (:meth:`effective_mask`). A kind that attends: ``sum_h weight[t, h] * value[t, h]``;
        other kinds say their own.
        """
        if not self.attends:
            raise InputTypeError(f"no token contributions defined for a {self.kind} probe")
        _, attn = self.forward_members(self.config, self.member_params(), x, mask)
        assert attn is not None
        return (attn[0][..., None] * self.head_values(x, mask)).sum(dim=2)

    def stream(self, batch: int) -> TokenStream:
        """A running state over ``batch`` sequences fed one token at a time (a live monitor).

        Its logits after each token equal this probe's forward on the tokens so far, BOS rule
        included (see :mod:`lensprobe.probes.stream`).
        """
        if self.config.exclude_bos:
            return FirstTokenAside(
                self, self.stream_class(self, batch), self.stream_class(self, batch)
            )
        return self.stream_class(self, batch)

    def class_directions(self) -> Float[Tensor, "n_outputs d_model"]:
        """One residual-space direction per output along which the probe's logit moves (copy)."""
        raise InputTypeError(f"no class directions for a {self.kind} probe")

    def read_directions(self) -> Float[Tensor, "direction d_model"]:
        """Directions whose removal leaves the probe reading nothing but its bias (a copy).

        Default: :meth:`class_directions`.
        """
        return self.class_directions()

    @torch.no_grad()
    def predict_proba(
        self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch n_classes"]:
        """Class probabilities (sigmoid for one logit, softmax otherwise); train/eval kept."""
        from lensprobe.metrics import probabilities

        was_training = self.training
        self.eval()
        try:
            return probabilities(self(x, mask))
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        """Shapes and hook, shown in the module's repr."""
        c = self.config
        heads = f", n_heads={c.n_heads}, position={c.position!r}" if self.has_heads else ""
        options = "".join(f", {k}={v!r}" for k, v in c.options.items())
        hook = f", hook={c.hook!r}" if c.hook else ""
        return f"d_model={c.d_model}, n_outputs={c.n_outputs}{heads}{options}{hook}"

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``.

        :func:`~lensprobe.probes.saving.load_probe` reads it back.
        """
        return save_probe(self, path)
