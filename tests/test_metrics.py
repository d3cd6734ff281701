"""Metrics come from logits in float64 and agree with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from lensprobe.errors import InsufficientNegatives
from lensprobe.metrics import (
    accuracy,
    auroc,
    balanced_accuracy,
    binary_auroc,
    classification_metrics,
    corrected_t_interval,
    corrected_t_p_value,
    expected_calibration_error,
    fpr_threshold,
    holm_adjust,
    log_loss,
    macro_f1,
    monitoring_thresholds,
    probabilities,
    top_label_calibration_error,
    tpr_at_fpr,
    unavailable_reason,
    wilson_interval,
)


def _task(k, n=200, seed=0):
    gen = torch.Generator().manual_seed(seed + k)
    labels = torch.randint(0, k, (n,), generator=gen)
    logits = torch.randn(n, k, generator=gen) + 1.5 * torch.nn.functional.one_hot(labels, k)
    if k == 2:  # one logit for a binary probe, quantised: ties, which AUROC must average
        logits = ((logits[:, 1:] - logits[:, :1]) * 4).round() / 4
    return logits, labels


def _sklearn_probs(logits):
    z = logits.double().numpy()
    if z.shape[1] == 1:
        p = 1 / (1 + np.exp(-z[:, 0]))
        return np.stack([1 - p, p], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_metrics_from_logits_match_scikit_learn(k):
    logits, labels = _task(k)
    y, p = labels.numpy(), _sklearn_probs(logits)
    pred = p.argmax(1)
    assert accuracy(logits, labels) == pytest.approx(skm.accuracy_score(y, pred))
    assert balanced_accuracy(logits, labels) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(logits, labels) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert log_loss(logits, labels) == pytest.approx(skm.log_loss(y, p), rel=1e-9)
    expected_auc = (
        skm.roc_auc_score(y, logits[:, 0].double().numpy())
        if k == 2
        else skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert auroc(logits, labels) == pytest.approx(expected_auc, rel=1e-9)


def test_binary_predictions_are_logit_above_zero():
    # logit 0.3 -> p = 0.574 -> class 1; thresholding the raw logit at 0.5 would say class 0
    logits = torch.tensor([[0.3], [-0.2], [2.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 1.0
    torch.testing.assert_close(probabilities(logits)[:, 1], torch.sigmoid(logits[:, 0]))
    expected = -np.mean([math.log(1 / (1 + math.exp(-z))) for z in (0.3, 0.2, 2.0)])
    assert m["log_loss"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("z", [17.0, 20.0, 40.0])
def test_log_loss_of_confident_mistakes_does_not_saturate(z):
    # One confident mistake each way: -log sigmoid(-z) = z + log1p(exp(-z)) nats.
    logits = torch.tensor([[z], [-z]])
    labels = torch.tensor([0, 1])
    assert log_loss(logits, labels) == pytest.approx(z + math.log1p(math.exp(-z)), rel=1e-12)
    three = torch.tensor([[z, 0.0, -z]])  # softmax: -log p(class 2) = 2z + log(1 + e^-z + e^-2z)
    expected = 2 * z + math.log1p(math.exp(-z) + math.exp(-2 * z))
    assert log_loss(three, torch.tensor([2])) == pytest.approx(expected, rel=1e-12)


def test_auroc_ranks_logits_without_saturation_ties():
    # float32 sigmoid maps all of these to 1.0 and would give 0.5; the logits rank perfectly
    logits = torch.tensor([[17.0], [18.0], [19.0], [20.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert auroc(logits, labels) == skm.roc_auc_score(labels.numpy(), logits[:, 0].numpy()) == 1.0
    many = torch.tensor([[40.0, 0.0, 0.0], [50.0, 0.0, 0.0], [0.0, 45.0, 0.0], [0.0, 0.0, 60.0]])
    assert auroc(many, torch.tensor([0, 0, 1, 2])) == 1.0


def test_auroc_single_class_is_nan_and_ties_count_half():
    assert math.isnan(binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))
    assert binary_auroc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpr_at_fixed_fpr_matches_the_roc_curve_of_scikit_learn(fpr, seed):
    logits, labels = _task(2, n=300, seed=seed)
    fprs, tprs, _ = skm.roc_curve(labels.numpy(), logits[:, 0].numpy(), drop_intermediate=False)
    assert tpr_at_fpr(logits, labels, fpr) == pytest.approx(tprs[fprs <= fpr].max())
    m = classification_metrics(logits, labels)
    assert m["tpr_at_5pct_fpr"] == pytest.approx(tprs[fprs <= 0.05].max())
    assert m["tpr_at_1pct_fpr"] == pytest.approx(tprs[fprs <= 0.01].max())


def test_tpr_threshold_fixed_on_training_rows():
    train_logits, train_labels = _task(2, n=400, seed=5)
    test_logits, test_labels = _task(2, n=200, seed=6)
    thresholds = monitoring_thresholds(train_logits, train_labels)
    t = fpr_threshold(train_logits, train_labels, 0.05)
    assert thresholds["tpr_at_5pct_fpr"] == t
    train_neg = train_logits[train_labels == 0, 0]
    assert float((train_neg > t).double().mean()) <= 0.05  # at most 5% of training negatives
    m = classification_metrics(test_logits, test_labels, thresholds=thresholds)
    pos, neg = test_logits[test_labels == 1, 0], test_logits[test_labels == 0, 0]
    assert m["tpr_at_5pct_fpr"] == float((pos > t).double().mean())
    assert m["fpr_at_5pct_threshold"] == float((neg > t).double().mean())
    with pytest.raises(ValueError, match="binary"):
        tpr_at_fpr(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), 0.05)
    assert "tpr_at_1pct_fpr" not in classification_metrics(torch.randn(6, 3), torch.arange(6) % 3)


def test_expected_calibration_error_matches_scikit_learn_bins():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 1, generator=gen) * 3
    labels = (torch.rand(500, generator=gen) < torch.sigmoid(logits[:, 0] * 0.5)).long()
    p = torch.sigmoid(logits[:, 0].double()).numpy()
    y = labels.numpy()
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    expected = float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, rel=1e-9)
    assert classification_metrics(logits, labels)["ece"] == pytest.approx(expected, rel=1e-9)
    # k classes: no class 1 to calibrate; top-label calibration has its own name
    logits3, labels3 = _task(3, n=400)
    probs = _sklearn_probs(logits3)
    conf, hit = probs.max(1), (probs.argmax(1) == labels3.numpy()).astype(int)
    prob_true, prob_pred = calibration_curve(hit, conf, n_bins=10, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    expected = float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))
    assert top_label_calibration_error(logits3, labels3) == pytest.approx(expected, rel=1e-9)
    m3 = classification_metrics(logits3, labels3)
    assert m3["top_label_ece"] == pytest.approx(expected, rel=1e-9) and "ece" not in m3
    with pytest.raises(ValueError, match="use top_label_ece"):
        expected_calibration_error(logits3, labels3)
    # binary: both, and they differ (top-label confidence is at least 0.5)
    m2 = classification_metrics(logits, labels)
    assert m2["top_label_ece"] != pytest.approx(m2["ece"])


def test_corrected_t_interval_is_nadeau_bengio():
    stats = pytest.importorskip("scipy.stats")
    values = np.array([0.81, 0.86, 0.78, 0.9])
    low, high = corrected_t_interval(values, n_train=128, n_test=32)
    se = math.sqrt(values.var(ddof=1) * (1 / 4 + 32 / 128))
    half = stats.t.ppf(0.975, 3) * se
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), rel=1e-12)
    plain = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values))
    assert high - low > plain[1] - plain[0]  # wider than the plain t over correlated splits
    p = corrected_t_p_value(values - values.mean() + 0.01, 128, 32)
    t = 0.01 / se
    assert p == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-9)
    assert corrected_t_interval(values, 128, 32, bounds=(0.0, 0.87))[1] == 0.87  # clipped
    for degenerate in ([0.8], [0.8, math.nan], [0.6129032258064516, 19 / 31, 0.6129032258064517]):
        assert all(math.isnan(v) for v in corrected_t_interval(degenerate, 128, 32))
    assert math.isnan(corrected_t_p_value([19 / 31] * 3, 128, 32))


def test_wilson_interval_has_width_at_zero_and_one():
    z2 = 1.959963984540054**2
    low, high = wilson_interval(16, 16)
    assert high == 1.0 and low == pytest.approx(16 / (16 + z2), rel=1e-9) and low < 0.81
    low0, high0 = wilson_interval(0, 16)
    assert low0 == 0.0 and high0 == pytest.approx(1 - low, rel=1e-9)
    low, high = wilson_interval(24, 32)
    assert 0.0 < low < 0.75 < high < 1.0


def test_holm_adjusts_a_family_step_down():
    # sorted p: 0.01 (x3), 0.03 (x2), 0.04 (x1); monotone; NaN is not a test
    assert holm_adjust([0.01, 0.04, math.nan, 0.03]) == pytest.approx(
        [0.03, 0.06, math.nan, 0.06], nan_ok=True
    )
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_threshold_needs_one_over_fpr_negatives():
    logits, labels = _task(2, n=120, seed=1)
    n_neg = int((labels == 0).sum())
    assert 20 <= n_neg < 100
    with pytest.raises(InsufficientNegatives, match=rf"{n_neg} negative .* at least 100"):
        fpr_threshold(logits, labels, 0.01)
    thresholds = monitoring_thresholds(logits, labels)
    assert math.isnan(thresholds["tpr_at_1pct_fpr"]) and not math.isnan(
        thresholds["tpr_at_5pct_fpr"]
    )
    m = classification_metrics(logits, labels, thresholds=thresholds)
    assert math.isnan(m["tpr_at_1pct_fpr"]) and math.isnan(m["fpr_at_1pct_threshold"])
    assert not math.isnan(m["tpr_at_5pct_fpr"]) and "fpr_at_5pct_threshold" in m
    assert math.isnan(classification_metrics(logits, labels)["tpr_at_1pct_fpr"])
    assert "needs 100" in unavailable_reason("tpr_at_1pct_fpr", n_neg)
    assert unavailable_reason("tpr_at_5pct_fpr", n_neg) is None


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        accuracy(torch.zeros(2, 1), torch.tensor([0, 2]))
