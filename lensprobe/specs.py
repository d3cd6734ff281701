"""Defaults and bounds the command line shows without loading torch.

The default probes, the capture sizes, the keep modes, the bound on probe heads.

The specs themselves (``attention-8``, ``mean-adamw``) are read by
:class:`lensprobe.probes.ProbeSpec`, which learns the kinds from their classes.
"""

from __future__ import annotations

from typing import Literal, get_args

from lensprobe.errors import InputError

__all__ = [
    "CAPTURE_BATCH_SIZE",
    "CAPTURE_MAX_LENGTH",
    "DEFAULT_PROBES",
    "KEEPS",
    "MAX_PROBE_HEADS",
    "Keep",
    "check_heads",
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
