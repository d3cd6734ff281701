"""Activation patching with a probe as the metric, position by position.

Two texts of the same token length differ in what the probe reads (a *clean* and a *corrupted*
version). :func:`patch_positions` runs the corrupted text once per position, each time with the
clean text's activation at that position (at the patch hook) in place of the corrupted one, and
reads the probe at its own hook. Where the patch moves the probe's prediction back towards the
clean one, that position carries, at the patch hook, what the probe reads later on.

All patched runs go through the model as one batch (one row per position), and every forward stops
right after the probe's hook, so the unembedding never runs. Patching at the probe's own hook is
allowed and shows how much each token contributes to the readout directly; patching at an earlier
hook lets the model carry the patched information forward.

The same recipe inside an nnsight trace, for one position ``p`` (what this function batches)::

    with model.trace(clean_ids):
        clean = nnsight.save(model.model.layers[3].output)
    with model.trace(corrupted_ids):
        out = model.model.layers[3].output.clone()
        out[:, p] = clean[:, p]
        model.model.layers[3].output = out
        acts = nnsight.save(model.model.layers[9].output)
    probe(acts, torch.ones(acts.shape[:2], dtype=torch.bool))

(``tests/test_steering.py`` checks that this recipe and :func:`patch_positions` agree.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensprobe.backends import get_backend
from lensprobe.batching import token_strings, tokenize
from lensprobe.errors import InputError
from lensprobe.hooks import ForwardInfo, attach, edit_activations
from lensprobe.metrics import probabilities
from lensprobe.probes.base import Probe

__all__ = ["PatchResult", "patch_positions"]


@dataclass(frozen=True)
class PatchResult:
    """The probe's output on a corrupted text with one position at a time patched from a clean one."""

    hook: str
    """Hook where clean activations were patched in."""

    probe_hook: str
    """Hook the probe read."""

    clean_tokens: tuple[str, ...]
    """Tokens of the clean text (BOS included when the model's tokenizer adds one)."""

    corrupted_tokens: tuple[str, ...]
    """Tokens of the corrupted text (same length)."""

    positions: Int[Tensor, " n_patched"]
    """Token positions that were patched, one run each."""

    clean_logits: Float[Tensor, " n_outputs"]
    """The probe's logits on the clean text."""

    corrupted_logits: Float[Tensor, " n_outputs"]
    """The probe's logits on the corrupted text."""

    patched_logits: Float[Tensor, "n_patched n_outputs"]
    """The probe's logits on the corrupted text with ``positions[i]`` patched, per row."""

    target: int
    """Class whose score :meth:`scores` and :attr:`recovered` follow."""

    def _score(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        if logits.shape[-1] == 1:
            sign = 1.0 if self.target == 1 else -1.0
            return sign * logits[..., 0]
        return logits.log_softmax(dim=-1)[..., self.target]

    def scores(self) -> tuple[Tensor, Tensor, Float[Tensor, " n_patched"]]:
        """The score of :attr:`target` on the clean, corrupted and each patched run.

        The score is the log-odds of the target class for a one-logit probe and its
        log-probability for a k-class probe.
        """
        return (
            self._score(self.clean_logits),
            self._score(self.corrupted_logits),
            self._score(self.patched_logits),
        )

    @property
    def recovered(self) -> Float[Tensor, " n_patched"]:
        """Fraction of the clean-minus-corrupted score that each patch restores (1 = all of it).

        NaN when the clean and corrupted scores are equal.
        """
        clean, corrupted, patched = self.scores()
        gap = clean - corrupted
        if float(gap.abs()) == 0.0:
            return torch.full_like(patched, float("nan"))
        return (patched - corrupted) / gap

    @property
    def probabilities(self) -> Float[Tensor, "n_patched n_classes"]:
        """Class probabilities of each patched run."""
        return probabilities(self.patched_logits)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per patched position (for ``pandas.DataFrame``)."""
        _, _, patched = self.scores()
        recovered = self.recovered
        return [
            {
                "position": int(p),
                "clean_token": self.clean_tokens[int(p)],
                "corrupted_token": self.corrupted_tokens[int(p)],
                "score": float(patched[i]),
                "recovered": float(recovered[i]),
            }
            for i, p in enumerate(self.positions.tolist())
        ]


def _token_ids(model: Any, text: str | Sequence[int] | Tensor, tokenizer: Any, bos: Any) -> Tensor:
    if isinstance(text, Tensor):
        ids = text.reshape(-1).long()
        if text.ndim == 2 and text.shape[0] != 1:
            raise InputError(f"pass one sequence of token ids, got shape {tuple(text.shape)}")
        return ids
    if not isinstance(text, str):
        return torch.as_tensor(list(text), dtype=torch.long)
    if tokenizer is None:
        raise InputError(
            f"{type(model).__name__} has no .tokenizer; pass tokenizer=... or token ids"
        )
    return torch.as_tensor(tokenize(tokenizer, [text], max_length=None, prepend_bos=bos).ids[0])


def _hook_names(probe: Probe, hook: str | None, probe_hook: str | None) -> tuple[str, str]:
    """The patch hook and the probe's hook (default: the one recorded in the probe)."""
    probe_hook = probe_hook or probe.config.hook
    if probe_hook is None:
        raise InputError(
            "the probe records no hook name; pass probe_hook='blocks.9.hook_resid_post'"
        )
    return hook or probe_hook, probe_hook


def _token_pair(
    model: Any, clean: Any, corrupted: Any, tokenizer: Any, bos: bool | None
) -> tuple[Tensor, Tensor, list[list[str]]]:
    """Both texts' token ids and token strings; they must have the same length."""
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    clean_ids = _token_ids(model, clean, tok, bos)
    corrupt_ids = _token_ids(model, corrupted, tok, bos)
    pair = [clean_ids.tolist(), corrupt_ids.tolist()]
    strs = token_strings(tok, pair) if tok is not None else [[str(t) for t in p] for p in pair]
    if clean_ids.numel() != corrupt_ids.numel():
        raise InputError(
            f"clean has {clean_ids.numel()} tokens and corrupted {corrupt_ids.numel()}: patching "
            f"position by position needs texts of equal token length. clean: {strs[0]}; "
            f"corrupted: {strs[1]}"
        )
    return clean_ids, corrupt_ids, strs


def _positions(positions: Sequence[int] | None, n: int) -> Tensor:
    pos = torch.arange(n) if positions is None else torch.as_tensor(list(positions)).long()
    if pos.numel() == 0 or bool(((pos < 0) | (pos >= n)).any()):
        raise InputError(f"positions must be indices in [0, {n}), got {pos.tolist()}")
    return pos


def _read(model: Any, probe: Probe, hook: str, probe_hook: str, ids: Tensor, edit: Any) -> Tensor:
    """The probe's logits on ``ids (batch, pos)`` with ``edit`` at ``hook``; stops at its hook."""
    backend = get_backend(model)
    with edit_activations(model, hook, edit), attach(model, probe, probe_hook, stop=True) as r:
        backend.forward_tokens(model, ids)
    return r.logits


def _baseline(
    model: Any, probe: Probe, hook: str, probe_hook: str, ids: Tensor
) -> tuple[Tensor, Tensor]:
    """The activation at the patch hook and the probe's logits, on one unpatched text."""
    stored: dict[str, Tensor] = {}

    def record(x: Tensor, info: ForwardInfo) -> Tensor:
        stored["x"] = x.detach().clone()
        return x

    logits = _read(model, probe, hook, probe_hook, ids[None], record)
    if "x" not in stored:
        raise InputError(
            f"the patch hook {hook!r} runs after the probe's hook {probe_hook!r} in the "
            "forward, so patching there cannot change the probe's readout; patch at an "
            "earlier hook or at the probe's own"
        )
    return stored["x"], logits[0]


def _patched_logits(
    model: Any,
    probe: Probe,
    hooks: tuple[str, str],
    corrupt_ids: Tensor,
    clean_x: Tensor,
    pos: Tensor,
    batch_size: int,
) -> Tensor:
    """The probe's logits on the corrupted text, one row per patched position, in batches."""
    patched: list[Tensor] = []
    for chunk in pos.split(batch_size):
        rows = torch.arange(chunk.numel(), device=clean_x.device)
        where = chunk.to(clean_x.device)

        def patch(
            x: Tensor, info: ForwardInfo, rows: Tensor = rows, where: Tensor = where
        ) -> Tensor:
            out = x.clone()
            out[rows, where] = clean_x[0, where].to(out.dtype)
            return out

        ids = corrupt_ids[None].expand(chunk.numel(), corrupt_ids.numel())
        patched.append(_read(model, probe, *hooks, ids, patch))
    return torch.cat(patched)


def _target_class(clean_logits: Tensor, target: int | None, n_classes: int) -> int:
    if target is None:
        return int(probabilities(clean_logits[None]).argmax(dim=-1))
    if not 0 <= target < n_classes:
        raise InputError(f"target must be a class in [0, {n_classes}), got {target}")
    return target


def patch_positions(
    model: Any,
    probe: Probe,
    clean: str | Sequence[int] | Tensor,
    corrupted: str | Sequence[int] | Tensor,
    *,
    hook: str | None = None,
    probe_hook: str | None = None,
    positions: Sequence[int] | None = None,
    target: int | None = None,
    batch_size: int = 16,
    tokenizer: Any = None,
    prepend_bos: bool | None = None,
) -> PatchResult:
    """Patch clean activations into a corrupted run, one position at a time; read the probe.

    Steps: tokenize both texts, read both baselines, run the patched corrupted text in batches.

    Args:
        model: A TransformerBridge, an nnsight model or a Hugging Face model.
        probe: A trained probe.
        clean: The clean text (or its token ids).
        corrupted: The corrupted text (or its token ids), of the same token length.
        hook: Where to patch; default the probe's hook. It must come no later in the forward than
            ``probe_hook``.
        probe_hook: Where the probe reads; default the hook recorded in its config.
        positions: Token positions to patch; default every position.
        target: Class whose score to follow; default the class the probe predicts on the clean
            text.
        batch_size: Patched runs per forward.
        tokenizer: Tokenizer for texts; default ``model.tokenizer``.
        prepend_bos: Start with BOS; default what the tokenizer does (as :func:`lensprobe.capture`).

    Returns:
        A :class:`PatchResult`.

    Raises:
        ValueError: The texts tokenize to different lengths (both token lists are in the
            message), a position is out of range, no hook is known, or the patch hook runs after
            the probe's hook (a patch there cannot change the readout).
    """
    hook, probe_hook = _hook_names(probe, hook, probe_hook)
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    device = get_backend(model).input_device(model)
    clean_ids, corrupt_ids, strs = _token_pair(model, clean, corrupted, tokenizer, prepend_bos)
    pos = _positions(positions, clean_ids.numel())
    clean_ids, corrupt_ids = clean_ids.to(device), corrupt_ids.to(device)
    clean_x, clean_logits = _baseline(model, probe, hook, probe_hook, clean_ids)
    _, corrupt_logits = _baseline(model, probe, hook, probe_hook, corrupt_ids)
    hooks = (hook, probe_hook)
    patched = _patched_logits(model, probe, hooks, corrupt_ids, clean_x, pos, batch_size)
    return PatchResult(
        hook=hook,
        probe_hook=probe_hook,
        clean_tokens=tuple(strs[0]),
        corrupted_tokens=tuple(strs[1]),
        positions=pos,
        clean_logits=clean_logits.detach().cpu(),
        corrupted_logits=corrupt_logits.detach().cpu(),
        patched_logits=patched.detach().cpu(),
        target=_target_class(clean_logits, target, probe.config.n_classes),
    )
