"""Probe kinds are open: the monitor kinds against plain references, and a kind defined here.

``ToyFirstProbe`` below is a kind lensprobe has never heard of. Defining the class is all it takes
for the spec parser, the protocol, the sweep, save / load, ``attach`` and the analyses to know it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch
from probe_helpers import random_probe

import lensprobe as lp
from lensprobe.analysis import token_contributions
from lensprobe.errors import InputError
from lensprobe.hooks import attach
from lensprobe.probes import (
    EMAProbe,
    MultiMaxProbe,
    Probe,
    ProbeConfig,
    RollingMeanProbe,
    load_probe,
    probe_class,
    probe_kinds,
)
from lensprobe.probes.attention import token_distance
from lensprobe.probes.spec import ProbeSpec
from lensprobe.train import TrainConfig

# -- plain references: one unpadded sequence, loops ---------------------------------------------


def _scores_values(probe: Probe, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head scores (pos, head) and values (pos, head, out) of one sequence, written out."""
    c = probe.config
    n = x.shape[0]
    dist = torch.arange(n - 1, -1, -1.0) if c.position == "last" else torch.arange(float(n))
    scores = x @ probe.query - dist[:, None] * probe.position_weight
    values = torch.einsum("pd,dhc->phc", x, probe.value)
    return scores, values


def multimax_reference(probe: MultiMaxProbe, x: torch.Tensor) -> torch.Tensor:
    scores, values = _scores_values(probe, x)
    out = probe.bias.clone()
    for h in range(scores.shape[1]):
        out = out + values[int(scores[:, h].argmax()), h]
    return out


def rolling_reference(probe: RollingMeanProbe, x: torch.Tensor) -> torch.Tensor:
    scores, values = _scores_values(probe, x)
    n, w = x.shape[0], probe.config.options["window"]
    windows = [(0, n)] if n < w else [(end - w + 1, end + 1) for end in range(w - 1, n)]
    out = probe.bias.clone()
    for h in range(scores.shape[1]):
        means = []
        for lo, hi in windows:
            weights = scores[lo:hi, h].softmax(dim=0)
            means.append((weights[:, None] * values[lo:hi, h]).sum(dim=0))
        out = out + torch.stack(means).amax(dim=0)  # each output its own window
    return out


def ema_reference(probe: EMAProbe, x: torch.Tensor) -> torch.Tensor:
    a = 0.5 ** (1.0 / probe.config.options["halflife"])
    f = x[0]
    for t in range(1, x.shape[0]):
        f = a * f + (1 - a) * x[t]
    return f @ probe.weight + probe.bias


REFERENCES = {"multimax": multimax_reference, "rolling": rolling_reference, "ema": ema_reference}


