"""Reading frozen dataclass records back from the JSON dicts their ``to_dict`` wrote."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from lensprobe.errors import InputError

__all__ = ["check_keys"]


def check_keys(cls: type, d: Mapping[str, Any], what: str) -> None:
    """Raise a ``ValueError`` naming the keys of ``d`` that are no field of dataclass ``cls``.

    Args:
        cls: The dataclass ``d`` should rebuild.
        d: A dict read back from ``to_dict`` output.
        what: How the error names the keys, e.g. ``"train config keys"``.
    """
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise InputError(f"unknown {what} {sorted(unknown)}; known: {sorted(known)}")
