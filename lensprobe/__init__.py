"""lensprobe: attention probes at TransformerLens / nnsight hook names.

The top level holds what a researcher types: the verbs (``load_model``, ``capture``,
``run_protocol``, ``attach``, ``steer``, ...) and the main classes (the probes, ``Activations``, the
two configs). Result and record types live in their submodules (``lp.train.ProtocolResult``,
``lp.viz.ReportEntry``, ``lensprobe.activations.CaptureStats``, ...).

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
    "load_dataset": "lensprobe.data",
    "capture": "lensprobe.capturing",
    "Activations": "lensprobe.activations",
    "AttentionProbe": "lensprobe.probes",
    "MeanProbe": "lensprobe.probes",
    "LastTokenProbe": "lensprobe.probes",
    "MaxProbe": "lensprobe.probes",
    "load_probe": "lensprobe.probes",
    "TrainConfig": "lensprobe.train",
    "ProtocolConfig": "lensprobe.train",
    "fit": "lensprobe.train",
    "run_protocol": "lensprobe.train",
    "ProbeClassifier": "lensprobe.train.estimator",
    "ProbeClassifierCV": "lensprobe.train.estimator",
    "sweep": "lensprobe.experiment",
    "load_results": "lensprobe.grid",
    "choose_layer": "lensprobe.train",
    "compare": "lensprobe.train",
    "attention_entropy": "lensprobe.analysis",
    "top_examples": "lensprobe.analysis",
    "report": "lensprobe.viz",
    "attach": "lensprobe.hooks",
    "monitor": "lensprobe.monitoring",
    "edit_activations": "lensprobe.hooks",
    "steer": "lensprobe.steering",
    "ablate": "lensprobe.steering",
    "class_directions": "lensprobe.steering",
    "patch_positions": "lensprobe.patching",
    "LensprobeError": "lensprobe.errors",
}

# public submodules reachable as attributes (lp.viz.attention_widget(...))
_SUBMODULES: tuple[str, ...] = (
    "viz",
    "data",
    "analysis",
    "errors",
    "metrics",
    "probes",
    "storage",
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
    from lensprobe import analysis, data, errors, metrics, probes, storage, train, viz
    from lensprobe.activations import Activations
    from lensprobe.analysis import attention_entropy, top_examples
    from lensprobe.capturing import capture
    from lensprobe.data import load_dataset
    from lensprobe.errors import LensprobeError
    from lensprobe.experiment import sweep
    from lensprobe.grid import load_results
    from lensprobe.hooks import attach, edit_activations
    from lensprobe.models import load_model
    from lensprobe.monitoring import monitor
    from lensprobe.patching import patch_positions
    from lensprobe.probes import (
        AttentionProbe,
        LastTokenProbe,
        MaxProbe,
        MeanProbe,
        load_probe,
    )
    from lensprobe.steering import ablate, class_directions, steer
    from lensprobe.train import (
        ProtocolConfig,
        TrainConfig,
        choose_layer,
        compare,
        fit,
        run_protocol,
    )
    from lensprobe.train.estimator import ProbeClassifier, ProbeClassifierCV
    from lensprobe.viz import report
