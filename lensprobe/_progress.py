"""Progress bars: on where someone watches (a terminal, a notebook), off in scripts and logs.

``progress=None`` (the default of every long call) means :func:`wanted`: on in a Jupyter kernel or
when stderr is a terminal, off otherwise (a script piped to a file, CI). :func:`progress_bar` is
tqdm's notebook widget in Jupyter when ``ipywidgets`` is installed, else its text bar (never the
"IProgress not found" warning).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["progress_bar", "wanted"]


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    return type(shell).__name__ == "ZMQInteractiveShell"


def wanted(progress: bool | str | None) -> bool:
    """Whether to show progress: as asked, or with None where someone watches."""
    if progress is None:
        return _in_notebook() or bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar (``kwargs`` as tqdm takes them): the notebook widget where it can draw."""
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(**kwargs)
