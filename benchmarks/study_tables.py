"""The results page and plots of ``benchmarks/study.py`` (from ``study_report``'s data)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from study import PROBES, SHUFFLED, TASKS, task_for
from study_report import TFIDF, Data, _layer, _picks, tfidf_interval


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    spec = "+.3f" if signed else ".3f"
    if math.isnan(low) or math.isnan(high):
        return f"{_fmt(mean, spec)} (no interval)"
    return f"{_fmt(mean, spec)} [{low:{spec}}, {high:{spec}}]"


def _at_pick(choice: Any) -> str:
    est = choice.estimates["accuracy"]
    if not est.has_interval:
        return f"{_fmt(est.mean)} (no spread) ({_picks(choice)})"
    return f"{_fmt(est.mean)} [{est.low:.2f}, {est.high:.2f}] ({_picks(choice)})"


def majority(data: Data, dataset: str) -> float | None:
    counts = list(data.captures.get(dataset, {}).get("class_counts", {}).values())
    return max(counts) / sum(counts) if counts else None


def status(data: Data, settings: dict[str, Any], planned: list[str]) -> list[str]:
    """What the folder holds against the plan: every dataset, every probe of ``planned``."""
    names = list(dict.fromkeys([t.name for t in TASKS] + data.datasets))
    layers = settings.get("layers") or []
    complete = {d: [p for p in planned if (d, p) in data.choices] for d in names}
    have = [k for k in data.records if not k[0].endswith(SHUFFLED)]
    full = [d for d in names if len(complete[d]) == len(planned)]
    lines = [
        f"**Status:** {len(have)} (dataset, hook, probe) cells with real labels, "
        f"{settings.get('seeds')} splits each; {len(full)} of {len(names)} datasets have all "
        f"{len(planned)} probes at all {len(layers)} hooks."
    ]
    partial = [f"{d}: {', '.join(complete[d])}" for d in names if complete[d] and d not in full]
    if partial:
        lines.append("Datasets with some probes at every hook so far: " + "; ".join(partial) + ".")
    none = [d for d in names if not complete[d]]
    if none:
        lines.append(f"No probe at every hook yet: {', '.join(none)}.")
    return lines


def cell_seconds(data: Data, dataset: str) -> float:
    """Training seconds of a dataset's cells (each cell's share of its sweep's fit time)."""
    return sum(float(r.get("seconds") or 0.0) for k, r in data.records.items() if k[0] == dataset)


def costs(data: Data, dataset: str) -> tuple[float | None, float, float]:
    """(capture, training, controls) seconds of a dataset: controls are its shuffled-label
    cells and its TF-IDF fits."""
    capture = data.captures.get(dataset, {}).get("capture_seconds")
    controls = cell_seconds(data, dataset + SHUFFLED) + float(
        data.cost.get(dataset, {}).get("controls", 0.0)
    )
    return capture, cell_seconds(data, dataset), controls


def sizes(data: Data) -> list[str]:
    rows = []
    for t in TASKS:
        c = data.captures.get(t.name)
        if c is None:
            continue
        capture, train, controls = costs(data, t.name)
        n_test = next((ch.n_test for (d, _), ch in data.choices.items() if d == t.name), None)
        rows.append(
            [
                t.name + (" ★" if t.star else ""),
                f"{c['n']} of {c['n_rows']}",
                c["draw"],
                str(len(c["class_counts"])),
                _fmt(n_test, "d") if n_test is not None else "–",
                f"{c['n_tokens']:,}",
                str(c["n_truncated"]),
                _fmt(capture, ".0f"),
                _fmt(train, ".0f"),
                _fmt(controls, ".0f"),
            ]
        )
    header = [
        "dataset",
        "n (of rows)",
        "draw",
        "classes",
        "n_test",
        "tokens",
        "cut",
        "capture s",
        "train s",
        "controls s",
    ]
    return _table(header, rows)


def main_table(data: Data) -> list[str]:
    header = ["dataset", "n_test", *data.probes, TFIDF, "majority"]
    rows = []
    for d in data.datasets:
        choices = [data.choices.get((d, p)) for p in data.probes]
        n_test = next((c.n_test for c in choices if c is not None), None)
        control = data.tfidf.get(d)
        tf = "–"
        if control is not None:
            accs = [r["accuracy"] for r in control["runs"]]
            low, high = tfidf_interval(control)
            tf = _interval(sum(accs) / len(accs), low, high)
        rows.append(
            [d, _fmt(n_test, "d") if n_test else "–"]
            + [_at_pick(c) if c is not None else "–" for c in choices]
            + [tf, _fmt(majority(data, d))]
        )
    return _table(header, rows)


