"""Running the protocol over a grid of hooks x probe kinds, and writing the results.

The command line (``lensprobe demo``/``run``/``train``) and ``benchmarks/study.py`` are thin
layers over this module: name probes with short specs (``attention-8``, ``mean``,
``last-adamw``), hand over captured activations per hook, get one row per (hook, probe).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensprobe.errors import InputError
from lensprobe.specs import ProbeSpec
from lensprobe.train.compare import Comparison, comparison_from_dict, comparison_to_dict, holm
from lensprobe.train.config import ProtocolConfig
from lensprobe.train.protocol import run_protocol
from lensprobe.train.result import ProtocolResult
from lensprobe.train.selection import (
    LayerChoice,
    choose_layer,
    choose_layers,
    compare_choices,
    describe,
    interval,
    result_record,
    split_scores,
    splits_text,
)

logger = logging.getLogger(__name__)


@dataclass
class GridRow:
    """One (dataset, hook, probe) cell of a grid run."""

    dataset: str
    """Name of the dataset."""
    hook: str
    """Hook name the activations come from."""
    probe: str
    """Probe spec label, e.g. ``attention-8``."""
    result: ProtocolResult = field(repr=False)
    """Everything the protocol returned."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further columns (e.g. attention entropy / uniform)."""
    _summary: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """A flat, JSON-ready row: identifiers, then :func:`~lensprobe.train.selection.result_record`.

        That is the test metrics (mean over seeds) with ``n_test`` and ``seeds``; the CV scores
        at the chosen decay (``cv_accuracy``, ...) and each split's scores (``splits``) that
        :func:`choose_layer` reads; and for accuracy and AUROC a 95% interval
        (``accuracy_low``, ``accuracy_high``, made as ``accuracy_interval`` says). The summary
        is computed once.
        """
        if self._summary is None:
            self._summary = result_record(self.result)
        row: dict[str, Any] = {"dataset": self.dataset, "hook": self.hook, "probe": self.probe}
        row.update(self._summary)
        row.update({k: _round(v) if isinstance(v, float) else v for k, v in self.extra.items()})
        return row


def _round(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 5)


def run_grid(
    activations: Mapping[str, Any],
    probes: Sequence[ProbeSpec | str],
    *,
    dataset: str = "data",
    protocol: ProtocolConfig | None = None,
    on_row: Callable[[GridRow], None] | None = None,
    progress: bool = False,
) -> list[GridRow]:
    """Run the protocol for every hook and probe.

    Args:
        activations: Hook name -> ``Activations`` (with labels), e.g. the result of
            ``lp.capture``.
        probes: Probe specs (``"attention-8"``) or :class:`ProbeSpec`.
        dataset: Name recorded in every row.
        protocol: Base protocol settings; each spec sets probe kind, heads and optimizer.
        on_row: Called with each finished row (progress display, incremental saving).
        progress: Show a progress bar over each fit's optimisation steps.

    Returns:
        One :class:`GridRow` per (hook, probe), hooks in the given order.
    """
    specs = [p if isinstance(p, ProbeSpec) else ProbeSpec.parse(p) for p in probes]
    base = protocol or ProtocolConfig()
    rows = []
    for hook, acts in activations.items():
        for spec in specs:
            label = f"{hook} {spec.label}" if progress else False
            result = run_protocol(acts, config=spec.protocol(base), progress=label)
            row = GridRow(dataset=dataset, hook=hook, probe=spec.label, result=result)
            logger.info(
                "%s %s %s: accuracy %.4f", dataset, hook, spec.label, result.metrics["accuracy"]
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("dataset", "dataset", "s"),
    ("hook", "hook", "s"),
    ("probe", "probe", "s"),
    ("chosen", "CV picks", "s"),
    ("cv_accuracy", "cv acc", ".3f"),
    ("accuracy", "acc", ".3f"),
    ("accuracy_low", "acc 95% low", ".3f"),
    ("accuracy_high", "high", ".3f"),
    ("auroc", "auroc", ".3f"),
    ("entropy_ratio", "H/H_unif", ".2f"),
    ("weight_decay", "wd", "g"),
    ("n_test", "n_test", "d"),
    ("accuracy_interval", "interval", "s"),
    ("seconds", "s", ".1f"),
)
"""(record key, header, format) of the plain-text results table. ``accuracy_low`` / ``_high``
show the record's interval (corrected t over seeds, or with one seed Wilson); ``interval`` says
which and over how many splits; ``chosen`` says how many splits :func:`choose_layer` picked the
hook in (e.g. ``2/3``)."""


