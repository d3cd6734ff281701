"""The CUDA path end to end, in one short run (a few minutes on one GPU): capture, sweep, attach.

1. **Capture**: the bundled Gemma 3 270M on the device in bfloat16, ``--texts`` texts of the
   built-in ``facts`` task at layer 9 (tokens per second, the store's dtype and device).
2. **Sweep**: ``--n`` synthetic sequences x 64 tokens x 640 (class on one token), 2 hooks as
   padded tensors on the device, attention-8 / attention-1 / mean / last through
   :func:`lensprobe.train.protocol.run_sweep`, with ``precision="fp32"`` and ``"bf16"`` (seconds,
   test accuracy, where the probes' parameters live).
3. **Attach**: the probe trained on the captured texts read live during a forward on the device,
   checked against its offline prediction on the same activations.

    python benchmarks/gpu_check.py                          # on a machine with a GPU
    python benchmarks/gpu_check.py --device cpu --n 400     # the same path on CPU (a smoke test)

The last line printed is one JSON object (under a ``device`` key).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

HOOK = "blocks.9.hook_resid_post"


def capture_and_attach(args: argparse.Namespace) -> dict:
    import lensprobe as lp

    model = lp.load_model("gemma-3-270m", device=args.device, dtype=torch.bfloat16)
    ds = lp.load_dataset("facts", n=args.texts)
    start = time.perf_counter()
    acts = lp.capture(model, list(ds.texts), [HOOK], labels=ds.label_tensor(), progress=False)
    seconds = time.perf_counter() - start
    a = acts[HOOK]
    out = {
        "capture_tok_per_s": round(a.n_tokens / seconds, 1),
        "capture_dtype": str(a.dtype),
        "capture_seconds": round(seconds, 2),
    }
    res = lp.run_protocol(a, probe="mean")
    text = "Paris is the capital of France."
    with lp.attach(model, res.probe) as readout:
        model(text)
    live = readout.probabilities[0].float().cpu()
    again = lp.capture(model, [text], [HOOK], progress=False)[HOOK]
    x, mask = again.pad()
    offline = res.probe.predict_proba(x.to(res.probe.bias.device), mask.to(res.probe.bias.device))
    out["attach_max_abs_diff"] = float((live - offline[0].float().cpu()).abs().max())
    out["attach_probe_device"] = str(res.probe.bias.device)
    return out


def synthetic(n: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, 640, generator=gen)
    labels = torch.arange(n) % 2
    where = torch.randint(0, 64, (n,), generator=gen)
    x[torch.arange(n), where, 0] += 2.0 * (2 * labels.float() - 1)
    return x.bfloat16().to(device), labels.to(device)


def sweep(args: argparse.Namespace) -> dict:
    from lensprobe.probes.spec import ProbeSpec
    from lensprobe.train import ProtocolConfig, TrainConfig
    from lensprobe.train.protocol import run_sweep

    hooks, labels = {}, None
    for h in range(2):
        hooks[f"blocks.{h}.hook_resid_post"], labels = synthetic(args.n, args.device, h)
    base = ProtocolConfig(weight_decays=(0.0, 1e-2), n_folds=3)
    out = {"sweep_n": args.n}
    for precision in ("fp32", "bf16"):
        configs = []
        for spec in ("attention-8", "attention-1", "mean", "last"):
            config = ProbeSpec.parse(spec).protocol(base)
            train = config.train or TrainConfig()
            configs.append(replace(config, train=replace(train, precision=precision)))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = run_sweep(hooks, configs, labels=labels)
        seconds = time.perf_counter() - start
        accuracy = {f"{h}/{i}": r.metrics["accuracy"] for (h, i), r in results.items()}
        first = next(iter(results.values()))
        out[f"sweep_{precision}_seconds"] = round(seconds, 2)
        out[f"sweep_{precision}_accuracy_min"] = round(min(accuracy.values()), 4)
        out[f"sweep_{precision}_recorded"] = sorted({r.precision for r in results.values()})
        out["probe_device"] = str(first.probe.bias.device)
    out["sweep_bf16_speedup"] = round(out["sweep_fp32_seconds"] / out["sweep_bf16_seconds"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=10_000, help="synthetic sequences of the sweep")
    parser.add_argument("--texts", type=int, default=256, help="texts captured")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {"device": {"name": name, **capture_and_attach(args), **sweep(args)}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
