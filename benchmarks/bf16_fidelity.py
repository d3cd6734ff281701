"""Does training in bf16 change what a probe finds? bf16 vs fp32 AdamW fits on real captures.

For three real datasets of ``../shared/data`` (a stratified subsample of ``--n`` texts each), the
residual stream of the bundled Gemma 3 270M at one layer is captured once (bfloat16 store, cached
in ``OUT/acts``); each AdamW probe kind then goes through the protocol twice in one sweep, with
``TrainConfig(precision="fp32")`` and ``"bf16"`` (the members' products over the activations in
bfloat16; weights, optimizer state and metrics as before), on the same ``--seeds`` splits.

Per (dataset, probe): the paired difference bf16 - fp32 of test accuracy and AUROC over the splits
with the corrected resampled t interval (the library's :func:`lensprobe.compare`), and the share of
test rows whose predicted class is the same. ``OUT/bf16_fidelity.md`` holds the table; the last
line printed is one JSON object.

    python benchmarks/bf16_fidelity.py      # about 25 minutes on a quiet 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DATASETS = ("sst2", "ag_news", "tweet_eval_emotion")
PROBES = ("attention-8", "attention-1")
"""AdamW kinds whose products read the activations (pooled kinds' AdamW reads n x d_model
pooled features and always runs in float32)."""


def activations(name: str, args: argparse.Namespace, hook: str, model_box: list):
    """The dataset's capture at ``hook``: from its store, or captured into it first."""
    from lensprobe.capturing import capture
    from lensprobe.data import load_dataset
    from lensprobe.storage import load as load_store

    store = Path(args.out) / "acts" / name
    manifest = store / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
        return load_store(store)[hook]
    if not model_box:
        from lensprobe.models import load_model

        model_box.append(load_model(args.model))
    ds = load_dataset(name, data_dir=args.data_dir).subsample(args.n, seed=0)
    result = capture(
        model_box[0],
        list(ds.texts),
        [hook],
        labels=ds.label_tensor(),
        class_names=ds.class_names,
        max_length=args.max_length,
        out=store,
        progress=False,
    )
    return result[hook]


def _predicted(logits: torch.Tensor) -> torch.Tensor:
    """Class ids from test logits (one logit: class 1 where it is positive)."""
    return logits[:, 0] > 0 if logits.shape[-1] == 1 else logits.argmax(-1)


def paired_row(name: str, spec: str, n: int, fp32, bf16) -> dict:
    """One table row: the fp32 and bf16 results of a probe on the same splits, compared."""
    from lensprobe.train import compare

    same = [
        (_predicted(a.test_logits) == _predicted(b.test_logits)).float().mean().item()
        for a, b in zip(fp32.runs, bf16.runs, strict=True)
    ]
    row = {"dataset": name, "probe": spec, "n": n, "n_test": fp32.n_test}
    row["splits"] = len(fp32.runs)
    row["fp32_accuracy"] = fp32.metrics["accuracy"]
    row["bf16_accuracy"] = bf16.metrics["accuracy"]
    for metric in ("accuracy", "auroc"):
        c = compare(bf16, fp32, metric)
        row[f"{metric}_difference"] = c.difference
        row[f"{metric}_interval"] = [c.low, c.high]
        row[f"{metric}_verdict"] = c.verdict
    row["same_prediction"] = sum(same) / len(same)
    return row


def table(rows: list[dict], extra: Sequence[tuple[str, Callable[[dict], str]]] = ()) -> list[str]:
    """The markdown table of :func:`paired_row` rows; ``extra``: (header, row -> cell) pairs."""
    head = "| dataset | probe | n_test | fp32 acc | bf16 acc | acc bf16 - fp32 | AUROC bf16 - fp32 "
    head += (
        "| same prediction |" + "".join(f" {h} |" for h, _ in extra) + " verdict (acc / AUROC) |"
    )
    lines = [head, "|---" * (9 + len(extra)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['probe']} | {r['n_test']} | {r['fp32_accuracy']:.3f} | "
            f"{r['bf16_accuracy']:.3f} | {_iv(r, 'accuracy')} | {_iv(r, 'auroc')} | "
            f"{r['same_prediction']:.3f} |"
            + "".join(f" {cell(r)} |" for _, cell in extra)
            + f" {r['accuracy_verdict']} / {r['auroc_verdict']} |"
        )
    return lines


