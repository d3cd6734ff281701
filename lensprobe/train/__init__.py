"""Training probes on tensors: fit one, sweep many as one batched model, run the protocol."""

from __future__ import annotations

from lensprobe.train.compare import Comparison, compare
from lensprobe.train.config import ProtocolConfig, TrainConfig
from lensprobe.train.fit import fit, fit_members, predict_members
from lensprobe.train.members import FitResult, Members
from lensprobe.train.protocol import run_protocol, run_sweep
from lensprobe.train.result import ProtocolResult, SeedRun
from lensprobe.train.selection import LayerChoice, choose_layer, choose_layers
from lensprobe.train.split import stratified_folds, stratified_split

__all__ = [
    "Comparison",
    "FitResult",
    "LayerChoice",
    "Members",
    "ProtocolConfig",
    "ProtocolResult",
    "SeedRun",
    "TrainConfig",
    "choose_layer",
    "choose_layers",
    "compare",
    "fit",
    "fit_members",
    "predict_members",
    "run_protocol",
    "run_sweep",
    "stratified_folds",
    "stratified_split",
]
