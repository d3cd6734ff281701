"""The study's protocol: split, choose weight decay by K-fold CV, refit, test.

1. Stratified split of the sequences into a training part and a test part (80/20).
2. Stratified K folds (5) of the training part. For every weight decay of the grid and every
   fold, a member trains on the other folds and is scored on its own fold.
3. For every weight decay, one more member trains on the whole training part (the refit).
4. The weight decay with the best mean CV score is chosen; its refit member is the result, scored
   on the test part.

All members of a seed (decays x (folds + refit)) are trained as one batched model that reads each
minibatch once (``execution="batched"``); ``execution="sequential"`` trains the same members one at
a time with identical settings, for comparison. AdamW members early-stop on a stratified slice of
the training part that no member trains on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.metrics import METRIC_NAMES, classification_metrics
from lensprobe.probes import Probe, ProbeConfig, ProbeKind, probe_class
from lensprobe.probes.base import without_first_token
from lensprobe.train.config import TrainConfig
from lensprobe.train.fit import (
    Members,
    fit_members,
    predict_members,
    token_scale,
    unscale_params,
)
from lensprobe.train.split import stratified_folds, stratified_split

logger = logging.getLogger(__name__)

SelectBy = Literal["accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss"]


@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of :func:`run_protocol` (defaults: the study's protocol)."""

    probe: ProbeKind = "attention"
    """Probe kind: ``attention``, ``mean``, ``last`` or ``max``."""
    n_heads: int = 1
    """Attention probe heads."""
    position: Literal["last", "first"] = "last"
    """Attention probes: anchor of the position bias."""
    optimizer: Literal["auto", "adamw", "lbfgs"] = "auto"
    """``auto``: AdamW for attention probes, L-BFGS for pooled probes (as in the study)."""
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)
    """The grid cross-validation chooses from."""
    n_folds: int = 5
    """Cross-validation folds of the training part."""
    test_fraction: float = 0.2
    """Share of the sequences held out for the test metrics."""
    seeds: tuple[int, ...] = (0,)
    """One batched sweep per seed (initialisation and data order); metrics are averaged."""
    split_seed: int = 0
    """Seed of the train/test split and the folds."""
    select_by: SelectBy = "accuracy"
    """CV metric that picks the weight decay (ties go to the lower CV log loss)."""
    normalize: Literal["token_norm", "none"] = "token_norm"
    """``token_norm``: train on activations divided by one scalar, the median token norm of the
    training part over sqrt(d_model) (the returned probe reads raw activations; weight decay acts
    in the normalised units, so one grid suits every model and layer). ``none``: raw units."""
    bos: Literal["auto", "drop", "keep"] = "auto"
    """``auto``: drop each sequence's first token when the capture prepended BOS (recorded in the
    Activations), keep it otherwise. The probe remembers the choice (``exclude_bos``)."""
    execution: Literal["batched", "sequential"] = "batched"
    """``batched``: all members of a seed as one model. ``sequential``: one member at a time."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimiser settings; its ``optimizer`` field is overridden by ``optimizer`` unless auto."""

    def __post_init__(self) -> None:
        probe_class(self.probe)  # validates the kind
        if self.probe != "attention" and self.n_heads != 1:
            raise ValueError(f"a {self.probe} probe has no heads; leave n_heads at 1")
        if self.n_heads < 1:
            raise ValueError(
                f"an attention probe needs at least one head, got n_heads={self.n_heads}"
            )
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {self.n_folds}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.weight_decays or any(w < 0 for w in self.weight_decays):
            raise ValueError(f"weight_decays must be non-negative, got {self.weight_decays}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        object.__setattr__(self, "weight_decays", tuple(float(w) for w in self.weight_decays))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    @property
    def resolved_train(self) -> TrainConfig:
        """The train config with the optimizer this protocol uses."""
        opt = self.optimizer
        if opt == "auto":
            opt = "adamw" if self.probe == "attention" else "lbfgs"
        return replace(self.train, optimizer=opt)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["weight_decays"] = list(self.weight_decays)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProtocolConfig:
        """Rebuild from :meth:`to_dict` output."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown protocol keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for key in ("weight_decays", "seeds"):
            if key in d:
                d[key] = tuple(d[key])
        if isinstance(d.get("train"), Mapping):
            d["train"] = TrainConfig.from_dict(dict(d["train"]))
        return cls(**d)


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` found."""

    config: ProtocolConfig
    """The settings used."""
    metrics: dict[str, float]
    """Test metrics of the refit probe(s), averaged over seeds."""
    metrics_per_seed: list[dict[str, float]]
    """Test metrics of each seed's refit probe."""
    probe: Probe
    """The refit probe of the first seed (eval mode)."""
    probes: list[Probe]
    """The refit probe of every seed."""
    weight_decay: float
    """The weight decay cross-validation chose."""
    cv_table: list[dict[str, Any]]
    """One row per (weight decay, seed, fold): CV metrics and optimizer steps taken."""
    cv_summary: list[dict[str, float]]
    """One row per weight decay: CV metrics averaged over folds and seeds."""
    train_rows: Int[Tensor, " n_train"]
    """Indices of the training part."""
    test_rows: Int[Tensor, " n_test"]
    """Indices of the test part."""
    test_logits: Float[Tensor, "n_test n_outputs"]
    """Logits of :attr:`probe` on the test part."""
    input_scale: float
    """The scalar the activations were divided by during training (1.0 without ``normalize``)."""
    seconds: float
    """Wall time of the protocol."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors, no probe weights)."""
        return {
            "config": self.config.to_dict(),
            "probe_config": self.probe.config.to_dict(),
            "metrics": self.metrics,
            "metrics_per_seed": self.metrics_per_seed,
            "weight_decay": self.weight_decay,
            "cv_summary": self.cv_summary,
            "cv_table": self.cv_table,
            "n_train": int(self.train_rows.numel()),
            "n_test": int(self.test_rows.numel()),
            "input_scale": self.input_scale,
            "seconds": self.seconds,
        }


def _resolve_data(
    data: Any, labels: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Padded x, mask, labels and probe metadata from Activations or tensors."""
    meta: dict[str, Any] = {}
    if hasattr(data, "pad") and hasattr(data, "meta"):  # an Activations container
        # Keep the stored dtype (bf16 by default): fits convert a minibatch at a time.
        x, mask = data.pad(dtype=data.dtype)
        if labels is None:
            labels = data.labels
        m = data.meta
        meta = {
            "hook": getattr(m, "hook", None),
            "model_id": getattr(m, "model_id", None),
            "class_names": getattr(m, "class_names", None),
            "capture": {
                k: getattr(m, k)
                for k in ("backend", "dtype", "padding_side", "max_length", "prepend_bos")
                if hasattr(m, k)
            },
            "prepend_bos": bool(getattr(m, "prepend_bos", False)),
        }
    elif isinstance(data, Tensor):
        x = data
    else:
        raise TypeError(
            f"run_protocol takes Activations (from lp.capture) or a (batch, pos, d_model) tensor "
            f"with labels=..., got {type(data).__name__}"
        )
    if labels is None:
        raise ValueError("no labels: pass labels=... or capture with labels")
    labels = torch.as_tensor(labels)
    if x.ndim != 3:
        raise ValueError(f"expected activations (batch, pos, d_model), got {tuple(x.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"{tuple(labels.shape)} labels for {x.shape[0]} sequences; need one each")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        if labels.dtype.is_floating_point and not bool((labels == labels.round()).all()):
            raise ValueError("labels must be integer class ids 0..k-1")
        labels = labels.long()
    labels = labels.long().cpu()
    if int(labels.min()) < 0:
        raise ValueError("labels must be integer class ids 0..k-1, got negative ids")
    if labels.unique().numel() < 2:
        raise ValueError(
            f"all {labels.numel()} labels are class {int(labels[0])}: a probe needs at least two "
            "classes"
        )
    return x, mask, labels, meta


def _members_for_seed(
    seed: int,
    weight_decays: tuple[float, ...],
    fold: Tensor,
    n_folds: int,
    train_rows: Tensor,
    stop_rows: Tensor,
    n: int,
) -> tuple[Members, list[tuple[float, int]]]:
    """Members (decay x (folds + refit)) and their (decay, fold) keys; fold -1 is the refit."""
    in_train = torch.zeros(n, dtype=torch.bool)
    in_train[train_rows] = True
    in_stop = torch.zeros(n, dtype=torch.bool)
    in_stop[stop_rows] = True
    fold_of = torch.full((n,), -1, dtype=torch.long)
    fold_of[train_rows] = fold
    keys, train, stop = [], [], []
    for wd in weight_decays:
        for f in [*range(n_folds), -1]:
            held = fold_of == f if f >= 0 else torch.zeros(n, dtype=torch.bool)
            keys.append((wd, f))
            train.append(in_train & ~in_stop & ~held)
            stop.append(in_stop & ~held)
    members = Members(
        weight_decay=torch.tensor([wd for wd, _ in keys]),
        seeds=tuple(seed for _ in keys),
        train=torch.stack(train),
        stop=torch.stack(stop),
    )
    return members, keys


def _fit(
    config: ProbeConfig,
    x: Tensor,
    mask: Tensor,
    labels: Tensor,
    members: Members,
    train: TrainConfig,
    order_rows: Tensor,
    execution: str,
    scale: float,
    bar: _StepBar,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Fit all members batched, or one at a time; returns params, steps and best steps."""
    if execution == "batched":
        r = fit_members(
            config,
            x,
            mask,
            labels,
            members,
            train,
            order_rows=order_rows,
            input_scale=scale,
            on_step=bar.step,
        )
        bar.fit_done()
        return r.params, r.steps, r.best_step
    parts = []
    for i in range(len(members)):
        one = Members(
            weight_decay=members.weight_decay[i : i + 1],
            seeds=members.seeds[i : i + 1],
            train=members.train[i : i + 1],
            stop=members.stop[i : i + 1],
        )
        parts.append(
            fit_members(
                config,
                x,
                mask,
                labels,
                one,
                train,
                order_rows=order_rows,
                input_scale=scale,
                on_step=bar.step,
            )
        )
        bar.fit_done()
    params = {k: torch.cat([p.params[k] for p in parts]) for k in parts[0].params}
    return (
        params,
        torch.cat([p.steps for p in parts]),
        torch.cat([p.best_step for p in parts]),
    )


class _StepBar:
    """A progress bar over the optimisation steps of a protocol run's fits (or nothing).

    Each fit has a budget (``max_steps`` or ``lbfgs_max_iter``); one that stops early moves the
    bar to the end of its budget.
    """

    def __init__(self, label: str | None, n_fits: int, budget: int) -> None:
        self.budget = budget
        self.offset = 0
        self.bar = None
        if label is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_fits * budget, desc=label, unit="step", leave=False)

    def step(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, self.offset + min(done, self.budget) - self.bar.n))

    def fit_done(self) -> None:
        self.offset += self.budget
        self.step(0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _select(summary: list[dict[str, float]], select_by: str) -> float:
    """Weight decay with the best CV score (ties: lower CV log loss, then smaller decay)."""
    sign = 1.0 if select_by == "log_loss" else -1.0

    def key(row: dict[str, float]) -> tuple[float, float, float]:
        score = row[select_by]
        score = math.inf if math.isnan(score) else sign * score
        return (round(score, 12), row["log_loss"], row["weight_decay"])

    return min(summary, key=key)["weight_decay"]


def run_protocol(
    data: Any,
    labels: Int[Tensor, " n_labels"] | None = None,
    *,
    mask: Bool[Tensor, "batch pos"] | None = None,
    config: ProtocolConfig | None = None,
    progress: bool | str = False,
    **overrides: Any,
) -> ProtocolResult:
    """Train and evaluate one probe kind on one hook's activations, as the study does.

    Args:
        data: ``Activations`` of one hook (labels, hook and model recorded in it), or padded
            activations ``(batch, pos, d_model)``.
        labels: Class ids ``0..k-1`` (default: the labels stored in ``data``).
        mask: Valid tokens of a padded tensor (default: all valid).
        config: Protocol settings (default: the study's).
        progress: Show a progress bar over the optimisation steps (a string labels it).
        **overrides: Fields of :class:`ProtocolConfig` to replace, e.g.
            ``run_protocol(acts, probe="attention", n_heads=8)``.

    Returns:
        Test metrics, the refit probe, the chosen weight decay and the CV table.
    """
    start = time.perf_counter()
    config = (
        replace(config or ProtocolConfig(), **overrides)
        if overrides
        else (config or ProtocolConfig())
    )
    x, mask, labels, meta = _resolve_data(data, labels, mask)
    train = config.resolved_train
    n = x.shape[0]
    n_classes = int(labels.max()) + 1
    exclude_bos = config.bos == "drop" or (config.bos == "auto" and meta.get("prepend_bos", False))
    if exclude_bos:
        mask = without_first_token(mask)
    probe_config = ProbeConfig(
        kind=config.probe,
        d_model=x.shape[-1],
        n_outputs=1 if n_classes == 2 else n_classes,
        n_heads=config.n_heads,
        position=config.position,
        hook=meta.get("hook"),
        model_id=meta.get("model_id"),
        class_names=meta.get("class_names")
        if meta.get("class_names") and len(meta["class_names"]) == n_classes
        else None,
        capture=meta.get("capture") or {},
        exclude_bos=exclude_bos,
    )

    train_rows, test_rows = stratified_split(labels, config.test_fraction, seed=config.split_seed)
    fold = stratified_folds(labels[train_rows], config.n_folds, seed=config.split_seed)
    stop_rows = torch.empty(0, dtype=torch.long)
    if train.optimizer == "adamw" and train.early_stop_fraction > 0:
        _, held = stratified_split(labels[train_rows], train.early_stop_fraction, seed=train.seed)
        stop_rows = train_rows[held]
    device_labels = labels.to(x.device)
    scale = (
        token_scale(x[train_rows], mask[train_rows]) if config.normalize == "token_norm" else 1.0
    )

    budget = train.max_steps if train.optimizer == "adamw" else train.lbfgs_max_iter
    n_fits = len(config.seeds) * (
        1 if config.execution == "batched" else len(config.weight_decays) * (config.n_folds + 1)
    )
    label = progress if isinstance(progress, str) else (config.probe if progress else None)
    bar = _StepBar(label, n_fits, budget)
    cv_table: list[dict[str, Any]] = []
    refits: list[tuple[int, float, dict[str, Tensor], int]] = []
    test_logits_by_seed: dict[tuple[int, float], Tensor] = {}
    try:
        for seed in config.seeds:
            members, keys = _members_for_seed(
                seed, config.weight_decays, fold, config.n_folds, train_rows, stop_rows, n
            )
            seed_train = replace(train, seed=train.seed + seed)
            params, steps, best_step = _fit(
                probe_config,
                x,
                mask,
                device_labels,
                members,
                seed_train,
                train_rows,
                config.execution,
                scale,
                bar,
            )
            logits = predict_members(probe_config, params, x, mask, input_scale=scale).float().cpu()
            params = unscale_params(probe_config, params, scale)
            fold_of = torch.full((n,), -1, dtype=torch.long)
            fold_of[train_rows] = fold
            for i, (wd, f) in enumerate(keys):
                if f < 0:
                    refits.append((seed, wd, {k: v[i : i + 1] for k, v in params.items()}, i))
                    test_logits_by_seed[(seed, wd)] = logits[i, test_rows]
                    continue
                rows = (fold_of == f).nonzero().flatten()
                row = {"weight_decay": wd, "seed": seed, "fold": f}
                row.update(classification_metrics(logits[i, rows], labels[rows]))
                row.update(steps=int(steps[i]), best_step=int(best_step[i]))
                cv_table.append(row)
    finally:
        bar.close()
    cv_summary = []
    for wd in config.weight_decays:
        rows = [r for r in cv_table if r["weight_decay"] == wd]
        summary = {"weight_decay": wd}
        for name in METRIC_NAMES:
            values = [r[name] for r in rows if not math.isnan(r[name])]
            summary[name] = sum(values) / len(values) if values else math.nan
        cv_summary.append(summary)
    chosen = _select(cv_summary, config.select_by)

    cls = probe_class(config.probe)
    probes, per_seed = [], []
    for seed, wd, p, _ in refits:
        if wd != chosen:
            continue
        probe = cls.from_member(probe_config, p, 0).to(x.device).eval()
        probes.append(probe)
        per_seed.append(classification_metrics(test_logits_by_seed[(seed, wd)], labels[test_rows]))
    metrics = {name: sum(m[name] for m in per_seed) / len(per_seed) for name in per_seed[0]}
    logger.info(
        "%s probe (n_heads=%d): weight decay %g, test accuracy %.4f",
        config.probe,
        config.n_heads,
        chosen,
        metrics["accuracy"],
    )
    return ProtocolResult(
        config=config,
        metrics=metrics,
        metrics_per_seed=per_seed,
        probe=probes[0],
        probes=probes,
        weight_decay=chosen,
        cv_table=cv_table,
        cv_summary=cv_summary,
        train_rows=train_rows,
        test_rows=test_rows,
        test_logits=test_logits_by_seed[(config.seeds[0], chosen)],
        input_scale=scale,
        seconds=time.perf_counter() - start,
    )
