"""Names of lensprobe 0.1 that moved: they keep working one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

__all__ = ["moved"]


def moved(where: str, name: str, home: str, *, stacklevel: int = 3) -> Any:
    """``home.name``, after a DeprecationWarning saying that ``where.name`` moved there.

    Args:
        where: The module the name was read from, e.g. ``"lensprobe.viz"``.
        name: The name.
        home: The module that holds it now.
        stacklevel: Frames between the caller of ``moved`` and the user's line (3: the module's
            ``__getattr__`` calls ``moved``).
    """
    # ``from package import X`` first probes with hasattr (in importlib's _handle_fromlist), then
    # gets X: warn on the get only, so the user sees one warning, at their line.
    if sys._getframe(2).f_code.co_name != "_handle_fromlist":
        _warn(where, name, home, stacklevel + 1)
    return getattr(importlib.import_module(home), name)


def _warn(where: str, name: str, home: str, stacklevel: int) -> None:
    warnings.warn(
        f"{where}.{name} is deprecated and leaves {where} in the next release; use "
        f"{home}.{name} (from {home} import {name})",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
