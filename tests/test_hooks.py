"""Live readouts: the probe attached at its hook reads what capture stores, on every backend."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from probe_helpers import builtin_kinds
from probe_helpers import random_probe as _random_probe

from lensprobe.backends import resolve_hook
from lensprobe.backends.names import UnknownHookError
from lensprobe.capturing import capture
from lensprobe.hooks import Readout, attach, edit_activations
from lensprobe.probes import AttentionProbe, MeanProbe

HOOK = "blocks.1.hook_resid_post"
BACKENDS = ["hf", "nnsight", "transformer_lens"]


random_probe = functools.partial(_random_probe, d_model=32, n_outputs=2, hook=HOOK)


def forward(
    model, backend: str, texts: list[str], *, prepend_bos: bool = True, stop_at: int | None = None
) -> None:
    """Run texts the way a user of each backend would (padding on the right).

    ``stop_at``: end the forward at that block (TransformerLens ``stop_at_layer``, nnsight
    ``tracer.stop()``), as users do to skip the unembedding.
    """
    with torch.no_grad():
        if backend == "transformer_lens":
            # The bridge tokenises and pads the list itself and gives the HF model no mask.
            model(texts, prepend_bos=prepend_bos, padding_side="right", stop_at_layer=stop_at)
            return
        tok = model.tokenizer
        tok.padding_side = "right"
        enc = tok(texts, return_tensors="pt", padding=True)
        if backend == "nnsight":
            with model.trace(enc["input_ids"], attention_mask=enc["attention_mask"]) as tracer:
                if stop_at is not None:
                    _ = model.model.layers[stop_at].output
                    tracer.stop()
        else:
            model(**enc)


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def hf_of(model, backend):
    if backend == "nnsight":
        return model._module
    if backend == "transformer_lens":
        return model.original_model
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_live_readout_equals_probe_on_capture(request, backend, family, tiny_texts):
    model = request.getfixturevalue(f"tiny_{family}")(backend)
    acts = capture(model, tiny_texts, HOOK, dtype=torch.float32, progress=False)[HOOK]
    bos = acts.meta.prepend_bos  # capture follows the tokenizer (GPT-2's adds no BOS)
    x, mask = acts.pad()
    for kind in builtin_kinds():
        probe = random_probe(kind)
        with torch.no_grad():
            expected = probe(x, mask)
            expected_attn = probe.attention(x, mask) if probe.attends else None
        with attach(model, probe) as readout:
            forward(model, backend, tiny_texts, prepend_bos=bos)
        assert len(readout) == 1
        assert torch.equal(readout.mask, mask), "the probe must see exactly the valid tokens"
        torch.testing.assert_close(readout.logits, expected, atol=1e-4, rtol=1e-4)
        if expected_attn is not None:
            torch.testing.assert_close(readout.attention, expected_attn, atol=1e-5, rtol=1e-4)
            assert (readout.attention[~mask] == 0).all()
        else:
            assert readout.attention is None


def test_left_padding_with_mask_and_positions(tiny_gemma3, tiny_texts):
    model = tiny_gemma3("hf")
    acts = capture(model, tiny_texts, HOOK, dtype=torch.float32, progress=False)[HOOK]
    x, mask = acts.pad()
    probe = random_probe("attention")
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(tiny_texts, return_tensors="pt", padding=True)
    positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with attach(model, probe) as readout, torch.no_grad():
        model(**enc, position_ids=positions)
    left_x, left_mask = acts.pad(padding_side="left")
    assert torch.equal(readout.mask, left_mask)
    torch.testing.assert_close(readout.logits, probe(x, mask).detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        readout.attention, probe.attention(left_x, left_mask).detach(), atol=1e-5, rtol=1e-4
    )


def test_no_mask_means_every_token_is_valid(tiny_gemma3):
    model = tiny_gemma3("hf")
    ids = model.tokenizer(["the cat sat", "a dog ran"], return_tensors="pt")["input_ids"]
    probe = random_probe("mean")
    with attach(model, probe) as readout, torch.no_grad():
        model(input_ids=ids)
    assert readout.mask.all() and readout.mask.shape == ids.shape
    torch.testing.assert_close(readout.logits, probe(readout.activations, readout.mask).detach())


def prefix_reference(model, probe, ids, attention_mask):
    """Activations of the whole generated sequence from one uncached forward."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with attach(model, probe) as ref, torch.no_grad():
        model(input_ids=ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
    return ref.activations, ref.mask


@pytest.mark.parametrize("kind", ["attention", "mean", "last", "multimax", "rolling", "ema"])
def test_generate_gives_the_running_prediction_over_the_prefix(tiny_gemma3, tiny_texts, kind):
    model = tiny_gemma3("hf")
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(tiny_texts[:3], return_tensors="pt", padding=True)
    probe = random_probe(kind, n_outputs=1)
    new = 4
    with attach(model, probe) as readout, torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    prompt = enc["input_ids"].shape[1]
    # one prefill + one cached forward per later token; each sees the whole prefix
    assert len(readout) == new
    assert [s.past for s in readout.steps] == [0] + [prompt + k for k in range(new - 1)]
    full_mask = torch.cat([enc["attention_mask"], torch.ones(3, new, dtype=torch.long)], dim=1)
    acts, mask = prefix_reference(model, probe, out, full_mask)
    for k, step in enumerate(readout.steps):
        width = prompt + k
        assert torch.equal(step.mask, mask[:, :width])
        with torch.no_grad():
            expected = probe(acts[:, :width], mask[:, :width])
        torch.testing.assert_close(step.logits, expected, atol=1e-4, rtol=1e-4)
    assert readout.history().shape == (new, 3, 1)


def _bridge_loses_its_cache() -> bool:
    """TransformerLens <= 4.3 bridges read a model output's ``past_key_values``, which
    transformers 5.24 renamed ``cache``: their cached generation then runs without context."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "past_key_values" not in CausalLMOutputWithPast.__dataclass_fields__


def _generate(model, backend: str, text: str, new: int, use_cache: bool) -> torch.Tensor:
    """Greedy generation of ``new`` tokens after ``text`` the way each backend's users do it;
    returns the whole sequence's token ids ``(1, prompt + new)``."""
    with torch.no_grad():
        if backend == "transformer_lens":
            return model.generate(
                text,
                max_new_tokens=new,
                do_sample=False,
                verbose=False,
                use_past_kv_cache=use_cache,
                return_type="tokens",
            )
        ids = model.tokenizer([text], return_tensors="pt")["input_ids"]
        kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False}
        if backend == "nnsight":
            with model.generate(ids, use_cache=use_cache, **kwargs) as tracer:
                out = tracer.result.save()
            return out
        return model.generate(input_ids=ids, use_cache=use_cache, **kwargs)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv_cache", "no_cache"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_steps_read_the_text_so_far(tiny_gemma3, backend, use_cache):
    """Step k of a live readout during ``generate`` reads the prompt and the k tokens generated
    before it, at their positions, and equals the probe on a fresh forward of that text."""
    model = tiny_gemma3(backend)
    probe = random_probe("attention", n_outputs=3)
    text, new = "the cat sat on the mat", 3
    if backend == "transformer_lens" and use_cache and _bridge_loses_its_cache():
        with attach(model, probe), pytest.raises(RuntimeError, match="cache was lost"):
            _generate(model, backend, text, new, use_cache)
        return
    with attach(model, probe) as readout:
        out = _generate(model, backend, text, new, use_cache)
    prompt = out.shape[1] - new
    widths = [prompt + k for k in range(len(readout.steps))]
    assert len(readout.steps) == new
    assert [s.mask.shape[1] for s in readout.steps] == widths
    # with a cache, each step after the first computes one new token after the cached rest
    assert [s.past for s in readout.steps] == (
        [0] + [w - 1 for w in widths[1:]] if use_cache else [0] * new
    )
    assert all(bool(s.mask.all()) for s in readout.steps)
    # the reference: one uncached forward of the whole generated text through plain HF
    ref_model = tiny_gemma3("hf")
    with attach(ref_model, probe) as ref, torch.no_grad():
        ref_model(input_ids=out, use_cache=False)
    for step, width in zip(readout.steps, widths, strict=True):
        expected = probe(ref.activations[:, :width], ref.mask[:, :width]).detach()
        torch.testing.assert_close(step.logits, expected, atol=1e-4, rtol=1e-4)


