"""A live monitor: a probe scoring a generation token by token, flagging where it crosses.

``with lp.monitor(model, probe, threshold=t) as mon: model.generate(...)`` reads the activations
at the probe's hook during every forward in the block (TransformerLens, nnsight and Hugging Face
models, batches of prompts, left or right padding, with or without a KV cache) and feeds each new
token to the probe's running state (:meth:`~lensprobe.probes.base.Probe.stream`): a token costs
O(1) for the kinds that keep one (mean, last, max, EMA, attention, MultiMax, rolling means), not a
rerun of the probe over the prefix. ``mon.logits`` is then the probe's output on every prefix: at
each token, what the probe would say had the text ended there.

With a ``threshold`` (a logit, e.g. the 1%-FPR threshold a protocol run fixed on its training
data, ``result.runs[0].thresholds["tpr_at_1pct_fpr"]``), the first token of each sequence whose
logit rises above it is a :class:`Flag`: ``on_flag`` is called with it, and ``stop=True`` ends
the forward there (the ``with`` block ends quietly; what the monitor saw is kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensprobe.backends.core import StopForward
from lensprobe.errors import InputError, UsageError
from lensprobe.hooks import ForwardInfo, probe_hook, read_activations
from lensprobe.probes.base import Probe
from lensprobe.probes.stream import TokenStream

__all__ = ["Flag", "Monitor", "MonitorStop", "monitor"]


@dataclass(frozen=True)
class Flag:
    """The first token of a sequence at which the probe's logit rose above the threshold."""

    row: int
    """The sequence (row of the batch)."""
    position: int
    """Its position in the padded sequence (prompt and generated tokens)."""
    logit: float
    """The probe's logit over the tokens up to and including it."""


class MonitorStop(StopForward):
    """Raised inside the forward by ``stop=True`` at the first flag; :func:`monitor` catches it."""


class Monitor:
    """A probe's score after every token of the sequences run in a :func:`monitor` block.

    A forward without a KV cache starts new sequences; one with a cache continues them (one step
    of ``generate``). The properties cover every position seen so far.
    """

    def __init__(
        self,
        probe: Probe,
        hook: str,
        threshold: float | None,
        on_flag: Callable[[Flag], None] | None,
        stop: bool,
    ):
        self.probe, self.hook = probe, hook
        self.threshold, self.on_flag, self.stop = threshold, on_flag, stop
        self.flags: list[Flag] = []
        """Every flag, in the order they were raised."""
        self._stream: TokenStream | None = None
        self._logits: list[Tensor] = []
        self._mask: list[Tensor] = []
        self._ids: list[Tensor | None] = []
        self._flagged: Tensor | None = None

    def __len__(self) -> int:
        return len(self._logits)

    def __repr__(self) -> str:
        return (
            f"Monitor(hook={self.hook!r}, probe={self.probe.config.kind}, positions={len(self)}, "
            f"flags={len(self.flags)})"
        )

    def _require(self) -> None:
        if not self._logits:
            raise UsageError(
                f"the monitor at {self.hook!r} has seen no forward yet: run the model inside the "
                "`with lp.monitor(...)` block"
            )

    @property
    def logits(self) -> Float[Tensor, "batch pos n_outputs"]:
        """The probe's logits over each prefix (NaN at padding and at a BOS the probe leaves out).

        A prefix of that BOS alone has no token the probe reads, so it has no score.
        """
        self._require()
        return torch.stack(self._logits, dim=1)

    @property
    def scores(self) -> Float[Tensor, "batch pos"]:
        """A one-logit probe's logit after every token (the monitor's score)."""
        if self.probe.config.n_outputs != 1:
            raise UsageError(
                f"scores are the one logit of a binary probe; this probe has "
                f"{self.probe.config.n_outputs} outputs: read monitor.logits"
            )
        return self.logits[..., 0]

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """Valid (non-padding) tokens of every position seen."""
        self._require()
        return torch.stack(self._mask, dim=1)

    @property
    def token_ids(self) -> Int[Tensor, "batch pos"] | None:
        """The token ids of every position seen (None when a forward was given embeddings)."""
        self._require()
        if any(i is None for i in self._ids):
            return None
        return torch.stack(self._ids, dim=1)  # type: ignore[arg-type]

    @property
    def flagged(self) -> Bool[Tensor, " batch"]:
        """Which sequences were flagged."""
        self._require()
        assert self._flagged is not None
        return self._flagged.clone()

    @torch.no_grad()
    def _observe(self, x: Tensor, info: ForwardInfo) -> None:
        if x.ndim != 3:
            raise InputError(
                f"the activations at {self.hook!r} have shape {tuple(x.shape)}; a monitor reads "
                "(batch, pos, d_model) activations such as the residual stream"
            )
        batch = x.shape[0]
        if info.past == 0:
            self._start(batch)
        elif self._stream is None or self._stream.count.shape[0] != batch or info.past != len(self):
            raise UsageError(
                f"the monitor at {self.hook!r} saw a forward continuing {info.past} cached tokens "
                f"(batch {batch}) but has seen {len(self)}: enter the monitor before the first "
                "forward of the generation (beam search is not supported)"
            )
        assert self._stream is not None and self._flagged is not None
        crossed: list[Flag] = []
        finite = torch.isfinite(x).all(dim=-1).to(self._stream.device)
        for j in range(x.shape[1]):
            valid = info.mask[:, j].to(self._stream.device)
            self._refuse_non_finite(valid & ~finite[:, j])
            self._stream.push(x[:, j].detach(), valid)
            # a prefix holding only the BOS that the probe leaves out has no score: the probe
            # would read BOS itself (a one-token rule for offline use), far outside its training
            blank = ~valid | (self._stream.count == 1) if self.probe.config.exclude_bos else ~valid
            logits = self._stream.logits().float().masked_fill(blank[:, None], float("nan"))
            self._logits.append(logits.cpu())
            self._mask.append(valid.cpu())
            self._ids.append(None if info.ids is None else info.ids[:, j].cpu())
            if self.threshold is not None:
                crossed += self._check(logits[:, 0].cpu(), len(self) - 1)
        if crossed and self.stop:
            raise MonitorStop(f"the monitor at {self.hook!r} flagged {len(crossed)} sequence(s)")

    def _refuse_non_finite(self, bad: Tensor) -> None:
        """Refuse an inf or NaN token that the probe reads: it would silence the score for good.

        A first token that the probe leaves out (``exclude_bos``) is not read once a second
        follows, and a BOS-only prefix has no score: its overflow (Gemma's BOS in float16) is
        let through.
        """
        assert self._stream is not None
        if self.probe.config.exclude_bos:
            bad = bad & (self._stream.count > 0)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise InputError(
                f"the activations at {self.hook!r} are not finite at position {len(self)} of "
                f"sequence(s) {rows}: the model overflows in its dtype; load it in bfloat16 or "
                "float32"
            )

    def _start(self, batch: int) -> None:
        """New sequences: fresh running state and flags."""
        self._stream = self.probe.stream(batch)
        self._flagged = torch.zeros(batch, dtype=torch.bool)
        self._logits, self._mask, self._ids = [], [], []
        self.flags = []

    def _check(self, scores: Tensor, position: int) -> list[Flag]:
        assert self._flagged is not None and self.threshold is not None
        new = ~self._flagged & (scores > self.threshold)  # NaN (padding) compares False
        out = []
        for row in new.nonzero().flatten().tolist():
            flag = Flag(row, position, float(scores[row]))
            self.flags.append(flag)
            out.append(flag)
            if self.on_flag is not None:
                self.on_flag(flag)
        self._flagged |= new
        return out