def _table_values(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with the derived table columns (``chosen``, interval ends and kind) filled in."""
    picked: dict[tuple[Any, Any, Any], str] = {}
    if records and all(r.get("splits") for r in records):
        try:
            choices = choose_layers(records)
        except InputError:  # e.g. one probe twice at a hook: a table, but no choice to mark
            choices = []
        for c in choices:
            if len(c.hooks) > 1:
                for h in c.hooks:
                    picked[(c.dataset, c.probe, h)] = (
                        f"{c.count(h)}/{c.seeds}" if c.count(h) else ""
                    )
    out = []
    for r in records:
        v = dict(r)
        ci = interval(r, "accuracy")
        v["accuracy_low"], v["accuracy_high"] = (ci[0], ci[1]) if ci else (None, None)
        if "n_test" in r:
            v["accuracy_interval"] = f"{ci[2] if ci else 'none'}, {splits_text(r)}"
        if picked:
            v["chosen"] = picked.get((r.get("dataset"), r.get("probe"), r.get("hook")), "")
        out.append(v)
    return out


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of result records (missing values shown as ``-``).

    Every accuracy is shown with ``n_test`` and its 95% interval (corrected t over seeds, or
    Wilson over the test rows of a single split); with several hooks, ``CV picks`` says in how
    many splits each probe's cross-validation accuracy chose the hook (:func:`choose_layer`).
    """
    values = _table_values(records)
    cols = [c for c in TABLE_COLUMNS if any(c[0] in v for v in values)]

    def cell(record: Mapping[str, Any], key: str, fmt: str) -> str:
        v = record.get(key)
        if v is None or v == "":
            return "-" if key != "chosen" else ""
        return format(float(v), fmt) if fmt != "s" and isinstance(v, str) else format(v, fmt)

    body = [[cell(r, k, f) for k, _, f in cols] for r in values]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h)
        for i, (_, h, _) in enumerate(cols)
    ]
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(line.rstrip() for line in lines)


def format_row(record: Mapping[str, Any]) -> str:
    """One finished grid cell on one line: CV accuracy, then test accuracy and AUROC with intervals."""
    auroc = record.get("auroc")
    auc = "-" if auroc is None else f"{auroc:.3f}"
    ci = interval(record, "auroc")
    if ci is not None:
        auc += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    cv = record.get("cv_accuracy")
    return (
        f"  {record['hook']}  {record['probe']:<14} cv acc {'-' if cv is None else f'{cv:.3f}'}  "
        f"test acc {describe(record, 'accuracy')}  auroc {auc}  ({record['seconds']:.1f} s)"
    )


def format_choices(
    records: Sequence[Mapping[str, Any]], comparisons: Sequence[Comparison] = ()
) -> str:
    """The layer each split's cross-validation picks per probe, the test score, the comparisons.

    One line per (dataset, probe) from :func:`choose_layers` (each split chooses on its own
    training part's CV accuracy; the test accuracy is the mean over splits at their own picks,
    with its interval and ``n_test``), then one line per paired comparison
    (:func:`lensprobe.compare`) with its raw and Holm-adjusted verdicts.
    """
    choices = choose_layers(records)
    several = any(len(c.hooks) > 1 for c in choices)
    title = (
        "layer chosen per split by cross-validation accuracy on that split's training part "
        "(its test part is scored once, at its pick):"
        if several
        else "test accuracy (one hook: no layer to choose):"
    )
    lines = [title]
    datasets = list(dict.fromkeys(c.dataset for c in choices))
    for c in choices:
        prefix = f"{c.dataset} " if len(datasets) > 1 else ""
        lines.append(f"  {prefix}{c}")
    if comparisons:
        where = "at each split's chosen layer, " if several else ""
        family = max(c.family for c in comparisons)
        decided = sum(c.verdict != "undecided" for c in comparisons)
        holm_decided = sum(c.holm_verdict not in (None, "undecided") for c in comparisons)
        lines.append(
            f"paired comparisons ({where}same splits; undecided when the interval holds 0): "
            f"{len(comparisons)} made, {decided} decided raw, {holm_decided} after Holm's "
            f"adjustment for {family}:"
        )
        lines += [f"  {c}" for c in comparisons]
    return "\n".join(lines)