def fidelity(name: str, acts, args: argparse.Namespace) -> list[dict]:
    """Each probe of :data:`PROBES` trained in fp32 and in bf16 on the same splits, compared."""
    from lensprobe.probes.spec import ProbeSpec
    from lensprobe.train import ProtocolConfig
    from lensprobe.train.protocol import run_sweep

    base = ProtocolConfig(seeds=tuple(range(args.seeds)))
    configs, keys = [], []
    for spec in PROBES:
        config = ProbeSpec.parse(spec).protocol(base)
        for precision in ("fp32", "bf16"):
            configs.append(replace(config, train=replace(config.train, precision=precision)))
            keys.append((spec, precision))
    start = time.perf_counter()
    results = run_sweep({acts.meta.hook: acts}, configs)
    seconds = time.perf_counter() - start
    by_key = {keys[i]: r for (_, i), r in results.items()}
    rows = []
    for spec in PROBES:
        fp32, bf16 = by_key[spec, "fp32"], by_key[spec, "bf16"]
        assert fp32.precision == "fp32" and bf16.precision == "bf16", (
            fp32.precision,
            bf16.precision,
        )
        row = paired_row(name, spec, len(acts), fp32, bf16)
        row["fp32_seconds"], row["bf16_seconds"] = fp32.seconds, bf16.seconds
        rows.append(row)
    print(
        f"{name}: {len(acts)} texts, sweep of {len(configs)} cells in {seconds:.0f} s", flush=True
    )
    return rows


def _iv(row: dict, metric: str) -> str:
    low, high = row[f"{metric}_interval"]
    if low != low:  # NaN: the same difference on every split, no interval (undecided)
        return f"{row[f'{metric}_difference']:+.4f} on every split"
    return f"{row[f'{metric}_difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def method(args: argparse.Namespace) -> str:
    """How the paired differences were taken (the end of both fidelity tables' preamble)."""
    return (
        f"{args.n} texts per dataset cut at {args.max_length} tokens, {args.seeds} stratified "
        "splits; bf16 - fp32 per split, mean with its corrected resampled t 95% interval; a "
        "difference that is the same on every split has no interval and is undecided)."
    )


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# bf16 vs fp32 training: paired test metrics",
        "",
        f"`python benchmarks/bf16_fidelity.py` (Gemma 3 270M, blocks.{args.layer}.hook_resid_post, "
        + method(args),
        "",
        *table(rows),
    ]
    return "\n".join(lines) + "\n"


def fidelity_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The options both fidelity benchmarks take (results under ``benchmarks/results/OUT``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / out))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--n-texts", "--n", type=int, default=400, dest="n", help="per dataset")
    parser.add_argument("--seeds", type=int, default=5, help="splits")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--max-length", type=int, default=64)
    return parser


def main() -> None:
    parser = fidelity_arguments(__doc__.splitlines()[0], "bf16_fidelity")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hook = f"blocks.{args.layer}.hook_resid_post"
    rows, model_box = [], []
    for name in DATASETS:
        rows.extend(fidelity(name, activations(name, args, hook, model_box), args))
    write_results("bf16_fidelity", rows, markdown(rows, args), Path(args.out))


def write_results(name: str, rows: list[dict], text: str, out: Path) -> None:
    """``OUT/NAME.md``, printed too, then the JSON line (rows and the count decided)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    print(text)
    decided = sum(r[f"{m}_verdict"] != "undecided" for r in rows for m in ("accuracy", "auroc"))
    print(json.dumps({name: rows, "decided": decided, "comparisons": 2 * len(rows)}))


if __name__ == "__main__":
    main()