def operating_threshold(probe: Probe, name: str) -> float:
    """The logit threshold of an operating point saved with the probe (e.g. ``tpr_at_1pct_fpr``).

    Raises:
        InputError: The probe holds no such point, or it could not be fixed (too few negatives).
    """
    saved = probe.config.thresholds
    if name not in saved:
        known = ", ".join(saved) or "none: train it with lp.run_protocol on a binary task"
        raise InputError(f"the probe holds no operating point {name!r}; it holds: {known}")
    value = saved[name]
    if value is None:
        raise InputError(
            f"the probe's {name!r} threshold could not be fixed: too few negatives in the "
            f"{probe.config.fixed_on}; pass a larger control set to run_protocol(control=...), "
            "or a threshold of your own"
        )
    return float(value)


@contextmanager
def monitor(
    model: Any,
    probe: Probe,
    hook: str | None = None,
    *,
    threshold: float | str | None = None,
    on_flag: Callable[[Flag], None] | None = None,
    stop: bool = False,
) -> Iterator[Monitor]:
    """Score every token of the sequences a model runs in the block with a probe's running state.

    Example::

        # the 1%-FPR threshold the protocol fixed on training data, saved with the probe
        with lp.monitor(model, result.probe, threshold="tpr_at_1pct_fpr", stop=True) as mon:
            model.generate(**prompts, max_new_tokens=200)
        mon.flags            # [Flag(row=0, position=57, logit=3.1)]: where each was flagged
        mon.scores           # (batch, pos): the probe's logit after every token

    Args:
        model: A TransformerBridge, an nnsight model or a Hugging Face model.
        probe: A trained probe (read, not modified).
        hook: Hook name; default the one recorded in the probe's config.
        threshold: A logit threshold of a one-logit probe, or the name of an operating point the
            probe's config holds (``"tpr_at_1pct_fpr"``: fixed by the protocol on training
            data or a control set); each sequence is flagged at the first token whose logit is
            above it.
        on_flag: Called with each :class:`Flag` as it is raised.
        stop: End the forward (and so ``generate``) at the first flag; the ``with`` block then
            ends without an error, and the monitor keeps what it saw.

    Yields:
        The :class:`Monitor`, filled during the block and kept afterwards.
    """
    hook = probe_hook(probe, hook, "monitor")
    if threshold is not None and probe.config.n_outputs != 1:
        raise InputError(
            f"a threshold applies to the one logit of a binary probe; this probe has "
            f"{probe.config.n_outputs} outputs: monitor without a threshold and read "
            "monitor.logits"
        )
    if stop and threshold is None:
        raise InputError("stop=True ends the forward at the first flag: pass a threshold")
    if isinstance(threshold, str):
        threshold = operating_threshold(probe, threshold)
    mon = Monitor(probe, hook, threshold, on_flag, stop)
    try:
        with read_activations(model, hook, mon._observe):
            yield mon
    except MonitorStop:
        pass
