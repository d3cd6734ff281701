"""Views of what a probe reads: circuitsvis widgets and the self-contained HTML report.

Widgets render inline in Jupyter and offline in any browser (the circuitsvis JavaScript is
inlined, never fetched); each is named ``<what it draws>_widget`` and its data comes from a pure
``*_props`` function::

    lp.viz.attention_widget(probe, acts, index=0)       # one example, every head switchable
    lp.viz.contributions_widget(probe, acts, index=0)   # each token's share of each class score
    lp.viz.top_examples_widget(lp.top_examples(probe, acts), view="head")
    lp.viz.entropy_widget(lp.attention_entropy(probe, acts))

The report (``lp.viz.report``) puts the metrics of a protocol run, the entropy of every head and
the top examples on one page.
"""

from __future__ import annotations

import warnings
from typing import Any

from lensprobe._deprecated import moved
from lensprobe.viz.entries import ReportEntry
from lensprobe.viz.props import (
    attention_props,
    entropy_props,
    token_values_props,
    top_examples_props,
)
from lensprobe.viz.rendering import Widget, page
from lensprobe.viz.reporting import render_report, report
from lensprobe.viz.widgets import (
    attention_widget,
    contributions_widget,
    entropy_widget,
    top_examples_widget,
)

__all__ = [
    "ReportEntry",
    "Widget",
    "attention_props",
    "attention_widget",
    "contributions_widget",
    "entropy_props",
    "entropy_widget",
    "page",
    "render_report",
    "report",
    "token_values_props",
    "top_examples_props",
    "top_examples_widget",
]

_RENAMED: dict[str, str] = {
    "probe_attention": "attention_widget",
    "token_contributions": "contributions_widget",
    "top_examples": "top_examples_widget",
    "entropy": "entropy_widget",
}
"""Widget names of lensprobe 0.1 -> their names now (the old ones go in the next release)."""


_MOVED: dict[str, str] = {
    "circuitsvis_js": "lensprobe.viz.rendering",
    "script_json": "lensprobe.viz.rendering",
    "entropy_html": "lensprobe.viz.widgets",
}
"""Helpers lensprobe 0.1 listed in ``lensprobe.viz`` -> the module that holds them now."""


def __getattr__(name: str) -> Any:
    """0.1's names of ``lensprobe.viz``, with a DeprecationWarning naming the new one."""
    new = _RENAMED.get(name)
    if new is not None:
        warnings.warn(
            f"lp.viz.{name} is deprecated and will be removed in the next release; use "
            f"lp.viz.{new} (the same widget)",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'lensprobe.viz' has no attribute {name!r}")
    return moved("lensprobe.viz", name, home)
