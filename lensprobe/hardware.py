"""What the machine is fast at (bfloat16 products) and how it keeps memory (freed buffers).

CUDA GPUs with bf16 support, and CPUs with AMX (``amx_bf16``) or AVX-512 BF16 instructions, run
a bfloat16 matrix product several times faster than a float32 one (about 6x for a 2048^2 product
on one core of an AMX CPU). Elsewhere bfloat16 is emulated and slower, so lensprobe computes in
float32 there.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["bf16_is_fast", "return_freed_memory", "torchrun_place"]

_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def torchrun_place() -> tuple[int, int]:
    """``(rank, world size)`` as torchrun sets them for each process it starts; ``(0, 1)`` alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matrix products on ``device`` are faster than float32 ones."""
    import torch  # here, not at import: the command line reads torchrun_place without torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


@functools.cache
def _cpu_has_bf16() -> bool:
    """AMX or AVX-512 BF16 on this CPU (torch's own check, else ``/proc/cpuinfo``)."""
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags.split() for flag in _CPU_FLAGS)


def return_freed_memory() -> bool:
    """Hand the memory glibc keeps after frees back to the OS (``malloc_trim``), on Linux.

    glibc raises its mmap threshold to the largest block freed (up to 32 MB), so a loop that
    allocates and frees row blocks of varying size (streaming a store, padded minibatches) keeps
    the freed memory in its heap: an attention-1 protocol on a 2 GB store under a 0.5 GB budget
    held 2.80 GB of anonymous memory at its peak without trimming, 0.62 GB with it, at the same
    speed (benchmarks/scale_train.py). Streamed training calls this after each block of rows and
    every 32 padded minibatches; it does nothing off glibc.

    Returns:
        Whether memory was handed back.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim() -> Any:
    """Glibc's ``malloc_trim``, or None."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
