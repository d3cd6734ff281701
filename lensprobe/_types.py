"""Shape aliases and the dimension vocabulary shared by every module.

Dimension names (used in every jaxtyping annotation of the package):

- ``batch``: sequences in a batch.
- ``pos``: token positions (padded to the longest sequence of the batch).
- ``d_model``: width of the residual stream at the hook.
- ``head``: attention heads of the *language model*.
- ``probe_head``: heads of an attention *probe*.
- ``member``: members of a batched sweep (weight decays x folds x seeds).
- ``n_outputs``: probe outputs (1 for a binary task, k for k classes).
- ``tokens``: all valid tokens of a ragged collection, packed end to end.
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor

Acts = Float[Tensor, "batch pos d_model"]
"""Padded activations of a batch."""

Mask = Bool[Tensor, "batch pos"]
"""True where a token is valid (not padding)."""

Logits = Float[Tensor, "batch n_outputs"]
"""Probe outputs before the sigmoid / softmax."""

Labels = Int[Tensor, " batch"]
"""Integer class labels."""

ProbeAttention = Float[Tensor, "batch pos probe_head"]
"""Attention of a probe's heads over the positions of each sequence."""

__all__ = ["Acts", "Labels", "Logits", "Mask", "ProbeAttention"]
