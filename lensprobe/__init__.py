"""lensprobe: attention probes at TransformerLens / nnsight hook names.

Public names are imported lazily (PEP 562), so ``import lensprobe`` stays cheap and optional
backends (TransformerLens, nnsight, circuitsvis, datasets) load only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "load_model": "lensprobe.models",
    "AttentionProbe": "lensprobe.probes",
    "MeanProbe": "lensprobe.probes",
    "LastTokenProbe": "lensprobe.probes",
    "MaxProbe": "lensprobe.probes",
    "Probe": "lensprobe.probes",
    "ProbeConfig": "lensprobe.probes",
    "load_probe": "lensprobe.probes",
    "TrainConfig": "lensprobe.train",
    "ProtocolConfig": "lensprobe.train",
    "ProtocolResult": "lensprobe.train",
    "fit": "lensprobe.train",
    "run_protocol": "lensprobe.train",
    "compare": "lensprobe.train",
    "Comparison": "lensprobe.train",
    "choose_layer": "lensprobe.train",
    "LayerChoice": "lensprobe.train",
    "classification_metrics": "lensprobe.metrics",
    "load_dataset": "lensprobe.data",
    "list_datasets": "lensprobe.data",
    "TextDataset": "lensprobe.data",
    "attention_entropy": "lensprobe.analysis",
    "top_examples": "lensprobe.analysis",
    "token_contributions": "lensprobe.analysis",
    "explain": "lensprobe.analysis",
    "report": "lensprobe.viz",
    "ReportEntry": "lensprobe.viz",
    "ProbeSpec": "lensprobe.experiment",
    "run_grid": "lensprobe.experiment",
    "capture": "lensprobe.capturing",
    "Activations": "lensprobe.activations",
    "ActivationsMeta": "lensprobe.activations",
    "CaptureResult": "lensprobe.activations",
    "CaptureStats": "lensprobe.activations",
    "UnknownHookError": "lensprobe.backends.names",
    "LensprobeError": "lensprobe.errors",
    "attach": "lensprobe.hooks",
    "Readout": "lensprobe.hooks",
    "edit_activations": "lensprobe.hooks",
    "steer": "lensprobe.steering",
    "ablate": "lensprobe.steering",
    "class_directions": "lensprobe.steering",
    "head_directions": "lensprobe.steering",
    "patch_positions": "lensprobe.patching",
    "PatchResult": "lensprobe.patching",
}

# public submodules reachable as attributes (lp.viz.probe_attention(...))
_SUBMODULES: tuple[str, ...] = (
    "viz",
    "data",
    "analysis",
    "errors",
    "metrics",
    "probes",
    "train",
)

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])

def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lensprobe.{name}")
    raise AttributeError(f"module 'lensprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from lensprobe import analysis, data, errors, metrics, probes, train, viz
    from lensprobe.activations import Activations, ActivationsMeta, CaptureResult, CaptureStats
    from lensprobe.analysis import attention_entropy, explain, token_contributions, top_examples
    from lensprobe.backends.names import UnknownHookError
    from lensprobe.capturing import capture
    from lensprobe.data import TextDataset, list_datasets, load_dataset
    from lensprobe.errors import LensprobeError
    from lensprobe.experiment import ProbeSpec, run_grid
    from lensprobe.hooks import Readout, attach, edit_activations
    from lensprobe.metrics import classification_metrics
    from lensprobe.models import load_model
    from lensprobe.patching import PatchResult, patch_positions
    from lensprobe.probes import (
        AttentionProbe,
        LastTokenProbe,
        MaxProbe,
        MeanProbe,
        Probe,
        ProbeConfig,
        load_probe,
    )
    from lensprobe.steering import ablate, class_directions, head_directions, steer
    from lensprobe.train import (
        Comparison,
        LayerChoice,
        ProtocolConfig,
        ProtocolResult,
        TrainConfig,
        choose_layer,
        compare,
        fit,
        run_protocol,
    )
    from lensprobe.viz import ReportEntry, report
