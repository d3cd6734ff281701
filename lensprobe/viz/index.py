"""One page over the reports of several datasets: :func:`write_index`.

A results folder that holds several datasets gets one report per dataset
(``report-DATASET.html``) and ``index.html`` beside them: a table with one row per dataset (its
sequences, classes and test rows, the best probe with its test accuracy and 95% interval, and a
link to its report). Like the reports, the page is self-contained and loads nothing.

The best probe is the one whose layer choice has the best cross-validation score (training parts
only, as the layer choice itself); its test accuracy is the mean over the splits at each split's
own pick, with the interval the report shows. A dataset without a layer choice falls back on
its cells' CV accuracy.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lensprobe.errors import InputError
from lensprobe.train.selection import LayerChoice, interval
from lensprobe.viz.rendering import page
from lensprobe.viz.reporting import CSS

__all__ = ["write_index"]


@runtime_checkable
class _Grid(Protocol):
    """What the index reads of a :class:`lensprobe.grid.Grid`."""

    @property
    def datasets(self) -> list[str]: ...

    def of(self, dataset: str) -> tuple[list[Any], list[LayerChoice], tuple[Any, ...]]: ...


def _best_choice(choices: Sequence[LayerChoice]) -> LayerChoice | None:
    """The choice with the best CV score (lower for a log loss)."""
    if not choices:
        return None
    sign = -1.0 if choices[0].by.endswith("log_loss") else 1.0
    return max(choices, key=lambda c: sign * c.cv_score)


def _accuracy_text(mean: float, ci: tuple[float, float] | None, how: str) -> str:
    """``0.833 [0.552, 0.953]`` with what the interval is in small type."""
    text = "–" if math.isnan(mean) else f"{mean:.3f}"
    if ci is not None:
        text += f' <small class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</small>'
    return f'{text}<br><small class="ci">{html.escape(how)}</small>'


def _best_cells(cells: Sequence[Any], choices: Sequence[LayerChoice]) -> tuple[str, str]:
    """The best probe (and where) and its test accuracy, as table cells."""
    best = _best_choice(choices)
    if best is not None:
        est = best.estimates["accuracy"]
        ci = (est.low, est.high) if est.has_interval else None
        where = f"{html.escape(best.probe)}<br><small>at <code>{html.escape(best.hook)}</code>"
        cv = f"CV {best.by.removeprefix('cv_')} {best.cv_score:.3f}"
        return f"{where}, {html.escape(cv)}</small>", _accuracy_text(est.mean, ci, est.how())
    scored = [c for c in cells if c.record().get("cv_accuracy") is not None]
    if not scored:
        return "–", "–"
    cell = max(scored, key=lambda c: float(c.record()["cv_accuracy"]))
    record = cell.record()
    ci = interval(record, "accuracy")
    how = "no interval" if ci is None else f"95% {ci[2].replace('_', ' ')}"
    where = f"{html.escape(cell.probe)}<br><small>at <code>{html.escape(cell.hook)}</code></small>"
    acc = float(record.get("accuracy", math.nan))
    return where, _accuracy_text(acc, None if ci is None else (ci[0], ci[1]), how)


def _classes(result: Any) -> str:
    """The class names of a protocol result (its probe's, else the original labels)."""
    names = result.probe.config.class_names or tuple(str(c) for c in result.classes)
    return ", ".join(str(n) for n in names)


def _row(grid: _Grid, dataset: str, report: Path, folder: Path) -> str:
    """One dataset: sequences, classes, test rows, grid size, the best probe, the link."""
    cells, choices, _ = grid.of(dataset)
    result = cells[0].result
    n = int(result.train_rows.numel() + result.test_rows.numel())
    probe, accuracy = _best_cells(cells, choices)
    href = urllib.parse.quote(Path(os.path.relpath(report, folder)).as_posix())
    hooks = len({c.hook for c in cells})
    probes = len({c.probe for c in cells})
    splits = len(result.runs)
    return (
        f'<tr><td class="left"><a href="{html.escape(href)}">{html.escape(dataset)}</a></td>'
        f'<td>{n}</td><td class="left">{html.escape(_classes(result))}</td>'
        f"<td>{result.n_test}</td><td>{splits}</td><td>{hooks} × {probes}</td>"
        f'<td class="left">{probe}</td><td>{accuracy}</td>'
        f'<td class="left"><a href="{html.escape(href)}">{html.escape(report.name)}</a></td></tr>'
    )


def write_index(
    grid: _Grid,
    reports: Mapping[str, str | Path],
    path: str | Path,
    *,
    title: str = "lensprobe: results",
) -> Path:
    """Write one HTML page with a row per dataset, each linking to its report.

    Args:
        grid: The grid the reports were written from (:class:`lensprobe.grid.Grid`).
        reports: Dataset -> its report file (links are relative to ``path``'s folder).
        path: The HTML file to write, e.g. ``OUT/index.html``.
        title: Page title.

    Returns:
        The path written.

    Raises:
        InputError: A dataset of ``reports`` has no cells in the grid.
    """
    path = Path(path)
    folder = path.parent
    known = [d for d in grid.datasets if d in reports]
    missing = sorted(set(reports) - set(known))
    if missing:
        raise InputError(f"no cells of dataset(s) {missing} in the grid; it holds {grid.datasets}")
    rows = "".join(_row(grid, d, Path(reports[d]), folder) for d in known)
    created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="facts"><span>datasets: <b>{len(known)}</b></span>'
        f"<span>created: <b>{created}</b></span></div>",
        '<table class="metrics" id="datasets"><thead><tr><th class="left">dataset</th>'
        '<th>n</th><th class="left">classes</th><th>n test</th><th>splits</th>'
        '<th>hooks × probes</th><th class="left">best probe (by CV)</th>'
        '<th>its test accuracy [95%]</th><th class="left">report</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>",
        '<div class="note">n: sequences per split (training and test parts); n test: test rows '
        "per split. Best probe: the probe whose layer choice has the best cross-validation score "
        "(computed on the training parts only; each split picks its own layer); its test "
        "accuracy is the mean over the splits at each split's pick, with its 95% interval. "
        "Open a dataset's report for every probe, hook and paired comparison.</div>",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(page(parts, title=title, css=CSS), encoding="utf-8")
    return path
