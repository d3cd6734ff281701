"""Training at scale, in one run: a store larger than the budget, the sweep, bf16.

Three measurements, each with both sides in the same run:

1. **Streamed vs in RAM.** A synthetic bfloat16 store (``--n`` sequences of 64..``--pos`` tokens x
   ``--d`` wide, class carried by one token, written shard by shard through the public
   :class:`~lensprobe.storage.writer.StoreWriter`) at least 4x the memory budget. An attention-1
   protocol (AdamW, ``--steps`` steps) trains on it in a child process under ``max_memory =
   budget`` (streamed from the memory-mapped store), and in another child on the same activations
   padded into RAM first. The parent samples each child's anonymous RSS (``RssAnon``, what the
   budget governs; the store's file pages the kernel can drop are left out) every 20 ms and
   reads its peak RSS with file pages (``VmHWM``) at the end. ``metrics_equal``: the two
   children's test logits are identical.
2. **Sweep vs loop.** 6 hooks x 4 probe kinds (attention-8, attention-1, mean, last) of synthetic
   in-memory activations through :func:`lensprobe.train.protocol.run_sweep` vs a loop of
   :func:`lensprobe.run_protocol` over the same cells, same settings; ``metrics_equal`` compares
   every cell's test logits.
3. **bf16 vs fp32.** The AdamW sweep of 6 hooks' attention-8 members, fixed steps, with
   ``precision="fp32"`` vs ``"bf16"``: seconds per step; and one product of the step's shape
   in each dtype (``bf16_matmul_speedup``: what the hardware allows at best).
4. **attention-8 vs before.** The whole default protocol for attention-8 on ``--real-n`` real
   texts of ``../shared/data`` (sst2, a stratified subsample), captured once from the bundled
   Gemma 3 270M at layer 9 and padded to 128 positions, in a child process running this checkout
   and in one running ``--before`` (default: main before the train-at-scale work), checked out
   beside it with ``git worktree``; both read the same saved tensors. Seconds and test accuracy
   of each, and this checkout again with ``precision="bf16"``.

    python benchmarks/scale_train.py             # about 4 minutes on a quiet 2-core CPU
    python benchmarks/scale_train.py --skip-before   # parts 1-3 only

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import lensprobe as lp
from lensprobe.activations import Activations, ActivationsMeta
from lensprobe.probes.spec import ProbeSpec
from lensprobe.train import ProtocolConfig, TrainConfig

BASE = ProtocolConfig(weight_decays=(0.0, 1e-2), n_folds=3)


def _meta(d: int, hook: str) -> ActivationsMeta:
    return ActivationsMeta(
        hook=hook,
        model_id="synthetic",
        backend="hf",
        d_model=d,
        dtype="bfloat16",
        tokenizer="synthetic",
        padding_side="right",
        max_length=None,
        n_truncated=0,
        prepend_bos=False,
    )


def _block(gen: torch.Generator, lengths: torch.Tensor, labels: torch.Tensor, d: int):
    """Packed values of some sequences: noise, the class on one random token's first coordinate."""
    values = torch.randn(int(lengths.sum()), d, generator=gen)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    where = starts + (torch.rand(len(lengths), generator=gen) * lengths).long()
    values[where, 0] += 2.0 * (2 * labels.float() - 1)
    return values.bfloat16()


