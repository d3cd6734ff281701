"""Rebuild the small real-text fixture in this folder from the offline data collection.

    python tests/data/make_fixture.py ../shared/data

Each file keeps its source's name and format, so the data loaders read this folder exactly as
they read the full collection. Rows are a seeded, class-stratified sample; see SOURCES.md.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def _sample(frame: pd.DataFrame, label: str, per_class: dict, seed: int = 0) -> pd.DataFrame:
    parts = [
        frame[frame[label] == value].sample(n=n, random_state=seed)
        for value, n in per_class.items()
    ]
    return pd.concat(parts).sort_index()


def main(source: Path) -> None:
    sst2 = pd.read_csv(source / "sst2" / "92_glue_sst2.csv")
    out = HERE / "sst2"
    out.mkdir(exist_ok=True)
    _sample(sst2, "target", {0: 200, 1: 200}).to_csv(out / "92_glue_sst2.csv", index=False)

    sms = pd.read_csv(
        source / "sms_spam" / "SMSSpamCollection", sep="\t", quoting=csv.QUOTE_NONE, dtype=str
    )
    out = HERE / "sms_spam"
    out.mkdir(exist_ok=True)
    _sample(sms, "Label", {"spam": 100, "ham": 200}).to_csv(
        out / "SMSSpamCollection", sep="\t", index=False, quoting=csv.QUOTE_NONE
    )

    cities = pd.read_csv(source / "geometry_of_truth" / "cities.csv")
    out = HERE / "geometry_of_truth"
    out.mkdir(exist_ok=True)
    _sample(cities, "label", {0: 100, 1: 100}).to_csv(out / "cities.csv", index=False)

    out = HERE / "banking77"
    out.mkdir(exist_ok=True)
    shutil.copy(source / "banking77" / "categories.json", out / "categories.json")
    for split, per_class in (("train", 1), ("test", 2)):
        frame = pd.read_csv(source / "banking77" / f"{split}.csv")
        counts = dict.fromkeys(frame.category.unique(), per_class)
        _sample(frame, "category", counts).to_csv(out / f"{split}.csv", index=False)

    out = HERE / "massive_intent_en"
    out.mkdir(exist_ok=True)
    for split, n in (("train", 120), ("validation", 40), ("test", 40)):
        rows = (source / "massive_intent_en" / f"{split}.jsonl").read_text().splitlines()
        keep = pd.Series(range(len(rows))).sample(n=n, random_state=0).sort_values()
        (out / f"{split}.jsonl").write_text("".join(rows[i] + "\n" for i in keep))

    out = HERE / "jailbreak_classification"
    out.mkdir(exist_ok=True)
    for split, n in (("train", 20), ("test", 10)):
        name = f"jailbreak_dataset_{split}_balanced.csv"
        frame = pd.read_csv(source / "jailbreak_classification" / name)
        _sample(frame, "type", {"benign": n, "jailbreak": n}).to_csv(out / name, index=False)
    shutil.copy(source / "jailbreak_classification" / "LICENSE", out / "LICENSE")
    json.loads((out.parent / "banking77" / "categories.json").read_text())  # well-formed


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data")
