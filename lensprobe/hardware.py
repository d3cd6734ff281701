"""What the hardware is fast at: where bfloat16 matrix products beat float32 ones.

CUDA GPUs with bf16 support, and CPUs with AMX (``amx_bf16``) or AVX-512 BF16 instructions, run
a bfloat16 matrix product several times faster than a float32 one (about 6x for a 2048^2 product
on one core of an AMX CPU). Elsewhere bfloat16 is emulated and slower, so lensprobe computes in
float32 there.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["bf16_is_fast"]

_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matrix products on ``device`` are faster than float32 ones."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


@functools.cache
def _cpu_has_bf16() -> bool:
    """AMX or AVX-512 BF16 on this CPU (torch's own check, else ``/proc/cpuinfo``)."""
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