@pytest.mark.parametrize("kind", sorted(REFERENCES))
@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("position", ["last", "first"])
def test_monitor_kinds_equal_their_written_out_definitions(kind, n_outputs, position):
    options = {"window": 3} if kind == "rolling" else ({"halflife": 2.5} if kind == "ema" else {})
    probe = random_probe(kind, 6, n_outputs, n_heads=3, seed=7, position=position, options=options)
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randn(n, 6, generator=gen) for n in (1, 2, 3, 4, 9)]
    width = 11
    for side in ("left", "right"):
        x = torch.full((len(seqs), width, 6), float("nan"))
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, s in enumerate(seqs):
            sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
            x[i, sl], mask[i, sl] = s, True
        with torch.no_grad():
            got = probe(x, mask)
            expected = torch.stack([REFERENCES[kind](probe, s) for s in seqs])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_multimax_reads_one_token_per_head_and_learns_its_query_straight_through():
    probe = random_probe("multimax", 6, 1, n_heads=2, seed=3)
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
    logits, attn = probe(x, mask, return_attention=True)
    assert set(attn.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(attn.sum(dim=1), torch.ones(2, 2))
    logits.sum().backward()
    assert probe.query.grad is not None and float(probe.query.grad.abs().sum()) > 0
    assert float(probe.position_weight.grad.abs().sum()) > 0


def test_rolling_weights_are_the_top_window_and_windows_never_hold_padding():
    probe = random_probe("rolling", 6, 1, n_heads=2, seed=4, options={"window": 2})
    x = torch.randn(2, 6, 6)
    mask = torch.tensor(
        [[False, True, True, True, True, True], [True, True, True, False] + [False] * 2]
    )
    _, attn = probe(x, mask, return_attention=True)
    assert torch.equal(attn[~mask], torch.zeros_like(attn[~mask]))
    torch.testing.assert_close(attn.sum(dim=1), torch.ones(2, 2))
    assert bool(((attn > 0).sum(dim=1) <= 2).all())  # one window of 2 tokens per head
    multi = random_probe("rolling", 6, 3, n_heads=2, seed=4)
    assert not multi.attends  # each output takes its own window
    with pytest.raises(TypeError, match="no attention over tokens"):
        multi(x, mask, return_attention=True)


def test_ema_weights_sum_to_one_and_halve_every_halflife():
    probe = EMAProbe(4, options={"halflife": 3.0})
    mask = torch.tensor([[False, True, True, True, True, True, True, True]])
    weights = probe.token_weights(torch.zeros(1, 8, 4), mask)[0, :, 0]
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(weights[7] / weights[4], torch.tensor(2.0))
    assert weights[0] == 0


@pytest.mark.parametrize("kind", list(probe_kinds()))
def test_every_kind_splits_its_logits_into_token_contributions(kind):
    probe = random_probe(kind, 6, 1, n_heads=2, seed=5)
    x = torch.randn(3, 7, 6)
    mask = torch.arange(7)[None] < torch.tensor([7, 1, 4])[:, None]
    contributions = token_contributions(probe, x, mask)
    with torch.no_grad():
        logits = probe(x, mask)
    torch.testing.assert_close(contributions.sum(dim=1) + probe.bias, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(contributions[~mask], torch.zeros_like(contributions[~mask]))


def test_option_checks_name_the_fix():
    with pytest.raises(InputError, match="window must be at least 1"):
        ProbeSpec.parse("rolling-2:window=0")
    with pytest.raises(InputError, match=r"no option 'window'; its options: halflife"):
        ProbeSpec.parse("ema:window=3")
    with pytest.raises(InputError, match="expected a int"):
        ProbeConfig(kind="rolling", d_model=4, options={"window": "wide"})
    with pytest.raises(InputError, match="positive number of tokens"):
        lp.run_protocol(torch.zeros(4, 2, 3), [0, 1, 0, 1], probe="ema", options={"halflife": -1})
    spec = ProbeSpec.parse("rolling-4:window=8")
    assert (spec.kind, spec.n_heads, dict(spec.options)) == ("rolling", 4, {"window": 8})
    assert spec.label == "rolling-4:window=8"
    assert ProbeSpec.parse("rolling-4:window=16").label == "rolling-4"  # the default is not written
    assert ProbeSpec.parse("multimax-2-lbfgs").label == "multimax-2-lbfgs"
    assert ProbeSpec.parse("ema").protocol(lp.ProtocolConfig()).options == {"halflife": 16.0}


# -- a kind defined here -----------------------------------------------------------------------


class ToyFirstProbe(Probe):
    """Linear probe on the first token read, times a ``gain`` option (trained with AdamW)."""

    kind = "toyfirst"
    decay_params = ("weight",)
    option_defaults: ClassVar[Mapping[str, Any]] = {"gain": 1.0}

    def __init__(self, d_model: int, n_outputs: int = 1, *, config: ProbeConfig | None = None):
        super().__init__(config or self.config_from(d_model, n_outputs, None, None, None))

    @classmethod
    def check_option_values(cls, options: Mapping[str, Any]) -> None:
        if options["gain"] == 0:
            raise InputError("toyfirst gain must not be 0")

    @classmethod
    def param_shapes(cls, config: ProbeConfig) -> dict[str, tuple[int, ...]]:
        return {"weight": (config.d_model, config.n_outputs), "bias": (config.n_outputs,)}

    @classmethod
    def init_members(cls, config: ProbeConfig, seeds: list[int]) -> dict[str, torch.Tensor]:
        return {k: torch.zeros(len(seeds), *s) for k, s in cls.param_shapes(config).items()}

    @classmethod
    def forward_members(
        cls, config, params, x, mask, *, matmul_dtype=None, input_scale=1.0
    ) -> tuple[torch.Tensor, None]:
        first = token_distance(mask, "first") == 0
        token = (x * (first & mask)[..., None]).sum(dim=1).to(params["weight"].dtype)
        token = token * config.options["gain"] / input_scale
        logits = torch.einsum("bd,mdc->mbc", token, params["weight"])
        return logits + params["bias"][:, None, :], None

    def token_contributions(self, x, mask):
        first = ((token_distance(mask, "first") == 0) & mask).to(x.dtype)
        return (
            torch.einsum("bpd,dc->bpc", x * first[..., None], self.weight)
            * self.config.options["gain"]
        )


def _first_token_task(n: int = 80, seed: int = 0):
    """The class sits in each sequence's first valid token; the rest is noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 8, generator=gen)
    y = torch.arange(n) % 2
    mask = torch.arange(6)[None] >= torch.randint(0, 3, (n,), generator=gen)[:, None]  # left pad
    first = mask.float().argmax(dim=1)
    x[torch.arange(n), first, 0] += 3.0 * (2 * y - 1)
    return x, mask, y


def test_a_kind_defined_in_a_test_runs_through_spec_protocol_save_and_analysis(tmp_path):
    assert "toyfirst" in probe_kinds() and probe_class("toyfirst") is ToyFirstProbe
    spec = ProbeSpec.parse("toyfirst:gain=2")
    assert spec.label == "toyfirst:gain=2.0" and spec.optimizer == "auto"
    with pytest.raises(InputError, match="has no heads"):
        ProbeSpec.parse("toyfirst-2")
    x, mask, y = _first_token_task()
    short = TrainConfig(max_steps=60)
    config = spec.protocol(lp.ProtocolConfig(weight_decays=(0.0, 1e-2), n_folds=3, train=short))
    assert config.resolved_train.optimizer == "adamw"  # the kind's default
    result = lp.run_protocol(x, y, mask=mask, config=config)
    assert result.metrics["accuracy"] > 0.9
    probe = result.probe
    assert type(probe) is ToyFirstProbe and probe.config.options == {"gain": 2.0}
    sequential = lp.run_protocol(x, y, mask=mask, config=config, execution="sequential")
    torch.testing.assert_close(result.runs[0].test_logits, sequential.runs[0].test_logits)
    probe.save(tmp_path / "toy")
    loaded = load_probe(tmp_path / "toy")
    assert type(loaded) is ToyFirstProbe and loaded.config == probe.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, mask), probe(x, mask))
        contributions = token_contributions(loaded, x, mask)
        torch.testing.assert_close(contributions.sum(1) + loaded.bias, loaded(x, mask))
    assert "gain=2.0" in repr(loaded)
    with pytest.raises(TypeError, match="no attention over tokens"):
        loaded(x, mask, return_attention=True)


def test_a_kind_defined_in_a_test_is_a_cell_of_the_sweep():
    from test_analysis import make_acts

    acts = {"a": make_acts(n=48, seed=1), "b": make_acts(n=48, seed=2)}
    protocol = lp.ProtocolConfig(weight_decays=(0.0,), n_folds=3, train=TrainConfig(max_steps=30))
    grid = lp.sweep(acts, ["toyfirst:gain=2", "mean", "multimax-2"], protocol=protocol)
    assert {c.probe for c in grid.cells} == {"toyfirst:gain=2.0", "mean", "multimax-2"}
    for spec in ("toyfirst:gain=2", "multimax-2"):
        config = ProbeSpec.parse(spec).protocol(protocol)
        alone = lp.run_protocol(acts["b"], config=config)
        label = ProbeSpec.parse(spec).label
        cell = next(c for c in grid.cells if c.probe == label and c.hook == "b")
        assert torch.equal(cell.result.runs[0].test_logits, alone.runs[0].test_logits), spec


def test_a_kind_defined_in_a_test_attaches_to_a_model(tiny_gemma3, tiny_texts):
    model = tiny_gemma3("hf")
    hook = "blocks.1.hook_resid_post"
    probe = ToyFirstProbe(32, 2)
    probe.config = ProbeConfig(**{**probe.config.to_dict(), "hook": hook, "options": {"gain": 3.0}})
    with torch.no_grad():
        probe.weight.normal_()
    tok = model.tokenizer
    tok.padding_side = "right"
    enc = tok(tiny_texts[:3], return_tensors="pt", padding=True)
    with attach(model, probe) as readout, torch.no_grad():
        model(**enc)
    assert not math.isnan(float(readout.logits.sum()))
    torch.testing.assert_close(readout.logits, probe(readout.activations, readout.mask))


def test_the_command_line_trains_the_monitor_kinds(tiny_gemma3_dir, tmp_path, capsys):
    from lensprobe.cli import main

    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_gemma3_dir), "--backend", "hf", "--dataset", "topics"]
    args += ["--hooks", "blocks.1.hook_resid_post", "--n", "40", "--max-steps", "10"]
    probes = "multimax-2,ema:halflife=4,toyfirst:gain=2"  # the kind defined in this file too
    assert main([*args, "--probes", probes, "--out", str(out)]) == 0
    grid = lp.load_results(out)
    assert [c.probe for c in grid.cells] == ["multimax-2", "ema:halflife=4.0", "toyfirst:gain=2.0"]
    assert grid.cells[1].result.probe.config.options == {"halflife": 4.0}
    assert type(grid.cells[2].result.probe) is ToyFirstProbe
    bad = tmp_path / "bad"
    assert main([*args, "--probes", "rolling-2:window=0", "--out", str(bad)]) == 1
    assert "rolling window must be at least 1 token" in capsys.readouterr().err
    assert not bad.exists()
