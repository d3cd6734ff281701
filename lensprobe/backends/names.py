"""TransformerLens hook names translated to Hugging Face module sites, one table per family.

A *site* is where a hook reads: the input or the output of one module of the Hugging Face model.
Each architecture family has one declarative table mapping TransformerLens hook names (with a
``{layer}`` placeholder) to a module path (relative to the decoder *backbone*, the module holding
the layer list) and which side of the module to read. The tables follow what TransformerLens 4's
``TransformerBridge`` reads at the same names, which the tests check.

Besides table names, any module path of the model (``model.layers.9``) is accepted: it reads that
module's output (the first element when the module returns a tuple).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lensprobe.errors import UnknownHookError

__all__ = [
    "TABLES",
    "NameTable",
    "Site",
    "UnknownHookError",
    "nearest_names",
    "resolve_sites",
    "table_for",
    "unknown_hook",
]

Side = Literal["input", "output"]


@dataclass(frozen=True)
class Site:
    """Where one hook reads in a Hugging Face model."""

    path: str
    """Module path from the model root, as ``model.get_submodule`` takes it."""

    side: Side
    """Read the module's first input (``"input"``) or its output (``"output"``)."""


@dataclass(frozen=True)
class NameTable:
    """Hook names of one architecture family."""

    family: str
    """Family name (for messages)."""

    model_types: tuple[str, ...]
    """``config.model_type`` values the table serves."""

    backbones: tuple[str, ...]
    """Candidate paths of the module that holds the layers, tried in order (``""`` is the root)."""

    layers: str
    """Path of the layer list, relative to the backbone."""

    sites: Mapping[str, tuple[str, Side]]
    """Hook name pattern -> (module path pattern relative to the backbone, side)."""


def _llama_style(attn: str, mid: str, mid_side: Side, mlp: str) -> dict[str, tuple[str, Side]]:
    return {
        "hook_embed": ("embed_tokens", "output"),
        "blocks.{layer}.hook_resid_pre": ("layers.{layer}", "input"),
        "blocks.{layer}.hook_in": ("layers.{layer}", "input"),
        "blocks.{layer}.hook_attn_out": (attn, "output"),
        "blocks.{layer}.hook_resid_mid": (mid, mid_side),
        "blocks.{layer}.hook_mlp_out": (mlp, "output"),
        "blocks.{layer}.hook_resid_post": ("layers.{layer}", "output"),
        "blocks.{layer}.hook_out": ("layers.{layer}", "output"),
        "ln_final.hook_normalized": ("norm", "output"),
    }


# Llama-style blocks: resid_mid is what enters the second norm; attn / mlp outputs are added to
# the stream as they are.
_PRE_NORM = _llama_style(
    attn="layers.{layer}.self_attn",
    mid="layers.{layer}.post_attention_layernorm",
    mid_side="input",
    mlp="layers.{layer}.mlp",
)

# Gemma 2 / 3 blocks normalise each sublayer's output again before adding it ("sandwich" norms):
# attn_out / mlp_out are those norms' outputs, resid_mid enters the pre-feed-forward norm.
_SANDWICH = _llama_style(
    attn="layers.{layer}.post_attention_layernorm",
    mid="layers.{layer}.pre_feedforward_layernorm",
    mid_side="input",
    mlp="layers.{layer}.post_feedforward_layernorm",
)

GEMMA = NameTable("gemma", ("gemma",), ("model", ""), "layers", _PRE_NORM)
GEMMA2 = NameTable("gemma2", ("gemma2",), ("model", ""), "layers", _SANDWICH)
GEMMA3 = NameTable(
    "gemma3",
    ("gemma3_text", "gemma3"),
    ("model", "model.language_model", "language_model", ""),
    "layers",
    _SANDWICH,
)
LLAMA = NameTable("llama", ("llama", "mistral"), ("model", ""), "layers", _PRE_NORM)
QWEN2 = NameTable("qwen2", ("qwen2", "qwen3"), ("model", ""), "layers", _PRE_NORM)
GPT2 = NameTable(
    "gpt2",
    ("gpt2",),
    ("transformer", ""),
    "h",
    {
        "hook_embed": ("wte", "output"),
        "hook_pos_embed": ("wpe", "output"),
        "blocks.{layer}.hook_resid_pre": ("h.{layer}", "input"),
        "blocks.{layer}.hook_in": ("h.{layer}", "input"),
        "blocks.{layer}.hook_attn_out": ("h.{layer}.attn", "output"),
        "blocks.{layer}.hook_resid_mid": ("h.{layer}.ln_2", "input"),
        "blocks.{layer}.hook_mlp_out": ("h.{layer}.mlp", "output"),
        "blocks.{layer}.hook_resid_post": ("h.{layer}", "output"),
        "blocks.{layer}.hook_out": ("h.{layer}", "output"),
        "ln_final.hook_normalized": ("ln_f", "output"),
    },
)

