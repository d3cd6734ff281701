"""The full protocol two ways in one process: the batched sweep and a one-probe-at-a-time loop.

Both run the same members (4 weight decays x (5 CV folds + 1 refit)) with identical settings, data
order and initialisation; only the execution differs. Prints both wall times, the ratio and both
test accuracies, and ends with one JSON line.

Then the pooled protocol (``--pooled-kind``, L-BFGS, on the first ``--pooled-n`` sequences) side by
side with fitting the same 24 members one by one with scikit-learn's ``LogisticRegression`` (same
L2 penalty, ``C = 1 / (n_train * weight_decay)``, on the same normalised pooled features, same
gradient tolerance). ``pooled_vs_sklearn`` in the JSON line is the seconds of scikit-learn's 24
fits (pooling not counted) over lensprobe's whole protocol (checks, split, pooling, fits, CV
metrics, refit, test metrics): >= 1 means lensprobe is at least as fast; ``pooled_max_prob_diff`` is the
largest difference of the two sides' predicted probabilities over every member with decay > 0.

    python benchmarks/sweep_speed.py                      # 1,000 x 128 x 640, 8 heads, 4 classes
    python benchmarks/sweep_speed.py --acts DIR           # saved Activations (lp.capture(out=DIR))
    python benchmarks/sweep_speed.py --n 300 --pos 64     # smaller
    python benchmarks/sweep_speed.py --pooled-only        # only the pooled-vs-scikit-learn part

Default data: synthetic sequences whose class is carried by one token at a random position among
tokens of unit-variance noise (lengths 64..128, so padding is realistic).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import lensprobe as lp


def synthetic(n: int, pos: int, d: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, pos, d, generator=gen)
    lengths = torch.randint(pos // 2, pos + 1, (n,), generator=gen)
    mask = torch.arange(pos)[None] < lengths[:, None]
    where = (torch.rand(n, generator=gen) * lengths).long()
    x[torch.arange(n), where] += 0.4 * torch.randn(k, d, generator=gen)[y]
    x[~mask] = 0
    return x, mask, y


def pooled_vs_sklearn(x, mask, y, kind: str, repeat: int) -> dict[str, float]:
    """The pooled protocol, then the same members one by one with scikit-learn; both timed.

    Each side runs ``repeat`` times and keeps its fastest time (a shared machine's noise only
    ever adds time). Every lensprobe run gets fresh copies of the tensors, so nothing it computed
    from the previous run's inputs can be reused.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from lensprobe.probes import probe_class
    from lensprobe.train import Members, fit_members, stratified_folds

    ours = math.inf
    for _ in range(repeat):
        xc, mc, yc = x.clone(), mask.clone(), y.clone()
        t = time.perf_counter()
        res = lp.run_protocol(xc, yc, mask=mc, probe=kind)
        ours = min(ours, time.perf_counter() - t)
    cfg, tc = res.config, res.config.resolved_train

    # scikit-learn gets what the protocol trains on: pooled features of the normalised activations
    # (pooling is not timed: only the 24 fits, against lensprobe's whole protocol)
    feats = probe_class(kind).pool(x.double().masked_fill(~mask[..., None], 0.0), mask)
    feats = (feats / res.input_scale).numpy()
    n, train = x.shape[0], res.train_rows
    fold = stratified_folds(y[train], cfg.n_folds, seed=cfg.split_seed)
    keys, rows, fits = [], [], []
    for wd in cfg.weight_decays:
        for f in [*range(cfg.n_folds), -1]:
            r = train[fold != f] if f >= 0 else train
            keys.append(wd)
            rows.append(torch.zeros(n, dtype=torch.bool).index_fill_(0, r, True))
    theirs = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fits = []
        for wd, r in zip(keys, rows, strict=True):
            c = np.inf if wd == 0 else 1.0 / (int(r.sum()) * wd)
            sk = LogisticRegression(C=c, tol=tc.lbfgs_tolerance, max_iter=tc.lbfgs_max_iter)
            fits.append(sk.fit(feats[r.numpy()], y[r].numpy()))
        theirs = min(theirs, time.perf_counter() - t)

    # Same optimum: the same members through fit_members (untimed), every member with decay > 0,
    # predicted probabilities on the test rows against scikit-learn's.
    members = Members(
        weight_decay=torch.tensor(keys),
        seeds=(0,) * len(keys),
        train=torch.stack(rows),
        stop=torch.zeros(len(keys), n, dtype=torch.bool),
    )
    pcfg = res.probe.config
    r = fit_members(pcfg, x, mask, y, members, tc, input_scale=res.input_scale)
    test = res.test_rows.numpy()
    diff = 0.0
    for i, (wd, sk) in enumerate(zip(keys, fits, strict=True)):
        if wd == 0:
            continue
        w, b = r.params["weight"][i].double().numpy(), r.params["bias"][i].double().numpy()
        z = feats[test] @ w + b
        p_ours = 1 / (1 + np.exp(-z[:, 0])) if z.shape[1] == 1 else np.exp(z - z.max(1)[:, None])
        p_ours = p_ours if z.shape[1] == 1 else p_ours / p_ours.sum(1)[:, None]
        p_sk = sk.predict_proba(feats[test])
        p_sk = p_sk[:, 1] if z.shape[1] == 1 else p_sk
        diff = max(diff, float(np.abs(p_ours - p_sk).max()))
    print(
        f"pooled {kind} protocol ({x.shape[0]} x {x.shape[1]} x {x.shape[2]}, {len(fits)} members):"
        f" lensprobe {ours:.2f} s, scikit-learn one by one {theirs:.2f} s (fastest of {repeat});"
        f" ratio "
        f"{theirs / ours:.2f}; largest |p_lensprobe - p_sklearn| over the members with decay > 0: "
        f"{diff:.1e}"
    )
    return {
        "pooled_vs_sklearn": round(theirs / ours, 3),
        "seconds_pooled": round(ours, 2),
        "seconds_sklearn": round(theirs, 2),
        "pooled_max_prob_diff": float(f"{diff:.2e}"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--pos", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--acts", help="directory of saved Activations to use instead")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--pooled-n", type=int, default=300, help="sequences for the pooled part")
    ap.add_argument("--pooled-kind", choices=["mean", "last", "max"], default="mean")
    ap.add_argument("--repeat", type=int, default=3, help="pooled part: runs per side (fastest)")
    ap.add_argument(
        "--pooled-only", action="store_true", help="skip the attention batched-vs-sequential part"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.acts:
        from lensprobe.storage import load_activations

        acts = load_activations(args.acts)
        x, mask = acts.pad()
        y = acts.labels
        source = f"activations from {args.acts}"
    else:
        x, mask, y = synthetic(args.n, args.pos, args.d_model, args.classes)
        source = "synthetic needle task"
    print(
        f"data: {source}: {tuple(x.shape)}, {int(y.max()) + 1} classes, "
        f"{float(mask.float().mean()):.0%} of positions valid; torch threads "
        f"{torch.get_num_threads()}"
    )

    summary: dict[str, float] = {}
    if not args.pooled_only:
        summary.update(attention_batched_vs_sequential(x, mask, y, args.heads))
    n = args.pooled_n
    summary.update(pooled_vs_sklearn(x[:n], mask[:n], y[:n], args.pooled_kind, args.repeat))
    print(json.dumps(summary))


def attention_batched_vs_sequential(x, mask, y, heads: int) -> dict[str, float]:
    """The attention protocol batched and one member at a time; both timed."""
    results = {}
    for execution in ("batched", "sequential"):
        t = time.perf_counter()
        res = lp.run_protocol(
            x, y, mask=mask, probe="attention", n_heads=heads, execution=execution
        )
        seconds = time.perf_counter() - t
        steps = [row["steps"] for row in res.cv_table]
        results[execution] = (seconds, res)
        print(
            f"{execution:>10}: {seconds:8.1f} s  test accuracy {res.metrics['accuracy']:.4f}  "
            f"weight decay {res.weight_decay:g}  CV steps {min(steps)}..{max(steps)}"
        )
    (tb, rb), (ts, rs) = results["batched"], results["sequential"]
    print(
        f"speedup of batching: {ts / tb:.2f}x  ({len(rb.cv_table) + len(rb.config.weight_decays)}"
        " members)"
    )
    return {
        "speedup": round(ts / tb, 3),
        "acc_batched": round(rb.metrics["accuracy"], 4),
        "acc_sequential": round(rs.metrics["accuracy"], 4),
        "seconds_batched": round(tb, 2),
        "seconds_sequential": round(ts, 2),
    }


if __name__ == "__main__":
    main()
