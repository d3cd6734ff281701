"""A probe on disk, written and read in one place: ``config.json`` (with a digest) and safetensors.

:func:`save_probe` writes the directory (``Probe.save`` calls it) and :func:`load_probe` reads it
back, checking every config field and that the weights and the config were saved together. No
pickle anywhere.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING as dataclasses_missing
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lensprobe.errors import MissingFileError, ProbeFileError
from lensprobe.probes.config import ProbeConfig, build_probe, probe_class

if TYPE_CHECKING:
    from lensprobe.probes.base import Probe


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DIGEST_KEY = "digest"
"""Key of ``config.json`` holding :func:`probe_digest` of the config and the weights saved with it."""


def save_probe(probe: Probe, path: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of ``probe`` into directory ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    config = json.loads(json.dumps(probe.config.to_dict()))  # exactly what loading reads
    config[DIGEST_KEY] = probe_digest(config, tensors)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def probe_digest(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 that ties a probe's weights to its config (saved in ``config.json``).

    Any change to a config field (``position``, ``exclude_bos``, ...) or to any weight byte, or
    weights taken from another probe of the same shapes, gives another digest.

    Args:
        config: :meth:`ProbeConfig.to_dict` output (a ``digest`` key in it is ignored).
        tensors: The state dict as saved.

    Returns:
        The hex digest.
    """
    import hashlib

    body = {k: v for k, v in config.items() if k != DIGEST_KEY}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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


def _read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of ``path``'s weights file (its shapes already checked: :func:`_check_header`)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path / WEIGHTS_FILE))
    except Exception as err:  # safetensors raises its own error type
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> ProbeFileError:
    return ProbeFileError(
        f"{path / WEIGHTS_FILE} is not a readable safetensors file ({err}); retrain the "
        "probe or restore the directory from a copy"
    )


def _check_header(path: Path, config: ProbeConfig) -> None:
    """Compare the shapes the config implies with the weights file's header (nothing allocated).

    A config edited to ``d_model: 1e10`` would otherwise build a probe of tens of gigabytes
    before its weights are compared with it.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type
        raise _unreadable(path, err) from None
    expected = probe_class(config.kind).param_shapes(config)
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


def _check_digest(
    path: Path, config: ProbeConfig, tensors: Mapping[str, Tensor], digest: str | None
) -> None:
    """Refuse weights and a config that were not saved together, or a config without a digest."""
    if digest is None:
        raise ProbeFileError(
            f"{path / CONFIG_FILE} has no {DIGEST_KEY!r}: its weights cannot be checked against "
            "its config; save the probe again with probe.save(path)"
        )
    if digest != probe_digest(config.to_dict(), tensors):
        raise ProbeFileError(
            f"{path}: the weights and {CONFIG_FILE} were not saved together (their digest "
            "does not match: a config field was edited, or the weights were changed or copied "
            "from another probe); retrain the probe or restore the directory from a copy"
        )


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
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise MissingFileError(
                f"{path / name} not found: a saved probe is a directory with {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}, written by probe.save(path)"
            )
    config, digest = _read_config(path)
    _check_header(path, config)  # before the probe's parameters are allocated
    probe = build_probe(config)
    tensors = _read_weights(path)
    _check_digest(path, config, tensors, digest)
    probe.load_state_dict(tensors)
    probe.eval()
    return probe.to(device) if device is not None else probe


__all__ = [
    "CONFIG_FILE",
    "DIGEST_KEY",
    "WEIGHTS_FILE",
    "load_probe",
    "probe_digest",
    "save_probe",
]
