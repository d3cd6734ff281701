"""The noise-layer experiment: does choosing a layer by CV make pure noise read as chance?

Each synthetic dataset has 160 sequences with balanced binary labels and three hooks
(``noise.0`` .. ``noise.2``) whose activations, ``(160, pos=4, d_model=16)``, are standard
Gaussian noise drawn independently of the labels, so no probe at any hook can beat chance on
new rows. Every dataset goes through lensprobe's own grid (:func:`lensprobe.experiment.run_grid`,
probe ``mean`` (L-BFGS), three seeds = three independent stratified 80/20 splits, the weight decay
chosen by 5-fold CV on each training part), and the layer is chosen with
:func:`lensprobe.experiment.choose_layer` (``by="cv_accuracy"``): each split picks the hook with
the best CV accuracy on its own training part and reports its own test accuracy there. Measured
over the datasets:

- ``new``: the mean of ``choose_layer``'s reported test accuracy, its standard error over
  datasets, and whether it lies within 2 standard errors of 0.5 (the target: noise reads as chance);
- ``old``: the pooled choice lensprobe used to make, from the same records: the one hook with the
  best CV accuracy averaged over the seeds (ties: lower CV log loss, then the earlier hook), and
  that hook's test accuracy averaged over the seeds. It reads test rows (a seed's test rows lie in
  the other seeds' training parts), so on noise it can read above chance;
- ``old - new``: the paired difference per dataset, its mean and standard error;
- ``all hooks``: the mean test accuracy over every hook and seed (no choice), a control.

    python benchmarks/noise_layers.py                  # 400 datasets, ~3 min on 2 shared cores
    python benchmarks/noise_layers.py --quick          # 20 datasets, a smoke test
    python benchmarks/noise_layers.py --datasets 1000

Prints a summary and one JSON line (starting with ``{``) with the figures, and writes
``benchmarks/results/noise_layers.md`` (``--out``; ``--out ''`` writes nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "noise_layers.md"
N_ROWS, POSITIONS, D_MODEL = 160, 4, 16
HOOKS = ("noise.0", "noise.1", "noise.2")
SEEDS = (0, 1, 2)
PROBE = "mean"
CHANCE = 0.5

log = logging.getLogger("noise_layers")


@dataclass(frozen=True)
class DatasetScores:
    """The test accuracies one noise dataset reports under each way of choosing the layer."""

    new: float
    """``choose_layer``: mean over splits of each split's test accuracy at its own CV pick."""
    old: float
    """The pooled choice: the test accuracy (mean over seeds) of the hook with the best mean CV."""
    all_hooks: float
    """Mean test accuracy over every hook and seed (no choice)."""
    picks_agree: bool
    """Whether every split picked the same hook."""


def noise_activations(index: int) -> dict[str, Any]:
    """Hook -> ``Activations`` of dataset ``index``: Gaussian noise, balanced labels 0/1."""
    import torch

    import lensprobe as lp
    from lensprobe.activations import ActivationsMeta

    gen = torch.Generator().manual_seed(index)
    labels = torch.arange(N_ROWS) % 2
    offsets = torch.arange(0, N_ROWS * POSITIONS + 1, POSITIONS)
    token_ids = torch.zeros(N_ROWS * POSITIONS, dtype=torch.long)
    out = {}
    for hook in HOOKS:
        meta = ActivationsMeta(
            hook=hook,
            model_id="noise",
            backend="synthetic",
            d_model=D_MODEL,
            dtype="float32",
            tokenizer="none",
            padding_side="right",
            max_length=None,
            n_truncated=0,
            prepend_bos=False,
        )
        values = torch.randn(N_ROWS * POSITIONS, D_MODEL, generator=gen)
        out[hook] = lp.Activations(meta, values, offsets, token_ids, labels)
    return out