TABLES: tuple[NameTable, ...] = (GEMMA, GEMMA2, GEMMA3, LLAMA, QWEN2, GPT2)
"""Every known family; :func:`table_for` picks one by ``config.model_type``."""


def table_for(model: nn.Module) -> NameTable | None:
    """The name table of a Hugging Face model's family, or ``None`` if unknown."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for table in TABLES:
        if model_type in table.model_types:
            return table
    return None


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _backbone(model: nn.Module, table: NameTable) -> str | None:
    for prefix in table.backbones:
        if _has(model, f"{prefix}.{table.layers}" if prefix else table.layers):
            return prefix
    return None


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _table_names(model: nn.Module) -> dict[str, Site]:
    """Every table hook name the model has, expanded over its layers."""
    table = table_for(model)
    if table is None:
        return {}
    prefix = _backbone(model, table)
    if prefix is None:
        return {}
    n_layers = len(model.get_submodule(_join(prefix, table.layers)))  # type: ignore[arg-type]
    out: dict[str, Site] = {}
    for pattern, (path, side) in table.sites.items():
        layers = range(n_layers) if "{layer}" in pattern else [0]
        for i in layers:
            site = Site(_join(prefix, path.format(layer=i)), side)
            if _has(model, site.path):
                out[pattern.format(layer=i)] = site
    return out


def nearest_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name`` (for error messages)."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if close:
        return close
    # Fall back to names sharing the layer number, then to any few names.
    digits = re.findall(r"\d+", name)
    same_layer = [c for c in candidates if digits and re.findall(r"\d+", c)[:1] == digits[:1]]
    return (same_layer or list(candidates))[:n]


def unknown_hook(hook: str, owner: str, candidates: Sequence[str], where: str) -> UnknownHookError:
    """The one error for a hook name a model lacks, with the nearest valid names.

    Args:
        hook: The name asked for.
        owner: What lacks it (``"Gemma3ForCausalLM (the gemma3 table)"``).
        candidates: Every valid name (the nearest few are listed).
        where: Where to find all valid names (``"all names: model.hook_dict"``).
    """
    return UnknownHookError(
        f"unknown hook name {hook!r} for {owner}; nearest valid names: "
        f"{nearest_names(hook, candidates)} ({where})"
    )


def _unknown_site(model: nn.Module, hook: str, known: Mapping[str, Site]) -> UnknownHookError:
    table = table_for(model)
    if table is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        owner = f"{type(model).__name__} (no name table for model_type {model_type!r})"
    else:
        owner = f"{type(model).__name__} (the {table.family} table)"
    modules = [n for n, _ in model.named_modules() if n]
    where = "module paths: model.named_modules()"
    if table is not None:
        where = f"{table.family} table names, or {where}"
    return unknown_hook(hook, owner, list(known) + modules, where)


def resolve_sites(model: nn.Module, hooks: Sequence[str]) -> dict[str, Site]:
    """Translate hook names (table names or module paths) into sites of ``model``.

    Args:
        model: The Hugging Face model (the ``nn.Module``, not a wrapper).
        hooks: TransformerLens hook names of the model's family, or module paths.

    Returns:
        Hook name -> site, in the order given.

    Raises:
        UnknownHookError: A name is neither in the family's table nor a module path; the message
            lists the nearest valid names.
    """
    known = _table_names(model)
    out: dict[str, Site] = {}
    for hook in hooks:
        if hook in known:
            out[hook] = known[hook]
        elif hook and _has(model, hook):
            out[hook] = Site(hook, "output")
        else:
            raise _unknown_site(model, hook, known)
    return out
