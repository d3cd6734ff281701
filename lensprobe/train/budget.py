"""The memory a training run will need, checked against a budget before any compute.

:func:`estimate_training_memory` adds up what the protocol holds at its peak: a float64 norm
per token of streamed ``Activations`` (never padded whole: pooled probes pool them in one pass,
attention minibatches are padded from the storage as they are read), the pooled features of a
pooled probe in the fit's dtype, and the larger of the row chunks read for scaling and pooling and
the largest minibatch with what autograd keeps of it for every member. A padded tensor passed in
is used as it is and not counted. :func:`check_budget` compares that with the budget
(``max_memory``: bytes or a size such as ``"4GB"``; default :data:`DEFAULT_FRACTION` of the
memory available when the run starts) and raises :class:`~lensprobe.errors.MemoryBudgetError`
naming the largest part and the fix, so a run that cannot fit stops at once instead of being
killed mid-run.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from lensprobe.errors import InputError, MemoryBudgetError

__all__ = [
    "DEFAULT_FRACTION",
    "MemoryEstimate",
    "available_memory",
    "check_budget",
    "estimate_training_memory",
    "format_bytes",
    "parse_memory",
]

DEFAULT_FRACTION = 0.8
"""Share of the memory available at the start of a run that training may use by default."""

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_memory(value: int | float | str) -> int:
    """Bytes of a size: ``4_000_000_000``, ``"4GB"``, ``"512 MiB"``, ``"1.5G"`` (G = GB).

    Raises:
        InputError: Not a positive size.
    """
    if isinstance(value, bool):
        raise InputError(f"max_memory={value!r} is not a size; pass bytes or e.g. '4GB'")
    if isinstance(value, int | float):
        size = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        unit = (m.group(2).upper() if m else "") or ""
        unit = unit + "B" if unit in ("K", "M", "G", "T") else unit
        if m is None or unit not in _UNITS:
            raise InputError(
                f"max_memory={value!r} is not a size; pass bytes or a number with a unit "
                "(KB, MB, GB, TB, KiB, MiB, GiB), e.g. '4GB'"
            )
        size = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise InputError(f"max_memory={value!r} must be a positive size, e.g. '4GB'")
    return int(size)


def available_memory() -> int:
    """Bytes of memory available now: Linux ``MemAvailable``, else psutil's, else physical."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with the locked install
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_bytes(n: int | float) -> str:
    """``23.6 GB``, ``512.0 MB``, ``12.0 KB`` (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryEstimate:
    """What a training run holds at its peak, in bytes, part by part."""

    parts: dict[str, int]
    """Named parts, e.g. ``pooled features (2000 x 640)``."""

    @property
    def total(self) -> int:
        """Bytes of all parts together."""
        return sum(self.parts.values())

    def largest(self) -> tuple[str, int]:
        """The largest part and its size."""
        return max(self.parts.items(), key=lambda kv: kv[1])

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items() if v)
        return f"{format_bytes(self.total)} ({parts})"


def estimate_training_memory(
    *,
    n: int,
    pos: int,
    d_model: int,
    pooled: bool,
    lbfgs: bool,
    members: int,
    batch_size: int,
    n_heads: int,
    n_outputs: int,
    streamed_tokens: int = 0,
    eval_batch_size: int = 256,
    hooks: int = 1,
    per_head_token: int | None = None,
) -> MemoryEstimate:
    """The peak memory of one protocol run on ``n`` sequences padded to ``pos`` tokens.

    Args:
        n: Sequences.
        pos: Longest sequence (the padded length).
        d_model: Width of the activations.
        pooled: A pooled probe (mean / last / max): features ``n x d_model``, no token batches.
        lbfgs: Solved by L-BFGS (float64 features and full-batch logits).
        members: Members trained together (weight decays x (folds + refit)).
        batch_size: AdamW minibatch rows.
        n_heads: Attention heads (1 for pooled probes).
        n_outputs: Logits per row.
        streamed_tokens: Tokens of ragged ``Activations``, which are streamed, never padded
            whole (0: a padded tensor, used as it is).
        eval_batch_size: Rows per forward when scoring early-stopping and test rows.
        hooks: Hooks whose members train in one fit (``members`` counts all of them): a
            training step holds each hook's minibatch until its backward.
        per_head_token: Numbers a forward keeps per token and head (default ``2 + n_outputs``,
            an attention probe's; see :meth:`~lensprobe.probes.base.Probe.floats_per_head_token`).
    """
    parts: dict[str, int] = {}
    if streamed_tokens:
        # a float64 norm per token for the input scale, and a seed's selection of them
        parts[f"token norms ({streamed_tokens} tokens)"] = 17 * streamed_tokens
    # Row chunks read for the input scale and for pooling (float64 norms, float32 copies); they
    # are freed before training, so only the larger of them and the training batch counts.
    chunk = min(n, 256) * pos * d_model * 12
    if pooled:
        fit_bytes = 8 if lbfgs else 4
        parts[f"pooled features ({n} x {d_model})"] = n * d_model * (4 + fit_bytes)
        parts["logits and gradients of every member"] = 4 * members * n * n_outputs * fit_bytes
        parts[f"row chunks read ({min(n, 256)} x {pos} tokens)"] = chunk
    else:
        rows = min(n, max(batch_size, eval_batch_size))
        # a float32 read of the rows (converted, masked), kept by autograd, and every member's
        # per-token scores and values of each head (forward and backward); a training step
        # keeps every hook's read (scoring reads one hook at a time)
        read_rows = min(n, max(batch_size * hooks, eval_batch_size))
        per_head = 2 + n_outputs if per_head_token is None else per_head_token
        per_token = 3 * members * n_heads * per_head
        batch = 4 * pos * (read_rows * 3 * d_model + rows * per_token)
        name = f"largest token batch ({rows} x {pos} tokens, {members} members)"
        if chunk > batch:
            name, batch = f"row chunks read ({min(n, 256)} x {pos} tokens)", chunk
        parts[name] = batch
    return MemoryEstimate(parts)


def check_budget(estimate: MemoryEstimate, max_memory: int | float | str | None) -> int:
    """Raise before any compute when ``estimate`` exceeds the budget; return the budget in bytes.

    Args:
        estimate: From :func:`estimate_training_memory`.
        max_memory: Bytes or a size (``"4GB"``); None: :data:`DEFAULT_FRACTION` of
            :func:`available_memory`.

    Raises:
        MemoryBudgetError: The run would need more than the budget.
    """
    if max_memory is None:
        available = available_memory()
        budget = int(DEFAULT_FRACTION * available)
        source = f"{DEFAULT_FRACTION:.0%} of the {format_bytes(available)} available"
    else:
        budget = parse_memory(max_memory)
        source = "max_memory"
    if estimate.total > budget:
        part, _ = estimate.largest()
        raise MemoryBudgetError(
            f"training would need about {estimate} but the budget is {format_bytes(budget)} "
            f"({source}); the largest part is the {part}: subsample the texts, capture fewer "
            "tokens (max_length), or raise max_memory (--max-memory) if the machine has it"
        )
    return budget
