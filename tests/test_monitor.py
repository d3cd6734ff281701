"""The live monitor: each kind's running state equals the offline probe on every prefix."""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from probe_helpers import builtin_kinds
from probe_helpers import random_probe as _random_probe
from test_hooks import _bridge_loses_its_cache, _generate

import lensprobe as lp
from lensprobe.errors import InputError
from lensprobe.hooks import attach
from lensprobe.monitoring import Flag
from lensprobe.probes.stream import PrefixStream

HOOK = "blocks.1.hook_resid_post"
random_probe = functools.partial(_random_probe, d_model=32, hook=HOOK)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(builtin_kinds()),
    lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4),
    left=st.booleans(),
    n_outputs=st.sampled_from([1, 3]),
    exclude_bos=st.booleans(),
    position=st.sampled_from(["last", "first"]),
    seed=st.integers(0, 1000),
)
def test_the_running_state_equals_the_probe_on_every_prefix(
    kind, lengths, left, n_outputs, exclude_bos, position, seed
):
    options = {"window": 3} if kind == "rolling" else {}
    probe = _random_probe(
        kind, 6, n_outputs, n_heads=2, seed=seed, exclude_bos=exclude_bos, position=position,
        options=options,
    )  # fmt: skip
    width = max(lengths) + 2
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), width, 6, generator=gen)
    n = torch.tensor(lengths)
    pos = torch.arange(width)[None]
    mask = pos >= (width - n)[:, None] if left else pos < n[:, None]
    stream = probe.stream(len(lengths))
    for t in range(width):
        stream.push(x[:, t], mask[:, t])
        got = stream.logits()
        rows = mask[:, : t + 1].any(dim=1)
        assert bool(torch.isnan(got[~rows]).all())
        if bool(rows.any()):
            with torch.no_grad():
                expected = probe(x[rows, : t + 1], mask[rows, : t + 1])
            torch.testing.assert_close(got[rows], expected, rtol=1e-4, atol=1e-4)


def test_a_kind_without_a_running_state_reruns_the_prefix():
    from test_probe_kinds import ToyFirstProbe

    probe = ToyFirstProbe(4, 2)
    with torch.no_grad():
        probe.weight.normal_()
    stream = probe.stream(2)
    assert isinstance(stream, PrefixStream)
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    for t in range(3):
        stream.push(x[:, t], mask[:, t])
    with torch.no_grad():
        torch.testing.assert_close(stream.logits(), probe(x, mask))


