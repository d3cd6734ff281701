"""What a probe is: its kind, shapes and hook (:class:`ProbeConfig`), and each kind's class.

:data:`PROBE_CLASSES` is filled as each :class:`~lensprobe.probes.base.Probe` subclass that names a
``kind`` is defined, so loading a probe finds its class without importing the kinds here, and a kind
defined anywhere (a user's module, a test) is known to every part of lensprobe from then on. What a
kind needs (heads, its own options, its optimizer, whether it pools) is read from its class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lensprobe._records import check_keys
from lensprobe.errors import InputError
from lensprobe.specs import check_heads

if TYPE_CHECKING:
    from lensprobe.probes.base import Probe

PROBE_CLASSES: dict[str, type[Probe]] = {}
"""Probe kind -> the class implementing it (each subclass of ``Probe`` with a ``kind`` adds itself)."""


def probe_kinds() -> tuple[str, ...]:
    """The kind names known now, in the order their classes were defined."""
    return tuple(PROBE_CLASSES)


@dataclass(frozen=True)
class ProbeConfig:
    """Everything needed to rebuild a probe: its kind, its shapes, and where it reads."""

    kind: str
    """Which probe: a name of :func:`probe_kinds`, e.g. ``attention``, ``mean``, ``multimax``."""
    d_model: int
    """Width of the activations the probe reads."""
    n_outputs: int = 1
    """1 for a binary task (one logit), k for a k-class task (k logits)."""
    n_heads: int = 1
    """Probe heads (kinds with heads only; 1 for the others)."""
    position: Literal["last", "first"] = "last"
    """Kinds with a learned position bias: the token positions are counted from."""
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
    options: dict[str, Any] = field(default_factory=dict)
    """The kind's own settings (e.g. a rolling probe's ``window``), every one filled in: given
    values checked by the kind's class, the others at its defaults."""
    thresholds: dict[str, float | None] = field(default_factory=dict)
    """Binary probes trained by the protocol: the logit threshold of each operating point
    (``tpr_at_1pct_fpr`` -> the logit above which a text is flagged at 1% FPR), fixed on
    training data or a control set (:attr:`fixed_on`); None where there were too few negatives
    to fix it. ``lp.monitor(model, probe, threshold="tpr_at_1pct_fpr")`` reads it."""
    fixed_on: str | None = None
    """What :attr:`thresholds` were fixed on, e.g. ``out-of-fold logits of the training part
    (320 rows, 160 negatives)``."""

    def __post_init__(self) -> None:
        cls = probe_class(self.kind)
        if self.d_model < 1 or self.n_outputs < 1 or self.n_heads < 1:
            raise InputError(
                f"d_model, n_outputs and n_heads must be positive, got {self.d_model}, "
                f"{self.n_outputs}, {self.n_heads}"
            )
        if not cls.has_heads and self.n_heads != 1:
            raise InputError(f"a {self.kind} probe has no heads; leave n_heads at 1")
        check_heads(self.n_heads, "n_heads")
        object.__setattr__(self, "options", cls.check_options(self.options))
        if self.position not in ("last", "first"):
            raise InputError(f"position must be 'last' or 'first', got {self.position!r}")
        if self.class_names is not None:
            n_classes = 2 if self.n_outputs == 1 else self.n_outputs
            if len(self.class_names) != n_classes:
                raise InputError(
                    f"{len(self.class_names)} class names for a probe with {self.n_outputs} "
                    f"output(s) ({n_classes} classes)"
                )
            object.__setattr__(self, "class_names", tuple(self.class_names))

    @property
    def n_classes(self) -> int:
        """Number of classes: 2 for a one-logit (binary) probe, else ``n_outputs``."""
        return 2 if self.n_outputs == 1 else self.n_outputs

    @property
    def aggregation(self) -> str:
        """The kind with its options, e.g. ``mean`` or ``rolling:window=16`` (its features' key)."""
        return self.kind + "".join(f":{k}={v}" for k, v in sorted(self.options.items()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``options``, ``thresholds``, ``fixed_on`` only when set)."""
        d = asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        for key in ("options", "thresholds", "fixed_on"):  # as saved before these existed
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error that names them."""
        check_keys(cls, d, "probe config keys")
        d = dict(d)
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


def probe_class(kind: str) -> type[Probe]:
    """The probe class for a kind name."""
    try:
        return PROBE_CLASSES[kind]
    except KeyError:
        raise InputError(
            f"unknown probe kind {kind!r}; choose one of {probe_kinds()} (a kind is known once "
            "its class, a subclass of lensprobe.probes.Probe, is defined)"
        ) from None


def build_probe(config: ProbeConfig) -> Probe:
    """A freshly initialised probe (member seed 0) for a config."""
    return probe_class(config.kind)(config.d_model, config=config)  # type: ignore[call-arg]
