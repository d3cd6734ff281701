"""results.json and the probes beside it: written by ``save_rows``, read back only by ``load_results``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lensprobe as lp
from lensprobe.experiment import (
    GridRow,
    load_results,
    probe_path,
    save_rows,
    saved_entries,
)

HOOK = "blocks.1.hook_resid_post"


def _rows() -> tuple[list[GridRow], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    rows, acts = [], {}
    for dataset in ("facts", "needle"):
        x, y = torch.randn(40, 5, 8, generator=gen), torch.arange(40) % 2
        acts[dataset] = x
        res = lp.run_protocol(x, y, probe="mean")
        rows.append(GridRow(dataset=dataset, hook=HOOK, probe="mean", result=res))
    return rows, acts


def test_saved_results_read_back_with_their_probes(tmp_path):
    rows, _ = _rows()
    save_rows(rows, tmp_path)
    saved = load_results(tmp_path)
    assert saved.folder == tmp_path and saved.datasets == ["facts", "needle"]
    assert load_results(tmp_path / "results.json").folder == tmp_path
    for row in rows:
        assert (probe_path(tmp_path, row.dataset, HOOK, "mean") / "config.json").is_file()
        (entry,) = saved_entries(saved, row.dataset)
        assert entry.label == "mean" and entry.hook == HOOK and entry.acts is None
        assert entry.n_test == row.result.n_test
        assert entry.metrics == pytest.approx(row.result.metrics, nan_ok=True)
        for name, weight in row.result.probe.state_dict().items():
            assert torch.equal(entry.probe.state_dict()[name], weight)
        assert entry.record["dataset"] == row.dataset


def test_entries_need_the_folder_the_results_came_from(tmp_path):
    rows, _ = _rows()
    save_rows(rows, tmp_path)
    saved = dataclasses.replace(load_results(tmp_path), folder=None)
    with pytest.raises(ValueError, match="load_results"):
        saved_entries(saved, "facts")