def claims_table(summary: list[dict[str, Any]]) -> list[str]:
    """One row per claim: per-dataset counts, the interval over datasets, raw and Holm verdicts."""
    rows = [
        [
            s["claim"],
            f"{s['a']} − {s['b']}" + (" (entropy ratio)" if s["metric"] != "accuracy" else ""),
            str(s["datasets"]),
            f"{s['a_better']} / {s['b_better']} / {s['undecided']}",
            _interval(s["difference"], s["low"], s["high"], signed=True),
            _fmt(s["p_value"], ".4f"),
            s["verdict"],
            s["holm_verdict"],
        ]
        for s in summary
    ]
    header = [
        "claim",
        "difference",
        "datasets",
        "per dataset: a / b / undecided",
        "mean over datasets [95% t]",
        "p",
        "verdict",
        f"Holm ({len(summary)})",
    ]
    return _table(header, rows)


def claims_section(summary: list[dict[str, Any]], per: list[dict[str, Any]]) -> list[str]:
    lines = claims_table(summary)
    n_per = len(per)
    holm_decided = sum(r["holm_verdict"] != "undecided" for r in per)
    raw_decided = sum(r["verdict"] != "undecided" for r in per)
    lines += [
        "",
        f"Per-dataset comparisons made: {n_per}; decided {raw_decided} raw, {holm_decided} after "
        f"Holm over all {n_per} (`comparisons.csv` has each with its interval and p).",
        "",
    ]
    for verdict, word in (
        ("holds", "Hold"),
        ("does not hold", "Do not hold"),
        ("undecided", "Undecided"),
    ):
        names = [s["claim"] for s in summary if s["holm_verdict"] == verdict]
        lines.append(f"- **{word} on Gemma 3 270M (after Holm):** " + ("; ".join(names) or "none"))
    return lines


