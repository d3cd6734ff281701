"""What every probe shares: its config, the ``forward(x, mask)`` contract, save and load.

Every probe kind writes its math once, for parameters with a leading ``member`` dimension
(``forward_members``). A lone probe is the one-member case of the same function, so a probe
trained inside a batched sweep and the same probe trained alone run identical code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from lensprobe._types import Acts, Logits, Mask

ProbeKind = Literal["attention", "mean", "last", "max"]
PROBE_KINDS: tuple[str, ...] = ("attention", "mean", "last", "max")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DIGEST_KEY = "digest"
"""Key of ``config.json`` holding :func:`probe_digest` of the config and the weights saved with it."""


@dataclass(frozen=True)
class ProbeConfig:
    """Everything needed to rebuild a probe: its kind, its shapes, and where it reads."""

    kind: ProbeKind
    """Which probe: ``attention``, or a linear probe on ``mean``/``last``/``max`` pooled tokens."""
    d_model: int
    """Width of the activations the probe reads."""
    n_outputs: int = 1
    """1 for a binary task (one logit), k for a k-class task (k logits)."""
    n_heads: int = 1
    """Probe heads (attention probes only; 1 for pooled probes)."""
    position: Literal["last", "first"] = "last"
    """Attention probes: the token positions are counted from, for the learned position bias."""
    hook: str | None = None
    """Hook name the probe was trained at, e.g. ``blocks.9.hook_resid_post``."""
    model_id: str | None = None
    """The model whose activations trained the probe."""
    class_names: tuple[str, ...] | None = None
    """Names of the classes, in label order."""
    exclude_bos: bool = False
    """Ignore each sequence's first valid token (the BOS the capture prepended). A BOS residual
    is the same for every text, so it carries no information, and in models such as Gemma its
    norm dwarfs the other tokens'. Sequences of one token keep it."""
    capture: dict[str, Any] = field(default_factory=dict)
    """Capture settings of the training activations (dtype, padding side, max length, BOS)."""

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {self.kind!r}; choose one of {PROBE_KINDS}")
        if self.d_model < 1 or self.n_outputs < 1 or self.n_heads < 1:
            raise ValueError(
                f"d_model, n_outputs and n_heads must be positive, got {self.d_model}, "
                f"{self.n_outputs}, {self.n_heads}"
            )
        if self.kind != "attention" and self.n_heads != 1:
            raise ValueError(f"a {self.kind} probe has no heads; leave n_heads at 1")
        if self.position not in ("last", "first"):
            raise ValueError(f"position must be 'last' or 'first', got {self.position!r}")
        if self.class_names is not None:
            n_classes = 2 if self.n_outputs == 1 else self.n_outputs
            if len(self.class_names) != n_classes:
                raise ValueError(
                    f"{len(self.class_names)} class names for a probe with {self.n_outputs} "
                    f"output(s) ({n_classes} classes)"
                )
            object.__setattr__(self, "class_names", tuple(self.class_names))

    @property
    def n_classes(self) -> int:
        """Number of classes: 2 for a one-logit (binary) probe, else ``n_outputs``."""
        return 2 if self.n_outputs == 1 else self.n_outputs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown probe config keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


def without_first_token(mask: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """``mask`` with each row's first valid token removed (rows of one valid token unchanged)."""
    first = mask & (mask.cumsum(dim=-1) == 1)
    keep_first = mask.sum(dim=-1, keepdim=True) < 2
    return mask & (~first | keep_first)


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
        raise ValueError(
            f"expected activations of shape (batch, pos, d_model), got {tuple(x.shape)}; "
            "add a batch dimension with x[None] for one sequence"
        )
    if x.shape[-1] != d_model:
        raise ValueError(
            f"the probe reads width d_model={d_model} but the activations have width "
            f"{x.shape[-1]}: train a probe for this hook, or capture the hook it was trained at"
        )
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's {tuple(x.shape[:2])}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten()[:10].tolist()
        raise ValueError(
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

    def __init__(self, config: ProbeConfig):
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs kind={self.kind!r}, got {config.kind!r}")
        self.config = config
        for name, tensor in self.init_members(config, seeds=[0]).items():
            self.register_parameter(name, nn.Parameter(tensor[0]))

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
        cls, config: ProbeConfig, params: Mapping[str, Tensor], x: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Logits ``(member, batch, n_outputs)`` and attention (or None) for stacked params.

        ``x`` must be zero at masked positions (``forward`` ensures it for user input).
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

    def forward(self, x: Acts, mask: Mask) -> Logits:
        """Logits ``(batch, n_outputs)`` for a padded batch and its valid-token mask."""
        x, mask = self._prepare(x, mask)
        logits, _ = self.forward_members(self.config, self.member_params(), x, mask)
        return logits[0]

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
        heads = f", n_heads={c.n_heads}, position={c.position!r}" if c.kind == "attention" else ""
        hook = f", hook={c.hook!r}" if c.hook else ""
        return f"d_model={c.d_model}, n_outputs={c.n_outputs}{heads}{hook}"

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        config = json.loads(json.dumps(self.config.to_dict()))  # exactly what loading reads
        config[DIGEST_KEY] = probe_digest(config, tensors)
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return path


def probe_digest(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 that ties a probe's weights to its config (saved in ``config.json``).

    Any change to a config field (``position``, ``exclude_bos``, ...) or to any weight byte, or
    weights taken from another probe of the same shapes, gives another digest.

    Args:
        config: :meth:`ProbeConfig.to_dict` output (a ``digest`` key in it is ignored).
        tensors: The state dict as saved.

    Returns:
        The hex digest.
    """
    import hashlib

    body = {k: v for k, v in config.items() if k != DIGEST_KEY}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
