"""Does capturing in bf16 change what a probe finds? Probes on bf16- vs fp32-computed captures.

For three real datasets of ``../shared/data`` (a stratified subsample of ``--n`` texts each), the
bundled Gemma 3 270M's residual stream at one layer is captured twice: by the model loaded in
float32 and by the model loaded in bfloat16 (``load_model(dtype=...)``; both stores in bfloat16,
cached in ``OUT/acts``). Each probe of :data:`PROBES` then goes through the protocol on each
capture with the same ``--seeds`` splits.

Per (dataset, probe): the paired difference bf16 - fp32 capture of test accuracy and AUROC over
the splits with the corrected resampled t interval (:func:`lensprobe.compare`), and the share of
test rows whose predicted class is the same; also the activations' median and 99th-percentile
relative error (per token, bf16 vs fp32 compute). ``OUT/capture_fidelity.md`` holds the table;
the last line printed is one JSON object.

    python benchmarks/capture_fidelity.py   # about 30 minutes on a 2-core CPU without AMX
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bf16_fidelity import DATASETS, fidelity_arguments, method, paired_row, table, write_results

REPO = Path(__file__).resolve().parent.parent
PROBES = ("attention-8", "mean", "last")
COMPUTE = ("float32", "bfloat16")


def captures(name: str, args: argparse.Namespace, hook: str, models: dict) -> dict:
    """The dataset's capture at ``hook`` by each compute dtype (from its store, or made first)."""
    from lensprobe.capturing import capture
    from lensprobe.data import load_dataset
    from lensprobe.models import load_model
    from lensprobe.storage import load as load_store

    ds = load_dataset(name, data_dir=args.data_dir).subsample(args.n, seed=0)
    out = {}
    for dtype in COMPUTE:
        store = Path(args.out) / "acts" / f"{name}-{dtype}"
        manifest = store / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
            out[dtype] = load_store(store)[hook]
            continue
        if dtype not in models:
            models[dtype] = load_model(args.model, backend="hf", dtype=dtype)
        start = time.perf_counter()
        result = capture(
            models[dtype],
            list(ds.texts),
            [hook],
            labels=ds.label_tensor(),
            class_names=ds.class_names,
            max_length=args.max_length,
            out=store,
            progress=False,
        )
        print(f"{name}: {dtype} capture in {time.perf_counter() - start:.0f} s", flush=True)
        out[dtype] = result[hook]
    return out


def relative_error(a, b) -> tuple[float, float]:
    """Median and 99th percentile over tokens of |a - b| / |b| (per token vector)."""
    x, y = a.values.float(), b.values.float()
    err = torch.linalg.vector_norm(x - y, dim=-1) / torch.linalg.vector_norm(y, dim=-1)
    return float(err.median()), float(err.quantile(0.99))


def fidelity(name: str, acts: dict, args: argparse.Namespace) -> list[dict]:
    """Each probe of :data:`PROBES` on both captures, the same splits, compared."""
    from lensprobe.probes.spec import ProbeSpec
    from lensprobe.train import ProtocolConfig
    from lensprobe.train.protocol import run_sweep

    base = ProtocolConfig(seeds=tuple(range(args.seeds)))
    configs = [ProbeSpec.parse(spec).protocol(base) for spec in PROBES]
    results = {}
    for dtype in COMPUTE:
        for (_, i), r in run_sweep({acts[dtype].meta.hook: acts[dtype]}, configs).items():
            results[PROBES[i], dtype] = r
    median, p99 = relative_error(acts["bfloat16"], acts["float32"])
    rows = []
    for spec in PROBES:
        fp32, bf16 = results[spec, "float32"], results[spec, "bfloat16"]
        row = paired_row(name, spec, len(acts["float32"]), fp32, bf16)
        row["relative_error_median"], row["relative_error_p99"] = median, p99
        rows.append(row)
    return rows


def _error(row: dict) -> str:
    return f"{row['relative_error_median']:.2%} / {row['relative_error_p99']:.2%}"


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# bf16 vs fp32 capture: paired test metrics",
        "",
        f"`python benchmarks/capture_fidelity.py` (Gemma 3 270M computing in bfloat16 or float32, "
        f"blocks.{args.layer}.hook_resid_post stored in bfloat16, " + method(args),
        "",
        *table(rows, [("activation error (median / p99)", _error)]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = fidelity_arguments(__doc__.splitlines()[0], "capture_fidelity").parse_args()
    hook = f"blocks.{args.layer}.hook_resid_post"
    rows, models = [], {}
    for name in DATASETS:
        rows.extend(fidelity(name, captures(name, args, hook, models), args))
    write_results("capture_fidelity", rows, markdown(rows, args), Path(args.out))


if __name__ == "__main__":
    main()
