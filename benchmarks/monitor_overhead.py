"""What a live monitor costs per generated token: ``lp.monitor`` against plain ``generate``.

The bundled Gemma 3 270M (Hugging Face backend, greedy decoding with a KV cache) generates
``--tokens`` tokens after each of ``--prompts`` short prompts, once plainly and once inside
``lp.monitor(model, probe)`` for each probe kind, at ``blocks.9.hook_resid_post``. Plain and
monitored runs alternate (plain, kind 1, plain, kind 2, ...) and repeat ``--repeats`` times, so a
change in the machine's load reaches both sides. For comparison the same is timed for
``lp.attach``, which reruns the probe over the whole prefix at every token.

Two figures per kind: the monitor's own time (measured inside its hook: what it adds to each
step) over the plain runs' time, the ``monitor_overhead`` reported; and the end-to-end median
monitored time over the median plain time, minus 1, which on a shared machine carries a few
percent of noise either way.

The probes have random weights (the cost does not depend on them); attention-like kinds have 8
heads. Prints a table and one JSON line, ``{"monitor_overhead": {"<spec>": fraction, ...}, ...}``;
``monitor_overhead`` of the slowest kind is the figure ``benchmarks/long_context.py`` reports.

    python benchmarks/monitor_overhead.py            # ~5 minutes on a 2-core CPU

Writes ``benchmarks/results/monitor_overhead/monitor_overhead.json`` (the JSON line), which
``benchmarks/long_context.py`` reads for its ``monitor_overhead``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import lensprobe as lp
from lensprobe.models import load_model
from lensprobe.monitoring import Monitor
from lensprobe.probes import ProbeConfig, build_probe
from lensprobe.probes.spec import ProbeSpec

HOOK = "blocks.9.hook_resid_post"
PROMPTS = [
    "Write a short story about a lighthouse keeper who",
    "The three most important things to know about bread are",
    "Explain to a child why the sky is blue:",
    "My favourite recipe for a rainy day is",
]
SPECS = ("mean", "ema", "attention-8", "multimax-8", "rolling-8")
OUT = Path(__file__).resolve().parent / "results" / "monitor_overhead" / "monitor_overhead.json"


def random_probe(spec: str, d_model: int) -> lp.probes.Probe:
    """A probe of ``spec`` with random weights at :data:`HOOK`."""
    s = ProbeSpec.parse(spec)
    config = ProbeConfig(
        kind=s.kind, d_model=d_model, n_heads=s.n_heads, options=dict(s.options), hook=HOOK
    )
    probe = build_probe(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return probe.eval()


def timed_generate(model, enc, tokens: int, context=None) -> float:
    """Seconds of one greedy generation of ``tokens`` tokens (inside ``context`` if given)."""
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    start = time.perf_counter()
    with torch.no_grad():
        if context is None:
            model.generate(**enc, **kw)
        else:
            with context:
                model.generate(**enc, **kw)
    return time.perf_counter() - start


class HookTimer:
    """Seconds spent inside :meth:`Monitor._observe` (the monitor's own work), while active."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = Monitor._observe

    def __enter__(self) -> HookTimer:
        timer, original = self, self._original

        def timed(monitor: Monitor, x: torch.Tensor, info) -> None:
            start = time.perf_counter()
            try:
                original(monitor, x, info)
            finally:
                timer.seconds += time.perf_counter() - start

        Monitor._observe = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Monitor._observe = self._original  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="prompts, one batch")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--specs", default=",".join(SPECS), help="probe specs to time")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model("gemma-3-270m", backend="hf", dtype="float32")
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS[: args.prompts], return_tensors="pt", padding=True)
    d_model = model.config.hidden_size
    specs = [s for s in args.specs.split(",") if s]
    probes = {s: random_probe(s, d_model) for s in specs}
    timed_generate(model, enc, 4)  # warm-up
    times: dict[str, list[float]] = {"plain": []}
    for s in specs:
        times[f"monitor {s}"], times[f"attach {s}"] = [], []
    inside = {s: 0.0 for s in specs}
    for _ in range(args.repeats):
        for s in specs:
            times["plain"].append(timed_generate(model, enc, args.tokens))
            mon = lp.monitor(model, probes[s])
            with HookTimer() as timer:
                times[f"monitor {s}"].append(timed_generate(model, enc, args.tokens, mon))
            inside[s] += timer.seconds
            att = lp.attach(model, probes[s])
            times[f"attach {s}"].append(timed_generate(model, enc, args.tokens, att))
    plain = statistics.median(times["plain"])
    per_token_ms = 1000 * plain / args.tokens
    print(f"plain generate: {per_token_ms:.1f} ms per step ({args.prompts} prompts, batch)")
    print("| probe | monitor's own time / plain | end to end: monitor | attach (prefix rerun) |")
    print("|---|---|---|---|")
    overhead, attach, own = {}, {}, {}
    for s in specs:
        overhead[s] = statistics.median(times[f"monitor {s}"]) / plain - 1
        attach[s] = statistics.median(times[f"attach {s}"]) / plain - 1
        own[s] = inside[s] / sum(times["plain"][: args.repeats * len(specs)]) * len(specs)
        print(f"| {s} | {own[s]:.2%} | {overhead[s]:+.1%} | {attach[s]:+.1%} |")
    line = {
        "monitor_overhead": own,
        "monitor_overhead_max": max(own.values()),
        "end_to_end_overhead": overhead,
        "attach_overhead": attach,
        "plain_ms_per_step": per_token_ms,
        "n": {"prompts": args.prompts, "tokens": args.tokens, "repeats": args.repeats},
        "load_average": os.getloadavg()[0],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(line, indent=1) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
