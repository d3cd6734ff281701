"""What a trained probe attends to: per-head attention entropy, token contributions, top examples.

Three analyses of the EleutherAI "Attention Probes" study, done on every sequence asked for:

- :func:`attention_entropy`: for each sequence and probe head, the entropy (in nats) of the
  head's attention over the sequence's valid tokens, next to the entropy of a uniform
  distribution over the same number of valid tokens, ``log(n_valid)``, and their ratio.
- :func:`token_contributions`: each token's exact share of each logit, for every probe kind
  (``logits = contributions.sum(pos) + bias``).
- :func:`top_examples`: the true top-k sequences by class logit, for each class, and for each
  probe head the top-k sequences by the largest attention weight the head puts on one token,
  plus the tokens that receive the most attention mass over all the sequences.

Every function takes a probe and either an :class:`~lensprobe.activations.Activations` or a padded
``(x, mask)`` pair, optionally restricted to some ``rows`` (e.g. a protocol's test rows). Work is
done in batches, on the probe's device, in ``no_grad`` and eval mode (the probe's mode is restored).

One module per analysis: :mod:`~lensprobe.analysis.entropy`,
:mod:`~lensprobe.analysis.contributions`, :mod:`~lensprobe.analysis.examples` (top examples and
:func:`explain`); :mod:`~lensprobe.analysis.inputs` is how they all read their input.
"""

from __future__ import annotations

from lensprobe.analysis.contributions import token_contributions
from lensprobe.analysis.entropy import AttentionEntropy, attention_entropy, entropy_from_attention
from lensprobe.analysis.examples import (
    Example,
    TokenMass,
    TopExamples,
    class_scores,
    explain,
    top_examples,
)
from lensprobe.analysis.inputs import Data

__all__ = [
    "AttentionEntropy",
    "Data",
    "Example",
    "TokenMass",
    "TopExamples",
    "attention_entropy",
    "class_scores",
    "entropy_from_attention",
    "explain",
    "token_contributions",
    "top_examples",
]
