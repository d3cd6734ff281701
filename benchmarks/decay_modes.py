"""Does the AdamW weight-decay grid change the probe? Decoupled decay vs an L2 penalty, measured.

For each dataset (a store captured by ``benchmarks/study.py``, one hook) and each AdamW decay mode
(``TrainConfig.decay``: ``decoupled``, ``l2``), an attention probe goes through the protocol twice
on the same splits: with the grid ``{0, 1e-3, 1e-2, 1e-1}`` chosen by 5-fold CV, and with decay 0
alone. Reported per (dataset, mode):

- ``dW(wd)``: relative change of the value weights against decay 0, ``||V_wd - V_0|| / ||V_0||``,
  of the probes trained from one initialisation on seed 0's training part (protocol settings:
  token-norm scaling, early stopping);
- ``cv spread``: max - min over the grid of the CV accuracy (mean over folds), mean over seeds;
- ``chose > 0``: seeds whose CV chose a decay other than 0;
- ``test acc``: test accuracy of the CV choice (mean over seeds), and the paired difference
  grid - decay 0 from ``lp.compare`` (t-interval over seeds, verdict).

    python benchmarks/decay_modes.py                       # stores of benchmarks/results/study
    python benchmarks/decay_modes.py --datasets sst2 --seeds 2 --heads 1

Writes ``OUT/decay_modes.json`` and ``OUT/decay_modes.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "benchmarks" / "results" / "study"
DECAYS = (0.0, 1e-3, 1e-2, 1e-1)
MODES = ("decoupled", "l2")

log = logging.getLogger("decay_modes")


def weight_changes(acts: Any, run: Any, heads: int, mode: str) -> dict[str, float]:
    """``||V_wd - V_0|| / ||V_0||`` for each decay > 0, one init, seed 0's training part."""
    import torch

    import lensprobe as lp
    from lensprobe.probes.base import without_first_token
    from lensprobe.train import TrainConfig
    from lensprobe.train.fit import token_scale

    x, mask = acts.pad(dtype=torch.float32)
    drop_bos = bool(getattr(acts.meta, "prepend_bos", False))
    labels = run.test_labels.new_tensor(acts.labels)
    rows = run.train_rows
    x, mask, y = x[rows], mask[rows], labels[rows]
    if drop_bos:  # the protocol's probes read no BOS token; scale on the tokens they read
        mask = without_first_token(mask)
    x = x / token_scale(x, mask)
    n_out = 1 if int(labels.max()) == 1 else int(labels.max()) + 1
    torch.manual_seed(0)
    probe = lp.AttentionProbe(d_model=x.shape[-1], n_heads=heads, n_outputs=n_out)
    train = TrainConfig(decay=mode)  # type: ignore[arg-type]
    values = {}
    for wd in DECAYS:
        fitted = lp.fit(probe, x, mask, y, weight_decay=wd, train=train)
        values[wd] = dict(fitted.named_parameters())["value"].detach()
    base = values[0.0].norm()
    return {f"{wd:g}": float((values[wd] - values[0.0]).norm() / base) for wd in DECAYS[1:]}


def measure(acts: Any, seeds: int, heads: int, mode: str) -> dict[str, Any]:
    import lensprobe as lp
    from lensprobe.train import TrainConfig

    kw = dict(probe="attention", n_heads=heads, seeds=tuple(range(seeds)))
    train = TrainConfig(decay=mode)  # type: ignore[arg-type]
    t = time.perf_counter()
    grid = lp.run_protocol(acts, weight_decays=DECAYS, train=train, **kw)
    zero = lp.run_protocol(acts, weight_decays=(0.0,), train=train, **kw)
    seconds = time.perf_counter() - t
    spreads = []
    for run in grid.runs:
        accs = [row["accuracy"] for row in run.cv_summary]
        spreads.append(max(accs) - min(accs))
    cmp = lp.compare(grid, zero, "accuracy")
    return {
        "mode": mode,
        "dW": weight_changes(acts, grid.runs[0], heads, mode),
        "cv_spread": sum(spreads) / len(spreads),
        "chosen": grid.weight_decays_chosen,
        "chose_nonzero": sum(w != 0.0 for w in grid.weight_decays_chosen),
        "seeds": seeds,
        "n_test": grid.n_test,
        "test_accuracy": grid.metrics["accuracy"],
        "test_accuracy_decay0": zero.metrics["accuracy"],
        "diff": cmp.difference,
        "diff_low": cmp.low,
        "diff_high": cmp.high,
        "verdict": cmp.verdict,
        "seconds": round(seconds, 1),
    }


def markdown(rows: list[dict[str, Any]], command: str, load: str) -> str:
    head = [
        "dataset",
        "mode",
        "dW 1e-3",
        "dW 1e-2",
        "dW 1e-1",
        "CV acc spread",
        "chose wd > 0",
        "test acc (CV choice)",
        "test acc (wd 0)",
        "choice - wd 0 [95% t]",
        "verdict",
    ]
    lines = [
        "# AdamW weight decay: decoupled vs L2 penalty",
        "",
        f"Command: `{command}`; load average at the start: {load}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        dw = r["dW"]
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {dw['0.001']:.2%} | {dw['0.01']:.2%} | "
            f"{dw['0.1']:.2%} | {r['cv_spread']:.3f} | {r['chose_nonzero']}/{r['seeds']} "
            f"({', '.join(f'{w:g}' for w in r['chosen'])}) | {r['test_accuracy']:.3f} | "
            f"{r['test_accuracy_decay0']:.3f} | {r['diff']:+.3f} [{r['diff_low']:+.3f}, "
            f"{r['diff_high']:+.3f}] | {r['verdict']} |"
        )
    n_test = sorted({r["n_test"] for r in rows})
    lines += [
        "",
        f"n_test per seed: {', '.join(map(str, n_test))}; {rows[0]['seeds']} seeds (independent "
        "splits) per row. dW: relative change of the value weights against decay 0 (seed 0's "
        "training part, one initialisation). CV acc spread: max - min CV accuracy over the grid, "
        "mean over seeds.",
        "",
    ]
    return "\n".join(lines)


def _complete(store: Path) -> bool:
    manifest = store / "manifest.json"
    return manifest.exists() and bool(json.loads(manifest.read_text()).get("complete"))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    raw = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", default=str(STUDY / "acts"), help="folder of captured stores")
    ap.add_argument(
        "--datasets",
        default="geometry_of_truth-cities,sst2,refusal_harmful_harmless,tweet_eval_emotion",
        help="store folder names",
    )
    ap.add_argument("--hook", default="blocks.9.hook_resid_post")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(raw)

    import torch

    from lensprobe.storage import load as load_store

    torch.set_num_threads(args.threads)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    command = shlex.join(["python", "benchmarks/decay_modes.py", *raw])
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        store = Path(args.stores) / name
        while not _complete(store):  # the study may still be capturing it
            time.sleep(10)
        acts = load_store(store)[args.hook]
        for mode in MODES:
            row = {
                "dataset": name,
                "hook": args.hook,
                **measure(acts, args.seeds, args.heads, mode),
            }
            log.info("%s", json.dumps(row))
            rows.append(row)
            (out / "decay_modes.json").write_text(json.dumps(rows, indent=1) + "\n")
            (out / "decay_modes.md").write_text(markdown(rows, command, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
