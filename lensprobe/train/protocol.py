"""The study's protocol: split, choose weight decay by K-fold CV, refit, test.

1. Stratified split of the sequences into a training part and a test part (80/20).
2. Stratified K folds (5) of the training part. For every weight decay of the grid and every
   fold, a member trains on the other folds and is scored on its own fold.
3. For every weight decay, one more member trains on the training part (the refit): all of it
   with L-BFGS; with AdamW all but the early-stopping slice (below), which no member trains on.
4. The weight decay with the best mean CV score is chosen; its refit member is the result, scored
   on the test part.

Each seed repeats all four steps on its own split (repeated random splits), so the spread of the
test metrics over seeds is a real estimate of their variability; :class:`ProtocolResult` reports
the mean, standard deviation and a t-interval of each metric, and
:func:`lensprobe.train.compare.compare` pairs two probe kinds run on the same splits.

All members of a seed (decays x (folds + refit)) are trained as one batched model that reads each
minibatch once (``execution="batched"``); ``execution="sequential"`` trains the same members one at
a time with identical settings, for comparison. AdamW members early-stop on a stratified slice of
the training part that no member trains on.

:func:`run_sweep` runs the protocol for several hooks x configs in one pass: the same splits for
every cell, each hook read once, every hook's AdamW members of a config in one batched fit; each
cell equals :func:`run_protocol` on it alone. ``Activations`` are streamed, never padded whole
(:mod:`lensprobe.train.streaming`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe._progress import progress_bar, wanted
from lensprobe.activations import Activations
from lensprobe.errors import InputError, InputTypeError
from lensprobe.metrics import (
    classification_metrics,
    estimate,
    monitoring_thresholds,
)
from lensprobe.probes import Probe, ProbeConfig, probe_class
from lensprobe.probes.base import tokens_read
from lensprobe.probes.spec import ProbeSpec
from lensprobe.reduced import ReducedActivations
from lensprobe.train.budget import MemoryEstimate, check_budget, estimate_training_memory
from lensprobe.train.checks import check_activations, encode_labels
from lensprobe.train.config import ProtocolConfig, TrainConfig
from lensprobe.train.fit import (
    fit_hooks,
    fit_members,
    predict_members,
    token_scale,
    unscale_params,
)
from lensprobe.train.members import Members
from lensprobe.train.result import AllRowsFit, ProtocolResult, SeedRun
from lensprobe.train.split import stratified_folds, stratified_split
from lensprobe.train.streaming import Streamed, stream_inputs

logger = logging.getLogger(__name__)


def run_protocol(
    data: Any,
    labels: Any = None,
    *,
    mask: Bool[Tensor, "batch pos"] | Tensor | None = None,
    config: ProtocolConfig | None = None,
    progress: bool | str | None = None,
    max_memory: int | float | str | None = None,
    control: Any = None,
    **overrides: Any,
) -> ProtocolResult:
    """Train and evaluate one probe kind on one hook's activations, as the study does.

    Inputs are checked before any compute (empty or non-finite activations, rows without a
    valid token, a bad mask, single-class labels: :class:`lensprobe.errors.InputError` naming
    where and how to fix it). Then each seed of ``config.seeds``, independently:

    1. splits the sequences into a stratified training and test part (split seed
       ``split_seed + seed``; every seed's split is drawn before any training);
    2. cross-validates: every weight decay x fold member, and each decay's refit member,
       train in one batched fit; each fold member is scored on its held-out fold;
    3. chooses the weight decay with the best mean CV score;
    4. refits and tests: the chosen decay's refit member becomes the probe, scored once on
       the test part.

    Args:
        data: ``Activations`` of one hook (labels, hook and model recorded in it), or padded
            activations ``(batch, pos, d_model)``.
        labels: One label per sequence (default: the labels stored in ``data``): integers of
            any values, strings or booleans, mapped to classes ``0..k-1`` in sorted order
            (:attr:`ProtocolResult.classes`); labels other than ``0..k-1`` become the probe's
            ``class_names``.
        mask: Valid tokens of a padded tensor, bool ``(batch, pos)`` (default: all valid).
        config: Protocol settings (default: the study's).
        progress: Show a progress bar over the optimisation steps (a string labels it); None:
            in a terminal or a notebook, not in a script whose stderr goes to a file.
        max_memory: Most memory the run may hold, bytes or a size such as ``"4GB"`` (default:
            80% of the memory available when it starts); a run estimated above it
            (:func:`lensprobe.train.budget.estimate_training_memory`) raises
            :class:`~lensprobe.errors.MemoryBudgetError` before any compute.
        control: Binary tasks: a separate set of negative texts at the same hook (e.g. ordinary
            chat), ``Activations`` or a padded tensor (or an ``(x, mask)`` pair), on which each
            seed's operating points are fixed instead of the training part's out-of-fold
            logits (Apollo Research's protocol). Every row counts as a negative.
        **overrides: Fields of :class:`ProtocolConfig` to replace, e.g.
            ``run_protocol(acts, probe="attention", n_heads=8)``.

    Returns:
        Per-seed runs, test metrics (mean, standard deviation, t-interval over seeds), the first
        seed's refit probe and chosen weight decay, and the CV table.
    """
    start = time.perf_counter()
    config = replace(config or ProtocolConfig(), **overrides) if overrides else config
    config = config or ProtocolConfig()
    check_budget(memory_estimate(data, labels, config, config.resolved_train), max_memory)
    hook, labels, classes = _prepare(data, labels, mask, config)
    _check_control(control, hook.d_model, len(classes), None)
    # Activations are never padded whole: one streaming pass reads the token norms (and a pooled
    # probe's features, trained on as one-token sequences); attention minibatches are padded
    # from the storage as they are read
    inputs = _Input.of(hook, config, stream_inputs if hook.streamed else None)
    label = (
        progress if isinstance(progress, str) else (_label(config) if wanted(progress) else None)
    )
    (result,) = _train_hooks([inputs], config, labels, classes, label, [control])
    return replace(result, seconds=time.perf_counter() - start)


def run_sweep(
    data: Mapping[str, Any],
    configs: Sequence[ProtocolConfig],
    *,
    labels: Any = None,
    masks: Mapping[str, Tensor] | None = None,
    cells: Collection[tuple[str, int]] | None = None,
    progress: bool | None = None,
    max_memory: int | float | str | None = None,
    on_result: Callable[[str, int, ProtocolResult], None] | None = None,
    controls: Mapping[str, Any] | None = None,
) -> dict[tuple[str, int], ProtocolResult]:
    """:func:`run_protocol` for every hook x config, in one pass over the hooks.

    Every cell uses each seed's same split, folds and early-stopping slice (they depend only on
    the labels and the split settings, which every config must share), so hooks and probe kinds
    are compared on the same rows. Each hook is read once for its token norms and the pooled
    features of every pooled kind; per config, the AdamW members of every hook train as one
    batched model that reads each minibatch of each hook once
    (:func:`~lensprobe.train.fit.fit_hooks`). Each cell's result is :func:`run_protocol`'s on
    that cell alone (tests/test_sweep.py).

    Args:
        data: Hook name -> ``Activations`` (labels stored), all of the same texts and labels, or
            padded ``(batch, pos, d_model)`` tensors with ``labels``.
        configs: Protocol settings per probe, e.g. ``spec.protocol(base)`` for each spec.
        labels: One label per sequence for every hook (default: each hook's stored labels).
        masks: Hook name -> valid tokens of its padded tensor (default: all valid).
        cells: Only these ``(hook, config index)`` cells (default: all); a hook is read only
            when one of its cells is trained.
        progress: Show a progress bar over each config's optimisation steps, labelled with the
            cells it trains (``cells 4-6 of 15``); None: in a terminal or a notebook only.
        max_memory: As :func:`run_protocol`; every cell is checked before any compute.
        on_result: Called with (hook, config index, result) as each cell finishes.
        controls: Hook name -> a control set of negatives at that hook (see
            :func:`run_protocol`'s ``control``); every hook needs one when given.

    Returns:
        ``(hook, config index) -> ProtocolResult``.

    Raises:
        InputError: The hooks disagree on their labels, or the configs on their splits.
    """
    configs = list(configs)
    todo = {(h, i) for h in data for i in range(len(configs))} if cells is None else set(cells)
    data = {h: v for h, v in data.items() if any((h, i) in todo for i in range(len(configs)))}
    if not data or not configs:
        return {}
    _check_sweep(configs)
    _check_sweep_memory(data, labels, configs, todo, max_memory)
    hooks, labels, classes = _sweep_hooks(data, labels, masks, configs[0])
    _check_reduced(hooks, configs, todo)
    for name, h in hooks.items():
        _check_control(_control(controls, name), h.d_model, len(classes), name)
    streams = _streams(hooks, configs, todo, len(classes))
    out: dict[tuple[str, int], ProtocolResult] = {}
    todo_configs = [i for i in range(len(configs)) if any((h, i) in todo for h in hooks)]
    first = 1
    for i in todo_configs:
        config = configs[i]
        names = [h for h in hooks if (h, i) in todo]
        start = time.perf_counter()
        inputs = [_Input.of(hooks[h], config, streams.get(h)) for h in names]
        label = None
        if wanted(progress):
            last = first + len(names) - 1
            cells = f"cell {first}" if last == first else f"cells {first}-{last}"
            label = f"{cells} of {len(todo)}: {_label(config)} at {len(names)} hook(s)"
        first += len(names)
        results = _train_hooks(
            inputs, config, labels, classes, label, [_control(controls, h) for h in names]
        )
        seconds = (time.perf_counter() - start) / len(results)
        for name, result in zip(names, results, strict=True):
            out[name, i] = replace(result, seconds=seconds)
            if on_result is not None:
                on_result(name, i, out[name, i])
    return out


def fit_all_rows(
    data: Any,
    labels: Any = None,
    *,
    mask: Bool[Tensor, "batch pos"] | Tensor | None = None,
    config: ProtocolConfig | None = None,
    cross_validate: bool = True,
    progress: bool | str | None = False,
    max_memory: int | float | str | None = None,
) -> AllRowsFit:
    """One probe trained on every row: the protocol without a test part (an estimator's ``fit``).

    The same checks, label mapping, token scale, BOS rule and members as :func:`run_protocol`
    (its first seed, ``config.seeds[0]``), with every row in the training part: with
    ``cross_validate``, each weight decay of ``config.weight_decays`` is scored by
    ``config.n_folds``-fold CV over all rows and the best one's refit member (trained on all
    rows, AdamW's early-stopping slice aside) is returned; without, the refit member of the
    first weight decay is (no folds train).
    """
    config = config or ProtocolConfig()
    if not cross_validate:
        config = replace(config, weight_decays=config.weight_decays[:1])
    train = config.resolved_train
    check_budget(memory_estimate(data, labels, config, train), max_memory)
    hook, ids, classes = _prepare(data, labels, mask, config)
    inp = _Input.of(hook, config, stream_inputs if hook.streamed else None)
    seed = config.seeds[0]
    split = _split(ids, config, train, seed, whole=True, folds=cross_validate)
    label = (
        progress if isinstance(progress, str) else (_label(config) if wanted(progress) else None)
    )
    bar = _StepBar.for_protocol(label, replace(config, seeds=(seed,)), train)
    try:
        (cv,) = _cross_validate([inp], config, train, ids, seed, split, bar)
    finally:
        bar.close()
    chosen = _choose_decay(cv.summary, config.select_by) if cross_validate else cv.keys[0][0]
    refit = cv.keys.index((chosen, -1))
    probe = probe_class(inp.probe_config.kind).from_member(
        inp.probe_config, {k: v[refit : refit + 1] for k, v in cv.params.items()}, 0
    )
    pooled = probe_class(inp.probe_config.kind).pooled
    return AllRowsFit(
        probe=probe.to(inp.x.device).eval(),
        classes=classes,
        weight_decay=chosen,
        cv_summary=cv.summary if cross_validate else [],
        input_scale=cv.scale,
        precision=train.precision_on(inp.x.device, pooled=pooled),
    )


def _streams(
    hooks: Mapping[str, _Hook],
    configs: list[ProtocolConfig],
    todo: set[tuple[str, int]],
    n_classes: int,
) -> dict[str, Streamed]:
    """One streaming pass per streamed hook: token norms, and the pooled probes' features."""
    out = {}
    for name, h in hooks.items():
        if h.streamed:
            probes = [
                _probe_config(c, h.d_model, n_classes, h.meta)
                for i, c in enumerate(configs)
                if (name, i) in todo
            ]
            out[name] = stream_inputs(h.data, probes[0], probes)  # type: ignore[arg-type]
    return out


def _check_sweep_memory(
    data: Mapping[str, Any],
    labels: Any,
    configs: list[ProtocolConfig],
    todo: set[tuple[str, int]],
    max_memory: int | float | str | None,
) -> None:
    """Every cell's memory against the budget, before anything is read."""
    for i, config in enumerate(configs):
        train = config.resolved_train
        names = [h for h in data if (h, i) in todo]
        together = 1 if train.optimizer == "lbfgs" else len(names)
        for name in names:
            estimate = memory_estimate(data[name], labels, config, train, hooks=together)
            check_budget(estimate, max_memory)


def _check_reduced(
    hooks: Mapping[str, _Hook], configs: list[ProtocolConfig], todo: set[tuple[str, int]]
) -> None:
    """A reduced capture serves only some probe kinds: the others are refused before any fit."""
    for name, i in sorted(todo):
        h = hooks.get(name)
        if h is not None and isinstance(h.data, ReducedActivations):
            h.data.check_serves(_probe_config(configs[i], h.d_model, h.n_classes, h.meta))


def _sweep_hooks(
    data: Mapping[str, Any], labels: Any, masks: Mapping[str, Tensor] | None, config: ProtocolConfig
) -> tuple[dict[str, _Hook], Tensor, tuple[Any, ...]]:
    """Every hook's checked data, and the class ids and classes all of them share."""
    hooks: dict[str, _Hook] = {}
    ids = classes = None
    for name, acts in data.items():
        mask = None if masks is None else masks.get(name)
        hooks[name], hook_ids, names = _prepare(acts, labels, mask, config)
        if ids is None:
            ids, classes = hook_ids, names
        elif not (torch.equal(hook_ids, ids) and names == classes):
            raise InputError(
                f"hook {name!r} has other labels than {next(iter(data))!r}: a sweep trains every "
                "hook on the same texts; capture all hooks in one lp.capture call"
            )
    assert ids is not None and classes is not None
    return hooks, ids, classes


def _check_sweep(configs: list[ProtocolConfig]) -> None:
    """Every config of a sweep splits the rows alike (the same seeds, split seed, folds, ...)."""
    for name in SPLIT_FIELDS:
        values = {getattr(c, name) for c in configs}
        if len(values) > 1:
            raise InputError(
                f"the configs of a sweep differ in {name} ({sorted(values, key=str)}): every "
                "cell of a sweep must use the same splits; run the others in their own sweep"
            )


SPLIT_FIELDS = (
    "seeds",
    "split_seed",
    "test_fraction",
    "test_rows",
    "n_folds",
    "bos",
    "normalize",
)
"""The settings every config of a sweep shares: the rows and tokens each cell reads."""


@dataclass
class _Hook:
    """One hook's checked activations, before any probe is chosen."""

    data: Any
    """The caller's data: ``Activations`` (streamed) or a padded tensor."""
    x: Tensor | None
    """The padded tensor (None for ``Activations``)."""
    mask: Tensor | None
    d_model: int
    n_classes: int
    meta: dict[str, Any]
    scales: dict[tuple[int, bool], float] = field(default_factory=dict)
    """Input scale per (split seed, BOS excluded), computed once for every probe kind."""

    @property
    def streamed(self) -> bool:
        """Whether the hook is streamed (ragged ``Activations``)."""
        return self.x is None


@dataclass(frozen=True)
class _Input:
    """What one cell's fits read: a hook's rows for one probe config."""

    hook: _Hook
    probe_config: ProbeConfig
    x: Tensor | Activations
    """Padded activations, the ``Activations`` themselves, or a pooled probe's streamed
    features as one-token sequences."""
    mask: Tensor | None
    stream: Streamed | None

    @classmethod
    def of(cls, hook: _Hook, config: ProtocolConfig, stream: Any) -> _Input:
        """The input of ``config`` on ``hook``.

        ``stream``: a :class:`Streamed` of the hook, :func:`stream_inputs` to stream it now, or
        None (a padded tensor).
        """
        probe_config = _probe_config(config, hook.d_model, hook.n_classes, hook.meta)
        if isinstance(hook.data, ReducedActivations):
            hook.data.check_serves(probe_config)
        if callable(stream):
            stream = stream(hook.data, probe_config)
        x: Tensor | Activations = hook.data if hook.x is None else hook.x
        mask = hook.mask
        if stream is not None and probe_config.aggregation in stream.features:
            x = stream.features[probe_config.aggregation]
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        return cls(hook, probe_config, x, mask, stream)

    @property
    def n(self) -> int:
        return len(self.x) if isinstance(self.x, Activations) else self.x.shape[0]

    def scale(self, config: ProtocolConfig, split: _Split) -> float:
        """The input scale of a seed's training rows (1.0 without ``token_norm``)."""
        if config.normalize != "token_norm":
            return 1.0
        key = (split.split_seed, self.probe_config.exclude_bos)
        if key not in self.hook.scales:
            if self.stream is not None:
                value = self.stream.token_scale(split.train_rows)
            else:
                assert self.hook.x is not None and self.hook.mask is not None
                read = tokens_read(self.probe_config, self.hook.mask)
                value = token_scale(self.hook.x, read, split.train_rows)
            self.hook.scales[key] = value
        return self.hook.scales[key]


def _prepare(
    data: Any, labels: Any, mask: Tensor | None, config: ProtocolConfig
) -> tuple[_Hook, Tensor, tuple[Any, ...]]:
    """One hook's checked data, class ids ``0..k-1`` and the original classes."""
    padded, mask, ids, classes, meta = _resolve_data(data, labels, mask)
    d_model = int(data.meta.d_model) if padded is None else padded.shape[-1]
    return _Hook(data, padded, mask, d_model, len(classes), meta), ids, classes


def _control(controls: Mapping[str, Any] | None, hook: str) -> Any:
    """The control set of a hook (None without controls)."""
    if controls is None:
        return None
    if hook not in controls:
        raise InputError(
            f"controls has no control set for hook {hook!r}; give one per hook (same hooks as "
            "the activations), or none"
        )
    return controls[hook]


def _train_hooks(
    inputs: list[_Input],
    config: ProtocolConfig,
    labels: Tensor,
    classes: tuple[Any, ...],
    label: str | None,
    controls: list[Any],
) -> list[ProtocolResult]:
    """Steps 1-4 of every seed for one config on several hooks (their fits batched)."""
    train = config.resolved_train
    splits = [_split(labels, config, train, seed) for seed in config.seeds]
    bar = _StepBar.for_protocol(label, config, train, len(inputs))
    runs: list[list[SeedRun]] = [[] for _ in inputs]
    tables: list[list[dict[str, Any]]] = [[] for _ in inputs]
    try:
        for seed, split in zip(config.seeds, splits, strict=True):
            cvs = _cross_validate(inputs, config, train, labels, seed, split, bar)
            for i, (inp, cv) in enumerate(zip(inputs, cvs, strict=True)):
                chosen = _choose_decay(cv.summary, config.select_by)
                device = inp.x.device
                runs[i].append(
                    _refit_and_test(inp.probe_config, cv, chosen, labels, device, controls[i])
                )
                tables[i] += cv.rows
    finally:
        bar.close()
    pooled = probe_class(inputs[0].probe_config.kind).pooled
    precision = train.precision_on(inputs[0].x.device, pooled=pooled)
    return [
        replace(_protocol_result(config, r, classes, t, 0.0), precision=precision)
        for r, t in zip(runs, tables, strict=True)
    ]


# --- 1. split --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """One seed's rows: train/test split, folds of the training part, early-stopping slice."""

    split_seed: int
    train_rows: Tensor
    test_rows: Tensor
    fold: Tensor
    stop_rows: Tensor
    n_folds: int
    """Folds of the training part (0: no cross-validation, only the refit members)."""

    def fold_of(self, n: int) -> Int[Tensor, " batch"]:
        """The fold of each of the ``n`` rows (-1: not in the training part)."""
        fold_of = torch.full((n,), -1, dtype=torch.long)
        fold_of[self.train_rows] = self.fold
        return fold_of


def _split(
    labels: Tensor,
    config: ProtocolConfig,
    train: TrainConfig,
    seed: int,
    *,
    whole: bool = False,
    folds: bool = True,
) -> _Split:
    """Step 1, the split of one seed: stratified, seeded with ``config.split_seed + seed``.

    The training part is cut into ``config.n_folds`` stratified folds; with AdamW and early
    stopping, a stratified slice of it is held out for every member to early-stop on.
    ``whole``: every row is in the training part (no test part), as :func:`fit_all_rows` trains;
    ``folds=False``: no folds (only refit members train).
    """
    split_seed = config.split_seed + seed
    if whole:
        train_rows, test_rows = torch.arange(labels.numel()), torch.empty(0, dtype=torch.long)
    elif config.test_rows is not None:
        train_rows, test_rows = _given_split(labels, config.test_rows)
    else:
        train_rows, test_rows = stratified_split(labels, config.test_fraction, seed=split_seed)
    n_folds = config.n_folds if folds else 0
    fold = torch.full((train_rows.numel(),), -1, dtype=torch.long)
    if n_folds:
        fold = stratified_folds(labels[train_rows], n_folds, seed=split_seed)
    stop_rows = torch.empty(0, dtype=torch.long)
    if train.optimizer == "adamw" and train.early_stop_fraction > 0:
        _, held = stratified_split(
            labels[train_rows], train.early_stop_fraction, seed=train.seed + split_seed
        )
        stop_rows = train_rows[held]
    return _Split(split_seed, train_rows, test_rows, fold, stop_rows, n_folds)


def _given_split(labels: Tensor, test_rows: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The training and test rows of a given test part (every other row trains)."""
    n = labels.numel()
    if max(test_rows) >= n:
        raise InputError(
            f"test_rows names row {max(test_rows)}, but the data has {n} rows: pass the test "
            "split's row indices in the captured data"
        )
    test = torch.tensor(test_rows, dtype=torch.long)
    in_test = torch.zeros(n, dtype=torch.bool)
    in_test[test] = True
    train = (~in_test).nonzero().flatten()
    missing = sorted(set(labels.tolist()) - set(labels[train].tolist()))
    if missing:
        raise InputError(
            f"the training part (rows outside test_rows) has no row of class id(s) {missing}: "
            "a probe cannot learn a class it never sees; use a training split with every class"
        )
    return train, test


# --- 2. cross-validate -----------------------------------------------------------------------


@dataclass(frozen=True)
class _SeedCV:
    """One seed's trained members (folds and refits) and their cross-validation scores."""

    seed: int
    split: _Split
    keys: list[tuple[float, int]]
    """(weight decay, fold) of each member; fold -1 is the decay's refit member."""
    logits: Float[Tensor, "member batch n_outputs"]
    """Every member's logits on every row (float32, CPU)."""
    params: dict[str, Tensor]
    """Every member's parameters, reading raw activations."""
    scale: float
    """The input scale the members trained at."""
    rows: list[dict[str, Any]]
    """One row per (weight decay, fold): CV metrics on the fold and optimizer steps."""
    summary: list[dict[str, float]]
    """One row per weight decay: :attr:`rows` averaged over the folds."""


def _cross_validate(
    inputs: list[_Input],
    config: ProtocolConfig,
    train: TrainConfig,
    labels: Tensor,
    seed: int,
    split: _Split,
    bar: _StepBar,
) -> list[_SeedCV]:
    """Step 2 (with step 3's refit members): train one seed's members, score each fold member.

    Every weight decay has one member per fold, trained on the other folds, and one refit
    member trained on the whole training part; all of them train as one batched fit (or one
    at a time with ``execution="sequential"``) on activations divided by the seed's token
    scale. Each fold member is scored on the fold it did not train on. Several hooks' members
    train in one fit, each on its own hook's activations and scale (one result per hook).
    """
    n = inputs[0].n
    members, keys = _members_for_seed(seed, config, split, n)
    # masks stay as captured: fits and predictions read tokens_read(probe_config, mask) themselves
    scales = [inp.scale(config, split) for inp in inputs]
    train = replace(train, seed=train.seed + seed)
    # AdamW draws its minibatches from the rows some member trains on: never the test part or
    # the early-stopping slice, so the refit (the reported probe) reads exactly its own rows
    order_rows = members.train.any(dim=0).nonzero().flatten()
    sources = [(inp.x, inp.mask, scale) for inp, scale in zip(inputs, scales, strict=True)]
    fits = _fit(
        inputs[0].probe_config,
        sources,
        labels.to(inputs[0].x.device),
        members,
        train,
        order_rows,
        config.execution,
        bar,
    )
    out = []
    for inp, scale, (params, steps, best_step) in zip(inputs, scales, fits, strict=True):
        logits = predict_members(inp.probe_config, params, inp.x, inp.mask, input_scale=scale)
        logits = logits.float().cpu()
        params = unscale_params(inp.probe_config, params, scale)
        rows = _fold_scores(keys, logits, labels, split.fold_of(n), seed, steps, best_step)
        summary = _summarise(rows, config.weight_decays)
        out.append(_SeedCV(seed, split, keys, logits, params, scale, rows, summary))
    return out


def _fold_scores(
    keys: list[tuple[float, int]],
    logits: Tensor,
    labels: Tensor,
    fold_of: Tensor,
    seed: int,
    steps: Tensor,
    best_step: Tensor,
) -> list[dict[str, Any]]:
    """One CV row per fold member: its metrics on the fold it did not train on, and its steps."""
    rows = []
    for i, (wd, f) in enumerate(keys):
        if f < 0:
            continue
        held = (fold_of == f).nonzero().flatten()
        row: dict[str, Any] = {"weight_decay": wd, "seed": seed, "fold": f}
        row.update(classification_metrics(logits[i, held], labels[held]))
        row.update(steps=int(steps[i]), best_step=int(best_step[i]))
        rows.append(row)
    return rows


# --- 3. choose -------------------------------------------------------------------------------


def _choose_decay(summary: list[dict[str, float]], select_by: str) -> float:
    """Step 3: the weight decay with the best CV score (ties: lower CV log loss, then smaller)."""
    sign = 1.0 if select_by == "log_loss" else -1.0

    def key(row: dict[str, float]) -> tuple[float, float, float]:
        score = row[select_by]
        score = math.inf if math.isnan(score) else sign * score
        return (round(score, 12), row["log_loss"], row["weight_decay"])

    return min(summary, key=key)["weight_decay"]


# --- 4. refit and test -----------------------------------------------------------------------


def _refit_and_test(
    probe_config: ProbeConfig,
    cv: _SeedCV,
    chosen: float,
    labels: Tensor,
    device: torch.device,
    control: Any = None,
) -> SeedRun:
    """Step 4: the chosen decay's refit member as the seed's probe, scored once on the test part.

    Binary tasks fix their operating points (the TPR-at-FPR thresholds) on the out-of-fold
    logits of the training part at the chosen decay, or on the refit probe's logits on the
    ``control`` negatives (training-side data either way), apply them to the test logits, and
    store them in the probe's config with what they were fixed on.
    """
    split = cv.split
    cv_logits = _out_of_fold(cv, chosen)[split.train_rows]
    refit = cv.keys.index((chosen, -1))
    test_logits = cv.logits[refit, split.test_rows]
    test_labels = labels[split.test_rows]
    probe = probe_class(probe_config.kind).from_member(
        probe_config, {k: v[refit : refit + 1] for k, v in cv.params.items()}, 0
    )
    probe = probe.to(device).eval()
    thresholds: dict[str, float] = {}
    if probe_config.n_outputs == 1:
        if control is None:
            train_labels = labels[split.train_rows]
            thresholds = monitoring_thresholds(cv_logits, train_labels)
            n_neg = int((train_labels == 0).sum())
            fixed_on = (
                f"out-of-fold logits of the training part ({len(train_labels)} rows, "
                f"{n_neg} negatives)"
            )
        else:
            control_logits = _control_logits(probe, control)
            negatives = torch.zeros(len(control_logits), dtype=torch.long)
            thresholds = monitoring_thresholds(control_logits, negatives)
            fixed_on = f"control set ({len(control_logits)} rows, all negatives)"
        probe.config = replace(
            probe.config,
            thresholds={k: None if math.isnan(v) else v for k, v in thresholds.items()},
            fixed_on=fixed_on,
        )
    return SeedRun(
        seed=cv.seed,
        split_seed=split.split_seed,
        train_rows=split.train_rows,
        test_rows=split.test_rows,
        weight_decay=chosen,
        metrics=classification_metrics(test_logits, test_labels, thresholds=thresholds),
        cv_summary=cv.summary,
        test_logits=test_logits,
        test_labels=test_labels,
        cv_logits=cv_logits,
        thresholds=thresholds,
        input_scale=cv.scale,
        probe=probe,
    )


CONTROL_BATCH = 64
"""Control sequences scored at a time."""


def _control_rows(
    control: Any, where: str = ""
) -> tuple[int, int, Callable[[int, int], tuple[Tensor, Tensor]]]:
    """A control set's rows, width and a reader of rows ``[start, stop)`` as (x, mask)."""
    if isinstance(control, Activations):
        acts = control
        return len(acts), acts.d_model, lambda a, b: acts.pad(torch.arange(a, b))
    if isinstance(control, tuple) and len(control) == 2 and isinstance(control[0], Tensor):
        x, mask = control
    elif isinstance(control, Tensor) and control.ndim == 3:
        x, mask = control, torch.ones(control.shape[:2], dtype=torch.bool)
    else:
        raise InputTypeError(
            f"control{where} must be Activations, a padded (batch, pos, d_model) tensor or an "
            f"(x, mask) pair, got {type(control).__name__}"
        )
    return x.shape[0], x.shape[-1], lambda a, b: (x[a:b], mask[a:b])


def _check_control(control: Any, d_model: int, n_classes: int, hook: str | None) -> None:
    """Refuse a control set that cannot fix thresholds, before any compute."""
    if control is None:
        return
    where = f" for {hook!r}" if hook else ""
    if n_classes != 2:
        raise InputError(
            f"a control set fixes the thresholds of a binary probe; this task has {n_classes} "
            "classes: drop control="
        )
    n, width, _ = _control_rows(control, where)
    if n == 0:
        raise InputError(f"the control set{where} is empty; pass negatives of the same hook")
    if width != d_model:
        raise InputError(
            f"the control set{where} has width {width} but the activations have {d_model}: "
            "capture the control texts at the same hook"
        )


@torch.no_grad()
def _control_logits(probe: Probe, control: Any) -> Float[Tensor, "n_control n_outputs"]:
    """The probe's logits on every row of a control set, a batch at a time."""
    n, _, rows = _control_rows(control)
    parts = [
        probe(*rows(a, min(a + CONTROL_BATCH, n))).float().cpu() for a in range(0, n, CONTROL_BATCH)
    ]
    return torch.cat(parts) if parts else torch.empty(0, probe.config.n_outputs)


def _out_of_fold(cv: _SeedCV, chosen: float) -> Float[Tensor, "batch n_outputs"]:
    """Out-of-fold logits at the chosen decay, one row per sequence.

    Each training row is scored by the fold member that did not train on it; rows outside the
    training part are left unset.
    """
    fold_of = cv.split.fold_of(cv.logits.shape[1])
    oof = torch.empty(cv.logits.shape[1], cv.logits.shape[-1])
    for i, (wd, f) in enumerate(cv.keys):
        if wd == chosen and f >= 0:
            oof[fold_of == f] = cv.logits[i, fold_of == f]
    return oof


# --- the result ------------------------------------------------------------------------------


def _protocol_result(
    config: ProtocolConfig,
    runs: list[SeedRun],
    classes: tuple[Any, ...],
    cv_table: list[dict[str, Any]],
    seconds: float,
) -> ProtocolResult:
    """The seeds' runs with their test metrics averaged, a t-interval each, and the CV tables."""
    metrics = {name: sum(r.metrics[name] for r in runs) / len(runs) for name in runs[0].metrics}
    n_train = int(runs[0].train_rows.numel())
    summary = {
        name: estimate(name, [r.metrics[name] for r in runs], runs[0].n_test, n_train)
        for name in metrics
    }
    logger.info(
        "%s probe (n_heads=%d): weight decay %s, test accuracy %s",
        config.probe,
        config.n_heads,
        [r.weight_decay for r in runs],
        summary["accuracy"],
    )
    return ProtocolResult(
        config=config,
        runs=runs,
        classes=classes,
        metrics=metrics,
        summary=summary,
        cv_table=cv_table,
        cv_summary=_summarise(cv_table, config.weight_decays),
        seconds=seconds,
    )


_CV_KEYS = ("weight_decay", "seed", "fold", "steps", "best_step")


def _summarise(cv_rows: list[dict[str, Any]], weight_decays: tuple[float, ...]) -> list[dict]:
    """One row per weight decay: each CV metric averaged over the rows (NaN values skipped)."""
    names = [k for k in dict.fromkeys(k for r in cv_rows for k in r) if k not in _CV_KEYS]
    out = []
    for wd in weight_decays:
        rows = [r for r in cv_rows if r["weight_decay"] == wd]
        summary = {"weight_decay": wd}
        for name in names:
            values = [r[name] for r in rows if name in r and not math.isnan(r[name])]
            summary[name] = sum(values) / len(values) if values else math.nan
        out.append(summary)
    return out


# --- inputs, members, fits -------------------------------------------------------------------


def memory_estimate(
    data: Any, labels: Any, config: ProtocolConfig, train: TrainConfig, *, hooks: int = 1
) -> MemoryEstimate:
    """What :func:`run_protocol` would hold at its peak on ``data`` (nothing is padded or read).

    ``hooks``: how many hooks' members train in one fit (:func:`run_sweep`); their minibatches
    and members count that many times.

    Ragged ``Activations`` are streamed (no padded copy; a float64 norm per token for the input
    scale); a padded tensor is used as it is. See
    :func:`lensprobe.train.budget.estimate_training_memory`.
    """
    tokens = 0
    if isinstance(data, Activations):
        n, d = len(data), int(data.meta.d_model)
        pos = int(data.lengths.max()) if n else 0
        tokens = data.n_tokens
        labels = data.labels if labels is None else labels
    elif isinstance(data, Tensor) and data.ndim == 3:
        n, pos, d = data.shape
    else:  # other containers are padded by their own pad(); _resolve_data checks the rest
        return MemoryEstimate({})
    try:
        n_classes = len(set(labels.tolist() if isinstance(labels, Tensor) else labels))
    except TypeError:
        n_classes = 2
    cls = probe_class(config.probe)
    return estimate_training_memory(
        n=n,
        pos=pos,
        d_model=d,
        streamed_tokens=tokens,
        pooled=cls.pooled,
        lbfgs=train.optimizer == "lbfgs",
        members=len(config.weight_decays) * (config.n_folds + 1) * hooks,
        batch_size=train.batch_size,
        n_heads=config.n_heads if not cls.pooled else 1,
        n_outputs=1 if n_classes <= 2 else n_classes,
        hooks=hooks,
        per_head_token=cls.floats_per_head_token(
            1 if n_classes <= 2 else n_classes, config.options
        ),
    )


def _resolve_data(
    data: Any, labels: Any, mask: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor, tuple[Any, ...], dict[str, Any]]:
    """Checked x and mask, class ids ``0..k-1``, the original classes, probe metadata.

    Every check runs here, before any compute (see :mod:`lensprobe.train.checks`), except the
    values of ``Activations``: they are never padded whole (x and mask are None) and
    :func:`~lensprobe.train.streaming.stream_inputs` checks them as it reads them.
    """
    meta: dict[str, Any] = {}
    names = None
    x: Tensor | None = None
    if hasattr(data, "pad") and hasattr(data, "meta"):  # an Activations container
        if not isinstance(data, Activations):  # another container with its own pad()
            # Keep the stored dtype (bf16 by default): fits convert a minibatch at a time.
            x, mask = data.pad(dtype=data.dtype)
        m = data.meta
        if labels is None:
            labels = data.labels
            names = getattr(m, "class_names", None)
        meta = {
            "hook": getattr(m, "hook", None),
            "model_id": getattr(m, "model_id", None),
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
        raise InputTypeError(
            f"run_protocol takes Activations (from lp.capture) or a (batch, pos, d_model) tensor "
            f"with labels=..., got {type(data).__name__}"
        )
    if labels is None:
        raise InputError("no labels: pass labels=... or capture with labels")
    if mask is None and isinstance(x, Tensor) and x.ndim == 3:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    try:
        if x is not None:
            check_activations(x, mask)
        n = len(data) if x is None else x.shape[0]
        ids, classes, class_names = encode_labels(labels, n, names)
    except (TypeError, ValueError) as err:
        raise InputError(str(err)) from None
    if len(classes) < 2:
        raise InputError(
            f"all {ids.numel()} labels are class {classes[0]!r}: a probe needs at least two classes"
        )
    meta["class_names"] = class_names
    return x, mask, ids, classes, meta  # type: ignore[return-value]


def _probe_config(
    config: ProtocolConfig, d_model: int, n_classes: int, meta: dict[str, Any]
) -> ProbeConfig:
    """The probe every member is an instance of.

    The protocol's kind and heads, the data's width and classes, and what the data recorded
    (hook, model, capture settings, class names, whether BOS was prepended).
    """
    exclude_bos = config.bos == "drop" or (config.bos == "auto" and meta.get("prepend_bos", False))
    return ProbeConfig(
        kind=config.probe,
        d_model=d_model,
        n_outputs=1 if n_classes == 2 else n_classes,
        n_heads=config.n_heads,
        position=config.position,
        options=config.options,
        hook=meta.get("hook"),
        model_id=meta.get("model_id"),
        class_names=meta.get("class_names"),
        capture=meta.get("capture") or {},
        exclude_bos=exclude_bos,
    )


def _members_for_seed(
    seed: int, config: ProtocolConfig, split: _Split, n: int
) -> tuple[Members, list[tuple[float, int]]]:
    """Members (decay x (folds + refit)) and their (decay, fold) keys; fold -1 is the refit."""
    in_train = torch.zeros(n, dtype=torch.bool)
    in_train[split.train_rows] = True
    in_stop = torch.zeros(n, dtype=torch.bool)
    in_stop[split.stop_rows] = True
    fold_of = split.fold_of(n)
    keys, train, stop = [], [], []
    for wd in config.weight_decays:
        for f in [*range(split.n_folds), -1]:
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
    sources: list[tuple[Tensor | Activations, Tensor | None, float]],
    labels: Tensor,
    members: Members,
    train: TrainConfig,
    order_rows: Tensor,
    execution: str,
    bar: _StepBar,
) -> list[tuple[dict[str, Tensor], Tensor, Tensor]]:
    """Fit all members of every hook batched, or one member of one hook at a time.

    Returns params, steps and best steps per hook. One at a time, each member keeps its number
    in the whole sweep for errors, and the results are stacked in member order, as the batched
    fit returns them.
    """
    if execution == "batched" and train.optimizer == "adamw":
        fits = fit_hooks(
            config, sources, labels, members, train, order_rows=order_rows, on_step=bar.step
        )
        bar.fit_done()
        return [(f.params, f.steps, f.best_step) for f in fits]
    if execution == "batched":  # L-BFGS: one batched fit per hook
        fits = []
        for source in sources:
            fits += fit_hooks(
                config, [source], labels, members, train, order_rows=order_rows, on_step=bar.step
            )
            bar.fit_done()
        return [(f.params, f.steps, f.best_step) for f in fits]
    out = []
    for x, mask, scale in sources:
        parts = []
        for i in range(len(members)):
            parts.append(
                fit_members(
                    config,
                    x,
                    mask,
                    labels,
                    members.select(i),
                    train,
                    order_rows=order_rows,
                    input_scale=scale,
                    on_step=bar.step,
                )
            )
            bar.fit_done()
        params = {k: torch.cat([p.params[k] for p in parts]) for k in parts[0].params}
        steps = torch.cat([p.steps for p in parts])
        out.append((params, steps, torch.cat([p.best_step for p in parts])))
    return out


def _label(config: ProtocolConfig) -> str:
    """A config's probe as a spec writes it (``attention-8``, ``mean``, ``last-adamw``)."""
    return ProbeSpec.of(config).label


class _StepBar:
    """A progress bar over the optimisation steps of a protocol run's fits (or nothing).

    Each fit has a budget (``max_steps`` or ``lbfgs_max_iter``), but most stop early: the bar
    counts the steps taken, and its total (so its ETA) assumes each fit still to come takes as
    many steps as the finished ones did on average (the budget before any has finished).
    """

    def __init__(self, label: str | None, n_fits: int, budget: int) -> None:
        self.budget, self.n_fits = budget, n_fits
        self.expected = float(budget)
        """Steps a fit still to come is expected to take."""
        self.steps_done = self.fits_done = self.current = 0
        self.bar = None
        if label is not None:
            self.bar = progress_bar(total=n_fits * budget, desc=label, unit="step", leave=False)

    @classmethod
    def for_protocol(
        cls, label: str | None, config: ProtocolConfig, train: TrainConfig, hooks: int = 1
    ) -> _StepBar:
        """The bar of a protocol run (no bar without a ``label``).

        One fit per seed (batched AdamW), per seed and hook (batched L-BFGS), or per member and
        hook (sequential).
        """
        budget = train.max_steps if train.optimizer == "adamw" else train.lbfgs_max_iter
        per_seed = len(config.weight_decays) * (config.n_folds + 1) * hooks
        if config.execution == "batched":  # L-BFGS fits the hooks one after another
            per_seed = hooks if train.optimizer == "lbfgs" else 1
        return cls(label, len(config.seeds) * per_seed, budget)

    def _total(self, running: int | float) -> int:
        """Steps taken so far plus ``running`` for the current fit and the expected rest."""
        later = max(self.n_fits - self.fits_done - 1, 0)
        return round(self.steps_done + running + later * self.expected)

    def step(self, done: int) -> None:
        """The current fit has taken ``done`` steps."""
        self.current = min(done, self.budget)
        if self.bar is not None:
            n = self.steps_done + self.current
            # a fit running longer than expected: the expected rest stays, this one grows
            self.bar.total = max(self._total(max(self.expected, self.current)), n)
            self.bar.update(n - self.bar.n)

    def fit_done(self) -> None:
        """The current fit ended (early or at its budget)."""
        self.steps_done += self.current
        self.fits_done += 1
        self.current = 0
        self.expected = self.steps_done / self.fits_done
        if self.bar is not None:
            self.bar.total = self._total(self.expected if self.fits_done < self.n_fits else 0)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
