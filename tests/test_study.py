"""The study's code path (``benchmarks/study.py``) end to end on a tiny store: the sweep, the
shuffled-label control at chance, the TF-IDF control on the probes' own splits, the claims and
the files."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from test_analysis import make_acts

import lensprobe as lp
from lensprobe import storage

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
PROBES = "attention-1,attention-2,attention-8,mean,last,mean-adamw,last-adamw"
N, D = 100, 8


@pytest.fixture(scope="module")
def study_mod():
    sys.path.insert(0, str(BENCH))
    try:
        import study
        import study_report

        yield study, study_report
    finally:
        sys.path.remove(str(BENCH))


def toy_store(path: Path) -> dict[str, lp.Activations]:
    """Two hooks of 100 texts whose label shows in every token (more strongly at the deeper
    hook) and in one word of the text."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 9, (N,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    labels = torch.arange(N) % 2
    direction = torch.randn(D, generator=gen)
    sign = (labels * 2 - 1).float().repeat_interleave(lengths)[:, None]
    noise = torch.randn(int(lengths.sum()), D, generator=gen)
    ids = torch.randint(0, 20, (int(lengths.sum()),), generator=gen)
    filler = ["the", "a", "on", "cat", "sat", "mat", "dog", "ran"]
    texts = [
        " ".join([("alpha" if int(y) else "beta")] + [filler[int(i) % 8] for i in range(int(n))])
        for y, n in zip(labels, lengths, strict=True)
    ]
    template = make_acts(n=2, d=D).meta
    acts = {}
    for layer, strength in ((1, 0.5), (3, 2.0)):
        meta = dataclasses.replace(
            template, hook=f"blocks.{layer}.hook_resid_post", class_names=("no", "yes")
        )
        values = noise + strength * sign * direction
        acts[meta.hook] = lp.Activations(meta, values, offsets, ids, labels, texts=texts)
    storage.save(acts, path)
    return acts


@pytest.fixture(scope="module")
def finished(study_mod, tmp_path_factory):
    """The study run once on the toy store (its capture facts written as a capture would)."""
    study, _ = study_mod
    out = tmp_path_factory.mktemp("study")
    toy_store(out / "acts" / "toy_study")
    info = {
        "dataset": "toy_study",
        "n": N,
        "n_rows": N,
        "draw": "all",
        "n_tokens": 0,
        "n_truncated": 0,
        "class_counts": {"no": N // 2, "yes": N // 2},
    }
    (out / "captures").mkdir()
    (out / "captures" / "toy_study.json").write_text(json.dumps(info))
    args = [
        "--out",
        str(out),
        "--datasets",
        "toy_study",
        "--layers",
        "1,3",
        "--probes",
        PROBES,
        "--seeds",
        "3",
        "--controls",
        "toy_study",
        "--max-steps",
        "100",
    ]
    assert study.main(args) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_shuffled_labels_sit_at_chance_through_the_study_path(study_mod, finished):
    _, report = study_mod
    data = report.read(finished, [1, 3])
    for p in PROBES.split(","):
        real = data.choices["toy_study", p].estimates["accuracy"]
        control = data.choices["toy_study (shuffled labels)", p].estimates["accuracy"]
        assert real.mean > 0.85, p  # the label is in every token: every probe finds it
        assert control.mean < 0.68 and control.low < 0.5, p  # permuted labels: chance (0.5)
    assert "| above chance |" not in (finished / "results.md").read_text()


def test_tfidf_control_runs_on_the_probes_own_splits(study_mod, finished):
    _, report = study_mod
    data = report.read(finished, [1, 3])
    runs = report.runs_at_picks(data, "toy_study", "mean")
    control = json.loads((finished / "controls" / "toy_study.tfidf.json").read_text())["runs"]
    assert [r.test_rows.tolist() for r in runs] == [c["test_rows"] for c in control]
    assert min(c["accuracy"] for c in control) > 0.9  # one word gives the label away
    versus = [r for r in _rows(finished / "comparisons.csv") if r["b"] == "tfidf"]
    assert {r["a"] for r in versus} == {"attention-8", "mean"}


def test_results_files_hold_every_cell_and_split_with_intervals(study_mod, finished):
    rows = _rows(finished / "results.csv")
    probes = [r for r in rows if r["probe"] != "tfidf"]
    # 7 probes x 2 hooks x 3 splits, real and shuffled labels
    assert len(probes) == 7 * 2 * 3 * 2
    for key in (
        "n",
        "n_test",
        "hook",
        "probe",
        "seed",
        "accuracy",
        "accuracy_low",
        "accuracy_high",
    ):
        assert all(r[key] != "" for r in probes), key
    assert sum(r["picked"] == "True" for r in probes) == 7 * 3 * 2  # one pick per probe and split
    rows = _rows(finished / "claims.csv")
    claims = [r for r in rows if r["family"] == "claim"]
    assert len(claims) == 10
    beyond = [r for r in rows if r["family"] == "control"]  # one dataset: no interval yet
    assert {r["a"] for r in beyond} == {"attention-8", "mean"}
    assert all(r["datasets"] == "1" and r["verdict"] == "undecided" for r in beyond)
    entropy = {r["claim"]: r for r in claims if r["metric"] == "entropy_ratio"}
    assert entropy and all(r["datasets"] == "1" for r in entropy.values())
    ent = _rows(finished / "entropy.csv")
    assert len(ent) == 3 * 2 * 3  # attention-1/2/8 x hooks x splits
    assert all(0.0 <= float(r["mean_ratio"]) <= 1.0 for r in ent)


def test_holm_and_the_claim_verdicts(study_mod):
    _, report = study_mod
    assert report.holm_flags([0.01, 0.04, 0.03, float("nan")]) == [True, False, False, False]
    assert report.holm_flags([0.001, 0.012, 0.02]) == [True, True, True]
    _mean, low, high, p = report.over_datasets([0.02, 0.03, 0.025, 0.04])
    assert low > 0 and p < 0.05
    claim = report.CLAIMS[0]
    assert report.claim_verdict(claim, low, high, []) == "holds"
    assert report.claim_verdict(claim, -0.03, -0.01, []) == "does not hold"
    mixed = next(c for c in report.CLAIMS if c.expect == "mixed")
    both = [{"verdict": "a better"}, {"verdict": "b better"}]
    assert report.claim_verdict(mixed, -0.01, 0.02, both) == "holds"
    assert report.claim_verdict(mixed, 0.01, 0.02, both[:1]) == "does not hold"


def test_tfidf_across_datasets(study_mod):
    """The control across datasets: decided where every dataset's difference is positive, Holm
    over the probes, the per-dataset verdicts counted."""
    _, report = study_mod

    def row(probe: str, d: float, verdict: str) -> dict[str, object]:
        return {"a": probe, "difference": d, "verdict": verdict}

    versus = [row("attention-8", d, "a better") for d in (0.10, 0.12, 0.08, 0.11)]
    versus += [row("mean", d, "undecided") for d in (0.05, -0.04, 0.02, -0.03)]
    att, mean = report.tfidf_summary(versus)
    assert (att["a"], att["datasets"], att["a_better"]) == ("attention-8", 4, 4)
    assert att["low"] > 0 and att["verdict"] == att["holm_verdict"] == "holds"
    assert mean["low"] < 0 < mean["high"] and mean["holm_verdict"] == "undecided"
    assert att["holm_family"] == 2