def per_dataset_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every per-dataset paired comparison with its interval, raw and Holm verdicts."""
    if not rows:
        return ["No per-dataset comparison yet."]

    def verdict(r: dict[str, Any], key: str) -> str:
        return {"a better": f"{r['a']} better", "b better": f"{r['b']} better"}.get(
            r[key], "undecided"
        )

    body = [
        [
            r["claim"],
            r["dataset"],
            _interval(r["difference"], r["low"], r["high"], signed=True),
            _fmt(r["p_value"], ".4f"),
            verdict(r, "verdict"),
            verdict(r, "holm_verdict"),
            f"{r['picks_a']} vs {r['picks_b']}",
            str(r["n_test"]),
        ]
        for r in rows
    ]
    header = [
        "comparison",
        "dataset",
        "a − b [95% corrected t]",
        "p",
        "verdict",
        "Holm",
        "picks",
        "n_test",
    ]
    return _table(header, body)


def shuffled_section(data: Data) -> list[str]:
    rows = []
    for d in data.datasets:
        name = d + SHUFFLED
        chance = majority(data, d)
        for p in data.probes:
            c = data.choices.get((name, p))
            if c is None:
                continue
            est = c.estimates["accuracy"]
            above = est.has_interval and chance is not None and est.low > chance
            rows.append([d, p, _at_pick(c), _fmt(chance), "above chance" if above else "at chance"])
    if not rows:
        return ["No shuffled-label control has finished yet."]
    return _table(
        ["dataset", "probe", "accuracy at CV pick (shuffled labels)", "majority", "verdict"], rows
    )


def entropy_table(data: Data) -> list[str]:
    if not data.entropy:
        return ["No entropy rows yet."]
    probes = list(dict.fromkeys(r["probe"] for r in data.entropy))
    hooks = sorted({r["hook"] for r in data.entropy}, key=_layer)
    rows = []
    for p in probes:
        cells = []
        for h in hooks:
            vals = [
                float(r["mean_ratio"]) for r in data.entropy if r["probe"] == p and r["hook"] == h
            ]
            cells.append(f"{sum(vals) / len(vals):.2f} ({len(vals)})" if vals else "–")
        rows.append([p, *cells])
    return _table(["probe"] + [f"L{_layer(h)}" for h in hooks], rows)


def head(data: Data, settings: dict[str, Any], planned: list[str]) -> list[str]:
    """Title, commands, status, settings, sizes and cost."""
    seeds = settings.get("seeds")
    totals = [costs(data, d) for d in data.captures]
    capture_s = sum(c[0] or 0.0 for c in totals)
    train_s = sum(c[1] for c in totals)
    control_s = sum(c[2] for c in totals)
    star = ", ".join(t.name for t in TASKS if t.star)
    machines = "; ".join(settings.get("machines") or ["a machine the settings do not name"])
    return [
        "# The attention-probes study on Gemma 3 270M, at a size that decides",
        "",
        "Commands that wrote this folder (each resumes it):",
        "",
        *[f"    {c}" for c in settings.get("commands") or []],
        "",
        *status(data, settings, planned),
        "",
        f"Settings: residual stream after layers {', '.join(map(str, settings.get('layers', [])))} "
        f"(`blocks.{{i}}.hook_resid_post`) of Gemma 3 270M ({settings.get('backend')}), stored in "
        f"bfloat16; up to {settings.get('n')} texts per dataset, cut at "
        f"{settings.get('max_length')} tokens; {seeds} stratified 80/20 splits per cell (each its "
        "own 5-fold CV choice of weight decay in {0, 1e-3, 1e-2, 1e-1}, refit, one test); each "
        "split picks each probe's layer by its own CV accuracy. With "
        f"{seeds} splits a corrected t interval has {int(seeds or 1) - 1} degrees of freedom.",
        "",
        "## Sizes and cost",
        "",
        *sizes(data),
        "",
        f"Cost so far: capture {capture_s / 60:.1f} min, training {train_s / 60:.1f} min, "
        f"controls {control_s / 60:.1f} min (wall time of the runs that wrote the cells, on "
        f"{machines}). ★: the MOSAIC-style sets of the mean-vs-last claim ({star}).",
        "",
    ]


def markdown(
    data: Data,
    settings: dict[str, Any],
    per: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    versus: list[dict[str, Any]],
    beyond: list[dict[str, Any]],
    planned: list[str],
) -> str:
    """The results page (``versus``/``beyond``: the TF-IDF comparisons per dataset and across
    datasets; ``planned``: the probes the study is to run)."""
    lines = [
        *head(data, settings, planned),
        "## Test accuracy at each split's CV-chosen layer",
        "",
        "Mean over the splits [95% corrected resampled t interval over the splits (Nadeau & "
        "Bengio), clipped to [0, 1]] (the layer each split picked). `tfidf`: the bag-of-words "
        "control on the same splits; `majority`: the share of the largest class.",
        "",
        *main_table(data),
        "",
        "## The study's claims",
        "",
        "Each claim is a paired difference `a − b` at each split's own CV picks. Per dataset: "
        "corrected t over its splits. Across datasets: a t interval over the per-dataset mean "
        "differences (datasets as units). `holds`: the interval across datasets lies above 0; "
        "`does not hold`: below 0; `undecided`: it contains 0. `mixed` holds when datasets "
        "decided both ways. Holm is applied over the claims, and separately over every "
        "per-dataset comparison.",
        "",
        *claims_section(summary, per),
        "",
        "## Controls",
        "",
        "Shuffled labels (Hewitt & Liang 2019): the same sweep and layer choice on labels "
        "permuted once; the splits are drawn the same way from the same seeds (a stratified split "
        "follows the labels, so the rows differ). `above chance` would mean leakage.",
        "",
        *shuffled_section(data),
        "",
        f"TF-IDF: attention-8 and mean against the bag-of-words control, paired on the same "
        f"splits: {sum(r['holm_verdict'] == 'a better' for r in versus)} probe better, "
        f"{sum(r['holm_verdict'] == 'b better' for r in versus)} TF-IDF better, "
        f"{sum(r['holm_verdict'] == 'undecided' for r in versus)} undecided of {len(versus)} "
        "(Holm; rows in `comparisons.csv`). Across datasets (t over the per-dataset mean "
        "differences, Holm over the probes), what reading the residual stream adds beyond "
        "surface words:",
        "",
        *(claims_table(beyond) if beyond else ["No TF-IDF comparison yet."]),
        "",
        "## Every per-dataset comparison",
        "",
        "Paired on the same splits, each probe at each split's own CV pick; Holm over the claims' "
        "comparisons, and separately over the TF-IDF ones.",
        "",
        *per_dataset_table(per + versus),
        "",
        "## Attention entropy",
        "",
        "Mean over datasets and splits of each probe's entropy / uniform entropy on its test rows "
        "(1: as spread as uniform; 0: one token), by layer (rows averaged).",
        "",
        *entropy_table(data),
        "",
        "Files: `results.csv` (one row per cell and split), `claims.csv`, `comparisons.csv`, "
        "`entropy.csv`, `study.png` (accuracy at the CV picks), `study_layers.png` (accuracy by "
        "layer with interval bands).",
    ]
    return "\n".join(lines) + "\n"


def _color(cmap: Any, probe: str, i: int) -> Any:
    """One colour per probe across plots and runs (its place in ``PROBES``)."""
    return cmap((PROBES.index(probe) if probe in PROBES else i) % 10)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def plot_picks(data: Data, path: Path) -> None:
    """Per dataset: each probe's test accuracy at its CV picks, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 5), layout="constrained")
    width = 0.85 / max(len(data.probes), 1)
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(data.probes):
        xs, ys, err = [], [], [[], []]
        for j, d in enumerate(data.datasets):
            ch = data.choices.get((d, p))
            if ch is None:
                continue
            est = ch.estimates["accuracy"]
            low, high = (est.low, est.high) if est.has_interval else (est.mean, est.mean)
            xs.append(j + (i - (len(data.probes) - 1) / 2) * width)
            ys.append(est.mean)
            err[0].append(est.mean - low)
            err[1].append(high - est.mean)
        ax.bar(
            xs,
            ys,
            width,
            color=_color(cmap, p, i),
            label=p,
            lw=0,
            hatch="//" if p.endswith("-adamw") else None,
        )
        ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor="k", lw=0.7, capsize=1.5)
    for j, d in enumerate(data.datasets):
        share = majority(data, d)
        if share is not None:
            ax.plot(
                [j - 0.45, j + 0.45],
                [share, share],
                "k:",
                lw=1.2,
                label="majority class" if j == 0 else None,
            )
        control = data.tfidf.get(d)
        if control is not None:
            acc = sum(r["accuracy"] for r in control["runs"]) / len(control["runs"])
            ax.plot(
                [j - 0.45, j + 0.45], [acc, acc], "r--", lw=1.2, label="TF-IDF" if j == 0 else None
            )
    ax.set_xticks(range(len(data.datasets)), data.datasets, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (layer chosen by CV)", ylim=(0, 1.15))
    ax.legend(fontsize=7, ncol=6, loc="upper center")
    ax.set_title("Gemma 3 270M: test accuracy at each split's CV-chosen layer, 95% corrected t")
    _save(fig, path)


def plot_layers(data: Data, path: Path) -> None:
    """Per dataset: test accuracy by layer for each probe, with its interval band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = data.datasets + [
        d + SHUFFLED for d in data.datasets if (d + SHUFFLED, data.probes[0]) in data.choices
    ]
    cols = 4
    nrows = max(1, math.ceil(len(sets) / cols))
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("tab10")
    for ax, d in zip(axes.flat, sets, strict=False):
        for i, p in enumerate(data.probes):
            pts = sorted(
                (_layer(h), r) for (dd, h, pp), r in data.records.items() if dd == d and pp == p
            )
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [r["accuracy"] for _, r in pts]
            lo = [
                r.get("accuracy_low") if r.get("accuracy_low") is not None else r["accuracy"]
                for _, r in pts
            ]
            hi = [
                r.get("accuracy_high") if r.get("accuracy_high") is not None else r["accuracy"]
                for _, r in pts
            ]
            style = "--" if p.endswith("-adamw") else "-"
            ax.plot(xs, ys, style, color=_color(cmap, p, i), lw=1.2, label=p)
            ax.fill_between(xs, lo, hi, color=_color(cmap, p, i), alpha=0.12, lw=0)
        share = majority(data, d.removesuffix(SHUFFLED))
        if share is not None:
            ax.axhline(share, color="k", ls=":", lw=1)
        ax.set_title(d + (" ★" if task_for(d.removesuffix(SHUFFLED)).star else ""), fontsize=9)
        ax.set(xlabel="layer", ylim=(0, 1.02))
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.suptitle(
        "Test accuracy by layer (mean over splits, 95% corrected t band); dotted: majority class"
    )
    _save(fig, path)
