"""Probe directions, steering and ablation along them, and activation patching with a probe."""

from __future__ import annotations

import functools
from contextlib import ExitStack

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from probe_helpers import builtin_kinds
from probe_helpers import random_probe as _random_probe

from lensprobe.hooks import attach
from lensprobe.patching import patch_positions
from lensprobe.probes import MeanProbe
from lensprobe.steering import (
    ablate,
    add_direction,
    class_directions,
    head_directions,
    orthonormal_basis,
    project_out,
    steer,
)

HOOK = "blocks.1.hook_resid_post"
BACKENDS = ["hf", "nnsight", "transformer_lens"]
KINDS = builtin_kinds()


random_probe = functools.partial(_random_probe, d_model=32, n_outputs=1, hook=HOOK)


def padded(lengths: list[int], d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    x = torch.randn(len(lengths), width, d, generator=gen)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


def forward(model, backend: str, texts: list[str]) -> None:
    with torch.no_grad():
        if backend == "transformer_lens":
            model(texts, padding_side="right")
            return
        tok = model.tokenizer
        tok.padding_side = "right"
        enc = tok(texts, return_tensors="pt", padding=True)
        if backend == "nnsight":
            with model.trace(enc["input_ids"], attention_mask=enc["attention_mask"]):
                pass
        else:
            model(**enc)


# -------------------------------------------------------------------------------------------
# Directions and the tensor operations
# -------------------------------------------------------------------------------------------


def test_class_and_head_directions():
    mean = random_probe("mean", n_outputs=3)
    assert torch.equal(class_directions(mean), mean.weight.detach().T)
    centred = class_directions(mean, center=True)
    torch.testing.assert_close(centred.sum(0), torch.zeros(32), atol=1e-5, rtol=0)
    attn = random_probe("attention", n_outputs=2)
    heads = head_directions(attn)
    assert heads.shape == (3, 2, 32)
    assert torch.equal(heads[1, 0], attn.value.detach()[:, 1, 0])
    torch.testing.assert_close(class_directions(attn), heads.sum(0))
    heads.zero_()  # a copy: the probe keeps its values
    assert attn.value.abs().sum() > 0
    with pytest.raises(ValueError, match="several outputs"):
        class_directions(random_probe("mean"), center=True)
    with pytest.raises(TypeError, match="AttentionProbe"):
        head_directions(mean)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    n_outputs=st.sampled_from([1, 3]),
    alpha=st.floats(-5, 5),
    seed=st.integers(0, 1000),
)
def test_shifting_every_valid_token_moves_logits_by_alpha_times_directions(
    kind, lengths, n_outputs, alpha, seed
):
    probe = random_probe(kind, d_model=8, n_outputs=n_outputs, seed=seed)
    x, mask = padded(lengths, 8, seed)
    u = torch.randn(8, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        moved = probe(add_direction(x, u, alpha, mask=mask), mask)
        expected = probe(x, mask) + alpha * class_directions(probe) @ (u / u.norm())
    torch.testing.assert_close(moved, expected, atol=1e-4, rtol=1e-4)
    # padding stays untouched
    assert torch.equal(add_direction(x, u, alpha, mask=mask)[~mask], x[~mask])


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from([k for k in KINDS if k != "max"]),  # max pooling is not linear
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    n_outputs=st.sampled_from([1, 3]),
    seed=st.integers(0, 1000),
)
def test_projecting_out_a_probes_directions_leaves_its_bias(kind, lengths, n_outputs, seed):
    probe = random_probe(kind, d_model=16, n_outputs=n_outputs, seed=seed)
    x, mask = padded(lengths, 16, seed)
    dirs = probe.read_directions()
    with torch.no_grad():
        ablated = probe(project_out(x, dirs), mask)
    bias = probe.bias.detach().expand_as(ablated)
    torch.testing.assert_close(ablated, bias, atol=1e-4, rtol=1e-4)


