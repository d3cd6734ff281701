"""Training many probes at once: a sweep is one batched model with a leading ``member`` dim.

:func:`fit_members` trains every member of a sweep (:class:`~lensprobe.train.members.Members`)
with AdamW (:mod:`lensprobe.train.adamw`) or L-BFGS (:mod:`lensprobe.train.lbfgs`): a member
ends exactly where the same probe trained alone on the same rows (with the same data order)
ends, but the activations are read once for all of them. :func:`predict_members` scores them,
:func:`fit` trains one probe, :func:`token_scale` and :func:`unscale_params` convert between raw
and normalised activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.errors import InputError
from lensprobe.pooling import token_norms
from lensprobe.probes import Probe, ProbeConfig, probe_class
from lensprobe.train.adamw import fit_adamw
from lensprobe.train.checks import check_activations
from lensprobe.train.config import TrainConfig
from lensprobe.train.lbfgs import fit_lbfgs
from lensprobe.train.members import FitData, FitResult, HookData, Members, Problem
from lensprobe.train.split import stratified_split


def fit_members(
    config: ProbeConfig,
    x: Float[Tensor, "batch pos d_model"] | Activations,
    mask: Bool[Tensor, "batch pos"] | None,
    labels: Int[Tensor, " batch"],
    members: Members,
    train: TrainConfig | None = None,
    *,
    order_rows: Int[Tensor, " rows"] | None = None,
    init: dict[str, Tensor] | None = None,
    input_scale: float = 1.0,
    eval_batch_size: int = 256,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train every member of a sweep at once.

    Args:
        config: The probe every member is an instance of.
        x: Padded activations of all rows any member uses, or ragged ``Activations`` (e.g. a
            memory-mapped store: each minibatch is padded when it is read; the values are not
            checked here, see :func:`lensprobe.train.streaming.stream_inputs`).
        mask: Valid tokens of a padded ``x`` as captured (None for ``Activations``); the fit
            reads the tokens :func:`~lensprobe.probes.base.tokens_read` selects for ``config``.
        labels: Class of each row.
        members: Per-member weight decay, seed, training and early-stopping rows.
        train: Optimisation settings (AdamW or L-BFGS).
        order_rows: Rows the AdamW minibatches are drawn from, in a seeded shuffle each epoch
            (default: every row some member trains on). Pass the same value to reproduce one
            member of a sweep alone.
        init: Starting parameters stacked on the member dim (default: each member's seed).
        input_scale: Train on ``x / input_scale`` (the returned parameters read the scaled
            input; :func:`unscale_params` converts them to read raw activations).
        eval_batch_size: Rows per forward when computing early-stopping losses.
        on_step: Called with the number of steps taken so far (AdamW optimizer steps, L-BFGS
            iterations) as the fit goes, e.g. to move a progress bar.

    Returns:
        The parameters (best early-stopping step per member for AdamW) and per-member counts.

    Raises:
        FloatingPointError: A member's loss became NaN or infinite (the error names it).
    """
    train = train or TrainConfig()
    cls = probe_class(config.kind)
    # L-BFGS runs in float64: its line search and stopping tests compare objective values that
    # differ in the last float32 digits near the end, where rounding would decide the result.
    # AdamW keeps float32 parameters; its products over x run in train.precision_on(device).
    dtype = torch.float64 if train.optimizer == "lbfgs" else torch.float32
    device = x.device
    matmul = torch.bfloat16 if train.precision_on(device) == "bf16" else None
    data = FitData(config, x, mask, dtype, input_scale, matmul)
    problem = Problem.build(cls, data, labels.to(device), members)
    start = init if init is not None else cls.init_members(config, list(members.seeds))
    params = {
        k: v.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        for k, v in start.items()
    }
    if train.optimizer == "lbfgs":
        return fit_lbfgs(problem, params, train, on_step)
    if order_rows is None:
        order_rows = members.train.any(dim=0).nonzero().flatten()
    return fit_adamw(problem, params, train, order_rows.to(device), eval_batch_size, on_step)


