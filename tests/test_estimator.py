"""The scikit-learn estimators: the sklearn protocol, and the same probes as the protocol trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from test_analysis import make_acts

import lensprobe as lp
from lensprobe.errors import InputError
from lensprobe.train import TrainConfig

SHORT = TrainConfig(max_steps=200)


@parametrize_with_checks(
    [
        lp.ProbeClassifier(kind="mean"),
        lp.ProbeClassifier(kind="attention", n_heads=2, train=SHORT),
        lp.ProbeClassifierCV(kind="last", n_folds=3),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _padded(n=60, pos=7, d=6, seed=0):
    """Padded sequences whose class shows at every valid token; NaN-free, with a ragged mask."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, pos, d, generator=gen)
    x[:, :, 0] += 1.5 * (2 * y[:, None] - 1)
    lengths = torch.randint(1, pos + 1, (n,), generator=gen)
    mask = torch.arange(pos)[None] < lengths[:, None]
    return x, mask, y


@pytest.mark.parametrize(("kind", "heads"), [("attention", 2), ("mean", 1), ("max", 1)])
def test_the_cv_variant_refits_exactly_the_probe_of_its_chosen_decay(kind, heads):
    """The refit member of the chosen decay in the batched CV fit is the plain fit at that decay."""
    x, mask, y = _padded()
    cv = lp.ProbeClassifierCV(kind=kind, n_heads=heads, weight_decays=(0.0, 0.1), n_folds=3)
    cv.fit(x.numpy(), y.numpy(), mask=mask.numpy())
    assert cv.weight_decay_ in (0.0, 0.1)
    assert [row["weight_decay"] for row in cv.cv_results_] == [0.0, 0.1]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in cv.cv_results_)
    plain = lp.ProbeClassifier(kind=kind, n_heads=heads, weight_decay=cv.weight_decay_)
    plain.fit(x.numpy(), y.numpy(), mask=mask.numpy())
    for name, value in cv.probe_.state_dict().items():
        torch.testing.assert_close(value, plain.probe_.state_dict()[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        cv.predict_proba(x, mask), plain.predict_proba(x, mask), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", ["attention", "mean", "last"])
def test_activations_padded_arrays_and_nan_padding_train_the_same_probe(kind):
    acts = make_acts(n=40, d=8, max_len=9)
    x, mask = acts.pad(dtype=torch.float32)
    y = acts.labels.numpy()
    from_acts = lp.ProbeClassifier(kind=kind).fit(acts)  # labels from the Activations
    from_mask = lp.ProbeClassifier(kind=kind).fit(x.numpy(), y, mask=mask.numpy())
    nan_padded = torch.where(mask[..., None], x, torch.nan).numpy()
    from_nan = lp.ProbeClassifier(kind=kind).fit(nan_padded, y)
    want = from_acts.predict_proba(acts)
    np.testing.assert_allclose(from_mask.predict_proba(x, mask), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_nan.predict_proba(nan_padded), want, rtol=1e-5, atol=1e-6)
    # garbage at padding is never read
    noisy = np.where(mask.numpy()[..., None], x.numpy(), 1e6)
    np.testing.assert_allclose(from_acts.predict_proba(noisy, mask), want, rtol=1e-5, atol=1e-6)


def test_labels_keep_their_values_and_binary_probabilities_have_two_columns():
    x, mask, y = _padded()
    names = np.array(["neg", "pos"])[y.numpy()]
    clf = lp.ProbeClassifier(kind="mean").fit(x, names, mask=mask)
    assert list(clf.classes_) == ["neg", "pos"]
    proba = clf.predict_proba(x, mask)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    z = clf.decision_function(x, mask)
    assert z.shape == (60,)
    assert list(clf.predict(x, mask)) == list(np.where(z > 0, "pos", "neg"))
    assert clf.score(x, names, mask=mask) > 0.9
    assert clf.probe_.config.class_names == ("neg", "pos")


def test_model_selection_tools_accept_nan_padded_sequences():
    x, mask, y = _padded(n=90)
    X = torch.where(mask[..., None], x, torch.nan).numpy()
    scores = cross_val_score(lp.ProbeClassifier(kind="mean"), X, y.numpy(), cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    search = GridSearchCV(
        lp.ProbeClassifier(kind="attention", train=SHORT), {"n_heads": [1, 2]}, cv=2
    ).fit(X, y.numpy())
    assert search.best_params_["n_heads"] in (1, 2)
    twin = clone(search.best_estimator_)
    assert twin.get_params()["n_heads"] == search.best_params_["n_heads"]
    assert not hasattr(twin, "probe_")


def test_bad_inputs_are_named_errors():
    x, mask, y = _padded()
    clf = lp.ProbeClassifier(kind="mean").fit(x, y, mask=mask)
    with pytest.raises(InputError, match="X has 5 features, but ProbeClassifier is expecting 6"):
        clf.predict(x[..., :5], mask)
    bad = x.clone()
    bad[0, 0, 1] = torch.nan  # a NaN inside a valid token, not a whole padding vector
    with pytest.raises(InputError, match="NaN or infinity at valid tokens"):
        lp.ProbeClassifier(kind="mean").fit(bad, y, mask=mask)
    with pytest.raises(InputError, match="only one class"):
        lp.ProbeClassifier(kind="mean").fit(x, torch.zeros(60))
    with pytest.raises(InputError, match="mask has shape"):
        lp.ProbeClassifier(kind="mean").fit(x, y, mask=mask[:, :3])
    with pytest.raises(InputError, match="requires y"):
        lp.ProbeClassifier(kind="mean").fit(x)