def compare_rows(rows: Sequence[GridRow], metric: str = "accuracy") -> dict[str, list[Comparison]]:
    """Per dataset, every two probes compared at each split's CV-chosen hook.

    All the grid's comparisons form one family: their verdicts are Holm-adjusted together
    (:func:`lensprobe.train.compare.holm`).

    Returns:
        Dataset name -> its paired comparisons (each through :func:`lensprobe.compare`).
    """
    results = {(r.dataset, r.hook, r.probe): r.result for r in rows}
    try:
        choices = choose_layers([r.record() for r in rows])
    except InputError as err:  # e.g. the same cell twice: nothing to pair unambiguously
        logger.warning("probes not compared: %s", err)
        return {}
    per_dataset = {
        dataset: compare_choices(
            [c for c in choices if c.dataset == dataset], results, metric=metric
        )
        for dataset in dict.fromkeys(r.dataset for r in rows)
    }
    family = iter(holm([c for comps in per_dataset.values() for c in comps]))
    return {dataset: [next(family) for _ in comps] for dataset, comps in per_dataset.items()}


def save_rows(
    rows: Sequence[GridRow],
    out: str | Path,
    *,
    save_probes: bool = True,
    comparisons: Mapping[str, Sequence[Comparison]] | None = None,
) -> Path:
    """Write ``results.json``, ``results.csv`` and the probes; :func:`load_results` reads them.

    ``results.json`` holds the records (each split's CV scores and test metrics included, so
    :func:`choose_layer` can redo the per-split layer choice), the full protocol results and
    the comparisons; ``results.csv`` the same records without the per-split lists. Each file
    is written to a temporary name and renamed, so a crash never leaves half a file. Probes go
    to ``out/probes/<dataset>/<hook>/<probe>/`` (``config.json`` + safetensors).

    Args:
        rows: The grid's rows.
        out: The folder to write.
        save_probes: Also save every refit probe.
        comparisons: Dataset -> paired comparisons to store (default: :func:`compare_rows`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [r.record() for r in rows]
    if comparisons is None:
        comparisons = compare_rows(rows)
    payload = {
        "records": records,
        "results": [
            {
                "dataset": r.dataset,
                "hook": r.hook,
                "probe": r.probe,
                **r.result.to_dict(),
                "test_rows": r.result.test_rows.tolist(),
            }
            for r in rows
        ],
        "comparisons": [
            {"dataset": dataset, **comparison_to_dict(c)}
            for dataset, comps in comparisons.items()
            for c in comps
        ],
    }
    text = json.dumps(_json_safe(payload), indent=1, allow_nan=False)
    _write_atomic(out / "results.json", text + "\n")
    keys = list(dict.fromkeys(k for rec in records for k in rec if k not in _NOT_IN_CSV))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    _write_atomic(out / "results.csv", text.getvalue())
    if save_probes:
        for r in rows:
            r.result.probe.save(probe_path(out, r.dataset, r.hook, r.probe))
    return out


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity as ``None`` (strict JSON; read back as NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


_NOT_IN_CSV = frozenset({"splits"})
"""Record keys that hold lists (results.json only)."""


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def probe_path(out: str | Path, dataset: str, hook: str, probe: str) -> Path:
    """The folder :func:`save_rows` writes a cell's probe to (``out/probes/DATASET/HOOK/PROBE``)."""
    return Path(out) / "probes" / dataset / hook / probe


@dataclass(frozen=True)
class SavedResults:
    """What :func:`save_rows` wrote, read back by :func:`load_results`."""

    records: list[dict[str, Any]]
    """One flat record per (dataset, hook, probe), CV scores included."""
    results: list[dict[str, Any]]
    """The full protocol results (``ProtocolResult.to_dict()`` plus ids and ``test_rows``)."""
    comparisons: dict[str, list[Comparison]]
    """Dataset -> the paired comparisons stored with its results."""
    folder: Path | None = None
    """The results folder (its ``probes/`` holds each cell's probe, see :func:`probe_path`)."""

    @property
    def datasets(self) -> list[str]:
        """The datasets of the results, sorted."""
        return sorted({r["dataset"] for r in self.results})


def load_results(path: str | Path) -> SavedResults:
    """Read a results folder (or its ``results.json``) written by :func:`save_rows`.

    Records without per-split scores get them back from the stored seed runs
    (:func:`~lensprobe.train.selection.split_scores`).

    Raises:
        FileNotFoundError: No ``results.json`` there.
        InputError: The file is not JSON or not a results file.
    """
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; pass the folder written by lensprobe train/run")
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{file} is not valid JSON ({err}); rerun lensprobe train") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise InputError(f"{file} holds no 'results' list; rerun lensprobe train")
    results = payload["results"]
    records = payload.get("records") or [
        {k: r.get(k) for k in ("dataset", "hook", "probe")} for r in results
    ]
    for rec, res in zip(records, results, strict=False):
        if "splits" not in rec and res.get("runs"):
            rec["splits"] = split_scores(res["runs"])
            rec.setdefault("n_test", res.get("n_test"))
            rec.setdefault("seeds", len(res["runs"]))
            rec.update({k: v for k, v in res.get("metrics", {}).items() if k not in rec})
    comparisons: dict[str, list[Comparison]] = {}
    for c in payload.get("comparisons", []):
        c = dict(c)
        comparisons.setdefault(c.pop("dataset"), []).append(comparison_from_dict(c))
    return SavedResults(
        records=records, results=results, comparisons=comparisons, folder=file.parent
    )