def fit_hooks(
    config: ProbeConfig,
    sources: Sequence[tuple[Tensor | Activations, Tensor | None, float]],
    labels: Int[Tensor, " batch"],
    members: Members,
    train: TrainConfig | None = None,
    *,
    order_rows: Int[Tensor, " rows"] | None = None,
    eval_batch_size: int = 256,
    on_step: Callable[[int], None] | None = None,
) -> list[FitResult]:
    """Train the same members on several hooks' activations of the same rows, in one fit.

    With AdamW, every hook's copy of the members trains in one optimizer loop that reads each
    minibatch of each hook once (:class:`~lensprobe.train.members.HookData`); each copy ends
    where :func:`fit_members` on its hook alone ends. L-BFGS fits the hooks one after another.

    Args:
        config: The probe every member is an instance of (the hook it names is not read).
        sources: Per hook, ``(x, mask, input_scale)`` as :func:`fit_members` takes them.
        labels: Class of each row (the same rows in every hook).
        members: The members trained on each hook.
        train: Optimisation settings.
        order_rows: As :func:`fit_members`.
        eval_batch_size: As :func:`fit_members`.
        on_step: As :func:`fit_members`.

    Returns:
        One :class:`FitResult` per hook, in the order of ``sources``.
    """
    train = train or TrainConfig()
    if train.optimizer == "lbfgs" or len(sources) == 1:
        return [
            fit_members(
                config,
                x,
                mask,
                labels,
                members,
                train,
                order_rows=order_rows,
                input_scale=scale,
                eval_batch_size=eval_batch_size,
                on_step=on_step,
            )
            for x, mask, scale in sources
        ]
    cls = probe_class(config.kind)
    matmul = torch.bfloat16 if train.precision_on(sources[0][0].device) == "bf16" else None
    parts = [FitData(config, x, mask, torch.float32, s, matmul) for x, mask, s in sources]
    data = HookData(parts, [len(members)] * len(parts))
    k = len(sources)
    every = Members(
        weight_decay=members.weight_decay.repeat(k),
        seeds=members.seeds * k,
        train=members.train.repeat(k, 1),
        stop=members.stop.repeat(k, 1),
    )
    problem = Problem.build(cls, data, labels.to(data.device), every)
    start = cls.init_members(config, list(every.seeds))
    params = {
        name: v.detach().to(device=data.device, dtype=torch.float32).clone().requires_grad_(True)
        for name, v in start.items()
    }
    if order_rows is None:
        order_rows = members.train.any(dim=0).nonzero().flatten()
    result = fit_adamw(problem, params, train, order_rows.to(data.device), eval_batch_size, on_step)
    m = len(members)
    return [
        FitResult(
            params={name: v[i * m : (i + 1) * m] for name, v in result.params.items()},
            steps=result.steps[i * m : (i + 1) * m],
            best_step=result.best_step[i * m : (i + 1) * m],
            stop_loss=result.stop_loss[i * m : (i + 1) * m],
        )
        for i in range(k)
    ]


@torch.no_grad()
def predict_members(
    config: ProbeConfig,
    params: dict[str, Tensor],
    x: Float[Tensor, "batch pos d_model"] | Activations,
    mask: Bool[Tensor, "batch pos"] | None,
    *,
    batch_size: int = 256,
    input_scale: float = 1.0,
) -> Float[Tensor, "member batch n_outputs"]:
    """Logits of every member for every row (of ``x / input_scale``), in row chunks.

    ``x`` is padded activations with their ``mask``, or ragged ``Activations`` (mask None).
    """
    dtype = next(iter(params.values())).dtype
    data = FitData(config, x, mask, dtype, input_scale)
    n = data.n
    rows = torch.arange(n, device=data.device)
    return torch.cat(
        [data.logits(params, rows[s : s + batch_size]) for s in range(0, n, batch_size)], dim=1
    )


