"""Probe specs: the short names a grid, the command line and the study give probes.

``attention-8`` is an attention probe with 8 heads, ``mean`` the mean-pooled baseline,
``last-adamw`` the last-token probe trained with AdamW, ``rolling-4:window=8`` a rolling-means
probe with 4 heads and windows of 8 tokens. What a kind takes (heads, options, its optimizer) is
read from its class, so a kind is a spec as soon as its class is defined.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from lensprobe.errors import InputError
from lensprobe.probes.config import probe_class
from lensprobe.specs import DEFAULT_PROBES, check_heads

if TYPE_CHECKING:
    from lensprobe.train.config import ProtocolConfig

__all__ = ["ProbeSpec", "parse_probes"]

_SPEC = re.compile(
    r"^(?P<kind>[a-z][a-z0-9_]*)(?:-(?P<heads>\d+))?(?:-(?P<opt>adamw|lbfgs))?"
    r"(?P<options>(?::[a-z_][a-z0-9_]*=[^:=\s]+)*)$"
)
_VALUE = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)$")


def _option_value(text: str) -> int | float | str:
    """An option written in a spec: an integer, a float, or else the text."""
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text) if _VALUE.match(text) else text


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of a grid, written ``attention-8``, ``mean-adamw``, ``rolling-4:window=8``.

    The kinds and what they take (heads, options, the ``auto`` optimizer) are read from their
    classes (:mod:`lensprobe.probes`), so a kind defined anywhere is a spec at once.
    """

    kind: str
    """Probe kind: a name of :func:`lensprobe.probes.probe_kinds`."""
    n_heads: int = 1
    """Heads, for kinds that have them."""
    optimizer: Literal["auto", "adamw", "lbfgs"] = "auto"
    """``auto``: the kind's default (AdamW for attention probes, L-BFGS for pooled ones)."""
    options: tuple[tuple[str, int | float | str], ...] = ()
    """The kind's own settings that differ from its defaults, as ``(name, value)`` pairs."""

    def __post_init__(self) -> None:
        cls = probe_class(self.kind)
        if self.n_heads != 1 and not cls.has_heads:
            raise InputError(
                f"a {self.kind} probe has no heads; write {self.kind!r} without -{self.n_heads}"
            )
        check_heads(self.n_heads, f"{self.kind}-{self.n_heads}")
        full = cls.check_options(dict(self.options))
        given = tuple(sorted((k, v) for k, v in full.items() if v != cls.option_defaults[k]))
        object.__setattr__(self, "options", given)

    @classmethod
    def parse(cls, text: str) -> ProbeSpec:
        """Read ``attention-8``, ``attention-2-lbfgs``, ``mean``, ``rolling-4:window=8``, ..."""
        m = _SPEC.match(text.strip().lower())
        if m is None:
            raise InputError(
                f"cannot read probe spec {text!r}; write KIND[-HEADS][-OPTIMIZER][:NAME=VALUE...] "
                "(e.g. attention-8, mean, last-adamw, rolling-4:window=8)"
            )
        heads = m["heads"]
        if heads is not None:
            check_heads(int(heads), repr(text))
        options = tuple(
            (name, _option_value(value))
            for name, value in (item.split("=", 1) for item in m["options"].split(":")[1:])
        )
        return cls(
            kind=m["kind"],
            n_heads=int(heads or 1),
            optimizer=m["opt"] or "auto",  # type: ignore[arg-type]
            options=options,
        )

    @classmethod
    def of(cls, config: ProtocolConfig) -> ProbeSpec:
        """The spec of a protocol config (its optimizer ``auto`` where it is the kind's default)."""
        default = probe_class(config.probe).default_optimizer
        optimizer = "auto" if config.optimizer == default else config.optimizer
        return cls(config.probe, config.n_heads, optimizer, tuple(config.options.items()))

    @property
    def label(self) -> str:
        """The spec written back, e.g. ``attention-8``, ``mean-adamw``, ``rolling-4:window=8``."""
        text = f"{self.kind}-{self.n_heads}" if probe_class(self.kind).has_heads else self.kind
        if self.optimizer != "auto":
            text += f"-{self.optimizer}"
        return text + "".join(f":{k}={v}" for k, v in self.options)

    def protocol(self, base: ProtocolConfig) -> ProtocolConfig:
        """``base`` with this spec's probe, heads, optimizer and options."""
        return replace(
            base,
            probe=self.kind,
            n_heads=self.n_heads,
            optimizer=self.optimizer,
            options=dict(self.options),
        )


def parse_probes(specs: str | Sequence[str]) -> list[ProbeSpec]:
    """Probe specs from a comma-separated string or a list of strings."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if not specs:
        raise InputError(f"no probes given; e.g. {','.join(DEFAULT_PROBES)}")
    return [ProbeSpec.parse(s) for s in specs]
