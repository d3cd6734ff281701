"""Probes: one ``forward(x, mask) -> logits (batch, n_outputs)`` contract for every kind.

- :mod:`~lensprobe.probes.config`: :class:`ProbeConfig` and the class of each kind.
- :mod:`~lensprobe.probes.base`: the :class:`Probe` contract and the tokens a probe reads.
- :mod:`~lensprobe.probes.attention`, :mod:`~lensprobe.probes.pooled`: the kinds.
- :mod:`~lensprobe.probes.saving`: a probe on disk, written and read (:func:`load_probe`).
"""

from __future__ import annotations

from lensprobe.probes.attention import AttentionProbe
from lensprobe.probes.base import Probe
from lensprobe.probes.config import (
    PROBE_CLASSES,
    PROBE_KINDS,
    ProbeConfig,
    ProbeKind,
    build_probe,
    probe_class,
)
from lensprobe.probes.pooled import LastTokenProbe, MaxProbe, MeanProbe, PooledProbe
from lensprobe.probes.saving import load_probe

__all__ = [
    "PROBE_CLASSES",
    "PROBE_KINDS",
    "AttentionProbe",
    "LastTokenProbe",
    "MaxProbe",
    "MeanProbe",
    "PooledProbe",
    "Probe",
    "ProbeConfig",
    "ProbeKind",
    "build_probe",
    "load_probe",
    "probe_class",
]
