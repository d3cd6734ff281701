"""Probes: one ``forward(x, mask) -> logits (batch, n_outputs)`` contract for every kind.

- :mod:`~lensprobe.probes.config`: :class:`ProbeConfig` and the class of each kind.
- :mod:`~lensprobe.probes.base`: the :class:`Probe` contract and the tokens a probe reads.
- the kinds, each defined by its class (see :class:`Probe`): :mod:`~lensprobe.probes.attention`,
  :mod:`~lensprobe.probes.pooled` (mean, last, max), and the long-context monitors
  :mod:`~lensprobe.probes.multimax`, :mod:`~lensprobe.probes.rolling` (max of rolling means) and
  :mod:`~lensprobe.probes.ema` (exponential moving average).
- :mod:`~lensprobe.probes.saving`: a probe on disk, written and read (:func:`load_probe`).
- :mod:`~lensprobe.probes.spec`: the short names of probes (``attention-8``, :class:`ProbeSpec`).
"""

from __future__ import annotations

from lensprobe.probes.attention import AttentionProbe
from lensprobe.probes.base import Probe
from lensprobe.probes.config import (
    PROBE_CLASSES,
    ProbeConfig,
    build_probe,
    probe_class,
    probe_kinds,
)
from lensprobe.probes.ema import EMAProbe
from lensprobe.probes.multimax import MultiMaxProbe
from lensprobe.probes.pooled import LastTokenProbe, MaxProbe, MeanProbe, PooledProbe
from lensprobe.probes.rolling import RollingMeanProbe
from lensprobe.probes.saving import load_probe
from lensprobe.probes.spec import ProbeSpec, parse_probes

__all__ = [
    "PROBE_CLASSES",
    "AttentionProbe",
    "EMAProbe",
    "LastTokenProbe",
    "MaxProbe",
    "MeanProbe",
    "MultiMaxProbe",
    "PooledProbe",
    "Probe",
    "ProbeConfig",
    "ProbeSpec",
    "RollingMeanProbe",
    "build_probe",
    "load_probe",
    "parse_probes",
    "probe_class",
    "probe_kinds",
]
