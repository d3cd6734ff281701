"""Capture speed on the bundled Gemma 3 270M: lensprobe against the common way and the limit.

The same AG News texts are captured at one middle layer's residual stream four ways:

(a) full: the common notebook code: the tokenizer pads each batch of texts in dataset order and
    a full forward runs with ``output_hidden_states=True`` (every layer and the 262k-token
    unembedding), then the layer's hidden states are read;
(b) limit: a bare Hugging Face forward cut after the layer (the decoder's layer list sliced, no
    unembedding, no hooks, nothing stored) over the same length-grouped batches lensprobe builds;
    this is the practical limit for any capture tool;
(c) lensprobe through TransformerLens (``TransformerBridge``), the whole ``capture()`` call timed;
(d) lensprobe through nnsight (``TransformersModel``), the whole ``capture()`` call timed.

Every model computes in the dtype ``load_model``'s ``"auto"`` picks: bfloat16 on CPUs with AMX /
AVX-512 BF16 and on CUDA, so (b) is then the bf16 limit; float32 elsewhere (the printed header
says which). Throughput is valid (non-padding) tokens per second. Each method makes a pass over all the texts,
by default in the order b, c, d, b, a: the limit is measured before and after the two lensprobe
runs and averaged, so that load from other processes on a shared machine falls on them alike.
CPU-time ratios (less sensitive to such load) are printed too. Targets: (c) and (d) at least 0.85x of (b) and 8x of (a); padding
waste of lensprobe's batches at most 5%. The store size is measured by saving (c)'s result.

Run from the repository root::

    python benchmarks/capture_speed.py            # default: 256 texts, layer 9, about 5 minutes

The last line printed is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch

from lensprobe.batching import collate, length_batches, tokenize
from lensprobe.capturing import capture as lp_capture
from lensprobe.models import load_model
from lensprobe.storage import save as save_store

REPO = Path(__file__).resolve().parents[1]


def read_texts(data_dir: Path, n: int) -> list[str]:
    frame = pd.read_csv(data_dir / "ag_news" / "test.csv")
    texts = (frame["title"].astype(str) + " " + frame["description"].astype(str)).tolist()
    return texts[:n]


def run_full(hf, tok, texts, layer, batch_size, max_length):
    """(a): dataset-order batches padded by the tokenizer, full forward with hidden states."""
    n_tokens = padded = 0
    for start in range(0, len(texts), batch_size):
        enc = tok(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = hf(**enc, output_hidden_states=True, use_cache=False)
        mask = enc["attention_mask"].bool()
        _ = out.hidden_states[layer + 1][mask].to(torch.bfloat16)
        n_tokens += int(mask.sum())
        padded += mask.numel()
    return n_tokens, padded


def run_limit(hf, tok, texts, layer, batch_size, max_length):
    """(b): the decoder cut after ``layer`` on lensprobe's length-grouped batches (untimed prep)."""
    tokenized = tokenize(tok, texts, max_length=max_length)
    batches = [
        collate(tokenized.ids, idx, pad_id=tokenized.pad_id, padding_side="right")
        for idx in length_batches(tokenized.lengths, batch_size)
    ]
    decoder = hf.model
    layers = decoder.layers
    t0, c0 = time.perf_counter(), time.process_time()
    decoder.layers = layers[: layer + 1]
    try:
        for b in batches:
            with torch.no_grad():
                decoder(
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    position_ids=b.position_ids,
                    use_cache=False,
                )
    finally:
        decoder.layers = layers
    return sum(tokenized.lengths), time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--n-texts", type=int, default=256)
    parser.add_argument(
        "--schedule",
        default="bcdba",
        help="passes over all texts, in order; a method listed twice is averaged",
    )
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)
    if set(args.schedule) != set("abcd"):
        parser.error("--schedule must use each of the letters a, b, c, d (and nothing else)")

    texts = read_texts(args.data_dir, args.n_texts)
    hook = f"blocks.{args.layer}.hook_resid_post"
    hf = load_model("gemma-3-270m", backend="hf")
    tl = load_model("gemma-3-270m", backend="transformer_lens")
    nn_model = load_model("gemma-3-270m", backend="nnsight")
    tok = hf.tokenizer

    def capture(model, chunk):
        return lp_capture(
            model,
            chunk,
            hook,
            max_length=args.max_length,
            batch_size=args.batch_size,
            progress=False,
        )

    # One tiny warm-up each (first calls allocate and build masks).
    warm = texts[:2]
    run_full(hf, tok, warm, args.layer, args.batch_size, args.max_length)
    run_limit(hf, tok, warm, args.layer, args.batch_size, args.max_length)
    capture(tl, warm)
    capture(nn_model, warm)

    seconds = dict.fromkeys("abcd", 0.0)
    cpu = dict.fromkeys("abcd", 0.0)
    tokens = dict.fromkeys("abcd", 0)
    full_padded = lp_padded = lp_tokens = 0
    results = []
    chunk = texts
    for r, method in enumerate(args.schedule):
        t0, c0 = time.perf_counter(), time.process_time()
        if method == "a":
            n_tok, padded = run_full(hf, tok, chunk, args.layer, args.batch_size, args.max_length)
            seconds["a"] += time.perf_counter() - t0
            cpu["a"] += time.process_time() - c0
            full_padded += padded
        elif method == "b":
            n_tok, secs, cpu_secs = run_limit(
                hf, tok, chunk, args.layer, args.batch_size, args.max_length
            )
            seconds["b"] += secs
            cpu["b"] += cpu_secs
        elif method in "cd":
            result = capture(tl if method == "c" else nn_model, chunk)
            seconds[method] += time.perf_counter() - t0
            cpu[method] += time.process_time() - c0
            n_tok = result[hook].n_tokens
            lp_padded += result.stats.n_padded_tokens
            lp_tokens += result.stats.n_tokens_run
            if method == "c":
                results.append(result[hook])
        else:
            raise SystemExit(f"--schedule takes the letters a, b, c, d; got {method!r}")
        tokens[method] += n_tok
        print(
            f"pass {r} ({method}): {n_tok} tokens in {time.perf_counter() - t0:.1f} s", flush=True
        )

    rate = {m: tokens[m] / seconds[m] for m in "abcd"}
    cpu_rate = {m: tokens[m] / cpu[m] for m in "abcd"}
    names = {
        "a": "(a) full forward + output_hidden_states",
        "b": "(b) bare HF forward cut after the layer",
        "c": "(c) lensprobe via TransformerLens",
        "d": "(d) lensprobe via nnsight",
    }
    computes = str(next(hf.parameters()).dtype).removeprefix("torch.")
    print(f"\n{len(texts)} AG News texts, {hook}, batch {args.batch_size}, CPU, {computes}")
    for m in "abcd":
        print(
            f"{names[m]:<44} {rate[m]:>9.0f} tokens/s  ({seconds[m]:.1f} s wall, "
            f"{cpu_rate[m]:.0f} tokens per CPU-second)"
        )

    acts = results[0]
    with tempfile.TemporaryDirectory() as tmp:
        save_store(acts, Path(tmp) / "store")
        stored = sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*") if f.is_file())
    bytes_per_token = stored / acts.n_tokens
    padding_waste = 1 - lp_tokens / lp_padded
    full_waste = 1 - tokens["a"] / full_padded
    report = {
        "tl_vs_limit": rate["c"] / rate["b"],
        "nnsight_vs_limit": rate["d"] / rate["b"],
        "tl_vs_full": rate["c"] / rate["a"],
        "nnsight_vs_full": rate["d"] / rate["a"],
        "padding_waste": padding_waste,
        "bytes_per_token": bytes_per_token,
    }
    print(
        f"ratios: TL {report['tl_vs_limit']:.2f}x / nnsight {report['nnsight_vs_limit']:.2f}x of "
        f"the limit (target >= 0.85); TL {report['tl_vs_full']:.1f}x / nnsight "
        f"{report['nnsight_vs_full']:.1f}x of the full forward (target >= 8)"
    )
    print(
        "same ratios in CPU time (less sensitive to other processes on a shared machine): "
        f"TL {cpu_rate['c'] / cpu_rate['b']:.2f}x / nnsight {cpu_rate['d'] / cpu_rate['b']:.2f}x "
        f"of the limit; TL {cpu_rate['c'] / cpu_rate['a']:.1f}x / nnsight "
        f"{cpu_rate['d'] / cpu_rate['a']:.1f}x of the full forward"
    )
    print(
        f"padding waste: lensprobe {100 * padding_waste:.1f}% (target <= 5%), "
        f"the common way {100 * full_waste:.1f}%; store: {bytes_per_token:.0f} bytes per token "
        f"(d_model {acts.d_model} x {acts.meta.dtype} = "
        f"{acts.d_model * acts.dtype.itemsize} bytes of activations)"
    )
    print(json.dumps({k: round(v, 4) for k, v in report.items()}))
    return report


if __name__ == "__main__":
    main()
