"""Probes: one ``forward(x, mask) -> logits (batch, n_outputs)`` contract for every kind."""

from __future__ import annotations

import json
import logging
import types
import typing
from dataclasses import MISSING as dataclasses_missing
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from lensprobe.errors import ProbeFileError
from lensprobe.probes.attention import AttentionProbe
from lensprobe.probes.base import (
    CONFIG_FILE,
    DIGEST_KEY,
    PROBE_KINDS,
    WEIGHTS_FILE,
    Probe,
    ProbeConfig,
    ProbeKind,
    probe_digest,
)
from lensprobe.probes.pooled import LastTokenProbe, MaxProbe, MeanProbe, PooledProbe

logger = logging.getLogger(__name__)

PROBE_CLASSES: dict[str, type[Probe]] = {
    "attention": AttentionProbe,
    "mean": MeanProbe,
    "last": LastTokenProbe,
    "max": MaxProbe,
}


def probe_class(kind: str) -> type[Probe]:
    """The probe class for a kind name."""
    try:
        return PROBE_CLASSES[kind]
    except KeyError:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {PROBE_KINDS}") from None


def build_probe(config: ProbeConfig) -> Probe:
    """A freshly initialised probe (member seed 0) for a config."""
    return probe_class(config.kind)(config.d_model, config=config)


def _field_problem(name: str, value: Any) -> str | None:
    """Why ``value`` does not fit a ProbeConfig field's annotation (None when it fits)."""
    hints = typing.get_type_hints(ProbeConfig)
    kind = hints[name]
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        args, origin = typing.get_args(kind), typing.get_origin(kind)
    if origin is typing.Literal:
        return None if value in args else f"must be one of {list(args)}, got {value!r}"
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    if origin is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else f"must be a list of strings, got {value!r}"
    if origin is dict or kind is dict:
        return None if isinstance(value, dict) else f"must be an object, got {value!r}"
    return None  # pragma: no cover - every field is covered above


def _read_config(path: Path) -> tuple[ProbeConfig, str | None]:
    """The config saved in ``path`` and its recorded digest, every field checked."""
    file = path / CONFIG_FILE
    fix = "retrain the probe or restore the directory from a copy"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProbeFileError(f"{file} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise ProbeFileError(f"{file} holds a JSON {type(data).__name__}, not an object; {fix}")
    digest = data.pop(DIGEST_KEY, None)
    known = {f.name: f for f in fields(ProbeConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ProbeFileError(f"{file}: unknown probe config keys {unknown}; known: {sorted(known)}")
    for name, f in known.items():
        required = f.default is f.default_factory is dataclasses_missing
        if name not in data:
            if required:
                raise ProbeFileError(f"{file}: the field {name!r} is missing; {fix}")
            continue
        problem = _field_problem(name, data[name])
        if problem:
            raise ProbeFileError(f"{file}: the field {name!r} {problem}; {fix}")
    try:
        config = ProbeConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ProbeFileError(f"{file}: {err}; {fix}") from None
    if digest is not None and not isinstance(digest, str):
        raise ProbeFileError(f"{file}: the field {DIGEST_KEY!r} must be a string; {fix}")
    return config, digest


def load_probe(path: str | Path, *, device: str | torch.device | None = None) -> Probe:
    """Load a probe saved with :meth:`Probe.save` (no pickle: JSON + safetensors).

    Every field of ``config.json`` is checked, and the digest saved with the probe must match
    the config and the weights (a probe saved before digests existed loads with a warning).

    Raises:
        FileNotFoundError: ``path`` lacks ``config.json`` or ``model.safetensors``.
        ProbeFileError: A malformed config (the message names the field), an unreadable weights
            file, weights of other shapes than the config says, or weights and config that were
            not saved together (a ``ValueError``).
    """
    from safetensors.torch import load_file

    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} not found: a saved probe is a directory with {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}, written by probe.save(path)"
            )
    config, digest = _read_config(path)
    probe = build_probe(config)
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except Exception as err:  # safetensors raises its own error type
        raise ProbeFileError(
            f"{path / WEIGHTS_FILE} is not a readable safetensors file ({err}); retrain the "
            "probe or restore the directory from a copy"
        ) from None
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing {k} {s}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected {k} {s}" for k, s in found.items() if k not in expected]
    problems += [
        f"{k}: file has {found[k]}, config {config.kind} probe (d_model={config.d_model}, "
        f"n_heads={config.n_heads}, n_outputs={config.n_outputs}) needs {s}"
        for k, s in expected.items()
        if k in found and found[k] != s
    ]
    if problems:
        raise ProbeFileError(f"weights in {path} do not match its config: " + "; ".join(problems))
    if digest is None:
        logger.warning(
            "%s has no digest (saved by an older lensprobe): its weights cannot be checked "
            "against its config; save it again to add one",
            path,
        )
    elif digest != probe_digest(config.to_dict(), tensors):
        raise ProbeFileError(
            f"{path}: the weights and {CONFIG_FILE} were not saved together (their digest "
            "does not match: a config field was edited, or the weights were changed or copied "
            "from another probe); retrain the probe or restore the directory from a copy"
        )
    probe.load_state_dict(tensors)
    probe.eval()
    return probe.to(device) if device is not None else probe


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