def test_a_lost_kv_cache_is_an_error_not_a_silent_reset(tiny_gemma3):
    """A forward given a mask over earlier tokens but an empty KV cache computes without context
    (TransformerLens 4.3 bridges on transformers 5.24 lose their cache this way): the readout
    says so instead of reading the step as a new one-token sequence."""
    from transformers import DynamicCache

    model = tiny_gemma3("hf")
    ids = model.tokenizer(["the cat sat"], return_tensors="pt")["input_ids"]
    params = inspect.signature(type(model).forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    probe = random_probe("mean")
    with attach(model, probe), torch.no_grad():
        with pytest.raises(RuntimeError, match="cache was lost between generation steps"):
            model(
                input_ids=ids[:, -1:],
                attention_mask=torch.ones_like(ids),
                **{name: DynamicCache(config=model.config)},
                use_cache=True,
            )


def test_bridge_generate_with_kv_cache(tiny_gemma3):
    model = tiny_gemma3("transformer_lens")
    probe = random_probe("attention", n_outputs=3)
    with attach(model, probe) as readout:
        out = model.generate(
            "the cat sat",
            max_new_tokens=3,
            do_sample=False,
            verbose=False,
            use_past_kv_cache=True,
            return_type="tokens",
        )
    assert [s.past for s in readout.steps] == [0, 4, 5]
    with attach(model, probe) as ref, torch.no_grad():
        model(out)
    for step in readout.steps:
        width = step.mask.shape[1]
        expected = probe(ref.activations[:, :width], ref.mask[:, :width]).detach()
        torch.testing.assert_close(step.logits, expected, atol=1e-4, rtol=1e-4)
    # a left-padded batch: each sequence's valid prefix grows by one token per step
    with attach(model, probe) as batched:
        model.generate(
            ["the cat sat on the mat", "a dog"],
            max_new_tokens=3,
            do_sample=False,
            verbose=False,
            use_past_kv_cache=True,
        )
    counts = torch.stack([s.mask.sum(dim=1) for s in batched.steps])
    assert counts.tolist() == [[7, 3], [8, 4], [9, 5]]


def test_nnsight_trace_edits_are_seen_and_generate_works(tiny_gemma3):
    model = tiny_gemma3("nnsight")
    probe = random_probe("attention")
    ids = model.tokenizer(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    with attach(model, probe) as readout:
        with torch.no_grad(), model.trace(ids):
            model.model.layers[1].output = model.model.layers[1].output * 0
    # zero activations: every value is zero, so the probe outputs its bias
    torch.testing.assert_close(readout.logits[0], probe.bias.detach())
    with attach(model, probe) as readout, torch.no_grad():
        model._module.generate(ids, max_new_tokens=2, do_sample=False)
    assert [s.past for s in readout.steps] == [0, ids.shape[1]]


def test_readout_composes_with_run_with_hooks(tiny_gemma3):
    model = tiny_gemma3("transformer_lens")
    probe = random_probe("mean")
    seen = {}

    def spy(tensor, hook):
        seen[hook.name] = tensor.detach().clone()

    def zero(tensor, hook):
        return torch.zeros_like(tensor)

    with attach(model, probe) as readout, torch.no_grad():
        model.run_with_hooks("the cat sat", fwd_hooks=[("blocks.0.hook_resid_post", spy)])
        model.run_with_hooks("the cat sat", fwd_hooks=[(HOOK, zero)])
        model.reset_hooks()  # a user's reset must not detach the readout
        model("the cat sat")
    assert len(seen) == 1  # the user's own hook ran too
    assert len(readout) == 3
    # the readout reads after the user's edit at the same hook (hooks added later included)
    torch.testing.assert_close(readout.steps[1].logits[0], probe.bias.detach())
    torch.testing.assert_close(readout.steps[2].logits, readout.steps[0].logits)
    assert not (readout.steps[0].logits[0] == probe.bias).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_are_removed_on_exit_and_on_error(tiny_gemma3, backend):
    model = tiny_gemma3(backend)
    hf = hf_of(model, backend)
    forward(model, backend, ["the cat sat"])  # the bridge adds hooks of its own on a first run
    before = hook_count(model if backend == "transformer_lens" else hf)
    probe = random_probe("attention")
    with attach(model, probe) as readout:
        assert hook_count(model if backend == "transformer_lens" else hf) > before
        forward(model, backend, ["the cat sat"])
    assert hook_count(model if backend == "transformer_lens" else hf) == before
    with pytest.raises(KeyError), attach(model, probe):
        raise KeyError("boom")
    assert hook_count(model if backend == "transformer_lens" else hf) == before
    with edit_activations(model, HOOK, lambda x, info: x + 1.0):
        pass
    assert hook_count(model if backend == "transformer_lens" else hf) == before
    forward(model, backend, ["the cat sat"])
    assert len(readout) == 1  # nothing recorded after the block


def test_probe_is_not_modified(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("attention")
    probe.train()
    state = {k: v.clone() for k, v in probe.state_dict().items()}
    with attach(model, probe):
        forward(model, "hf", ["the cat sat"])
    assert probe.training
    for k, v in probe.state_dict().items():
        assert torch.equal(v, state[k])
        assert v.grad is None


def test_errors_name_the_fix(tiny_gemma3):
    model = tiny_gemma3("hf")
    probe = random_probe("mean", hook=None)
    with pytest.raises(ValueError, match="pass one"), attach(model, probe):
        pass
    with (
        pytest.raises(UnknownHookError, match=r"blocks\.1\.hook_resid_post"),
        attach(model, probe, "blocks.1.hook_resid_pots"),
    ):
        pass
    bridge = tiny_gemma3("transformer_lens")
    with (
        pytest.raises(UnknownHookError, match="nearest"),
        attach(bridge, probe, "blocks.1.hook_resid_pots"),
    ):
        pass
    wide = MeanProbe(48, hook=HOOK)
    with pytest.raises(ValueError, match="width"), attach(model, wide):
        forward(model, "hf", ["the cat"])
    with pytest.raises(TypeError, match="probe"), attach(model, torch.nn.Linear(2, 2)):
        pass
    with pytest.raises(TypeError, match="capture"):
        resolve_hook(object(), HOOK)


def test_cached_forward_without_its_prefix_is_refused(tiny_gemma3):
    model = tiny_gemma3("hf")
    ids = model.tokenizer(["the cat sat on"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        probe = random_probe("attention")
        with pytest.raises(RuntimeError, match="attach the probe before"), attach(model, probe):
            model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)


def test_history_clear_and_latest(tiny_gemma3):
    model = tiny_gemma3("hf")
    readout_probe = random_probe("last", n_outputs=3)
    with attach(model, readout_probe) as readout:
        with pytest.raises(RuntimeError, match="no forward yet"):
            _ = readout.logits
        forward(model, "hf", ["the cat sat", "a dog"])
        forward(model, "hf", ["the cat"])
        with pytest.raises(RuntimeError, match="batch sizes"):
            readout.history()
        assert readout.steps[0].logits.shape == (2, 3)
        assert readout.probabilities.shape == (1, 3)
        torch.testing.assert_close(readout.probabilities.sum(-1), torch.ones(1))
        assert readout.predictions.shape == (1,)
        readout.clear()
        assert len(readout) == 0
        forward(model, "hf", ["the cat"])
    assert isinstance(readout, Readout) and len(readout) == 1


def test_resid_pre_reads_the_layer_input(tiny_gemma3):
    # the nnsight / HF table reads resid_pre at a layer's input; it equals the previous output
    model = tiny_gemma3("hf")
    probe = random_probe("mean", hook="blocks.2.hook_resid_pre")
    with attach(model, probe) as pre, attach(model, probe, HOOK) as post:
        forward(model, "hf", ["the cat sat on the mat"])
    torch.testing.assert_close(pre.activations, post.activations)


def test_attention_probe_output_is_float_on_bf16_model(tiny_gemma3_dir):
    from lensprobe.models import load_model

    model = load_model(str(tiny_gemma3_dir), backend="hf", dtype=torch.bfloat16)
    probe = random_probe("attention")
    with attach(model, probe) as readout:
        forward(model, "hf", ["the cat sat", "a dog"])
    assert readout.activations.dtype == torch.bfloat16  # kept in the model's dtype
    assert readout.logits.dtype == torch.float32
    expected = probe(readout.activations.float(), readout.mask).detach()
    torch.testing.assert_close(readout.logits, expected)
    assert isinstance(probe, AttentionProbe)


# -------------------------------------------------------------------------------------------
# The real Gemma 3 270M
# -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_gemma_live_readout_matches_capture(gemma_tl, gemma_nnsight):
    texts = [
        "I loved every minute of this film.",
        "A dull, lifeless mess.",
        "The acting is superb and the story moving.",
    ]
    hook = "blocks.6.hook_resid_post"
    probe = random_probe("attention", d_model=640, n_outputs=1, hook=hook)
    with torch.no_grad():
        probe.query.mul_(0.01)  # scores of a sensible scale for real activations
        probe.value.mul_(0.01)
    for model, backend in [(gemma_tl, "transformer_lens"), (gemma_nnsight, "nnsight")]:
        acts = capture(model, texts, hook, dtype=torch.float32, progress=False)[hook]
        x, mask = acts.pad()
        with attach(model, probe) as readout:
            forward(model, backend, texts, stop_at=7)
        assert torch.equal(readout.mask, mask)
        expected = probe(x, mask).detach()
        torch.testing.assert_close(readout.logits, expected, atol=1e-3, rtol=1e-3)