def test_project_out_is_an_orthogonal_projection_and_mean_ablation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 12, generator=gen)
    dirs = torch.randn(3, 12, generator=gen)
    out = project_out(x, dirs)
    torch.testing.assert_close(out @ dirs.T, torch.zeros(2, 5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(project_out(out, dirs), out, atol=1e-5, rtol=0)  # idempotent
    mean = torch.randn(12, generator=gen)
    mean_ablated = project_out(x, dirs, mean=mean)
    torch.testing.assert_close(mean_ablated @ dirs.T, (mean @ dirs.T).expand(2, 5, 3))
    # the part orthogonal to the directions is untouched
    basis = orthonormal_basis(dirs)
    torch.testing.assert_close(
        mean_ablated - mean_ablated @ basis.T @ basis, out, atol=1e-5, rtol=0
    )
    only_first = project_out(x, dirs, mask=torch.tensor([[True] + [False] * 4] * 2))
    assert torch.equal(only_first[:, 1:], x[:, 1:])


def test_orthonormal_basis_drops_dependent_directions():
    probe = random_probe("mean", n_outputs=4)
    centred = class_directions(probe, center=True)  # four directions summing to zero: rank 3
    basis = orthonormal_basis(centred)
    assert basis.shape == (3, 32)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="all zero"):
        orthonormal_basis(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="zero"):
        add_direction(torch.zeros(1, 1, 3), torch.zeros(3), 1.0)


# -------------------------------------------------------------------------------------------
# Steering and ablation on live models
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_steering_moves_the_live_readout_along_its_direction(tiny_gemma3, tiny_texts, backend):
    model = tiny_gemma3(backend)
    probe = random_probe("attention", n_outputs=1)
    u = class_directions(probe)[0]
    alpha = 3.0
    # the readout is attached first: it still reads after the steering edit
    with attach(model, probe) as plain:
        forward(model, backend, tiny_texts)
        with steer(model, HOOK, u, alpha):
            forward(model, backend, tiny_texts)
        with steer(model, HOOK, u, -alpha):
            forward(model, backend, tiny_texts)
    base, up, down = (s.logits for s in plain.steps)
    shift = alpha * u.norm()
    torch.testing.assert_close(up - base, shift.expand_as(base), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(down - base, -shift.expand_as(base), atol=1e-3, rtol=1e-4)


def test_steering_chosen_positions_and_downstream(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("mean", n_outputs=1)
    u = class_directions(probe)[0]
    texts = ["the cat sat on the mat", "a dog ran"]
    with attach(model, probe) as plain:
        forward(model, "hf", texts)
    with steer(model, HOOK, u, 5.0, positions=[1, 2]), attach(model, probe) as steered:
        forward(model, "hf", texts)
    delta = (steered.activations - plain.activations).norm(dim=-1)
    moved = torch.zeros_like(delta, dtype=torch.bool)
    moved[:, 1:3] = True
    torch.testing.assert_close(delta[moved], torch.full((4,), 5.0), atol=1e-4, rtol=1e-4)
    assert (delta[~moved] == 0).all()
    # steering an earlier layer changes what a later readout sees
    with steer(model, "blocks.0.hook_resid_post", u, 5.0), attach(model, probe) as later:
        forward(model, "hf", texts)
    assert not torch.allclose(later.logits, plain.logits)
    with pytest.raises((TypeError, ValueError)):  # jaxtyping checks the shape first in tests
        with steer(model, HOOK, torch.randn(2, 32), 1.0):
            pass
    with pytest.raises(ValueError, match="width"):
        with steer(model, HOOK, torch.randn(16), 1.0):
            forward(model, "hf", texts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ablating_a_mean_probe_leaves_its_bias(tiny_gemma3, tiny_texts, backend):
    model = tiny_gemma3(backend)
    probe = random_probe("mean", n_outputs=1)
    with ablate(model, HOOK, probe), attach(model, probe) as readout:
        forward(model, backend, tiny_texts)
    torch.testing.assert_close(
        readout.logits, probe.bias.detach().expand(len(tiny_texts), 1), atol=1e-4, rtol=1e-4
    )
    # mean ablation: every text gets the logit of the reference mean
    mean = torch.randn(32)
    with ablate(model, HOOK, probe, mean=mean), attach(model, probe) as readout:
        forward(model, backend, tiny_texts)
    expected = (mean @ probe.weight + probe.bias).detach()
    torch.testing.assert_close(
        readout.logits, expected.expand(len(tiny_texts), 1), atol=1e-4, rtol=1e-4
    )


def test_ablation_during_generation_with_kv_cache(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("attention", n_outputs=2)
    enc = model.tokenizer(["the cat sat", "a big dog ran"], return_tensors="pt", padding=True)
    with ablate(model, HOOK, probe), attach(model, probe) as readout, torch.no_grad():
        model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert len(readout) == 3
    for step in readout.steps:  # every new token is ablated as it is computed
        torch.testing.assert_close(step.logits, probe.bias.detach().expand(2, 2), atol=1e-4, rtol=0)


def test_steering_inside_an_nnsight_trace_matches_steer(tiny_gemma3):
    model = tiny_gemma3("nnsight")
    probe = random_probe("last", n_outputs=1)
    u = class_directions(probe)[0]
    ids = model.tokenizer(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    with attach(model, probe) as readout, torch.no_grad():
        with model.trace(ids):
            out = model.model.layers[1].output
            model.model.layers[1].output = add_direction(out, u, 2.0)
        with steer(model, HOOK, u, 2.0), model.trace(ids):
            pass
    torch.testing.assert_close(readout.steps[0].logits, readout.steps[1].logits)


# -------------------------------------------------------------------------------------------
# Activation patching
# -------------------------------------------------------------------------------------------

CLEAN = "the cat sat on the mat"
CORRUPT = "the dog sat on the mat"


def test_patching_at_the_probe_hook_equals_swapping_tokens(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("attention", n_outputs=3)
    result = patch_positions(model, probe, CLEAN, CORRUPT)
    with attach(model, probe) as clean:
        forward(model, "hf", [CLEAN])
    with attach(model, probe) as corrupt:
        forward(model, "hf", [CORRUPT])
    xc, xd = clean.activations[0], corrupt.activations[0]
    n = xc.shape[0]
    batch = xd.expand(n, -1, -1).clone()
    batch[torch.arange(n), torch.arange(n)] = xc
    with torch.no_grad():
        expected = probe(batch, torch.ones(n, n, dtype=torch.bool))
    torch.testing.assert_close(result.patched_logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.clean_logits, clean.logits[0])
    torch.testing.assert_close(result.corrupted_logits, corrupt.logits[0])
    assert result.clean_tokens[2] == "cat" and result.corrupted_tokens[2] == "dog"
    rows = result.to_rows()
    assert [r["position"] for r in rows] == list(range(n))
    assert result.probabilities.shape == (n, 3)


def test_patching_last_token_probe_recovers_only_at_the_last_position(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("last", n_outputs=1)
    result = patch_positions(model, probe, CLEAN, "the dog sat on the tree")
    expected = torch.zeros(7)
    expected[-1] = 1.0
    torch.testing.assert_close(result.recovered, expected, atol=1e-4, rtol=0)
    # identical texts: nothing to recover
    same = patch_positions(model, probe, CLEAN, CLEAN, positions=[0, 3])
    assert torch.isnan(same.recovered).all()
    assert same.positions.tolist() == [0, 3]


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_patching_an_earlier_hook_agrees_across_backends(tiny_gemma3, backend):
    probe = random_probe("attention", n_outputs=1)
    reference = patch_positions(
        tiny_gemma3("hf"), probe, CLEAN, CORRUPT, hook="blocks.0.hook_resid_post", batch_size=3
    )
    other = patch_positions(
        tiny_gemma3(backend), probe, CLEAN, CORRUPT, hook="blocks.0.hook_resid_post"
    )
    torch.testing.assert_close(other.patched_logits, reference.patched_logits, atol=1e-4, rtol=1e-4)
    # positions before the differing token carry nothing: the patch changes nothing there
    torch.testing.assert_close(
        reference.patched_logits[:2], reference.corrupted_logits.expand(2, 1), atol=1e-5, rtol=0
    )
    assert not torch.allclose(reference.patched_logits[2], reference.corrupted_logits)


def test_nnsight_patching_recipe_matches(tiny_gemma3):
    import nnsight

    model = tiny_gemma3("nnsight")
    probe = random_probe("mean", n_outputs=1)
    result = patch_positions(model, probe, CLEAN, CORRUPT, hook="blocks.0.hook_resid_post")
    tok = model.tokenizer
    clean_ids = tok([CLEAN], return_tensors="pt")["input_ids"]
    corrupt_ids = tok([CORRUPT], return_tensors="pt")["input_ids"]
    p = 2
    with torch.no_grad():
        with model.trace(clean_ids):
            clean = nnsight.save(model.model.layers[0].output)
        with model.trace(corrupt_ids):
            out = model.model.layers[0].output.clone()
            out[:, p] = clean[:, p]
            model.model.layers[0].output = out
            acts = nnsight.save(model.model.layers[1].output)
        logits = probe(acts, torch.ones(acts.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(result.patched_logits[p], logits[0], atol=1e-4, rtol=1e-4)


def test_patching_errors_name_the_fix(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("mean", n_outputs=1)
    with pytest.raises(ValueError, match=r"equal token length.*'cat'"):
        patch_positions(model, probe, CLEAN, "the dog sat")
    with pytest.raises(ValueError, match="runs after the probe's hook"):
        patch_positions(model, probe, CLEAN, CORRUPT, hook="blocks.2.hook_resid_post")
    with pytest.raises(ValueError, match="positions"):
        patch_positions(model, probe, CLEAN, CORRUPT, positions=[7])
    with pytest.raises(ValueError, match="target"):
        patch_positions(model, probe, CLEAN, CORRUPT, target=2)
    no_hook = MeanProbe(32)
    with pytest.raises(ValueError, match="probe_hook"):
        patch_positions(model, no_hook, CLEAN, CORRUPT)


# -------------------------------------------------------------------------------------------
# The real Gemma 3 270M on a real dataset
# -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_gemma_steering_and_ablation_on_sst2(gemma_nnsight, fixture_data_dir):
    import pandas as pd

    from lensprobe.capturing import capture
    from lensprobe.metrics import classification_metrics
    from lensprobe.train import run_protocol

    model = gemma_nnsight
    sst2 = fixture_data_dir / "sst2" / "92_glue_sst2.csv"
    frame = pd.read_csv(sst2).sample(n=160, random_state=0)
    texts, labels = frame["prompt"].tolist(), frame["target"].astype(int).tolist()
    hook = "blocks.6.hook_resid_post"
    acts = capture(
        model, texts, hook, labels=labels, max_length=48, dtype=torch.float32, progress=False
    )[hook]
    res = run_protocol(acts, probe="mean", weight_decays=(1e-2, 1e-1), n_folds=3)
    probe = res.probe
    assert res.metrics["accuracy"] > 0.65  # sentiment is linearly readable at layer 6
    test = res.test_rows.tolist()
    tok = model.tokenizer
    tok.padding_side = "right"
    enc = tok([texts[i] for i in test], return_tensors="pt", padding=True)
    y = torch.tensor([labels[i] for i in test])

    def live(*edits):
        with ExitStack() as stack:
            readout = stack.enter_context(attach(model, probe))
            for edit in edits:
                stack.enter_context(edit)
            with torch.no_grad(), model.trace(**enc) as tracer:
                _ = model.model.layers[7].output  # the user's trace; stop before the unembedding
                tracer.stop()
        return readout.logits

    x, mask = acts.pad(test)
    base = live()
    # the live readout agrees with the probe on captured activations
    torch.testing.assert_close(base, probe(x, mask).detach(), atol=2e-3, rtol=1e-3)
    u = class_directions(probe)[0]
    alpha = 10.0 / float(u.norm())  # +-10 logits
    up = live(steer(model, hook, u, alpha))
    down = live(steer(model, hook, u, -alpha))
    torch.testing.assert_close(up - base, torch.full_like(base, 10.0), atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(down - base, torch.full_like(base, -10.0), atol=1e-2, rtol=1e-3)
    # more texts read as positive when steered up, fewer when steered down
    assert (up > 0).sum() > (base > 0).sum() > (down > 0).sum()
    ablated = live(ablate(model, hook, probe))
    torch.testing.assert_close(ablated, probe.bias.detach().expand_as(ablated), atol=1e-3, rtol=0)
    metrics = classification_metrics(ablated, y)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)  # chance
    majority = max(float(y.float().mean()), 1 - float(y.float().mean()))
    assert metrics["accuracy"] <= majority + 1e-6
