"""Bad input to run_protocol is a named error before any compute; labels of any kind work."""

from __future__ import annotations

import pytest
import torch

import lensprobe as lp
import lensprobe.train.protocol as protocol
from lensprobe.errors import InputError, LensprobeError


def separable(n=60, pos=6, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, pos, d, generator=gen)
    x[:, :, 0] += 3.0 * (2 * y[:, None] - 1)
    return x, torch.ones(n, pos, dtype=torch.bool), y


@pytest.fixture
def no_compute(monkeypatch):
    """Any training or scaling means a check came too late."""

    def boom(*args, **kwargs):
        raise AssertionError("compute started before the input was checked")

    monkeypatch.setattr(protocol, "_fit", boom)
    monkeypatch.setattr(protocol, "token_scale", boom)


def test_empty_activations_are_a_named_error(no_compute):
    with pytest.raises(InputError, match=r"activations are empty \(shape \(0, 5, 8\)\)"):
        lp.run_protocol(torch.randn(0, 5, 8), torch.zeros(0, dtype=torch.long), probe="mean")


def test_a_mask_of_the_wrong_shape_names_both_shapes(no_compute):
    x, _, y = separable(n=40, pos=5)
    with pytest.raises(InputError, match=r"mask shape \(40, 4\) does not match .* \(40, 5\)"):
        lp.run_protocol(x, y, mask=torch.ones(40, 4, dtype=torch.bool), probe="mean")


def test_an_integer_mask_is_a_named_error(no_compute):
    x, _, y = separable(n=40, pos=5)
    with pytest.raises(InputError, match=r"bool tensor .* got torch.int64: pass mask.bool\(\)"):
        lp.run_protocol(x, y, mask=torch.ones(40, 5, dtype=torch.long), probe="mean")


def test_rows_without_a_valid_token_are_named(no_compute):
    x, mask, y = separable()
    mask[[3, 17]] = False
    with pytest.raises(InputError, match=r"row\(s\) 3, 17 of 60 have no valid token: drop them"):
        lp.run_protocol(x, y, mask=mask, probe="last")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_valid_tokens_are_named_by_row_and_position(no_compute, bad):
    x, mask, y = separable()
    x[4, 2, 1] = bad
    x[7, 0, 5] = bad
    with pytest.raises(InputError, match=r"NaN or inf at 2 valid token\(s\), e\.g\. \(row 4, pos 2\), \(row 7, pos 0\); rows 4, 7"):  # fmt: skip
        lp.run_protocol(x, y, mask=mask, probe="attention")


def test_non_finite_padding_is_ignored_but_valid_tokens_are_checked():
    x, mask, y = separable()
    mask[:, -2:] = False
    x[:, -2:] = float("nan")  # padding may hold anything: no probe reads it
    res = lp.run_protocol(x, y, mask=mask, probe="mean", weight_decays=(0.01,))
    assert res.metrics["accuracy"] > 0.9
    assert all(torch.isfinite(p).all() for p in res.probe.parameters())
    mask[9, -1] = True  # the same NaN, now on a valid token
    with pytest.raises(InputError, match=r"\(row 9, pos 5\)"):
        lp.run_protocol(x, y, mask=mask, probe="mean", weight_decays=(0.01,))


def test_input_errors_are_lensprobe_errors_and_value_errors():
    x, mask, y = separable()
    x[0, 0, 0] = float("nan")
    with pytest.raises(LensprobeError):
        lp.run_protocol(x, y, mask=mask, probe="mean")
    with pytest.raises(ValueError):
        lp.run_protocol(x, y, mask=mask, probe="mean")


@pytest.mark.parametrize("values", [(1, 2), (0, 5), (-1, 1)])
def test_integer_labels_with_gaps_train_one_output_per_real_class(values):
    x, mask, y01 = separable()
    labels = torch.tensor(values)[y01]
    res = lp.run_protocol(x, labels, mask=mask, probe="mean", weight_decays=(0.01,))
    assert res.classes == values
    assert res.probe.config.n_outputs == 1  # binary: no phantom classes
    assert res.probe.config.class_names == tuple(str(v) for v in values)
    base = lp.run_protocol(x, y01, mask=mask, probe="mean", weight_decays=(0.01,))
    assert base.probe.config.class_names is None  # 0..k-1 without names: nothing to record
    assert res.metrics == pytest.approx(base.metrics, nan_ok=True)
    # predictions map back to the original labels through res.classes
    pred = lp.metrics.predictions(res.test_logits)
    original = torch.tensor([res.classes[int(p)] for p in pred])
    assert float((original == labels[res.test_rows]).double().mean()) == res.metrics["accuracy"]


def test_string_labels_become_classes_with_their_names():
    x, mask, _ = separable(n=90)
    names = ["eel", "cat", "dog"]
    labels = [names[i % 3] for i in range(90)]
    x[:, :, 1] += 3.0 * torch.tensor([i % 3 == 0 for i in range(90)])[:, None]
    res = lp.run_protocol(x, labels, mask=mask, probe="mean", weight_decays=(0.01,))
    assert res.classes == ("cat", "dog", "eel")
    assert res.probe.config.class_names == ("cat", "dog", "eel")
    assert res.probe.config.n_outputs == 3
    expected = torch.tensor([res.classes.index(v) for v in labels])
    assert torch.equal(res.runs[0].test_labels, expected[res.test_rows])


def test_names_of_an_activations_capture_follow_its_label_ids():
    x, mask, y01 = separable()

    class Meta:
        hook, model_id, class_names = "blocks.0.hook_resid_post", "toy", ("none", "low", "high")
        backend, dtype, padding_side, max_length, prepend_bos = "hf", "float32", "right", 6, False

    class FakeActivations:  # the attributes run_protocol reads; class 0 absent from the labels
        meta, labels, dtype = Meta(), y01 + 1, torch.float32

        def pad(self, dtype=torch.float32):
            return x.clone().to(dtype), mask.clone()

    res = lp.run_protocol(FakeActivations(), probe="mean", weight_decays=(0.01,))
    assert res.classes == (1, 2)
    assert res.probe.config.n_outputs == 1
    assert res.probe.config.class_names == ("low", "high")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["a", 1] * 30, r"labels mix types \['int', 'str'\]"),
        ([0.5, 1.0] * 30, "non-integer floats"),
        ([float("nan"), 1.0] * 30, r"NaN or inf at row\(s\) 0, 2, 4, 6, 8, \.\.\. \(30 in all\)"),
        ([[0, 1]] * 60, r"labels of shape \(60, 2\) as labels for 60 sequences"),
    ],
)
def test_unusable_labels_are_named_errors(no_compute, labels, match):
    x, mask, _ = separable()
    with pytest.raises(InputError, match=match):
        lp.run_protocol(x, labels, mask=mask, probe="mean")


def test_fit_checks_its_input_before_training():
    x, mask, y = separable()
    probe = lp.MeanProbe(d_model=x.shape[-1])
    bad = x.clone()
    bad[5, 3, 0] = float("nan")
    with pytest.raises(InputError, match=r"\(row 5, pos 3\)"):
        lp.fit(probe, bad, mask, y)
    empty = mask.clone()
    empty[8] = False
    with pytest.raises(InputError, match=r"row\(s\) 8 of 60 have no valid token"):
        lp.fit(probe, x, empty, y)
    with pytest.raises(InputError, match=r"class ids 0\.\.1 for this probe .* got 1\.\.2"):
        lp.fit(probe, x, mask, y + 1)  # a one-logit probe has classes 0 and 1 only