def add_entropy(rows: Sequence[GridRow], activations: Mapping[str, Any]) -> None:
    """Add ``entropy_ratio`` (mean attention entropy / uniform, test rows) to attention rows."""
    from lensprobe.analysis import attention_entropy

    for row in rows:
        if row.result.probe.config.kind != "attention":
            continue
        ent = attention_entropy(row.result.probe, activations[row.hook], rows=row.result.test_rows)
        row.extra["entropy_ratio"] = float(ent.summary()["mean_ratio"])


def write_report(
    rows: Sequence[GridRow],
    activations: Mapping[str, Any],
    path: str | Path,
    *,
    title: str,
    description: str | None = None,
    comparisons: Sequence[Comparison] | None = None,
) -> Path:
    """One HTML report for the rows of one dataset (entropy and examples on the test rows).

    Args:
        rows: The dataset's grid rows.
        activations: Hook name -> the activations the rows were trained on.
        path: The HTML file.
        title: Page title.
        description: A line under the title.
        comparisons: Paired comparisons to show (default: :func:`compare_rows`).
    """
    from lensprobe.viz import ReportEntry, report

    entries = [
        ReportEntry.from_result(
            r.result, activations[r.hook], label=r.probe, hook=r.hook, record=r.record()
        )
        for r in rows
    ]
    if comparisons is None:
        comparisons = [c for comps in compare_rows(rows).values() for c in comps]
    return report(entries, path, title=title, description=description, comparisons=comparisons)


def saved_entries(
    saved: SavedResults, dataset: str, activations: Mapping[str, Any] | None = None
) -> list[Any]:
    """Report entries (``lensprobe.viz.ReportEntry``) of one dataset of results read back.

    Each cell's probe is loaded from where :func:`save_rows` wrote it; a cell whose hook is in
    ``activations`` gets them with its test rows (attention, examples), the others show metrics.
    """
    import torch

    from lensprobe.probes import load_probe
    from lensprobe.viz import ReportEntry

    if saved.folder is None:
        raise ValueError("these results were not read from a folder; load them with load_results")
    activations = activations or {}
    records = {(r["dataset"], r["hook"], r["probe"]): r for r in saved.records}
    entries = []
    for res in (r for r in saved.results if r["dataset"] == dataset):
        key = (res["dataset"], res["hook"], res["probe"])
        acts = activations.get(res["hook"])
        entries.append(
            ReportEntry(
                label=res["probe"],
                probe=load_probe(probe_path(saved.folder, *key)),
                metrics={k: math.nan if v is None else v for k, v in res["metrics"].items()},
                acts=acts,
                rows=None if acts is None else torch.tensor(res["test_rows"]),
                hook=res["hook"],
                weight_decay=res["weight_decay"],
                cv_summary=tuple(res["cv_summary"]),
                n_train=res["n_train"],
                n_test=res["n_test"],
                record=records.get(key),
            )
        )
    return entries


def write_saved_report(
    saved: SavedResults,
    dataset: str,
    activations: Mapping[str, Any] | None,
    path: str | Path,
    *,
    title: str,
    description: str | None = None,
) -> Path:
    """One HTML report for one dataset of results read back by :func:`load_results`.

    The same page :func:`write_report` writes after training, with the comparisons stored with
    the results; without ``activations`` it shows the metrics only.
    """
    from lensprobe.viz import report

    entries = saved_entries(saved, dataset, activations)
    comparisons = saved.comparisons.get(dataset, [])
    return report(entries, path, title=title, description=description, comparisons=comparisons)


__all__ = [
    "TABLE_COLUMNS",
    "GridRow",
    "LayerChoice",
    "SavedResults",
    "add_entropy",
    "choose_layer",
    "choose_layers",
    "compare_rows",
    "describe",
    "format_choices",
    "format_row",
    "format_table",
    "load_results",
    "probe_path",
    "run_grid",
    "save_rows",
    "saved_entries",
    "write_report",
    "write_saved_report",
]
