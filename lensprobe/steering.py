"""Directions from trained probes, and steering / ablation along them at a hook.

A probe's *class directions* live in the model's residual space. For every probe kind, adding
``alpha * u`` to every valid token at the probe's hook moves its logits by exactly
``alpha * directions @ u``:

- mean / last-token / max probes: the pooled vector moves by ``alpha * u`` (max pooling is
  elementwise, and a shift commutes with it), so the logits move by ``alpha * W.T @ u`` with
  ``W = probe.weight (d_model, n_outputs)``.
- attention probes: the shift adds the same ``alpha * u @ Q[:, h]`` to every token's score of head
  ``h``, which a softmax ignores, so the attention does not change and the logits move by
  ``alpha * sum_h V[:, h, :].T @ u``. The per-head value directions ``V[:, h, c]`` say what each
  head adds for class ``c`` where it attends.

So :func:`class_directions` are the directions along which steering moves a probe's readout at its
own hook. Projecting them out of every token (:func:`project_out`, :func:`ablate`) leaves a mean or
last-token probe with its bias alone (their pooling is linear), and projecting out an attention
probe's per-head value directions (:func:`head_directions`) zeroes every value it could attend to:
a constant prediction, chance in balanced accuracy. (Max pooling is not linear: ablation does not
silence a max probe.)

The tensor functions (:func:`add_direction`, :func:`project_out`) work on any tensor, including
values inside an nnsight trace; the context managers (:func:`steer`, :func:`ablate`) apply them at a
hook name on a TransformerBridge, an nnsight model or a Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lensprobe.backends import HookTarget
from lensprobe.errors import InputError, InputTypeError
from lensprobe.hooks import ForwardInfo, edit_activations
from lensprobe.probes.attention import AttentionProbe
from lensprobe.probes.base import Probe

__all__ = [
    "ablate",
    "add_direction",
    "class_directions",
    "head_directions",
    "orthonormal_basis",
    "project_out",
    "steer",
]


def class_directions(probe: Probe, *, center: bool = False) -> Float[Tensor, "n_outputs d_model"]:
    """One direction per probe output, in the model's residual space (a detached copy).

    For a pooled probe, the columns of ``weight``; for an attention probe, the values summed over
    heads, ``sum_h value[:, h, c]`` (see the module docstring for why these are the steering
    directions of every kind).

    Args:
        probe: A trained probe.
        center: Subtract the mean over outputs (a k-class probe's softmax ignores what all classes
            share, so ``class - mean`` is the part that changes the prediction). Needs at least
            two outputs.

    Returns:
        ``(n_outputs, d_model)``; a binary (one-logit) probe has one row, pointing to class 1.
    """
    if not isinstance(probe, Probe):
        raise InputTypeError(
            f"class_directions needs a lensprobe probe, got {type(probe).__name__}"
        )
    directions = probe.class_directions()
    if center:
        if directions.shape[0] < 2:
            raise InputError(
                "center=True needs a probe with several outputs; a binary probe's single "
                "direction already points from class 0 to class 1"
            )
        directions = directions - directions.mean(dim=0, keepdim=True)
    return directions


def head_directions(probe: AttentionProbe) -> Float[Tensor, "probe_head n_outputs d_model"]:
    """Per-head value directions ``value[:, h, c]`` of an attention probe (a detached copy)."""
    if not isinstance(probe, AttentionProbe):
        raise InputTypeError(
            f"head_directions needs an AttentionProbe, got {type(probe).__name__}; use "
            "class_directions for pooled probes"
        )
    return probe.value.detach().permute(1, 2, 0).clone()


def orthonormal_basis(
    directions: Float[Tensor, "*shape d_model"], *, rtol: float = 1e-6
) -> Float[Tensor, "rank d_model"]:
    """An orthonormal basis (rows) of the span of some directions; dependent ones are dropped.

    Args:
        directions: Directions stacked on any leading dimensions (one ``(d_model,)`` vector too).
        rtol: Singular values below ``rtol`` times the largest count as zero.

    Raises:
        ValueError: Every direction is zero.
    """
    flat = directions.reshape(-1, directions.shape[-1])
    work = flat.double() if flat.dtype in (torch.float16, torch.bfloat16, torch.float32) else flat
    _, s, vh = torch.linalg.svd(work, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        raise InputError("the directions are all zero: nothing to project out or steer along")
    keep = s > rtol * s[0]
    return vh[keep].to(directions.dtype)


def _unit(direction: Tensor) -> Tensor:
    norm = direction.norm()
    if float(norm) == 0.0:
        raise InputError("the direction is zero; a probe trained to nothing has no direction")
    return direction / norm


def _select(
    x: Tensor, mask: Bool[Tensor, "batch pos"] | None
) -> Float[Tensor, "batch pos 1"] | float:
    if mask is None:
        return 1.0
    if mask.shape != x.shape[:2]:
        raise InputError(f"mask shape {tuple(mask.shape)} does not match x's {tuple(x.shape[:2])}")
    return mask[..., None].to(x.dtype)


def add_direction(
    x: Float[Tensor, "batch pos d_model"],
    direction: Float[Tensor, " d_model"],
    alpha: float,
    *,
    mask: Bool[Tensor, "batch pos"] | None = None,
    normalize: bool = True,
) -> Float[Tensor, "batch pos d_model"]:
    """``x + alpha * u`` at every position (or where ``mask`` is true); a new tensor.

    Args:
        x: Activations.
        direction: The direction ``u`` (moved to ``x``'s device and dtype).
        alpha: How far to move, in units of ``x`` (with ``normalize``, the distance itself).
        mask: Positions to move; default all.
        normalize: Scale ``direction`` to unit length first.
    """
    u = direction.to(device=x.device, dtype=x.dtype)
    if normalize:
        u = _unit(u)
    return x + alpha * u * _select(x, mask)


def project_out(
    x: Float[Tensor, "batch pos d_model"],
    directions: Float[Tensor, "*shape d_model"],
    *,
    mean: Float[Tensor, " d_model"] | None = None,
    mask: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Remove the span of ``directions`` from ``x`` (ablation); a new tensor.

    Without ``mean``, ``x - P x`` with ``P`` the orthogonal projection on the span (directional
    ablation: the component becomes zero). With ``mean``, ``x - P (x - mean)`` (mean ablation: the
    component becomes the mean's).

    Args:
        x: Activations.
        directions: One direction ``(d_model,)`` or several ``(..., d_model)``; they need not be
            orthogonal or independent.
        mean: Reference activation (e.g. the mean over a dataset) for mean ablation.
        mask: Positions to ablate; default all.
    """
    basis = orthonormal_basis(directions.detach()).to(device=x.device, dtype=x.dtype)
    centred = x if mean is None else x - mean.to(device=x.device, dtype=x.dtype)
    component = (centred @ basis.T) @ basis
    return x - component * _select(x, mask)


def _position_mask(info: ForwardInfo, positions: Sequence[int] | None) -> Tensor:
    """Valid tokens of this forward, restricted to ``positions`` (indices in the whole sequence)."""
    if positions is None:
        return info.mask
    wanted = torch.as_tensor(list(positions), dtype=torch.long, device=info.mask.device)
    if bool((wanted < 0).any()):
        raise InputError(
            f"positions must be non-negative indices into the (padded) sequence, got {positions}"
        )
    return info.mask & torch.isin(info.positions, wanted)[None, :]


@contextmanager
def steer(
    model: Any,
    hook: str,
    direction: Float[Tensor, " d_model"],
    alpha: float,
    *,
    positions: Sequence[int] | None = None,
    normalize: bool = True,
) -> Iterator[HookTarget]:
    """Add ``alpha * direction`` to the activations at a hook during every forward in the block.

    Example::

        u = lp.class_directions(probe)[0]          # towards class 1 of a binary probe
        with lp.steer(model, probe.config.hook, u, alpha=8.0):
            model.generate(...)

    Only valid tokens are moved (padding is left alone); during generation with a KV cache each
    new token is moved as it is computed.

    Args:
        model: A TransformerBridge, an nnsight model or a Hugging Face model.
        hook: Hook name.
        direction: ``(d_model,)`` direction, e.g. a row of :func:`class_directions`.
        alpha: Distance to move (in the activations' units; with ``normalize``, along a unit
            vector).
        positions: Only these token indices of the (padded) sequence; default every token.
        normalize: Scale ``direction`` to unit length first.

    Yields:
        The resolved hook; the edit is removed when the block ends, also on error.
    """
    if direction.ndim != 1:
        raise InputError(
            f"steer takes one (d_model,) direction, got shape {tuple(direction.shape)}; pick a "
            "row, e.g. class_directions(probe)[c]"
        )
    u = direction.detach()
    if normalize:
        u = _unit(u)

    def edit(x: Tensor, info: ForwardInfo) -> Tensor:
        _check_width(x, u, hook)
        return add_direction(x, u, alpha, mask=_position_mask(info, positions), normalize=False)

    with edit_activations(model, hook, edit) as target:
        yield target


@contextmanager
def ablate(
    model: Any,
    hook: str,
    directions: Float[Tensor, "*shape d_model"] | Probe,
    *,
    mean: Float[Tensor, " d_model"] | None = None,
    positions: Sequence[int] | None = None,
) -> Iterator[HookTarget]:
    """Project directions out of the activations at a hook during every forward in the block.

    Example::

        with lp.ablate(model, probe.config.hook, probe), lp.attach(model, probe) as r:
            model(tokens)              # r.logits == probe.bias for a pooled probe

    Args:
        model: A TransformerBridge, an nnsight model or a Hugging Face model.
        hook: Hook name.
        directions: Directions ``(..., d_model)``, or a probe: its class directions (pooled
            probes) or all its per-head value directions (attention probes), after which a
            mean, last-token or attention probe reads nothing but its bias at this hook.
        mean: Mean-ablate instead: set the component to that of this reference activation.
        positions: Only these token indices of the (padded) sequence; default every token.

    Yields:
        The resolved hook; the edit is removed when the block ends, also on error.
    """
    if isinstance(directions, Probe):
        directions = directions.read_directions()
    basis = orthonormal_basis(directions.detach())

    def edit(x: Tensor, info: ForwardInfo) -> Tensor:
        _check_width(x, basis[0], hook)
        return project_out(x, basis, mean=mean, mask=_position_mask(info, positions))

    with edit_activations(model, hook, edit) as target:
        yield target


def _check_width(x: Tensor, direction: Tensor, hook: str) -> None:
    if x.shape[-1] != direction.shape[-1]:
        raise InputError(
            f"the activations at {hook!r} have width {x.shape[-1]} but the direction has "
            f"{direction.shape[-1]}: use a direction from a probe trained at this hook"
        )
