"""A probe with random parameters, shared by the test modules."""

from __future__ import annotations

from typing import Any

import torch

from lensprobe.probes import PROBE_CLASSES, ProbeConfig, build_probe, probe_class


def builtin_kinds() -> list[str]:
    """The kinds lensprobe itself defines (not those a test module defines, e.g. a toy kind)."""
    return [k for k, cls in PROBE_CLASSES.items() if cls.__module__.startswith("lensprobe.")]


def random_probe(
    kind: str,
    d_model: int,
    n_outputs: int = 1,
    n_heads: int = 3,
    seed: int = 0,
    scale: float = 1.0,
    **config: Any,
) -> Any:
    """A probe with every parameter (query and position slope included) drawn from N(0, scale²).

    ``config`` holds further :class:`ProbeConfig` fields (``hook``, ``position``, ``exclude_bos``).
    """
    cfg = ProbeConfig(
        kind=kind,
        d_model=d_model,
        n_outputs=n_outputs,
        n_heads=n_heads if probe_class(kind).has_heads else 1,
        **config,
    )
    probe = build_probe(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return probe


def token_task(
    n: int, pos: int, d: int, k: int, seed: int, *, min_length: int, strength: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise sequences ``(n, pos, d)`` of random valid lengths (``min_length`` to ``pos``) where
    one token at a random valid position carries the class (``strength`` times a random class
    direction); labels cycle through ``k`` classes. Returns ``(x, mask, y)``."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, pos, d, generator=gen)
    lengths = torch.randint(min_length, pos + 1, (n,), generator=gen)
    mask = torch.arange(pos)[None] < lengths[:, None]
    where = (torch.rand(n, generator=gen) * lengths).long()
    x[torch.arange(n), where] += strength * torch.randn(k, d, generator=gen)[y]
    return x, mask, y
