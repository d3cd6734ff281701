"""Probe specs: the short names a grid, the command line and the study give probes.

``attention-8`` is an attention probe with 8 heads, ``mean`` the mean-pooled baseline,
``last-adamw`` the last-token probe trained with AdamW. This module imports nothing heavy, so the
command line can show its defaults without loading torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

from lensprobe.errors import InputError

if TYPE_CHECKING:
    from lensprobe.train.config import ProtocolConfig

__all__ = [
    "CAPTURE_BATCH_SIZE",
    "CAPTURE_MAX_LENGTH",
    "DEFAULT_PROBES",
    "KEEPS",
    "MAX_PROBE_HEADS",
    "Keep",
    "ProbeSpec",
    "check_heads",
    "parse_probes",
]

MAX_PROBE_HEADS = 1024
"""The most heads a probe may have. The study uses 1 to 8 and monitors a few dozen; a bound far
above them turns a typo such as ``attention-99999999`` into an error before anything is
allocated (its values alone would be 99,999,999 x d_model x outputs floats)."""


def check_heads(n_heads: int, what: str) -> None:
    """Refuse fewer than 1 or more than :data:`MAX_PROBE_HEADS` probe heads (``what`` names it)."""
    if n_heads < 1:
        raise InputError(
            f"{what}: an attention probe needs at least one head (attention-1), got {n_heads}"
        )
    if n_heads > MAX_PROBE_HEADS:
        raise InputError(
            f"{what}: {n_heads:,} heads is over the bound of {MAX_PROBE_HEADS:,} probe heads "
            "(the study uses 1 to 8); use fewer heads"
        )


Keep = Literal["tokens", "last", "pooled"]
"""What a capture stores per text: every token, or pooled vectors (see :mod:`lensprobe.reduced`)."""

KEEPS: tuple[str, ...] = get_args(Keep)
"""The keep modes, spelled once."""

DEFAULT_PROBES: tuple[str, ...] = ("attention-1", "attention-2", "attention-8", "mean", "last")
"""The probes of the study's comparison."""

CAPTURE_MAX_LENGTH = 256
"""Tokens kept per text (BOS included) by default, in ``lp.capture`` and every command."""
CAPTURE_BATCH_SIZE = 16
"""Texts per forward pass during capture by default, in ``lp.capture`` and every command."""

_SPEC = re.compile(r"^(attention|mean|last|max)(?:-(\d+))?(?:-(adamw|lbfgs))?$")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of a grid: kind, heads and optimizer, written ``attention-8`` or ``mean-adamw``."""

    kind: Literal["attention", "mean", "last", "max"]
    """Probe kind."""
    n_heads: int = 1
    """Heads of an attention probe."""
    optimizer: Literal["auto", "adamw", "lbfgs"] = "auto"
    """``auto``: AdamW for attention probes, L-BFGS for pooled ones."""

    @classmethod
    def parse(cls, text: str) -> ProbeSpec:
        """Read ``attention-8``, ``attention-2-lbfgs``, ``mean``, ``last-adamw``, ``max``."""
        m = _SPEC.match(text.strip().lower())
        if m is None:
            raise InputError(
                f"cannot read probe spec {text!r}; write KIND[-HEADS][-OPTIMIZER] with KIND one of "
                "attention, mean, last, max (e.g. attention-8, mean, last-adamw)"
            )
        kind, heads, opt = m.groups()
        if heads is not None and kind != "attention":
            raise InputError(f"{text!r}: only attention probes have heads (e.g. attention-{heads})")
        if heads is not None:
            check_heads(int(heads), repr(text))
        return cls(kind=kind, n_heads=int(heads or 1), optimizer=opt or "auto")  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """The spec written back, e.g. ``attention-8`` or ``mean-adamw``."""
        text = f"{self.kind}-{self.n_heads}" if self.kind == "attention" else self.kind
        return text if self.optimizer == "auto" else f"{text}-{self.optimizer}"

    def protocol(self, base: ProtocolConfig) -> ProtocolConfig:
        """``base`` with this spec's probe, heads and optimizer."""
        return replace(base, probe=self.kind, n_heads=self.n_heads, optimizer=self.optimizer)


def parse_probes(specs: str | Sequence[str]) -> list[ProbeSpec]:
    """Probe specs from a comma-separated string or a list of strings."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if not specs:
        raise InputError(f"no probes given; e.g. {','.join(DEFAULT_PROBES)}")
    return [ProbeSpec.parse(s) for s in specs]