def unscale_params(
    config: ProbeConfig, params: dict[str, Tensor], input_scale: float
) -> dict[str, Tensor]:
    """Parameters trained on ``x / input_scale`` rewritten to read raw ``x``.

    Every probe is linear in ``x`` through its weight matrices (the ones weight decay applies
    to), so dividing those by the scale is exact.
    """
    if input_scale == 1.0:
        return params
    scaled = set(probe_class(config.kind).decay_params)
    return {k: v / input_scale if k in scaled else v for k, v in params.items()}


def token_scale(
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    rows: Int[Tensor, " rows"] | None = None,
) -> float:
    """Median norm of the valid token vectors, divided by ``sqrt(d_model)``.

    Dividing by it gives token entries of about unit size whatever the model's residual scale,
    so one learning rate and one weight-decay grid suit every model and layer.

    Args:
        x: Padded activations.
        mask: The tokens that count.
        rows: Only these sequences count (default: all); ``x`` is read in place, never copied.
    """
    keep = mask
    if rows is not None:
        keep = torch.zeros(x.shape[0], dtype=torch.bool, device=mask.device)
        keep[rows.to(mask.device)] = True
        keep = mask & keep[:, None]
    # float64 norms (a float32 sum of squares overflows at entries of ~1e19 and underflows at
    # ~1e-23: a scale of inf or 0 would leave such activations untrained), kept as float32 like
    # the streamed and reduced paths', so all three agree
    norms = token_norms(x)[keep]
    scale = float(norms.median()) / x.shape[-1] ** 0.5
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def fit(
    probe: Probe,
    x: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
    labels: Int[Tensor, " batch"],
    *,
    weight_decay: float = 0.0,
    train: TrainConfig | None = None,
) -> Probe:
    """Train a copy of ``probe`` from its current parameters; ``probe`` itself is not changed.

    With AdamW, ``train.early_stop_fraction`` of the rows (stratified by label) are held out to
    early-stop on. With L-BFGS every row trains. The fit reads the tokens the trained probe's
    ``forward`` reads (:func:`~lensprobe.probes.base.tokens_read`: without each sequence's first
    token when ``probe.config.exclude_bos``), so pass the mask as captured.

    Returns:
        The trained probe, in eval mode, on ``x``'s device.

    Raises:
        InputError: Empty or non-finite activations, a bad mask, labels outside the classes.
        FloatingPointError: The training loss became NaN/inf (e.g. too large a learning rate).
    """
    train = train or TrainConfig()
    check_activations(x, mask)  # empty, wrong mask, rows without tokens, NaN/inf: named errors
    n = x.shape[0]
    if labels.shape[0] != n:
        raise InputError(f"{labels.shape[0]} labels for {n} sequences: pass one label per sequence")
    k = probe.config.n_classes
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise InputError(
            f"labels must be class ids 0..{k - 1} for this probe ({probe.config.n_outputs} "
            f"output(s)), got {int(labels.min())}..{int(labels.max())}: map them to 0..k-1 first "
            "(lp.run_protocol maps any labels for you)"
        )
    train_rows = torch.ones(n, dtype=torch.bool)
    stop_rows = torch.zeros(n, dtype=torch.bool)
    if train.optimizer == "adamw" and train.early_stop_fraction > 0:
        _, held = stratified_split(labels, train.early_stop_fraction, seed=train.seed)
        train_rows[held] = False
        stop_rows[held] = True
    members = Members(
        weight_decay=torch.tensor([float(weight_decay)]),
        seeds=(0,),
        train=train_rows[None],
        stop=stop_rows[None],
    )
    result = fit_members(probe.config, x, mask, labels, members, train, init=probe.member_params())
    trained = type(probe).from_member(probe.config, result.params, 0).to(x.device)
    return trained.eval()
