"""One self-contained HTML page for a protocol run: metrics, entropy, top examples.

:func:`report` takes one :class:`ReportEntry` per (hook, probe) — built from a
:class:`~lensprobe.train.ProtocolResult` with :meth:`ReportEntry.from_result`, or from saved parts
(a loaded probe, its metrics, the activations and the test rows) — and writes one HTML file:

- a table of the test metrics of every probe at every hook, each with ``n_test`` and its 95%
  interval (t over seeds, or with one seed a bootstrap over the test rows), the CV accuracy of the
  training part beside them, and a figure of them (per layer when there are several hooks), with
  the cross-validation curve over weight decay;
- with several hooks, the layer each probe's CV accuracy picks (never the test accuracy) and the
  test score of the pick; paired comparisons of the probes (:func:`lensprobe.compare`, with
  their verdict) at those layers;
- for each attention probe, the entropy of every head against the uniform baseline (a figure and
  a table), the tokens each head reads most, and its top examples per head and per class;
- for each pooled probe, its top examples per class, tokens coloured by their contribution.

Entropy and examples use the rows given (by default the protocol's test rows). Figures are
matplotlib PNGs embedded as base64; the circuitsvis JavaScript is inlined once. The page loads
nothing from the network and opens from disk in any browser.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lensprobe.analysis import TopExamples, attention_entropy, top_examples
from lensprobe.errors import InputError
from lensprobe.train import Comparison, ProtocolResult
from lensprobe.train.compare import holm
from lensprobe.train.selection import (
    HEADLINE_METRICS,
    LayerChoice,
    choose_layers,
    compare_choices,
    interval,
    splits_text,
)
from lensprobe.viz.entries import ReportEntry
from lensprobe.viz.figures import cv_figure, entropy_figure, layer_number, metrics_figure
from lensprobe.viz.props import entropy_props, top_examples_props
from lensprobe.viz.rendering import Widget, page
from lensprobe.viz.widgets import entropy_html

__all__ = ["render_report", "report"]

logger = logging.getLogger(__name__)

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced acc."),
    ("macro_f1", "macro-F1"),
    ("auroc", "AUROC"),
    ("log_loss", "log loss"),
)
"""The metrics table's columns: (record key, heading); the ``HEADLINE_METRICS`` carry intervals."""


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 80px; line-height: 1.45; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 1px solid #d8dee4; }
h3 { font-size: 15px; margin: 22px 0 6px; color: #333; }
.sub { color: #57606a; font-size: 14px; margin-bottom: 14px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 13px; color: #444; }
.facts b { color: #1f2328; }
table.metrics { border-collapse: collapse; font-size: 13px; margin: 8px 0 4px; }
table.metrics th, table.metrics td { padding: 5px 11px; border-bottom: 1px solid #e3e6ea;
       text-align: right; }
table.metrics th { background: #f6f8fa; }
table.metrics td.left, table.metrics th.left { text-align: left; }
table.metrics td.left:first-child + td.left, table.metrics td.left code { white-space: nowrap; }
table.metrics tr.chosen td { font-weight: 600; }
table.metrics small.ci { color: #57606a; font-weight: 400; white-space: nowrap; }
img.figure { max-width: 100%; display: block; margin: 8px 0; }
.card { border: 1px solid #d8dee4; border-radius: 8px; padding: 10px 14px; margin: 10px 0;
        background: #fff; }
.note { font-size: 13px; color: #57606a; }
.notice { border: 1px solid #d4a72c; background: #fff8c5; border-radius: 6px; padding: 8px 12px;
          margin: 10px 0 4px; font-size: 14px; }
nav ul { font-size: 13px; columns: 2; margin: 6px 0; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 3px; }
.tokens span.tok { display: inline-block; background: #eef3fb; border-radius: 3px; padding: 0 4px;
        margin: 1px 2px; font-family: ui-monospace, monospace; font-size: 12px; }
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _anchor(entry: ReportEntry) -> str:
    return "probe-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{entry.hook_name}-{entry.label}").strip("-")


def _records(entries: Sequence[ReportEntry]) -> list[dict[str, Any]] | None:
    """One record per entry for the layer choice; None when an entry has no CV score."""
    if not all(e.record is not None and e.record.get("splits") for e in entries):
        return None
    return [
        {**(e.record or {}), "dataset": None, "hook": e.hook_name, "probe": e.label}
        for e in entries
    ]


def _choices(entries: Sequence[ReportEntry]) -> list[LayerChoice]:
    """The hook each probe's CV accuracy picks (empty without CV scores)."""
    records = _records(entries)
    if not records:
        return []
    try:
        return choose_layers(records)
    except InputError as err:  # e.g. the same probe twice at one hook: no choice to make
        logger.warning("no layer chosen in the report: %s", err)
        return []


def _ci_cell(e: ReportEntry, key: str) -> str:
    """A test metric, with its 95% interval when the entry's record has one."""
    text = _fmt(e.metrics.get(key))
    ci = interval(e.record, key) if e.record is not None else None
    if ci is not None:
        text += f' <small class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</small>'
    return text


def _splits_cell(e: ReportEntry) -> str:
    if e.record is None:
        return "–"
    ci = interval(e.record, "accuracy")
    how = "no interval" if ci is None else ci[2].replace("_", " ")
    return f"{html.escape(splits_text(e.record))} ({how})"


def _metrics_table(entries: Sequence[ReportEntry], choices: Sequence[LayerChoice]) -> str:
    picked = {(c.probe, c.hook) for c in choices if len(c.hooks) > 1}
    counts = {
        (c.probe, h): f"{c.count(h)}/{c.seeds}"
        for c in choices
        if len(c.hooks) > 1
        for h in c.hooks
    }
    head = "".join(
        f"<th>{name}{' [95%]' if key in HEADLINE_METRICS else ''}</th>"
        for key, name in METRIC_COLUMNS
    )
    rows = []
    for e in entries:
        is_pick = (e.label, e.hook_name) in picked
        cv = e.record.get("cv_accuracy") if e.record is not None else None
        cells = "".join(f"<td>{_ci_cell(e, key)}</td>" for key, _ in METRIC_COLUMNS)
        picks = counts.get((e.label, e.hook_name), "–")
        decay = "–" if e.weight_decay is None else f"{e.weight_decay:g}"
        split = "–" if e.n_train is None else f"{e.n_train} / {e.n_test}"
        name = html.escape(e.label)
        if e.acts is not None:
            name = f'<a href="#{_anchor(e)}">{name}</a>'
        rows.append(
            f'<tr class="{"chosen" if is_pick else ""}"><td class="left"><code>'
            f'{html.escape(e.hook_name)}</code></td><td class="left">{name}</td>'
            f"<td>{_fmt(None if cv is None else float(cv))}</td><td>{picks}</td>{cells}"
            f"<td>{decay}</td><td>{split}</td><td>{_splits_cell(e)}</td></tr>"
        )
    hooks = {e.hook_name for e in entries}
    if picked:
        bold = (
            "CV picks: in how many splits the probe's CV accuracy picked the hook (each split "
            "chooses on its own training part; its test part plays no role). Bold: the hook most "
            "splits picked (see below)."
        )
    elif len(hooks) > 1:
        bold = "No CV scores recorded: no layer is chosen."
    else:
        bold = "One hook: no layer to choose."
    return (
        '<table class="metrics"><thead><tr><th class="left">hook</th><th class="left">probe</th>'
        f"<th>CV accuracy</th><th>CV picks</th>{head}<th>weight decay</th><th>n train / n test</th>"
        f"<th>splits (interval)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<div class="note">Test metrics of the refit probe: the mean over the splits (each seed '
        "draws its own train/test split), with a 95% interval: the corrected resampled t "
        "(Nadeau &amp; Bengio) over the splits when there are several (the splits share rows, so "
        "a plain t interval would cover too little); with one split, Wilson for accuracy and a "
        "percentile bootstrap over its test rows for AUROC (the bootstrap covers the test sample "
        "only, not the training). CV accuracy: the training part's cross-validation accuracy at "
        "the chosen weight decay (mean over folds and splits). "
        f"{bold}</div>"
    )


def _choice_section(choices: Sequence[LayerChoice]) -> str:
    """The layer each split's CV picks per probe, and the test score at the picks."""
    rows = []
    for c in choices:
        est = c.estimates["accuracy"]
        acc = _fmt(est.mean)
        if est.has_interval:
            acc += f' <small class="ci">[{est.low:.3f}, {est.high:.3f}]</small>'
        rows.append(
            f'<tr><td class="left">{html.escape(c.probe)}</td><td class="left"><code>'
            f"{html.escape(c.picks_text())}</code></td><td>{_fmt(c.cv_score)}</td><td>{acc}</td>"
            f"<td>{c.n_test}</td><td>{html.escape(est.how())}</td>"
            f"<td>{len(c.hooks)}</td></tr>"
        )
    return (
        '<h3 id="layer-choice">Layer chosen by cross-validation, split by split</h3>'
        '<table class="metrics"><thead><tr><th class="left">probe</th><th class="left">chosen '
        "hook</th><th>CV accuracy</th><th>test accuracy [95%]</th><th>n test</th>"
        f"<th>interval</th><th>hooks compared</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        '</table><div class="note">Each split picks the hook with the best cross-validation '
        "accuracy on its own training part (ties: lower CV log loss); the reported test accuracy "
        "is the mean over splits of each split's test accuracy at its own pick. A choice pooled "
        "over splits would read test rows: one split's test rows are in another's training part."
        "</div>"
    )


def _comparisons_section(comparisons: Sequence[Comparison]) -> str:
    """Paired comparisons (lp.compare) with their intervals and raw and Holm verdicts."""
    rows = []
    for c in comparisons:
        holm = "–" if c.holm_verdict is None else html.escape(c.verdict_text(c.holm_verdict))
        ci = "–" if math.isnan(c.low) else f"[{c.low:+.3f}, {c.high:+.3f}]"
        rows.append(
            f'<tr><td class="left">{html.escape(c.a)}</td><td class="left">{html.escape(c.b)}'
            f"</td><td>{html.escape(c.metric)}</td><td>{c.difference:+.3f}</td>"
            f"<td>{ci}</td><td>{html.escape(c.how())}</td>"
            f'<td class="left">{html.escape(c.verdict_text())}</td><td class="left">{holm}</td></tr>'
        )
    family = max((c.family for c in comparisons), default=0)
    return (
        '<h3 id="comparisons">Paired comparisons</h3>'
        '<table class="metrics"><thead><tr><th class="left">a</th><th class="left">b</th>'
        "<th>metric</th><th>a − b</th><th>95% interval</th><th>interval</th>"
        f'<th class="left">verdict</th><th class="left">Holm ({family})</th></tr></thead><tbody>'
        f"{''.join(rows)}</tbody></table>"
        '<div class="note">Each pair through <code>lp.compare</code>: both probes on the same '
        "splits, the difference paired per split, its 95% interval the corrected resampled t "
        "over the splits (or, with one split, a paired bootstrap over its test rows, which "
        "ignores training variability). A difference whose interval contains 0, or that is the "
        f"same on every split (no spread), is undecided. {len(comparisons)} comparisons here; "
        "the Holm column adjusts the verdicts for the whole family they were made in.</div>"
    )


def _auto_comparisons(
    entries: Sequence[ReportEntry], choices: Sequence[LayerChoice]
) -> list[Comparison]:
    """Comparisons at the chosen layers, when every entry carries its protocol result."""
    if not choices or any(e.result is None for e in entries):
        return []
    results = {(None, e.hook_name, e.label): e.result for e in entries}
    return holm(compare_choices(choices, results))  # type: ignore[arg-type]


def _visible(token: str) -> str:
    r"""A token with its whitespace made visible (a space as ``␣``, a newline as ``\n``)."""
    return token.replace(" ", "\u2423").replace("\n", "\\n").replace("\t", "\\t")


def _head_tokens_table(top: TopExamples) -> str:
    cells = []
    for h, tokens in enumerate(top.head_tokens):
        toks = "".join(
            f'<span class="tok" title="mass {t.mass:.2f} over {t.count} occurrence(s)">'
            f"{html.escape(_visible(t.token))} <small>{100 * t.share:.0f}%</small></span>"
            for t in tokens
        )
        cells.append(f'<tr><td>head {h}</td><td class="left tokens">{toks}</td></tr>')
    return (
        '<table class="metrics"><thead><tr><th>head</th><th class="left">tokens with the most '
        "attention mass (share of the head's attention over all sequences)</th></tr></thead>"
        f"<tbody>{''.join(cells)}</tbody></table>"
    )


def _entry_section(entry: ReportEntry, k: int, n_tokens: int, batch_size: int) -> list[Any]:
    assert entry.acts is not None
    acts = entry.acts
    rows = entry.rows
    n_rows = len(acts) if rows is None else int(torch.as_tensor(rows).numel())
    title = f"{html.escape(entry.label)} at <code>{html.escape(entry.hook_name)}</code>"
    parts: list[Any] = [
        f'<h2 id="{_anchor(entry)}">{title}</h2>',
        f'<div class="note">Analysed on {n_rows} sequences'
        + (" (the test rows)." if rows is not None else ".")
        + "</div>",
    ]
    if acts.meta.keep != "tokens":  # a reduced capture holds no tokens to show
        return [
            *parts,
            f'<div class="note">This capture kept pooled vectors only (keep='
            f"'{html.escape(acts.meta.keep)}'), not its tokens: capture with keep='tokens' to "
            "see the top sequences and the tokens they read.</div>",
        ]
    top = top_examples(entry.probe, acts, k=k, rows=rows, n_tokens=n_tokens, batch_size=batch_size)
    if entry.probe.attends:
        ent = attention_entropy(entry.probe, acts, rows=rows, batch_size=batch_size)
        props = entropy_props(ent)
        parts += [
            "<h3>Attention entropy per head</h3>",
            entropy_figure(ent, entry.label),
            Widget("entropy", props, body=entropy_html(props)),
            "<h3>What each head reads</h3>",
            _head_tokens_table(top),
            f"<h3>Top {top.k} sequences per head (by the largest weight on one token)</h3>",
            '<div class="card">',
            Widget("top_examples", top_examples_props(top, "head"), component="TopkSamples"),
            "</div>",
        ]
    parts += [
        f"<h3>Top {top.k} sequences per class (by class logit)</h3>",
        '<div class="card">',
        Widget("top_examples", top_examples_props(top, "class"), component="TopkSamples"),
        "</div>",
    ]
    return parts


_HOW_TO_READ = (
    '<h2>How to read this page</h2><div class="note"><p>Entropy is in nats. A head that '
    "spreads its attention evenly over the n valid tokens of a sequence has entropy log n "
    "(ratio 1); one that attends to a single token has entropy 0 (ratio 0). Sequences of one "
    "token are left out of the ratios.</p><p>Top examples are exact (every analysed sequence "
    "is scored). Each starts with an uncoloured tag <code>#row label=… pred=… score=…</code>: "
    "its row, its true class, the class the probe predicts and the ranking score; for a binary "
    "probe, class 1 is ranked by the logit and class 0 by minus the logit. Tokens are "
    "coloured by a head's attention (blue), or by their contribution to the class score "
    "(blue up, red down; contributions of all tokens plus the bias give the logit). Use the "
    "selectors to switch class, head, colouring and page.</p></div>"
)


def _version() -> str:
    """The installed lensprobe's version (``unknown`` when it runs from an uninstalled tree)."""
    try:
        return importlib.metadata.version("lensprobe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


METRICS_ONLY = (
    "Metrics only: no activations were given, so this page has no attention views, entropy or "
    "top examples. From the command line: pass --acts STORE (lensprobe report --results DIR "
    "--acts STORE); from Python: ReportEntry.from_result(result, acts)."
)
"""The notice under the title of a report none of whose entries carries activations."""


def _activations_notice(items: Sequence[ReportEntry]) -> str:
    """A visible notice when some or every entry lacks activations (metrics only for those)."""
    missing = [e for e in items if e.acts is None]
    if not missing:
        return ""
    if len(missing) == len(items):
        text = html.escape(METRICS_ONLY)
    else:
        names = ", ".join(f"{e.label} at {e.hook_name}" for e in missing)
        text = html.escape(
            f"{len(missing)} of {len(items)} probes have no activations at their hook, so they "
            f"show metrics only (no attention views or top examples): {names}."
        )
    return f'<div class="notice" id="activations-notice" role="note">{text}</div>'


def _title_block(items: Sequence[ReportEntry], title: str, description: str | None) -> list[str]:
    """The title, the description, the facts line (model, hooks, probes, classes, when, version)."""
    models = sorted({e.probe.config.model_id for e in items if e.probe.config.model_id})
    class_names = next(
        (e.probe.config.class_names for e in items if e.probe.config.class_names), None
    )
    classes = ", ".join(class_names) if class_names else str(items[0].probe.config.n_classes)
    facts = [
        ("model", ", ".join(models) or "–"),
        ("hooks", str(len({e.hook_name for e in items}))),
        ("probes", str(len(items))),
        ("classes", classes),
        ("created", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
        ("lensprobe", _version()),
    ]
    spans = "".join(f"<span>{html.escape(k)}: <b>{html.escape(v)}</b></span>" for k, v in facts)
    return [
        f"<h1>{html.escape(title)}</h1>",
        _activations_notice(items),
        f'<div class="sub">{html.escape(description)}</div>' if description else "",
        f'<div class="facts">{spans}</div>',
    ]


def _navigation(analysed: Sequence[ReportEntry]) -> str:
    """Links to the metrics and to each analysed probe's section."""
    links = "".join(
        f'<li><a href="#{_anchor(e)}">{html.escape(e.label)} at {html.escape(e.hook_name)}</a></li>'
        for e in analysed
    )
    return f"<nav><ul><li><a href='#metrics'>metrics</a></li>{links}</ul></nav>"


def _metrics_sections(
    items: Sequence[ReportEntry], comparisons: Sequence[Comparison] | None
) -> list[str]:
    """The metrics table and figure, the layer choice, the comparisons and the CV figure."""
    choices = _choices(items)
    if comparisons is None:
        comparisons = _auto_comparisons(items, choices)
    parts = [
        '<h2 id="metrics">Test metrics</h2>',
        _metrics_table(items, choices),
        metrics_figure(items, choices),
    ]
    if any(len(c.hooks) > 1 for c in choices):
        parts.append(_choice_section(choices))
    if comparisons:
        parts.append(_comparisons_section(comparisons))
    cv = cv_figure(items)
    if cv:
        parts.append(cv)
    return parts


def render_report(
    entries: Sequence[ReportEntry | ProtocolResult],
    *,
    title: str = "lensprobe report",
    description: str | None = None,
    k: int = 5,
    n_tokens: int = 12,
    batch_size: int = 64,
    comparisons: Sequence[Comparison] | None = None,
) -> str:
    """The report as an HTML string.

    Args:
        entries: One :class:`ReportEntry` per probe and hook (``ReportEntry.from_result(res,
            acts)``); a bare ``ProtocolResult`` gives a metrics-only entry.
        title: Page title.
        description: A line under the title (dataset, settings).
        k: Top examples per class and per head.
        n_tokens: Tokens per head in the "what each head reads" table.
        batch_size: Sequences per forward when analysing.
        comparisons: Paired comparisons to show (:func:`lensprobe.compare` results); default:
            when every entry carries its protocol result, each two probes at the layers their
            CV picks; ``[]``: none.

    Returns:
        The whole page (it loads nothing from the network).
    """
    items = [e if isinstance(e, ReportEntry) else ReportEntry.from_result(e) for e in entries]
    if not items:
        raise InputError("a report needs at least one entry (ReportEntry or ProtocolResult)")
    items.sort(key=lambda e: (layer_number(e.hook_name) or 0, e.hook_name))
    analysed = [e for e in items if e.acts is not None]
    parts: list[Any] = _title_block(items, title, description)
    if analysed:
        parts.append(_navigation(analysed))
    parts += _metrics_sections(items, comparisons)
    for e in analysed:
        parts += _entry_section(e, k, n_tokens, batch_size)
    parts.append(_HOW_TO_READ)
    return page(parts, title=title, css=CSS)


def report(
    entries: Sequence[ReportEntry | ProtocolResult],
    path: str | Path,
    *,
    title: str = "lensprobe report",
    description: str | None = None,
    k: int = 5,
    n_tokens: int = 12,
    batch_size: int = 64,
    comparisons: Sequence[Comparison] | None = None,
) -> Path:
    """Write one self-contained HTML page for a protocol run (:func:`render_report` to a file).

    Args:
        entries: One :class:`ReportEntry` per probe and hook (``ReportEntry.from_result(res,
            acts)``); a bare ``ProtocolResult`` gives a metrics-only entry.
        path: The HTML file to write (parent directories are created).
        title: Page title.
        description: A line under the title (dataset, settings).
        k: Top examples per class and per head.
        n_tokens: Tokens per head in the "what each head reads" table.
        batch_size: Sequences per forward when analysing.
        comparisons: Paired comparisons to show (see :func:`render_report`).

    Returns:
        The path written.

    Example:
        >>> res = lp.run_protocol(acts, probe="attention", n_heads=8)
        >>> lp.report([lp.viz.ReportEntry.from_result(res, acts)], "report.html")
    """
    html_text = render_report(
        entries,
        title=title,
        description=description,
        k=k,
        n_tokens=n_tokens,
        batch_size=batch_size,
        comparisons=comparisons,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_text, encoding="utf-8")
    return path