def write_store(path: Path, n: int, pos: int, d: int, shard: int = 256) -> int:
    """A synthetic store written shard by shard (never whole in RAM); returns its bytes."""
    from lensprobe.storage.writer import StoreWriter

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, pos + 1, (n,), generator=gen)
    labels = torch.arange(n) % 2
    plan = [(s, min(s + shard, n)) for s in range(0, n, shard)]
    hook = "blocks.9.hook_resid_post"
    writer = StoreWriter.open(
        path,
        hooks=[hook],
        plan=plan,
        n_tokens=int(lengths.sum()),
        has_labels=True,
        fingerprint=None,
    )
    for k, (a, b) in enumerate(plan):
        values = _block(gen, lengths[a:b], labels[a:b], d)
        writer.write_shard(
            k,
            token_ids=torch.zeros(values.shape[0], dtype=torch.long),
            lengths=lengths[a:b],
            labels=labels[a:b],
            values={hook: values},
            metas={hook: _meta(d, hook)},
        )
    writer.finish()
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def child(mode: str, store: str, budget: int, steps: int, out: str) -> None:
    """Train attention-1 on the store, streamed or padded into RAM first; save the test logits."""
    from lensprobe.storage import load_activations

    acts = load_activations(store)
    config = replace(BASE, train=TrainConfig(max_steps=steps, early_stop_fraction=0.0))
    start = time.perf_counter()
    if mode == "streamed":
        result = lp.run_protocol(acts, config=config, max_memory=budget)
    else:
        x, mask = acts.pad(dtype=acts.dtype)
        result = lp.run_protocol(
            x, acts.labels, mask=mask, config=replace(config, bos="keep"), max_memory=None
        )
    seconds = time.perf_counter() - start
    torch.save({"logits": result.runs[0].test_logits, "seconds": seconds}, out)


def _watch(args: list[str]) -> tuple[int, int, int]:
    """Run a child; return (exit code, peak RssAnon sampled, VmHWM) in bytes."""
    proc = subprocess.Popen(args)
    peak_anon = hwm = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            peak_anon = max(peak_anon, int(fields["RssAnon"].split()[0]) * 1024)
            hwm = max(hwm, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.02)
    return proc.returncode, peak_anon, hwm


def streamed_vs_ram(args: argparse.Namespace, tmp: Path) -> dict:
    store = tmp / "store"
    store_bytes = write_store(store, args.n, args.pos, args.d)
    budget = store_bytes // 4
    out = {"store_bytes": store_bytes, "budget_bytes": budget}
    shape = f"{args.n} x 64..{args.pos} x {args.d} bf16"
    print(f"store {store_bytes / 1e9:.2f} GB ({shape}), budget {budget / 1e9:.2f} GB", flush=True)
    logits = {}
    for mode in ("streamed", "ram"):
        file = tmp / f"{mode}.pt"
        cmd = [sys.executable, __file__, "--child", mode, "--store", str(store)]
        cmd += ["--budget", str(budget), "--steps", str(args.steps), "--out", str(file)]
        code, anon, hwm = _watch(cmd)
        if code != 0:
            raise SystemExit(f"{mode} child failed with exit code {code}")
        saved = torch.load(file)
        logits[mode] = saved["logits"]
        out[f"{mode}_seconds"] = round(saved["seconds"], 2)
        out[f"{mode}_peak_anon_bytes"] = anon
        out[f"{mode}_peak_rss_bytes"] = hwm
        print(f"  {mode}: {saved['seconds']:.1f} s, peak anon {anon / 1e9:.2f} GB, ", end="")
        print(f"peak rss with file pages {hwm / 1e9:.2f} GB", flush=True)
    out["peak_rss_bytes"] = out["streamed_peak_anon_bytes"]
    out["streamed_vs_ram"] = round(out["ram_seconds"] / out["streamed_seconds"], 3)
    out["streamed_metrics_equal"] = bool(torch.equal(logits["streamed"], logits["ram"]))
    out["rss_within_budget_plus_1gb"] = out["peak_rss_bytes"] <= budget + 10**9
    out["shape"] = shape
    return out


