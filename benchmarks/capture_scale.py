"""Capture at scale on the bundled Gemma 3 270M: compute dtype, the bf16 limit, torchrun ranks.

The same AG News texts (layer ``--layer``'s residual stream, stored in bfloat16) are captured:

1. by lensprobe (Hugging Face backend, ``capture(..., out=store)``) with the model computing in
   float32 and in bfloat16, and by the bare bf16 forward cut after the layer (the limit any
   capture tool can reach in bf16; ``capture_speed.run_limit``), in the order fp32, limit,
   bf16, limit, bf16, limit, fp32 so that load from other processes falls on each alike;
2. into a store by one process and by ``torchrun --standalone --nproc-per-node 2`` gloo ranks
   (each rank one thread, as torchrun starts them; the single process uses every core), timed
   from the capture's own stats (the slowest rank) and as whole commands (model load included);
   the two stores are compared value for value;
3. bytes per text of the store for each keep mode (``capture(..., keep=...)``): every token,
   the last token, or the pooled vectors (mean, max, last); the hook's files alone and the whole
   store (token ids, texts and token strings are the same in every mode), with the capture's
   tokens per second in each mode (one process, fp32 compute).

bfloat16 is fast only where the hardware has it (AMX / AVX-512 BF16 CPUs, CUDA): on other CPUs
it is emulated and slower than float32, and ``--dtype auto`` (the default) computes in float32.
The line before the last says which this CPU is. The last line printed is one JSON object.

    python benchmarks/capture_scale.py      # about 5 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from capture_speed import read_texts, run_limit

REPO = Path(__file__).resolve().parents[1]

RANK_SCRIPT = """
import json, os, sys, time
import lensprobe as lp
start = time.perf_counter()
model = lp.load_model("gemma-3-270m", backend="hf")
texts = json.load(open(sys.argv[1]))
result = lp.capture(model, texts, sys.argv[3], out=sys.argv[2], max_length=int(sys.argv[4]),
                    progress=False)
if os.environ.get("RANK", "0") == "0":
    s = result.stats
    print("STATS", json.dumps({"seconds": s.seconds, "tokens": s.n_tokens_run,
                               "wall": time.perf_counter() - start}))
"""


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def dtypes(texts: list[str], hook: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Tokens per second of lensprobe in fp32 and bf16 and of the bf16 limit."""
    from lensprobe.capturing import capture
    from lensprobe.models import load_model

    models = {d: load_model("gemma-3-270m", backend="hf", dtype=d) for d in ("float32", "bfloat16")}
    seconds = {"float32": 0.0, "bfloat16": 0.0, "limit": 0.0}
    tokens = dict.fromkeys(seconds, 0)
    for run, what in enumerate(("float32", "limit", "bfloat16", "limit", "bfloat16", "limit")):
        if what == "limit":
            n, secs, _ = run_limit(
                models["bfloat16"],
                models["bfloat16"].tokenizer,
                texts,
                args.layer,
                args.batch_size,
                args.max_length,
            )
        else:
            t0 = time.perf_counter()
            result = capture(
                models[what],
                texts,
                hook,
                max_length=args.max_length,
                batch_size=args.batch_size,
                out=tmp / f"dtype-{run}",
                progress=False,
            )
            n, secs = result.stats.n_tokens_run, time.perf_counter() - t0
        seconds[what] += secs
        tokens[what] += n
        print(f"{what}: {n} tokens in {secs:.1f} s", flush=True)
    rate = {k: tokens[k] / seconds[k] for k in seconds}
    return {
        "fp32_tokens_per_s": rate["float32"],
        "bf16_tokens_per_s": rate["bfloat16"],
        "bf16_limit_tokens_per_s": rate["limit"],
        "bf16_vs_limit": rate["bfloat16"] / rate["limit"],
        "bf16_vs_fp32": rate["bfloat16"] / rate["float32"],
    }


def ranks(texts: list[str], hook: str, args: argparse.Namespace, tmp: Path) -> dict:
    """One process vs two gloo ranks into a store, the same texts and settings."""
    from lensprobe.storage import load

    script, data = tmp / "rank_capture.py", tmp / "texts.json"
    script.write_text(RANK_SCRIPT)
    data.write_text(json.dumps(texts))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launch = {
        "1": [sys.executable],
        "2": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
        ],
    }
    stats = {}
    for k, prefix in launch.items():
        t0 = time.perf_counter()
        cmd = [*prefix, str(script), str(data), str(tmp / f"ranks-{k}"), hook, str(args.max_length)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith("STATS "))
        stats[k] = {**json.loads(line[6:]), "command": time.perf_counter() - t0}
        print(
            f"{k} rank(s): capture {stats[k]['seconds']:.1f} s, command {stats[k]['command']:.1f} s"
        )
    one, two = load(tmp / "ranks-1")[hook], load(tmp / "ranks-2")[hook]
    diff = (one.values.float() - two.values.float()).abs()
    return {
        "ranks_capture_speedup": stats["1"]["seconds"] / stats["2"]["seconds"],
        "ranks_command_speedup": stats["1"]["command"] / stats["2"]["command"],
        "ranks_equal_values_fraction": float((diff == 0).float().mean()),
        "ranks_max_abs_difference": float(diff.max()),
        "ranks_tokens": stats["1"]["tokens"],
    }


def keeps(texts: list[str], hook: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Bytes per text and tokens per second of each keep mode, on the same texts."""
    from lensprobe.capturing import capture
    from lensprobe.models import load_model
    from lensprobe.reduced import KEEPS

    model = load_model("gemma-3-270m", backend="hf", dtype="float32")
    hook_bytes, store_bytes, rate = {}, {}, {}
    for keep in KEEPS:
        out = tmp / f"keep-{keep}"
        result = capture(
            model,
            texts,
            hook,
            max_length=args.max_length,
            batch_size=args.batch_size,
            out=out,
            keep=keep,
            progress=False,
        )
        hook_bytes[keep] = _store_bytes(out / hook) / len(texts)
        store_bytes[keep] = _store_bytes(out) / len(texts)
        rate[keep] = result.stats.tokens_per_second
        print(f"keep={keep}: {hook_bytes[keep]:,.0f} B/text at the hook, {rate[keep]:.0f} tok/s")
    return {
        "tokens_per_text": result.stats.n_tokens / len(texts),
        "bytes_per_text": hook_bytes,
        "store_bytes_per_text": store_bytes,
        "tokens_vs_keep_bytes": {k: hook_bytes["tokens"] / hook_bytes[k] for k in KEEPS},
        "keep_tokens_per_s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--n-texts", type=int, default=128)
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    from lensprobe.hardware import bf16_is_fast

    texts = read_texts(args.data_dir, args.n_texts)
    hook = f"blocks.{args.layer}.hook_resid_post"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        report = {"n_texts": len(texts), "hook": hook, **dtypes(texts, hook, args, tmp)}
        report.update(ranks(texts, hook, args, tmp))
        report.update(keeps(texts, hook, args, tmp))
    report["bf16_is_fast_here"] = bf16_is_fast("cpu")
    report["cpu_threads"] = torch.get_num_threads()
    report["load_average"] = os.getloadavg()[0]
    print(f"bf16 is {'fast' if report['bf16_is_fast_here'] else 'emulated (slow)'} on this CPU")
    print(json.dumps({"capture_scale": report}))


if __name__ == "__main__":
    main()