def pooled_choice(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The record the old pooled choice picked: best ``cv_accuracy`` averaged over the seeds.

    Ties go to the lower ``cv_log_loss``, then to the earlier record, as the old
    ``choose_layer`` did; its reported test accuracy was the record's ``accuracy``.
    """

    def key(i: int) -> tuple[float, float, int]:
        return (-records[i]["cv_accuracy"], records[i]["cv_log_loss"], i)

    return records[min(range(len(records)), key=key)]


def score_dataset(index: int, protocol: Any) -> DatasetScores:
    """Run the grid on noise dataset ``index`` and read off each way of choosing the layer."""
    from lensprobe.experiment import choose_layer, run_grid

    name = f"noise-{index}"
    rows = run_grid(noise_activations(index), [PROBE], dataset=name, protocol=protocol)
    records = [row.record() for row in rows]
    choice = choose_layer(records, by="cv_accuracy", probe=PROBE, dataset=name)
    tests = [s["test"]["accuracy"] for r in records for s in r["splits"]]
    return DatasetScores(
        new=choice.test["accuracy"],
        old=float(pooled_choice(records)["accuracy"]),
        all_hooks=sum(tests) / len(tests),
        picks_agree=len(set(choice.picks)) == 1,
    )


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); NaN for n < 2)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarise(scores: Sequence[DatasetScores], seconds: float) -> dict[str, Any]:
    """The figures of the experiment (JSON-ready, rounded)."""
    new, new_se = mean_se([s.new for s in scores])
    old, old_se = mean_se([s.old for s in scores])
    diff, diff_se = mean_se([s.old - s.new for s in scores])
    control, control_se = mean_se([s.all_hooks for s in scores])

    def r(v: float) -> float:
        return round(v, 5)

    return {
        "datasets": len(scores),
        "rows": N_ROWS,
        "hooks": len(HOOKS),
        "seeds": len(SEEDS),
        "probe": PROBE,
        "new_mean": r(new),
        "new_se": r(new_se),
        "new_z": r((new - CHANCE) / new_se),
        "new_within_2se_of_chance": abs(new - CHANCE) <= 2 * new_se,
        "old_mean": r(old),
        "old_se": r(old_se),
        "old_z": r((old - CHANCE) / old_se),
        "old_within_2se_of_chance": abs(old - CHANCE) <= 2 * old_se,
        "diff_old_minus_new": r(diff),
        "diff_se": r(diff_se),
        "diff_z": r(diff / diff_se),
        "all_hooks_mean": r(control),
        "all_hooks_se": r(control_se),
        "picks_agree_fraction": r(sum(s.picks_agree for s in scores) / len(scores)),
        "seconds": round(seconds, 1),
    }


def summary_text(fig: Mapping[str, Any]) -> str:
    """The readable summary printed before the JSON line."""

    def line(label: str, key: str) -> str:
        mean, se = fig[f"{key}_mean"], fig[f"{key}_se"]
        return f"  {label:<44} {mean:.4f} +- {se:.4f} (SE)  z vs 0.5 = {(mean - 0.5) / se:+.2f}"

    verdict = "yes" if fig["new_within_2se_of_chance"] else "NO"
    return "\n".join(
        [
            f"noise-layer experiment: {fig['datasets']} datasets x {fig['hooks']} noise hooks, "
            f"{fig['rows']} rows, probe {fig['probe']}, {fig['seeds']} splits "
            f"({fig['seconds']:.0f} s)",
            "mean reported test accuracy over datasets (chance = 0.5):",
            line("new: choose_layer, each split its own pick", "new"),
            line("old: one pooled pick, mean CV over seeds", "old"),
            line("control: every hook and seed, no choice", "all_hooks"),
            f"  old - new (paired): {fig['diff_old_minus_new']:+.4f} +- {fig['diff_se']:.4f} (SE)"
            f"  z = {fig['diff_z']:+.2f}",
            f"  splits agreed on one hook in {fig['picks_agree_fraction']:.0%} of datasets",
            f"new within 2 SE of chance: {verdict}",
        ]
    )


def _git_state() -> str:
    """``git describe --always --dirty`` of the repository (``unknown`` without git)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def markdown(fig: Mapping[str, Any], command: str, load: str) -> str:
    """``benchmarks/results/noise_layers.md``: the command, the date, the figures."""
    head = ["layer choice", "mean test acc", "SE", "z vs 0.5", "within 2 SE of 0.5"]
    within = {"new": fig["new_within_2se_of_chance"], "old": fig["old_within_2se_of_chance"]}
    rows = [
        ("new: `choose_layer`, each split its own CV pick", "new"),
        ("old: one pooled pick, CV accuracy averaged over seeds", "old"),
        ("control: every hook and seed, no choice", "all_hooks"),
    ]
    lines = [
        "# Noise layers: the layer choice on pure noise",
        "",
        f"Command: `{command}`; {datetime.date.today().isoformat()}; 2-core shared CPU, load "
        f"average at the start {load}; repository `{_git_state()}`; {fig['seconds']:.0f} s.",
        "",
        f"{fig['datasets']} datasets, each {fig['rows']} rows (balanced binary labels) x "
        f"{fig['hooks']} hooks of Gaussian noise `(rows, 4, 16)` independent of the labels; "
        f"probe `{fig['probe']}` (L-BFGS), {fig['seeds']} stratified 80/20 splits, weight decay "
        "by 5-fold CV. Chance is 0.5; SE is over datasets.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, key in rows:
        mean, se = fig[f"{key}_mean"], fig[f"{key}_se"]
        ok = "yes" if within.get(key, abs(mean - CHANCE) <= 2 * se) else "no"
        lines.append(f"| {label} | {mean:.4f} | {se:.4f} | {(mean - CHANCE) / se:+.2f} | {ok} |")
    lines += [
        "",
        f"Paired difference old - new: {fig['diff_old_minus_new']:+.4f} (SE "
        f"{fig['diff_se']:.4f}, z = {fig['diff_z']:+.2f}). The splits agreed on one hook in "
        f"{fig['picks_agree_fraction']:.0%} of datasets.",
        "",
    ]
    return "\n".join(lines)


def run(n_datasets: int) -> tuple[list[DatasetScores], float]:
    """Score datasets ``0 .. n_datasets - 1``; returns the scores and the seconds taken."""
    from lensprobe.train import ProtocolConfig

    protocol = ProtocolConfig(probe=PROBE, seeds=SEEDS)
    start = time.perf_counter()
    scores = []
    for index in range(n_datasets):
        scores.append(score_dataset(index, protocol))
        if (index + 1) % 50 == 0:
            log.info("%d/%d datasets, %.0f s", index + 1, n_datasets, time.perf_counter() - start)
    return scores, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the experiment, print the summary and the JSON line, write the markdown."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    raw = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=400, help="noise datasets (default 400)")
    ap.add_argument("--quick", action="store_true", help="20 datasets (overrides --datasets)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1)")
    ap.add_argument("--out", default=str(OUT), help="markdown file ('' writes none)")
    args = ap.parse_args(raw)
    n_datasets = 20 if args.quick else args.datasets
    if n_datasets < 2:
        ap.error("--datasets must be at least 2 (a standard error needs two)")

    import torch

    torch.set_num_threads(args.threads)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    command = shlex.join(["python", "benchmarks/noise_layers.py", *raw])
    scores, seconds = run(n_datasets)
    fig = summarise(scores, seconds)
    print(summary_text(fig))
    print(json.dumps(fig))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(fig, command, load), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
