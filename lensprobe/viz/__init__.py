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
    monitor_widget,
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
    "monitor_widget",
    "page",
    "render_report",
    "report",
    "token_values_props",
    "top_examples_props",
    "top_examples_widget",
]
