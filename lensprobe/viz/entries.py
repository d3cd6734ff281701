"""What a report shows of one probe at one hook: :class:`ReportEntry`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.errors import InputError
from lensprobe.probes import Probe
from lensprobe.probes.spec import ProbeSpec
from lensprobe.train import ProtocolResult
from lensprobe.train.selection import result_record

__all__ = ["ReportEntry"]


@dataclass(frozen=True)
class ReportEntry:
    """One probe at one hook, and what the report should analyse it on."""

    label: str
    """How the probe is named in the report, e.g. ``attention-8`` or ``mean``."""
    probe: Probe
    """The trained probe."""
    metrics: Mapping[str, float]
    """Its test metrics (accuracy, balanced_accuracy, macro_f1, auroc, log_loss)."""
    acts: Activations | None = None
    """Activations at the probe's hook, for entropy and top examples (none: metrics only)."""
    rows: Int[Tensor, " n_rows"] | None = None
    """Rows of ``acts`` to analyse (the test rows); ``None`` for all of them."""
    hook: str | None = None
    """Hook name (default: the probe's, else the activations')."""
    weight_decay: float | None = None
    """Weight decay chosen by cross-validation."""
    cv_summary: tuple[Mapping[str, float], ...] | None = None
    """Cross-validation metrics per weight decay (``ProtocolResult.cv_summary``)."""
    n_train: int | None = None
    """Training sequences."""
    n_test: int | None = None
    """Test sequences."""
    record: Mapping[str, Any] | None = None
    """The flat result record (:func:`lensprobe.train.selection.result_record`): the CV scores
    (``cv_accuracy``, ...) the layer choice reads, the metrics' intervals and ``seeds``; none:
    no CV score or interval is shown, and no layer is chosen."""
    result: ProtocolResult | None = None
    """The protocol result, when the entry was made from one (lets the report run the paired
    comparisons itself)."""

    def __post_init__(self) -> None:
        if self.acts is not None and self.acts.d_model != self.probe.config.d_model:
            raise InputError(
                f"entry {self.label!r}: the probe reads width {self.probe.config.d_model} but the "
                f"activations have width {self.acts.d_model}; pass the activations of its hook"
            )

    @property
    def hook_name(self) -> str:
        """The hook, from the entry, the probe or the activations (``?`` when unknown)."""
        if self.hook:
            return self.hook
        if self.probe.config.hook:
            return self.probe.config.hook
        if self.acts is not None:
            return self.acts.meta.hook
        return "?"

    @classmethod
    def from_result(
        cls,
        result: ProtocolResult,
        acts: Activations | None = None,
        *,
        label: str | None = None,
        hook: str | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> ReportEntry:
        """An entry for a protocol run (its probe, test metrics and test rows).

        Args:
            result: What :func:`lensprobe.run_protocol` returned.
            acts: The activations the protocol ran on (its test rows index them).
            label: Name in the report (default ``attention-<heads>`` or the probe kind).
            hook: Hook name (default: the probe's).
            record: Its flat record (default: :func:`~lensprobe.train.selection.result_record`,
                which with one seed bootstraps the test rows for the intervals).
        """
        cfg = result.probe.config
        if label is None:
            label = ProbeSpec(cfg.kind, cfg.n_heads, options=tuple(cfg.options.items())).label
        return cls(
            label=label,
            probe=result.probe,
            metrics=dict(result.metrics),
            acts=acts,
            rows=result.test_rows,
            hook=hook,
            weight_decay=result.weight_decay,
            cv_summary=tuple(result.cv_summary),
            n_train=int(result.train_rows.numel()),
            n_test=int(result.test_rows.numel()),
            record=dict(record) if record is not None else result_record(result),
            result=result,
        )
