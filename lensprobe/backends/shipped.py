"""What a capture runs where a remote model runs (nnsight's NDIF service): torch only.

A remote trace ships its block to a server that has torch and nnsight but not lensprobe, so the
functions the block calls are sent by value (:func:`register`): this module and
:mod:`lensprobe.pooling` import nothing else of lensprobe. The block reads each hooked site,
rounds it to the store's dtype and, for a reduced capture, pools it there
(:func:`~lensprobe.pooling.pool_all`, the one pooling every path uses), so only what the store
keeps crosses the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from lensprobe.pooling import pool_all, token_norms

__all__ = ["reduce_site", "register", "site_tensor"]


def site_tensor(value: Any, side: str) -> Tensor:
    """The activation at a site.

    A module's output (``side="output"``: the tensor, or the first of a tuple or a
    ``ModelOutput``), or the tensor it was called with, from its ``(args, kwargs)`` inputs
    (argument 0, ``hidden_states``, or the first tensor keyword).
    """
    if side == "input":
        args, kwargs = value
        if args and isinstance(args[0], Tensor):
            return args[0]
        if isinstance(kwargs.get("hidden_states"), Tensor):
            return kwargs["hidden_states"]
        for v in kwargs.values():
            if isinstance(v, Tensor):
                return v
        raise TypeError("the module was called without a tensor input to read")
    if isinstance(value, (tuple, list)):
        value = value[0]
    elif hasattr(value, "to_tuple"):
        value = value.to_tuple()[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"the hooked module returned a {type(value).__name__}, not a tensor")
    return value


def reduce_site(
    value: Any,
    side: str,
    pool: Bool[Tensor, "batch pos"],
    kinds: Sequence[str],
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """What a capture keeps of one site of a batch, computed where the model runs.

    Every position in ``dtype`` (``kinds`` empty), else the pooled vectors of the ``pool`` tokens
    per kind and the norm of every position, as a local capture computes them.
    """
    x = site_tensor(value, side).to(dtype)
    if not kinds:
        return {"values": x}
    return {"features": pool_all(x, pool, kinds), "norms": token_norms(x)}


def register() -> None:
    """Have nnsight send this module's and :mod:`lensprobe.pooling`'s functions by value."""
    import nnsight

    from lensprobe import pooling

    nnsight.register(pooling)
    nnsight.register(__import__(__name__, fromlist=["_"]))
