"""Metrics agree with scikit-learn and come from probabilities, not thresholded logits."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn import metrics as skm

from lensprobe.metrics import (
    accuracy,
    auroc,
    balanced_accuracy,
    binary_auroc,
    classification_metrics,
    log_loss,
    macro_f1,
    probabilities,
)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_metrics_match_scikit_learn(k):
    gen = torch.Generator().manual_seed(k)
    labels = torch.randint(0, k, (200,), generator=gen)
    logits = torch.randn(200, k, generator=gen) + 1.5 * torch.nn.functional.one_hot(labels, k)
    probs = logits.softmax(-1)
    # quantise to create ties, which AUROC must average
    probs = (probs * 20).round() / 20
    probs = 0.9 * probs / probs.sum(-1, keepdim=True) + 0.1 / k  # no zero probabilities
    probs = probs.double() / probs.double().sum(-1, keepdim=True)  # rows sum to 1 in float64
    y, p = labels.numpy(), probs.numpy()
    pred = p.argmax(1)
    assert accuracy(probs, labels) == pytest.approx(skm.accuracy_score(y, pred))
    assert balanced_accuracy(probs, labels) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(probs, labels) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert log_loss(probs, labels) == pytest.approx(skm.log_loss(y, p), rel=1e-4)
    expected_auc = (
        skm.roc_auc_score(y, p[:, 1])
        if k == 2
        else skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert auroc(probs, labels) == pytest.approx(expected_auc, rel=1e-6)


def test_binary_predictions_come_from_probabilities_not_raw_logits():
    # logit 0.3 -> p = 0.574 -> class 1; thresholding the raw logit at 0.5 would say class 0
    logits = torch.tensor([[0.3], [-0.2], [2.0]])
    labels = torch.tensor([1, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 1.0
    probs = probabilities(logits)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(logits[:, 0]))
    assert m["log_loss"] == pytest.approx(float(-probs[torch.arange(3), labels].log().mean()))


def test_auroc_single_class_is_nan_and_ties_count_half():
    assert math.isnan(binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))
    assert binary_auroc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        accuracy(torch.full((2, 2), 0.5), torch.tensor([0, 2]))