@pytest.mark.parametrize("kind", ["attention", "rolling", "ema"])
def test_monitor_scores_a_batched_generation_token_by_token(tiny_gemma3, tiny_texts, kind):
    model = tiny_gemma3("hf")
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(tiny_texts[:3], return_tensors="pt", padding=True)
    probe = random_probe(
        kind, n_outputs=1, exclude_bos=True, options={"window": 4} if kind == "rolling" else {}
    )
    new = 4
    with lp.monitor(model, probe) as mon, torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    # the last generated token is never fed back: the monitor saw every position but it
    assert mon.logits.shape == (3, out.shape[1] - 1, 1)
    assert torch.equal(mon.token_ids, out[:, :-1])
    full_mask = torch.cat([enc["attention_mask"], torch.ones(3, new, dtype=torch.long)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with attach(model, probe) as ref, torch.no_grad():
        model(input_ids=out, attention_mask=full_mask, position_ids=positions, use_cache=False)
    assert torch.equal(mon.mask, ref.mask[:, :-1])
    for t in range(out.shape[1] - 1):
        # a prefix of BOS alone (the probe leaves BOS out) has no score, nor has padding
        rows = ref.mask[:, t] & (ref.mask[:, : t + 1].sum(dim=1) > 1)
        with torch.no_grad():
            expected = probe(ref.activations[rows, : t + 1], ref.mask[rows, : t + 1])
        torch.testing.assert_close(mon.logits[rows, t], expected, rtol=1e-4, atol=1e-4)
        assert bool(torch.isnan(mon.logits[~rows, t]).all())


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_monitor_on_each_backend_equals_the_probe_on_a_fresh_forward(tiny_gemma3, backend):
    model = tiny_gemma3(backend)
    probe = random_probe("multimax", n_outputs=1, n_heads=2)
    use_cache = not (backend == "transformer_lens" and _bridge_loses_its_cache())
    with lp.monitor(model, probe) as mon:
        out = _generate(model, backend, "the cat sat on the mat", 3, use_cache)
    ref_model = tiny_gemma3("hf")
    with attach(ref_model, probe) as ref, torch.no_grad():
        ref_model(input_ids=out, use_cache=False)
    seen = mon.logits.shape[1]
    assert seen in (out.shape[1] - 1, out.shape[1])  # the last token is fed back by some loops
    for t in range(seen):
        with torch.no_grad():
            expected = probe(ref.activations[:, : t + 1], ref.mask[:, : t + 1])
        torch.testing.assert_close(mon.logits[:, t], expected, rtol=1e-4, atol=1e-4)


def test_a_threshold_flags_each_sequence_once_and_stop_ends_the_generation(tiny_gemma3, tiny_texts):
    model = tiny_gemma3("hf")
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(tiny_texts[:2], return_tensors="pt", padding=True)
    probe = random_probe("mean", n_outputs=1, seed=3)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with lp.monitor(model, probe) as free, torch.no_grad():
        model.generate(**enc, **kw)
    scores = free.scores
    # a threshold that the first row crosses at a known position, after the prompt
    prompt = enc["input_ids"].shape[1]
    threshold = float(scores[0, : prompt + 2].nan_to_num(float("-inf")).max())
    later = scores[0, prompt + 2 :] > threshold
    if not bool(later.any()):
        threshold = float(scores[0, : prompt + 1].nan_to_num(float("-inf")).max())
    expected = [
        int(torch.nonzero(scores[r] > threshold)[0])
        if bool((scores[r] > threshold).any())
        else None
        for r in range(2)
    ]
    seen: list[Flag] = []
    with lp.monitor(model, probe, threshold=threshold, on_flag=seen.append) as mon, torch.no_grad():
        model.generate(**enc, **kw)
    assert [f.position for f in sorted(mon.flags, key=lambda f: f.row)] == [
        p for p in expected if p is not None
    ]
    assert seen == mon.flags and len({f.row for f in mon.flags}) == len(mon.flags)
    assert mon.flagged.tolist() == [p is not None for p in expected]
    first = min(p for p in expected if p is not None)
    with lp.monitor(model, probe, threshold=threshold, stop=True) as stopped, torch.no_grad():
        model.generate(**enc, **kw)
        raise AssertionError("stop=True must end the block at the first flag")
    assert len(stopped) == max(first + 1, prompt)  # the forward ends after its flagged token
    assert stopped.flags and stopped.flags[0].position == first


def test_monitor_errors_name_the_fix(tiny_gemma3):
    model = tiny_gemma3("hf")
    with pytest.raises(InputError, match="binary probe"):
        with lp.monitor(model, random_probe("mean", n_outputs=3), threshold=0.0):
            pass
    with pytest.raises(InputError, match="pass a threshold"):
        with lp.monitor(model, random_probe("mean", n_outputs=1), stop=True):
            pass
    with pytest.raises(InputError, match="records no hook"):
        with lp.monitor(model, _random_probe("mean", 32, 1)):
            pass
    with lp.monitor(model, random_probe("mean", n_outputs=1)) as mon:
        pass
    with pytest.raises(RuntimeError, match="has seen no forward"):
        mon.logits  # noqa: B018


@pytest.mark.parametrize(
    ("kind", "exclude_bos"), [(k, True) for k in builtin_kinds()] + [("attention", False)]
)
def test_an_overflowing_activation_is_refused_not_a_silent_score(
    tiny_gemma3, tiny_texts, kind, exclude_bos
):
    model = tiny_gemma3("hf")
    enc = model.tokenizer(tiny_texts[:2], return_tensors="pt", padding=True)
    probe = random_probe(kind, n_outputs=1, exclude_bos=exclude_bos)
    position = [0]

    def overflow(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[1, position[0], 0] = float("inf")

    handle = model.model.layers[1].register_forward_hook(overflow)
    try:
        # the first token: read only where the probe keeps it (Gemma's BOS overflows in float16)
        with lp.monitor(model, probe) as mon, torch.no_grad():
            if not exclude_bos:
                with pytest.raises(
                    InputError, match=r"not finite at position 0 of sequence\(s\) \[1\]"
                ):
                    model(**enc)
            else:
                model(**enc)
        if exclude_bos:
            read = mon.mask.clone()
            read[:, 0] = False  # a BOS-only prefix has no score
            assert bool(torch.isfinite(mon.scores[read]).all())
        position[0] = 2
        with lp.monitor(model, probe), torch.no_grad():
            with pytest.raises(InputError, match=r"position 2 .* load it in bfloat16 or float32"):
                model(**enc)
    finally:
        handle.remove()


def test_monitor_widget_colours_the_tokens_by_score(tiny_gemma3, tiny_texts):
    model = tiny_gemma3("hf")
    tok = model.tokenizer
    enc = tok(tiny_texts[:1], return_tensors="pt")
    probe = random_probe("ema", n_outputs=1)
    with lp.monitor(model, probe, threshold=0.0) as mon, torch.no_grad():
        model(**enc)
    widget = lp.viz.monitor_widget(mon, 0, tok)
    html = widget.html(include_library=False)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert all(t in html for t in tokens[1:3])
    assert "logit - threshold" in html and "monitor" in html
    with pytest.raises(InputError, match="outside the monitored batch"):
        lp.viz.monitor_widget(mon, 3)