def synthetic_hooks(n: int, n_hooks: int, d: int, pos: int) -> dict[str, Activations]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(pos // 2, pos + 1, (n,), generator=gen)
    labels = torch.arange(n) % 2
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = torch.zeros(int(lengths.sum()), dtype=torch.long)
    hooks = {}
    for h in range(n_hooks):
        hook = f"blocks.{h}.hook_resid_post"
        values = _block(gen, lengths, labels, d)
        hooks[hook] = Activations(_meta(d, hook), values, offsets, ids, labels)
    return hooks


def sweep_vs_loop(args: argparse.Namespace) -> dict:
    from lensprobe.train.protocol import run_sweep

    hooks = synthetic_hooks(args.sweep_n, 6, args.d, 64)
    train = TrainConfig(max_steps=args.steps)
    base = replace(BASE, train=train)
    configs = [
        ProbeSpec.parse(s).protocol(base) for s in ("attention-8", "attention-1", "mean", "last")
    ]
    # first AdamW fit of the process pays one-off costs (torch.optim imports torch._dynamo, ~1 s)
    run_sweep({h: hooks[h] for h in list(hooks)[:1]}, configs[1:2])
    start = time.perf_counter()
    swept = run_sweep(hooks, configs)
    sweep_s = time.perf_counter() - start
    start = time.perf_counter()
    loop = {
        (h, i): lp.run_protocol(a, config=c)
        for h, a in hooks.items()
        for i, c in enumerate(configs)
    }
    loop_s = time.perf_counter() - start
    equal = all(
        torch.equal(swept[k].runs[0].test_logits, loop[k].runs[0].test_logits) for k in loop
    )
    print(f"sweep {sweep_s:.1f} s, loop {loop_s:.1f} s (6 hooks x 4 kinds, n={args.sweep_n})")
    return {
        "sweep_seconds": round(sweep_s, 2),
        "loop_seconds": round(loop_s, 2),
        "sweep_speedup": round(loop_s / sweep_s, 3),
        "sweep_metrics_equal": equal,
    }


def bf16_vs_fp32(args: argparse.Namespace) -> dict:
    from lensprobe.probes import ProbeConfig
    from lensprobe.train.fit import fit_hooks
    from lensprobe.train.members import Members

    hooks = synthetic_hooks(args.sweep_n, 6, args.d, 64)
    n = args.sweep_n
    config = ProbeConfig(kind="attention", d_model=args.d, n_outputs=1, n_heads=8)
    members = Members(
        weight_decay=torch.tensor([0.0, 1e-2] * 4),
        seeds=tuple(range(8)),
        train=torch.rand(8, n, generator=torch.Generator().manual_seed(2)) < 0.75,
        stop=torch.zeros(8, n, dtype=torch.bool),
    )
    labels = next(iter(hooks.values())).labels
    sources = [(a, None, 1.0) for a in hooks.values()]
    out = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # each twice, interleaved (load)
        train = TrainConfig(max_steps=30, early_stop_fraction=0.0, precision=precision)
        start = time.perf_counter()
        fit_hooks(config, sources, labels, members, train)
        step = (time.perf_counter() - start) / 30
        out[precision] = min(out.get(precision, float("inf")), step)
    print(
        f"AdamW sweep step (6 hooks x 8 members x 8 heads): fp32 {out['fp32'] * 1e3:.0f} ms, "
        f"bf16 {out['bf16'] * 1e3:.0f} ms"
    )
    matmul = _matmul_speedup(args.d)
    print(f"one product of the step's shape: bf16 {matmul:.2f}x fp32 (the hardware's ceiling)")
    return {
        "fp32_step_ms": round(out["fp32"] * 1e3, 1),
        "bf16_step_ms": round(out["bf16"] * 1e3, 1),
        "bf16_speedup": round(out["fp32"] / out["bf16"], 3),
        "bf16_matmul_speedup": round(matmul, 3),
    }


def _matmul_speedup(d: int, repeats: int = 50) -> float:
    """fp32 / bf16 time of one (2048 x d) @ (d x 128) product, the step's largest shape."""
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, d).to(dtype), torch.randn(d, 128).to(dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds[dtype] = time.perf_counter() - start
    return seconds[torch.float32] / seconds[torch.bfloat16]


REPO = Path(__file__).resolve().parent.parent
BEFORE = "0bd55b0"
"""Main before the train-at-scale work (issue 22's first commit is its child)."""


def real_texts(args: argparse.Namespace, path: Path) -> None:
    """Capture ``--real-n`` sst2 texts at layer 9 and save them padded to 128 positions."""
    from lensprobe.data import load_dataset

    hook = "blocks.9.hook_resid_post"
    ds = load_dataset("sst2", data_dir=args.data_dir).subsample(args.real_n, seed=0)
    model = lp.load_model("gemma-3-270m")
    acts = lp.capture(
        model, list(ds.texts), [hook], labels=ds.label_tensor(), max_length=128, progress=False
    )
    x, mask = acts[hook].pad(dtype=torch.float32)
    pad = 128 - x.shape[1]
    x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    mask = torch.nn.functional.pad(mask, (0, pad))
    torch.save({"x": x, "mask": mask, "labels": acts[hook].labels}, path)


def child_attention8(path: str, precision: str, out: str) -> None:
    """The default attention-8 protocol on saved tensors (runs under either checkout)."""
    from lensprobe.probes.spec import ProbeSpec
    from lensprobe.train import ProtocolConfig

    saved = torch.load(path)
    config = ProbeSpec.parse("attention-8").protocol(ProtocolConfig())
    if precision != "default":
        config = replace(config, train=replace(config.train, precision=precision))
    start = time.perf_counter()
    result = lp.run_protocol(saved["x"], saved["labels"], mask=saved["mask"], config=config)
    seconds = time.perf_counter() - start
    info = {"seconds": seconds, "accuracy": result.metrics["accuracy"], "n_test": result.n_test}
    info["package"] = str(Path(lp.__file__).resolve().parent.parent)
    info["logits"] = result.runs[0].test_logits.tolist()
    Path(out).write_text(json.dumps(info))


def attention8_vs_before(args: argparse.Namespace, tmp: Path) -> dict:
    acts = tmp / "sst2_layer9.pt"
    real_texts(args, acts)
    before = tmp / "before"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
        check=True,
        capture_output=True,
    )
    runs = {}
    try:
        for name, root, precision in [
            ("before", before, "default"),
            ("now", REPO, "default"),
            ("now_bf16", REPO, "bf16"),
        ]:
            file = tmp / f"{name}.json"
            cmd = [sys.executable, __file__, "--child-attention8", str(acts)]
            cmd += ["--precision", precision, "--out", str(file)]
            env = {**os.environ, "PYTHONPATH": str(root)}
            subprocess.run(cmd, check=True, env=env)
            runs[name] = json.loads(file.read_text())
            if Path(runs[name]["package"]) != root.resolve():
                raise SystemExit(f"{name} ran {runs[name]['package']}, not {root}")
            print(
                f"  attention-8 {name}: {runs[name]['seconds']:.1f} s, test accuracy "
                f"{runs[name]['accuracy']:.3f} (n_test={runs[name]['n_test']})",
                flush=True,
            )
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)],
            capture_output=True,
        )
    out = {"attention8_before_commit": args.before, "attention8_n": args.real_n}
    for name, run in runs.items():
        out[f"attention8_{name}_seconds"] = round(run["seconds"], 2)
        out[f"attention8_{name}_accuracy"] = run["accuracy"]
    out["attention8_n_test"] = runs["now"]["n_test"]
    out["attention8_vs_before"] = round(runs["before"]["seconds"] / runs["now"]["seconds"], 3)
    out["attention8_bf16_vs_before"] = round(
        runs["before"]["seconds"] / runs["now_bf16"]["seconds"], 3
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12000, help="sequences in the store")
    parser.add_argument("--pos", type=int, default=192, help="longest sequence in the store")
    parser.add_argument("--d", type=int, default=640, help="width")
    parser.add_argument("--steps", type=int, default=60, help="AdamW steps per fit")
    parser.add_argument("--sweep-n", type=int, default=400, help="sequences for parts 2 and 3")
    parser.add_argument("--real-n", type=int, default=300, help="real texts for part 4")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--before", default=BEFORE, help="the commit part 4 compares against")
    parser.add_argument("--skip-before", action="store_true", help="leave part 4 out")
    parser.add_argument("--child", choices=["streamed", "ram"], help=argparse.SUPPRESS)
    parser.add_argument("--child-attention8", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store, args.budget, args.steps, args.out)
        return
    if args.child_attention8:
        child_attention8(args.child_attention8, args.precision, args.out)
        return
    result = {"threads": torch.get_num_threads(), "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(streamed_vs_ram(args, Path(tmp)))
    result.update(sweep_vs_loop(args))
    result.update(bf16_vs_fp32(args))
    if not args.skip_before:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(attention8_vs_before(args, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
