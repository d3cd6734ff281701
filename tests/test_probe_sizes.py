"""Sizes are checked before anything is allocated: head counts against a stated bound, a saved
probe's config against its weights file's header."""

from __future__ import annotations

import json

import pytest

import lensprobe as lp
from lensprobe.errors import InputError, ProbeFileError
from lensprobe.probes import ProbeConfig, saving
from lensprobe.probes.spec import ProbeSpec
from lensprobe.specs import MAX_PROBE_HEADS


@pytest.mark.parametrize("heads", [MAX_PROBE_HEADS + 1, 99_999_999])
def test_a_head_count_over_the_bound_is_refused_everywhere(heads):
    with pytest.raises(InputError, match="over the bound of 1,024 probe heads"):
        ProbeSpec.parse(f"attention-{heads}")
    with pytest.raises(InputError, match="over the bound"):
        lp.ProtocolConfig(probe="attention", n_heads=heads)
    with pytest.raises(InputError, match="over the bound"):
        ProbeConfig(kind="attention", d_model=8, n_heads=heads)
    assert ProbeSpec.parse(f"attention-{MAX_PROBE_HEADS}").n_heads == MAX_PROBE_HEADS


@pytest.mark.parametrize(
    ("field", "value"), [("d_model", 10**10), ("n_heads", 1000), ("n_outputs", 10**9)]
)
def test_a_config_edited_to_a_huge_size_is_refused_before_the_probe_is_built(
    tmp_path, monkeypatch, field, value
):
    probe = lp.AttentionProbe(16, n_heads=2, n_outputs=3)
    probe.save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    config[field] = value
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))

    def built(*args, **kwargs):
        raise AssertionError("a probe was built before its weights file was checked")

    monkeypatch.setattr(saving, "build_probe", built)
    with pytest.raises(ProbeFileError, match=f"{field}={value}.*needs"):
        lp.load_probe(tmp_path / "p")
