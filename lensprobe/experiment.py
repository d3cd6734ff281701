"""Running the protocol over a grid of hooks x probe kinds, and writing the results.

The command line (``lensprobe demo``/``run``/``train``) and ``benchmarks/study.py`` are thin
layers over this module: name probes with short specs (``attention-8``, ``mean``,
``last-adamw``), hand over captured activations per hook, get one row per (hook, probe).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lensprobe.train.protocol import ProtocolConfig, ProtocolResult, run_protocol

logger = logging.getLogger(__name__)

DEFAULT_PROBES: tuple[str, ...] = ("attention-1", "attention-2", "attention-8", "mean", "last")
"""The probes of the study's comparison."""

_SPEC = re.compile(r"^(attention|mean|last|max)(?:-(\d+))?(?:-(adamw|lbfgs))?$")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of a grid: kind, heads and optimizer, written ``attention-8`` or ``mean-adamw``."""

    kind: Literal["attention", "mean", "last", "max"]
    """Probe kind."""
    n_heads: int = 1
    """Heads of an attention probe."""
    optimizer: Literal["auto", "adamw", "lbfgs"] = "auto"
    """``auto``: AdamW for attention probes, L-BFGS for pooled ones."""

    @classmethod
    def parse(cls, text: str) -> ProbeSpec:
        """Read ``attention-8``, ``attention-2-lbfgs``, ``mean``, ``last-adamw``, ``max``."""
        m = _SPEC.match(text.strip().lower())
        if m is None:
            raise ValueError(
                f"cannot read probe spec {text!r}; write KIND[-HEADS][-OPTIMIZER] with KIND one of "
                "attention, mean, last, max (e.g. attention-8, mean, last-adamw)"
            )
        kind, heads, opt = m.groups()
        if heads is not None and kind != "attention":
            raise ValueError(f"{text!r}: only attention probes have heads (e.g. attention-{heads})")
        if heads is not None and int(heads) < 1:
            raise ValueError(f"{text!r}: an attention probe needs at least one head (attention-1)")
        return cls(kind=kind, n_heads=int(heads or 1), optimizer=opt or "auto")  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """The spec written back, e.g. ``attention-8`` or ``mean-adamw``."""
        text = f"{self.kind}-{self.n_heads}" if self.kind == "attention" else self.kind
        return text if self.optimizer == "auto" else f"{text}-{self.optimizer}"

    def protocol(self, base: ProtocolConfig) -> ProtocolConfig:
        """``base`` with this spec's probe, heads and optimizer."""
        return replace(base, probe=self.kind, n_heads=self.n_heads, optimizer=self.optimizer)


def parse_probes(specs: str | Sequence[str]) -> list[ProbeSpec]:
    """Probe specs from a comma-separated string or a list of strings."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if not specs:
        raise ValueError(f"no probes given; e.g. {','.join(DEFAULT_PROBES)}")
    return [ProbeSpec.parse(s) for s in specs]


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

    def record(self) -> dict[str, Any]:
        """A flat, JSON-ready row: identifiers, test metrics, chosen decay, sizes, seconds.

        With several seeds, also the accuracy's standard deviation and 95% t-interval over
        seeds (``accuracy_std``, ``accuracy_low``, ``accuracy_high``).
        """
        r = self.result
        row: dict[str, Any] = {"dataset": self.dataset, "hook": self.hook, "probe": self.probe}
        row.update({k: _round(v) for k, v in r.metrics.items()})
        row.update(
            weight_decay=r.weight_decay,
            n_train=int(r.train_rows.numel()),
            n_test=int(r.test_rows.numel()),
            seeds=len(r.metrics_per_seed),
            seconds=round(r.seconds, 2),
        )
        if len(r.runs) > 1:  # several splits: the spread and t-interval of the accuracy
            acc = r.summary["accuracy"]
            row.update(
                accuracy_std=_round(acc.std),
                accuracy_low=_round(acc.low),
                accuracy_high=_round(acc.high),
            )
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
    ("accuracy", "acc", ".3f"),
    ("accuracy_low", "acc 95% low", ".3f"),
    ("accuracy_high", "high", ".3f"),
    ("auroc", "auroc", ".3f"),
    ("entropy_ratio", "H/H_unif", ".2f"),
    ("weight_decay", "wd", "g"),
    ("n_test", "n_test", "d"),
    ("seconds", "s", ".1f"),
)
"""(record key, header, format) of the plain-text results table."""


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of result records (missing values shown as ``-``)."""
    cols = [c for c in TABLE_COLUMNS if any(c[0] in r for r in records)]

    def cell(record: Mapping[str, Any], key: str, fmt: str) -> str:
        v = record.get(key)
        return "-" if v is None else format(v, fmt)

    body = [[cell(r, k, f) for k, _, f in cols] for r in records]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h)
        for i, (_, h, _) in enumerate(cols)
    ]
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def save_rows(rows: Sequence[GridRow], out: str | Path, *, save_probes: bool = True) -> Path:
    """Write ``results.json`` (records + full protocol results), ``results.csv`` and the probes.

    Probes go to ``out/probes/<dataset>/<hook>/<probe>/`` (``config.json`` + safetensors).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [r.record() for r in rows]
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
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    keys = list(dict.fromkeys(k for rec in records for k in rec))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
    if save_probes:
        for r in rows:
            r.result.probe.save(out / "probes" / r.dataset / r.hook / r.probe)
    return out


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
) -> Path:
    """One HTML report for the rows of one dataset (entropy and examples on the test rows)."""
    from lensprobe.viz import ReportEntry, report

    entries = [
        ReportEntry.from_result(r.result, activations[r.hook], label=r.probe, hook=r.hook)
        for r in rows
    ]
    return report(entries, path, title=title, description=description)
