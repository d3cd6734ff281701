"""Model backends: where a hook name reads and edits on TransformerLens, nnsight and Hugging Face models.

:func:`detect_backend` tells which adapter runs a model; each adapter module (:mod:`.hf`,
:mod:`.nnsight`, :mod:`.transformer_lens`) opens a :class:`~.hf.Runner` for a list of hook names,
which :mod:`.names` translates to module paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

from torch import nn

from lensprobe.backends import hf as hf_backend
from lensprobe.backends import nnsight as nnsight_backend
from lensprobe.backends import transformer_lens as tl_backend
from lensprobe.backends.hf import Runner
from lensprobe.backends.names import resolve_sites
from lensprobe.models import display_name

__all__ = ["BackendName", "check_hooks", "detect_backend", "hf_module", "model_id", "open_runner"]

BackendName = Literal["transformer_lens", "nnsight", "hf"]


def detect_backend(model: Any) -> BackendName:
    """Which backend runs ``model``.

    Raises:
        TypeError: For a model no backend understands (the message says what to pass).
    """
    if nnsight_backend.is_nnsight_model(model):
        return "nnsight"
    if tl_backend.is_transformer_lens_model(model):
        return "transformer_lens"
    if isinstance(model, nn.Module) and hasattr(getattr(model, "config", None), "model_type"):
        return "hf"
    raise TypeError(
        f"capture() cannot run a {type(model).__module__}.{type(model).__name__}: pass a "
        "TransformerLens TransformerBridge (or HookedRootModule), an nnsight model "
        "(nnsight.NNsight(hf_model) or TransformersModel) or a Hugging Face PreTrainedModel, "
        "e.g. lensprobe.load_model('gemma-3-270m', backend='hf')"
    )


def hf_module(model: Any, backend: BackendName) -> nn.Module | None:
    """The Hugging Face module under ``model`` (None for a TransformerLens model without one)."""
    if backend == "nnsight":
        return nnsight_backend.underlying_module(model)
    if backend == "transformer_lens":
        return tl_backend.underlying_hf(model)
    return model


def model_id(model: Any, backend: BackendName) -> str:
    """A short model name for metadata (the checkpoint's name, else the class name)."""
    module = hf_module(model, backend)
    path = getattr(getattr(module, "config", None), "name_or_path", "") or ""
    if not path and backend == "transformer_lens":
        path = getattr(getattr(model, "cfg", None), "model_name", "") or ""
    return display_name(str(path)) or type(module or model).__name__


def open_runner(
    model: Any, backend: BackendName, hooks: Sequence[str]
) -> AbstractContextManager[Runner]:
    """A runner that reads ``hooks`` from ``model`` through its backend's adapter."""
    if backend == "nnsight":
        return nnsight_backend.open_runner(model, hooks)
    if backend == "transformer_lens":
        return tl_backend.open_runner(model, hooks)
    return hf_backend.open_runner(model, hooks)


def check_hooks(model: Any, backend: BackendName, hooks: Sequence[str]) -> None:
    """Raise :class:`~.names.UnknownHookError` (with the nearest names) for a hook ``model`` lacks."""
    if backend == "transformer_lens":
        tl_backend.check_hooks(model, hooks)
        return
    module = hf_module(model, backend)
    assert module is not None
    resolve_sites(module, hooks)
