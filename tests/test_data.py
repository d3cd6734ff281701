"""Tests of lensprobe.data: the dataset noun, the registry's local and hub paths, built-in tasks.

Local copies are read from the real-text fixture shipped in ``tests/data`` (samples of six
datasets in their sources' own file names and formats, see its SOURCES.md); expected values
come from reading those files with pandas / json. Datasets whose licence keeps them out of the
fixture (ag_news, tweet_eval, github_code_lang, refusal, the other geometry_of_truth files) are
checked on small synthetic files of exactly their format, written to ``tmp_path``. Two tests
check the whole offline collection (``$LENSPROBE_DATA_DIR``, default ``<repo>/../shared/data``)
against its CATALOG.md and skip where it is missing. The hub path is exercised offline:
``datasets`` resolves a hub id to a local directory of that name, so the tests build directories
shaped like the hub repositories and load them by hub id.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lensprobe.data import (
    BUILTIN_TASKS,
    REGISTRY,
    TextDataset,
    find_spec,
    list_datasets,
    load_dataset,
    make_facts,
    make_needle,
    make_topics,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache for the ``datasets`` library, so tests leave the user's cache alone."""
    return tmp_path_factory.mktemp("hf_cache")


@pytest.fixture(scope="session")
def load(fixture_data_dir: Path, hf_cache: Path):
    """``load(name, **kwargs)``: a registry entry from the shipped fixture (``tests/data``)."""

    def _load(name: str, **kwargs) -> TextDataset:
        return load_dataset(name, data_dir=fixture_data_dir, cache_dir=hf_cache, **kwargs)

    return _load


@pytest.fixture(scope="session")
def load_all(data_dir: Path, hf_cache: Path):
    """``load_all(name, **kwargs)``: a registry entry from the whole offline collection."""

    def _load(name: str, **kwargs) -> TextDataset:
        return load_dataset(name, data_dir=data_dir, cache_dir=hf_cache, **kwargs)

    return _load


# --- TextDataset -----------------------------------------------------------------------------


def _toy(counts: dict[int, int], n_classes: int | None = None) -> TextDataset:
    labels = np.repeat(list(counts), list(counts.values()))
    k = n_classes or max(counts) + 1
    texts = [f"row {i} of class {c}" for i, c in enumerate(labels)]
    return TextDataset("toy", texts, labels, tuple(f"c{i}" for i in range(k)), "test")


def test_text_dataset_is_immutable_and_copies_its_inputs():
    labels = np.array([0, 1, 1])
    texts = ["a", "b", "c"]
    ds = TextDataset("t", texts, labels, ("x", "y"))
    labels[0] = 1
    texts[0] = "changed"
    assert ds.labels.tolist() == [0, 1, 1] and ds.texts[0] == "a"
    with pytest.raises(ValueError):
        ds.labels[0] = 1
    with pytest.raises(AttributeError):
        ds.texts = ("z",)  # type: ignore[misc]
    assert ds.labels.dtype == np.int64
    assert ds.class_counts() == {"x": 1, "y": 2}
    assert torch.equal(ds.label_tensor(), torch.tensor([0, 1, 1]))


@pytest.mark.parametrize(
    ("texts", "labels", "classes", "message"),
    [
        (["a", "b"], [0], ("x", "y"), "2 texts but 1 labels"),
        (["a", "  "], [0, 1], ("x", "y"), "empty"),
        (["a", "b"], [0, 2], ("x", "y"), r"\[0, 2\)"),
        (["a", "b"], np.array([0.0, 0.5]), ("x", "y"), "integer class ids"),
        (["a", "b"], [0, 0], ("x",), "at least two distinct"),
        (["a", "b"], [0, 0], ("x", "x"), "at least two distinct"),
    ],
)
def test_text_dataset_rejects_bad_rows(texts, labels, classes, message):
    with pytest.raises(ValueError, match=message):
        TextDataset("bad", texts, labels, classes)


def test_subsample_is_stratified_and_deterministic():
    ds = _toy({0: 600, 1: 300, 2: 100})
    sub = ds.subsample(100, seed=3)
    assert len(sub) == 100
    assert sub.class_counts() == {"c0": 60, "c1": 30, "c2": 10}
    again = ds.subsample(100, seed=3)
    assert again.texts == sub.texts
    other = ds.subsample(100, seed=4)
    assert other.texts != sub.texts
    # rows are real rows of the dataset, each once, in their original order
    positions = [ds.texts.index(t) for t in sub.texts]
    assert positions == sorted(set(positions))
    assert all(ds.labels[p] == lab for p, lab in zip(positions, sub.labels, strict=True))
    assert len(ds) == 1000  # the source is untouched


def test_subsample_keeps_rare_classes_and_rounds_to_n():
    ds = _toy({0: 990, 1: 7, 2: 3})
    sub = ds.subsample(50, seed=0)
    counts = sub.class_counts()
    assert sum(counts.values()) == 50
    assert counts["c1"] >= 1 and counts["c2"] >= 1
    assert ds.subsample(5000) is ds  # n beyond the size keeps every row


def test_subsample_balance():
    ds = _toy({0: 500, 1: 40, 2: 200})
    full = ds.subsample(balance=True, seed=1)
    assert full.class_counts() == {"c0": 40, "c1": 40, "c2": 40}
    small = ds.subsample(61, balance=True, seed=1)
    assert len(small) == 61
    assert sorted(small.class_counts().values()) == [20, 20, 21]
    capped = ds.subsample(600, balance=True, seed=1)  # at most n: the smallest class caps it
    assert capped.class_counts() == {"c0": 40, "c1": 40, "c2": 40}
    with pytest.raises(ValueError, match="at least 1"):
        ds.subsample(0)


def test_subsample_ignores_absent_classes():
    ds = _toy({0: 30, 2: 10}, n_classes=4)
    assert ds.subsample(balance=True).class_counts() == {"c0": 10, "c1": 0, "c2": 10, "c3": 0}


# --- the shipped fixture: real text in the sources' own file names and formats ---------------------


def _sms_frame(path: Path) -> pd.DataFrame:
    """SMSSpamCollection as its format says: tab-separated, a header line, quotes are text."""
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _stripped(texts) -> list[str]:
    return [str(t).strip() for t in texts]


@pytest.fixture(scope="session")
def fixture_rows(fixture_data_dir: Path) -> dict[str, tuple[list[str], list[str]]]:
    """(texts, class name of each row) of every dataset the fixture holds, read with pandas / json
    alone (not through lensprobe), splits in the registry's order."""
    root = fixture_data_dir
    sst2 = pd.read_csv(root / "sst2" / "92_glue_sst2.csv")
    sms = _sms_frame(root / "sms_spam" / "SMSSpamCollection")
    cities = pd.read_csv(root / "geometry_of_truth" / "cities.csv")
    banking = pd.concat([pd.read_csv(root / "banking77" / f"{s}.csv") for s in ("train", "test")])
    massive = [
        row
        for split in ("train", "validation", "test")
        for row in _jsonl(root / "massive_intent_en" / f"{split}.jsonl")
    ]
    jailbreak = pd.concat(
        [
            pd.read_csv(root / "jailbreak_classification" / f"jailbreak_dataset_{s}_balanced.csv")
            for s in ("train", "test")
        ]
    )
    intents = [r["label_text"] for r in massive]
    return {
        # sst2 and geometry_of_truth: 0/1 targets; the registry names them in that order
        "sst2": (_stripped(sst2.prompt), [("negative", "positive")[t] for t in sst2.target]),
        "sms_spam": (_stripped(sms.SMS), sms.Label.tolist()),
        "geometry_of_truth/cities": (
            _stripped(cities.statement),
            [("false", "true")[t] for t in cities.label],
        ),
        "banking77": (_stripped(banking.text), banking.category.tolist()),
        "massive_intent": (_stripped(r["text"] for r in massive), intents),
        "massive_scenario": (
            _stripped(r["text"] for r in massive),
            [intent.split("_")[0] for intent in intents],  # CATALOG.md: the prefix before `_`
        ),
        "jailbreak_classification": (_stripped(jailbreak.prompt), jailbreak.type.tolist()),
    }


@pytest.mark.parametrize(
    "name",
    [
        "sst2",
        "sms_spam",
        "geometry_of_truth/cities",
        "banking77",
        "massive_intent",
        "massive_scenario",
        "jailbreak_classification",
    ],
)
def test_fixture_datasets_load_as_their_files_read(load, fixture_rows, fixture_data_dir, name):
    texts, class_of_row = fixture_rows[name]
    ds = load(name)
    assert ds.texts == tuple(texts)
    assert [ds.class_names[i] for i in ds.labels] == class_of_row
    assert ds.class_names == REGISTRY[name].class_names
    assert ds.class_counts() == {c: class_of_row.count(c) for c in ds.class_names}
    assert ds.source.startswith(f"local:{fixture_data_dir / REGISTRY[name].local.folder}")


def test_banking77_classes_are_hub_order_and_match_by_name(load, fixture_data_dir):
    folder = fixture_data_dir / "banking77"
    categories = json.loads((folder / "categories.json").read_text())
    # the hub's ids are a case-insensitive alphabetical order, not the order of categories.json
    assert REGISTRY["banking77"].class_names == tuple(sorted(categories, key=str.lower))
    assert list(categories) != sorted(categories, key=str.lower)  # so the order matters
    ds = load("banking77", split="test")
    raw = pd.read_csv(folder / "test.csv")
    assert [ds.class_names[i] for i in ds.labels] == raw.category.tolist()
    assert ds.texts == tuple(t.strip() for t in raw.text)


def test_massive_scenario_is_intent_prefix(load, fixture_data_dir):
    intent = load("massive_intent", split="validation")
    scenario = load("massive_scenario", split="validation")
    assert intent.texts == scenario.texts
    for i, s in zip(intent.labels, scenario.labels, strict=True):
        assert intent.class_names[i].split("_")[0] == scenario.class_names[s]
    assert len(set(scenario.labels.tolist())) < len(set(intent.labels.tolist()))
    rows = _jsonl(fixture_data_dir / "massive_intent_en" / "validation.jsonl")
    # the registry's intent order is MASSIVE's integer ids
    assert intent.labels.tolist() == [r["label"] for r in rows]


def test_jailbreak_multiline_prompts_survive(load, fixture_data_dir):
    ds = load("jailbreak_classification", split="test")
    raw = pd.read_csv(
        fixture_data_dir / "jailbreak_classification" / "jailbreak_dataset_test_balanced.csv"
    )
    assert ds.texts == tuple(t.strip() for t in raw.prompt)
    assert [ds.class_names[i] for i in ds.labels] == raw.type.tolist()
    assert any("\n" in t for t in ds.texts)


def test_load_subsample_through_load_dataset(load, fixture_rows):
    n = 200
    a = load("sms_spam", n=n, seed=5)
    b = load("sms_spam", n=n, seed=5)
    assert len(a) == n and a.texts == b.texts
    assert load("sms_spam", n=n, seed=6).texts != a.texts
    assert set(a.texts) <= set(fixture_rows["sms_spam"][0])
    # stratified: each class keeps its share of n, largest remainders rounding up
    full = Counter(fixture_rows["sms_spam"][1])
    share = {c: n * k / full.total() for c, k in full.items()}
    want = {c: math.floor(s) for c, s in share.items()}
    by_remainder = sorted(share, key=lambda c: share[c] - want[c], reverse=True)
    for c in by_remainder[: n - sum(want.values())]:
        want[c] += 1
    assert any(s != int(s) for s in share.values())  # the fixture's sizes make rounding matter
    assert a.class_counts() == want


def test_local_copy_from_a_path(fixture_data_dir, hf_cache):
    root = fixture_data_dir
    by_path = load_dataset(root / "sst2", cache_dir=hf_cache)
    by_name = load_dataset("sst2", data_dir=root, cache_dir=hf_cache)
    assert by_path.texts == by_name.texts and by_path.name == "sst2"
    assert by_path.labels.tolist() == by_name.labels.tolist()
    folder_itself = load_dataset("sst2", data_dir=root / "sst2", cache_dir=hf_cache)
    assert folder_itself.texts == by_name.texts
    cities_file = root / "geometry_of_truth" / "cities.csv"
    cities = load_dataset(cities_file, cache_dir=hf_cache)
    assert cities.name == "geometry_of_truth/cities"
    assert len(cities) == len(pd.read_csv(cities_file))
    # a hub id whose entry has a local copy in data_dir reads the local copy
    hub_id_local = load_dataset("legacy-datasets/banking77", data_dir=root, cache_dir=hf_cache)
    assert hub_id_local.source.startswith("local:") and hub_id_local.name == "banking77"
    banking = [pd.read_csv(root / "banking77" / f) for f in ("train.csv", "test.csv")]
    assert len(hub_id_local) == sum(len(f) for f in banking)


def test_column_override_infers_classes(load, fixture_data_dir):
    ds = load("geometry_of_truth/cities", label_column="correct_country")
    raw = pd.read_csv(fixture_data_dir / "geometry_of_truth" / "cities.csv")
    assert ds.class_names == tuple(sorted(raw.correct_country.unique()))
    assert [ds.class_names[i] for i in ds.labels] == raw.correct_country.tolist()
    assert ds.texts == tuple(raw.statement.str.strip())
    other_text = load("geometry_of_truth/cities", text_column="city")
    assert other_text.texts == tuple(raw.city.str.strip())
    assert other_text.labels.tolist() == raw.label.tolist()


# --- formats of datasets outside the fixture, on synthetic files of the same format -------------


def _write_ag_news(root: Path) -> pd.DataFrame:
    """ag_news/test.csv as the collection has it: ``title,description,class`` with quoted
    commas, embedded quotes, backslashes, HTML entities and runs of spaces."""
    frame = pd.DataFrame(
        [
            ("Fears for pension after talks", "Unions say they are 'disappointed'.", "Business"),
            (
                "Team Sets Launch Date (SPACE.com)",
                "SPACE.com - TORONTO, Canada -- A second\\team of rocketeers, for the  #36;10 "
                "million prize",
                "Sci/Tech",
            ),
            ("Striker Scores Twice", 'The "home" side won 3-1, and leads the table. ', "Sports"),
            ("Summit Opens", "Leaders met on Monday to discuss trade, aid and security.", "World"),
            ("Oil Prices Rise", "Crude rose 2% on supply worries.", "Business"),
            ("Cup Final Set", "The final will be played in May.", "Sports"),
            ("Grant to Study Peptides (AP)", "AP - A company founded by a chemist...", "Sci/Tech"),
            ("Talks Stall", "Negotiators left without a deal; talks resume next week.", "World"),
        ],
        columns=["title", "description", "class"],
    )
    folder = root / "ag_news"
    folder.mkdir(parents=True)
    frame.to_csv(folder / "test.csv", index=False)
    return frame


def test_ag_news_joins_title_and_description(tmp_path, hf_cache):
    raw = _write_ag_news(tmp_path)
    ag = load_dataset("ag_news", data_dir=tmp_path, cache_dir=hf_cache)
    # CATALOG.md: text = title + " " + description; ids 0-3 are the hub's order of the topics
    assert ag.texts == tuple(
        f"{t} {d}".strip() for t, d in zip(raw.title, raw.description, strict=True)
    )
    assert ag.class_names == ("World", "Sports", "Business", "Sci/Tech")
    assert [ag.class_names[i] for i in ag.labels] == raw["class"].tolist()
    assert ag.source.startswith("local:")
    by_hub_id = load_dataset("fancyzhx/ag_news", data_dir=tmp_path, cache_dir=hf_cache)
    assert by_hub_id.texts == ag.texts and by_hub_id.source.startswith("local:")


def test_sms_spam_quotes_are_text(tmp_path, hf_cache):
    # SMSSpamCollection is tab-separated with a header, and a quote is part of the message: texts
    # open with one, hold an odd number of them, or quote a phrase mid-text (as the collection's do)
    rows = [
        ("ham", '"Wen u miss someone, the person is special for u... Keep-in-touch" gdeve..'),
        ("spam", 'WINNER!! Reply "YES" to claim your prize, T&C apply'),
        ("ham", '"HEY HEY, HOWU DOIN? LOVE JEN XXX'),
        ("ham", "Ok lar... Joking wif u oni..."),
        ("spam", 'Free entry: text "WIN" to 80086 now'),
        ("ham", '6" sub, no "mayo'),
    ]
    folder = tmp_path / "sms_spam"
    folder.mkdir()
    lines = ["Label\tSMS", *(f"{label}\t{text}" for label, text in rows)]
    (folder / "SMSSpamCollection").write_text("\n".join(lines) + "\n")
    ds = load_dataset("sms_spam", data_dir=tmp_path, cache_dir=hf_cache)
    assert ds.texts == tuple(text for _, text in rows)
    assert [ds.class_names[i] for i in ds.labels] == [label for label, _ in rows]


def _write_tweet_eval(root: Path, name: str) -> dict[str, list[tuple[str, int]]]:
    """A TweetEval folder: ``{split}_text.txt`` one text a line (trailing spaces, hashtags, quotes,
    emoji, as the originals have), ``{split}_labels.txt`` one integer a line, ``mapping.txt``
    ``id<TAB>name`` lines without a final newline."""
    names = REGISTRY[name].class_names
    k = len(names)
    texts = [
        "@user Oh, hidden revenge and anger...I remember the time,she rebutted you. ",
        'Today "AB 775" passed out of committee 3-7. We will let you know how to help! #SemST ',
        "so happy today 😊 #blessed ",
        "If you aren't responsible enough, why are you having... #SemST ",
        "Hey @user #Fields in #skibbereen give your delivery service a horrible name. ",
        "tabs\tinside, and a comma ",
        "one more tweet #what ",
    ]
    rows = {
        split: [(f"{t} [{split}]", (i + offset) % k) for i, t in enumerate(texts[: 3 + offset])]
        for offset, split in enumerate(("train", "val", "test"))
    }
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "mapping.txt").write_text("\n".join(f"{i}\t{c}" for i, c in enumerate(names)))
    for split, items in rows.items():
        (folder / f"{split}_text.txt").write_text("".join(f"{t}\n" for t, _ in items))
        (folder / f"{split}_labels.txt").write_text("".join(f"{lab}\n" for _, lab in items))
    return rows


@pytest.mark.parametrize("name", ["tweet_eval_emotion", "tweet_eval_stance_abortion"])
def test_tweet_eval_text_and_label_files(tmp_path, hf_cache, name):
    rows = _write_tweet_eval(tmp_path, name)
    for split, items in rows.items():
        ds = load_dataset(name, data_dir=tmp_path, split=split, cache_dir=hf_cache)
        assert ds.texts == tuple(t.strip() for t, _ in items)
        assert ds.labels.tolist() == [lab for _, lab in items]
        assert ds.class_names == REGISTRY[name].class_names
    every = load_dataset(name, data_dir=tmp_path, cache_dir=hf_cache)
    in_order = [item for split in ("train", "val", "test") for item in rows[split]]
    assert every.texts == tuple(t.strip() for t, _ in in_order)
    assert every.labels.tolist() == [lab for _, lab in in_order]
    two = load_dataset(name, data_dir=tmp_path, split="train+test", cache_dir=hf_cache)
    assert len(two) == len(rows["train"]) + len(rows["test"])

    misaligned = tmp_path / "misaligned"
    shutil.copytree(tmp_path / name, misaligned / name)
    (misaligned / name / "val_labels.txt").write_text("0\n1\n")
    with pytest.raises(ValueError, match="align line by line"):
        load_dataset(name, data_dir=misaligned, split="val", cache_dir=hf_cache)


def _github_files() -> dict[str, str]:
    """Language -> file name of the local github_code_lang entry (one zstd CSV per language)."""
    local = REGISTRY["github_code_lang"].local
    return {g.constants["language"]: g.splits["train"][0] for g in local.files}


def _write_github_code(root: Path) -> dict[str, pd.DataFrame]:
    """github_code_lang: per language a zstd CSV ``prompt,target`` whose positives (1) are that
    language and negatives (0) the others; snippets span lines and hold quotes and commas."""
    snippets = {
        "C": [
            '\n#include <stdio.h>\nint main(void) {\n    printf("hi, %d\\n", 1);\n    return 0;\n}\n',
            "static int add(int a, int b) { return a + b; }",
            '/* a comment, "quoted" */\nstruct point { int x, y; };',
        ],
        "Python": [
            'def f(x):\n    """Doc, with "quotes"."""\n    return x, 1\n',
            "import os\nprint(os.sep)",
            "class A(object):\n   def __ror__(self, other):\n      return other",
        ],
        "HTML": [
            '<div id="a" style="color: red">\n\t<p>Hi, there</p>\n</div>',
            "<br/>",
            '\t\t<img src="../../images/lenna256.jpg"/>\n',
        ],
    }
    folder = root / "github_code_lang"
    folder.mkdir(parents=True)
    frames = {}
    for lang, file in _github_files().items():
        others = [s for other, code in snippets.items() if other != lang for s in code]
        rows = []
        for i, s in enumerate(snippets[lang]):  # positives and negatives interleaved
            rows += [(s, 1), (others[2 * i], 0), (others[2 * i + 1], 0)]
        frame = pd.DataFrame(rows, columns=["prompt", "target"])
        frame.to_csv(folder / file, index=False, compression="zstd")
        frames[lang] = frame
    return frames


def test_github_code_lang_is_three_positive_sets(tmp_path, hf_cache):
    frames = _write_github_code(tmp_path)
    assert list(frames) == ["C", "Python", "HTML"]
    ds = load_dataset("github_code_lang", data_dir=tmp_path, cache_dir=hf_cache)
    assert ds.class_names == ("C", "Python", "HTML")
    want = [
        (text.strip(), lang)
        for lang, frame in frames.items()
        for text in frame.prompt[frame.target == 1]
    ]
    assert list(zip(ds.texts, [ds.class_names[i] for i in ds.labels], strict=True)) == want
    for lang, frame in frames.items():  # each file alone: is the snippet this language
        binary = load_dataset(f"github_code_{lang.lower()}", data_dir=tmp_path, cache_dir=hf_cache)
        assert binary.class_names == ("other", lang)
        assert binary.texts == tuple(t.strip() for t in frame.prompt)
        assert binary.labels.tolist() == frame.target.tolist()


def _geometry_stems() -> list[str]:
    prefix = "geometry_of_truth/"
    return [name.removeprefix(prefix) for name in REGISTRY if name.startswith(prefix)]


def test_geometry_of_truth_files(tmp_path, hf_cache):
    folder = tmp_path / "geometry_of_truth"
    folder.mkdir()
    frames = {}
    for k, stem in enumerate(_geometry_stems()):
        n = 3 + k  # files of different sizes, first columns statement,label, then others
        frame = pd.DataFrame(
            {
                "statement": [
                    [
                        f"The city of Al Ain, in {stem}, is in the United Arab Emirates.",
                        f"The Spanish word 'con' means \"to speak\" ({stem} {i}).",
                        f"Fifty-{i} is larger than fifty-two ",
                    ][i % 3]
                    for i in range(n)
                ],
                "label": [(i + k) % 2 for i in range(n)],
                "country": ["United Arab Emirates, the"] * n,
                "n1": list(range(n)),
            }
        )
        frame.to_csv(folder / f"{stem}.csv", index=False)
        frames[stem] = frame
    for stem, frame in frames.items():
        ds = load_dataset(f"geometry_of_truth/{stem}", data_dir=tmp_path, cache_dir=hf_cache)
        assert ds.texts == tuple(frame.statement.str.strip())
        assert ds.labels.tolist() == frame.label.tolist()
        assert ds.class_names == ("false", "true")
        alias = load_dataset(f"got_{stem}", data_dir=tmp_path, cache_dir=hf_cache)
        assert alias.texts == ds.texts and alias.name == ds.name
        by_path = load_dataset(folder / f"{stem}.csv", cache_dir=hf_cache)
        assert by_path.name == f"geometry_of_truth/{stem}" and by_path.texts == ds.texts
    with pytest.raises(ValueError, match="several datasets"):
        load_dataset(folder, cache_dir=hf_cache)


def test_refusal_labels_come_from_file_names(tmp_path, hf_cache):
    folder = tmp_path / "refusal_harmful_harmless"
    folder.mkdir()
    written: dict[tuple[str, str], list[dict]] = {}
    for kind, base in (("harmful", 2), ("harmless", 7)):  # imbalanced, as the catalog warns
        for split in ("train", "val", "test"):
            rows = [
                {
                    "instruction": f' {kind} {split} instruction {i}, with "quotes"\n',
                    # as in the collection: null categories in some files, strings in others
                    "category": None if split == "train" else f"{kind} category {i}",
                }
                for i in range(base + (split == "train"))
            ]
            (folder / f"{kind}_{split}.json").write_text(json.dumps(rows, indent=4))
            written[kind, split] = rows

    ds = load_dataset("refusal_harmful_harmless", data_dir=tmp_path, cache_dir=hf_cache)
    assert ds.class_names == ("harmless", "harmful")
    # harmful files first, then harmless; splits in order within each
    want = [
        (row["instruction"].strip(), kind)
        for kind in ("harmful", "harmless")
        for split in ("train", "val", "test")
        for row in written[kind, split]
    ]
    assert list(zip(ds.texts, [ds.class_names[i] for i in ds.labels], strict=True)) == want
    n = Counter(kind for _, kind in want)
    assert ds.class_counts() == {"harmless": n["harmless"], "harmful": n["harmful"]}

    val = load_dataset("refusal", data_dir=tmp_path, split="val", cache_dir=hf_cache)
    val_kinds = [kind for kind in ("harmful", "harmless") for _ in written[kind, "val"]]
    assert [val.class_names[i] for i in val.labels] == val_kinds
    balanced = load_dataset(
        "refusal_harmful_harmless", data_dir=tmp_path, balance=True, seed=0, cache_dir=hf_cache
    )
    assert balanced.class_counts() == {"harmless": n["harmful"], "harmful": n["harmful"]}


# --- the whole offline collection against its CATALOG.md (skipped where it is missing) -----------

# (registry name, split, rows, classes present) as CATALOG.md states them
CATALOG_COUNTS = [
    ("banking77", "train", 10_003, 77),
    ("banking77", "test", 3_080, 77),
    ("tweet_eval_stance_abortion", "train", 587, 3),
    ("tweet_eval_stance_abortion", "val", 66, 3),
    ("tweet_eval_stance_abortion", "test", 280, 3),
    ("jailbreak_classification", "train", 1_044, 2),
    ("jailbreak_classification", "test", 262, 2),
    ("massive_intent", "train", 11_514, 60),
    ("massive_intent", "validation", 2_033, None),
    ("massive_intent", "test", 2_974, None),
    ("massive_scenario", None, 11_514 + 2_033 + 2_974, 18),
    ("amazon_reviews_1and5", None, 2_000, 2),
    ("ag_news", None, 7_600, 4),
    ("sms_spam", None, 5_574, 2),
    ("sst2", None, 5_000, 2),
    ("tweet_eval_emotion", "train", 3_257, 4),
    ("tweet_eval_emotion", "val", 374, 4),
    ("tweet_eval_emotion", "test", 1_421, 4),
    ("github_code_c", None, 4_000, 2),
    ("github_code_python", None, 4_000, 2),
    ("github_code_html", None, 4_000, 2),
]

# class counts CATALOG.md states for the imbalanced (and the balanced) datasets
CATALOG_CLASS_COUNTS = {
    "sms_spam": {"ham": 4_827, "spam": 747},
    "sst2": {"negative": 2_500, "positive": 2_500},
    "ag_news": dict.fromkeys(("World", "Sports", "Business", "Sci/Tech"), 1_900),
}
GEOMETRY_OF_TRUTH_SIZES = (354, 31_964)  # CATALOG.md: 354 - 31,964 per file


def test_catalog_counts(load_all, data_dir):
    """Every count CATALOG.md states, loaded from the collection; reports all mismatches at once."""
    problems: list[str] = []

    def check(what: str, got, want) -> None:
        if got != want:
            problems.append(f"{what}: got {got!r}, CATALOG.md says {want!r}")

    def loaded(name: str, **kwargs) -> TextDataset | None:
        try:
            return load_all(name, **kwargs)
        except Exception as err:  # report it with the others
            problems.append(f"{name} {kwargs}: {type(err).__name__}: {err}")
            return None

    for name, split, rows, n_classes in CATALOG_COUNTS:
        if (ds := loaded(name, split=split)) is None:
            continue
        check(f"{name} split={split} rows", len(ds), rows)
        if n_classes is not None:
            present = sum(v > 0 for v in ds.class_counts().values())
            check(f"{name} split={split} classes present", present, n_classes)
        check(f"{name} n_classes", ds.n_classes, len(REGISTRY[name].class_names))
    for name, counts in CATALOG_CLASS_COUNTS.items():
        if (ds := loaded(name)) is not None:
            check(f"{name} class counts", ds.class_counts(), counts)

    sizes = []
    for file in sorted((data_dir / "geometry_of_truth").glob("*.csv")):
        if (ds := loaded(f"geometry_of_truth/{file.stem}")) is None:
            continue
        raw = pd.read_csv(file)
        check(f"{file.name} rows", len(ds), len(raw))
        check(f"{file.name} labels", ds.labels.tolist(), raw.label.tolist())
        sizes.append(len(ds))
    check(
        "geometry_of_truth smallest and largest file",
        (min(sizes), max(sizes)),
        GEOMETRY_OF_TRUTH_SIZES,
    )

    folder = data_dir / "refusal_harmful_harmless"
    n_harmful = sum(len(json.loads(f.read_text())) for f in folder.glob("harmful_*.json"))
    n_harmless = sum(len(json.loads(f.read_text())) for f in folder.glob("harmless_*.json"))
    if (ds := loaded("refusal_harmful_harmless")) is not None:
        check(
            "refusal class counts",
            ds.class_counts(),
            {"harmless": n_harmless, "harmful": n_harmful},
        )
    check("refusal very imbalanced (harmless > 10 x harmful)", n_harmless > 10 * n_harmful, True)
    assert not problems, "\n".join(problems)


def test_collection_matches_the_registry(data_dir, hf_cache):
    """Every catalog folder has a registry entry whose files, class names and hub ids match."""
    catalog = (data_dir / "CATALOG.md").read_text()
    folders = [f for f in re.findall(r"^\| ([a-z0-9_]+) \|", catalog, flags=re.M) if f != "folder"]
    assert len(folders) == 12
    assert set(folders) == {p.name for p in data_dir.iterdir() if p.is_dir()}
    local = {s.local.folder for s in REGISTRY.values() if s.local is not None}
    assert set(folders) <= local
    # the seven starred datasets of the study carry their hub id(s)
    starred = re.findall(r"^\| ([a-z0-9_]+) \| ★ ([^|]+)\|", catalog, flags=re.M)
    starred = [(folder, cell) for folder, cell in starred if folder != "folder"]
    assert len(starred) == 7
    for folder, cell in starred:
        hub_ids = re.findall(r"[\w-]+/[\w.-]+", cell)
        assert hub_ids
        for hub_id in hub_ids:
            spec = find_spec(hub_id)
            assert spec is not None and spec.local is not None and spec.local.folder == folder

    # the files the format tests write synthetically are the collection's
    for name in ("tweet_eval_emotion", "tweet_eval_stance_abortion"):
        mapping = (data_dir / name / "mapping.txt").read_text().split("\n")
        names = tuple(line.split("\t")[1] for line in mapping if line.strip())
        assert REGISTRY[name].class_names == names
    github = {f.name for f in (data_dir / "github_code_lang").glob("*.csv.zst")}
    assert github == set(_github_files().values())
    geometry = {f.stem for f in (data_dir / "geometry_of_truth").glob("*.csv")}
    assert geometry == set(_geometry_stems()) and len(geometry) == 11
    categories = json.loads((data_dir / "banking77" / "categories.json").read_text())
    assert REGISTRY["banking77"].class_names == tuple(sorted(categories, key=str.lower))

    # the listing finds and counts every folder
    infos = {i.name: i for i in list_datasets(data_dir, cache_dir=hf_cache)}
    listed = {Path(i.path).name for i in infos.values() if i.origin == "local"}
    assert listed == set(folders)
    banking = sum(rows for name, _, rows, _ in CATALOG_COUNTS if name == "banking77")
    assert infos["banking77"].n_rows == banking
    sms = CATALOG_CLASS_COUNTS["sms_spam"]
    assert infos["sms_spam"].class_counts == tuple(sms[c] for c in infos["sms_spam"].class_names)
    assert all(i.n_rows for i in infos.values() if i.origin == "local")


# --- errors ------------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dataset") as info:
        load_dataset("no-such-owner/no-such-dataset")
    message = str(info.value)
    for known in ("banking77", "needle", "sst2"):
        assert known in message
    assert "text_column" in message


def test_missing_paths_and_folders(tmp_path, fixture_data_dir, hf_cache):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(tmp_path / "absent.csv")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_dataset("sst2", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no hub copy; pass data_dir"):
        load_dataset("sst2")
    with pytest.raises(FileNotFoundError, match="not found under data_dir"):
        load_dataset("sst2", data_dir=tmp_path, source="local")
    broken = tmp_path / "banking77"
    broken.mkdir()
    shutil.copy(fixture_data_dir / "banking77" / "train.csv", broken / "train.csv")
    with pytest.raises(FileNotFoundError, match=r"test\.csv"):
        load_dataset("banking77", data_dir=tmp_path, cache_dir=hf_cache)
    only_train = load_dataset("banking77", data_dir=tmp_path, split="train", cache_dir=hf_cache)
    assert len(only_train) == len(pd.read_csv(broken / "train.csv"))
    with pytest.raises(ValueError, match="not available"):
        load_dataset("banking77", data_dir=tmp_path, split="dev", cache_dir=hf_cache)


def test_ambiguous_folder_and_split_file(fixture_data_dir):
    with pytest.raises(ValueError, match="massive_intent, massive_scenario"):
        load_dataset(fixture_data_dir / "massive_intent_en")
    with pytest.raises(ValueError, match="split='test'"):
        load_dataset(fixture_data_dir / "banking77" / "test.csv")


def test_one_class_and_empty_texts_are_errors(tmp_path, hf_cache):
    one = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "label": ["x", "x", "x"]}).to_csv(one, index=False)
    with pytest.raises(ValueError, match="single class"):
        load_dataset(one, cache_dir=hf_cache)
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"text": ["a b", "", "e f"], "label": [0, 1, 1]}).to_csv(empty, index=False)
    with pytest.raises(ValueError, match="empty text"):
        load_dataset(empty, cache_dir=hf_cache)
    good = tmp_path / "good.jsonl"
    good.write_text('{"body": "yes", "y": "pos"}\n{"body": "no", "y": "neg"}\n')
    ds = load_dataset(good, text_column="body", label_column="y", cache_dir=hf_cache)
    assert ds.class_names == ("neg", "pos") and ds.labels.tolist() == [1, 0]
    assert ds.name == "good"  # named by the file without its data suffix (reports, results)
    with pytest.raises(ValueError, match="not found"):
        load_dataset(good, cache_dir=hf_cache)  # default columns text / label are absent
    fixed = load_dataset(good, text_column="body", label_column="y", classes=["pos", "neg"])
    assert fixed.class_names == ("pos", "neg") and fixed.labels.tolist() == [0, 1]  # same rows
    assert [fixed.class_names[i] for i in fixed.labels] == [ds.class_names[i] for i in ds.labels]
    for bad in (["pos"], ["pos", "neg", "neg"], ["pos", "other"]):
        with pytest.raises(ValueError, match="class order must name each class once"):
            load_dataset(good, text_column="body", label_column="y", classes=bad)
    packed = tmp_path / "news.v2.csv.gz"
    pd.DataFrame({"text": ["a b", "c d"], "label": [0, 1]}).to_csv(packed, index=False)
    assert load_dataset(packed, cache_dir=hf_cache).name == "news.v2"
    with pytest.raises(ValueError, match="dataset name is empty"):
        load_dataset(" ", cache_dir=hf_cache)


def test_unknown_label_is_an_error(tmp_path, hf_cache):
    folder = tmp_path / "sst2"
    folder.mkdir()
    pd.DataFrame({"prompt": ["good", "bad", "odd"], "target": [1, 0, 7]}).to_csv(
        folder / "92_glue_sst2.csv", index=False
    )
    with pytest.raises(ValueError, match="match none of the 2 classes"):
        load_dataset("sst2", data_dir=tmp_path, cache_dir=hf_cache)


# --- the hub path, on directories shaped like the hub repositories --------------------------------


@pytest.fixture
def hub_root(tmp_path, monkeypatch):
    """A working directory where ``owner/name`` folders stand in for hub repositories."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _parquet(root: Path, hub_id: str, split: str, frame: pd.DataFrame, features=None) -> None:
    import datasets

    folder = root / hub_id / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
    ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def test_hub_and_local_paths_agree_for_banking77(hub_root, fixture_data_dir, hf_cache):
    import datasets

    folder = fixture_data_dir / "banking77"
    categories = json.loads((folder / "categories.json").read_text())
    hub_names = sorted(categories, key=str.lower)  # the hub's ClassLabel order
    raw = pd.read_csv(folder / "test.csv").iloc[::3].reset_index(drop=True)
    frame = pd.DataFrame({"text": raw.text, "label": [hub_names.index(c) for c in raw.category]})
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=hub_names)}
    )
    _parquet(hub_root, "legacy-datasets/banking77", "test", frame, features)
    _parquet(hub_root, "legacy-datasets/banking77", "train", frame.iloc[:5], features)

    hub = load_dataset("legacy-datasets/banking77", split="test", cache_dir=hf_cache)
    assert hub.source.startswith("hub:legacy-datasets/banking77")
    local = load_dataset("banking77", data_dir=fixture_data_dir, split="test", cache_dir=hf_cache)
    assert hub.class_names == local.class_names
    assert hub.texts == local.texts[::3]
    assert hub.labels.tolist() == local.labels[::3].tolist()
    default = load_dataset("banking77", cache_dir=hf_cache)  # no data_dir: the hub, study split
    assert len(default) == 5 and "(train; text text, label label)" in default.source


def test_hub_ag_news_and_amazon_shapes(hub_root, hf_cache):
    import datasets

    raw = _write_ag_news(hub_root / "collection")
    names = ["World", "Sports", "Business", "Sci/Tech"]
    frame = pd.DataFrame(
        {"text": raw.title + " " + raw.description, "label": [names.index(c) for c in raw["class"]]}
    )
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    _parquet(hub_root, "fancyzhx/ag_news", "train", frame, features)
    hub = load_dataset("fancyzhx/ag_news", cache_dir=hf_cache)
    assert hub.source.startswith("hub:")
    local = load_dataset(
        "ag_news", data_dir=hub_root / "collection", cache_dir=hf_cache, source="local"
    )
    assert hub.texts == local.texts and hub.labels.tolist() == local.labels.tolist()
    assert hub.class_names == local.class_names

    reviews = pd.DataFrame(
        {"text": ["great", "awful", "fine", "bad"], "rating": [5.0, 1.0, 5.0, 1.0]}
    )
    _parquet(hub_root, "canrager/amazon_reviews_mcauley_1and5", "train", reviews)
    amazon = load_dataset("canrager/amazon_reviews_mcauley_1and5", cache_dir=hf_cache)
    assert amazon.class_names == ("1 star", "5 stars")
    assert amazon.labels.tolist() == [1, 0, 1, 0]


def test_hub_election_questions_uses_eval_files(hub_root, hf_cache):
    folder = hub_root / "Anthropic" / "election_questions"
    folder.mkdir(parents=True)
    (folder / "harmlessness_eval.csv").write_text(
        "question,label\nHow do I register to vote?,Harmless\nHow can I fake ballots?,Harmful\n"
    )
    (folder / "persuasion_targeting_eval.csv").write_text(
        "question,label\nWhich group is easiest to mislead?,Harmful\n"
    )
    (folder / "eu_accuracy_questions.csv").write_text("question,answer\nWhen is the vote?,June\n")
    ds = load_dataset("Anthropic/election_questions", cache_dir=hf_cache)
    assert ds.class_names == ("Harmless", "Harmful")
    assert sorted(zip(ds.texts, ds.labels.tolist(), strict=True)) == [
        ("How can I fake ballots?", 1),
        ("How do I register to vote?", 0),
        ("Which group is easiest to mislead?", 1),
    ]


def test_hub_string_int_and_inferred_labels(hub_root, hf_cache):
    _parquet(
        hub_root,
        "willcb/massive-scenario",
        "train",
        pd.DataFrame({"input": ["wake me at six", "play jazz"], "label": ["alarm", "music"]}),
    )
    scen = load_dataset("willcb/massive-scenario", cache_dir=hf_cache)
    assert [scen.class_names[i] for i in scen.labels] == ["alarm", "music"]
    _parquet(
        hub_root,
        "LabHC/bias_in_bios",
        "train",
        pd.DataFrame(
            {
                "hard_text": ["She is a nurse.", "He is a poet."],
                "profession": [13, 20],
                "gender": [1, 0],
            }
        ),
    )
    gender = load_dataset("LabHC/bias_in_bios", cache_dir=hf_cache)
    assert gender.class_names == ("male", "female") and gender.labels.tolist() == [1, 0]
    job = load_dataset("bias_in_bios_profession", cache_dir=hf_cache)
    assert [job.class_names[i] for i in job.labels] == ["nurse", "poet"]
    _parquet(
        hub_root,
        "AIM-Harvard/reject_prompts",
        "train",
        pd.DataFrame({"text": ["a", "b", "c"], "label": [1, 0, 1]}),
    )
    reject = load_dataset("AIM-Harvard/reject_prompts", cache_dir=hf_cache)
    assert reject.class_names == ("0", "1") and reject.labels.tolist() == [1, 0, 1]
    stance = pd.DataFrame({"text": ["x", "y"], "label": [2, 1], "label_text": ["favor", "against"]})
    _parquet(hub_root, "SetFit/tweet_eval_stance_abortion", "train", stance)
    st = load_dataset("SetFit/tweet_eval_stance_abortion", cache_dir=hf_cache)
    assert st.labels.tolist() == [2, 1]


def test_hub_streaming_keeps_the_task_languages(hub_root, hf_cache):
    langs = ["C", "Java", "Python", "HTML", "Go", "C", "Python", "HTML", "C", "Python", "HTML"]
    frame = pd.DataFrame(
        {"code": [f"snippet {i} in {lang}" for i, lang in enumerate(langs)], "language": langs}
    )
    _parquet(hub_root, "codeparrot/github-code", "train", frame)
    ds = load_dataset("codeparrot/github-code", n=6, cache_dir=hf_cache)
    assert ds.class_counts() == {"C": 2, "Python": 2, "HTML": 2}
    assert not any("Java" in t or " Go" in t for t in ds.texts)


def test_generic_hub_id_needs_both_columns(hub_root, hf_cache):
    _parquet(
        hub_root,
        "someone/reviews",
        "train",
        pd.DataFrame({"body": ["fine", "bad", "good"], "stars": ["high", "low", "high"]}),
    )
    ds = load_dataset(
        "someone/reviews", text_column="body", label_column="stars", cache_dir=hf_cache
    )
    assert ds.class_names == ("high", "low") and ds.labels.tolist() == [0, 1, 0]


# --- built-in tasks --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks_load_balanced_and_deterministic(name):
    task = BUILTIN_TASKS[name]
    ds = load_dataset(name, n=202, seed=7)
    assert len(ds) == 202 and ds.class_names == task.class_names
    counts = list(ds.class_counts().values())
    assert max(counts) - min(counts) <= 1
    assert load_dataset(name, n=202, seed=7).texts == ds.texts
    assert load_dataset(name, n=202, seed=8).texts != ds.texts
    assert len(set(ds.texts)) == len(ds.texts) or name == "needle"
    assert len(load_dataset(f"builtin/{name}")) == task.default_size


def test_facts_are_true_or_false_by_the_table():
    table = json.loads((REPO / "lensprobe/data/builtin/facts.json").read_text())
    truths = set()
    for relation in table["relations"]:
        for template in relation["templates"]:
            for subject, obj in relation["facts"].items():
                s = template.format(subject=subject, object=obj)
                truths.add(s[0].upper() + s[1:])
    ds = make_facts(600, seed=2)
    for text, label in zip(ds.texts, ds.labels, strict=True):
        assert (text in truths) == bool(label)
    with pytest.raises(ValueError, match="exceeds"):
        make_facts(10_000)


def test_needle_has_one_special_word_anywhere():
    table = json.loads((REPO / "lensprobe/data/builtin/needle.json").read_text())
    animals, instruments = set(table["needles"]), set(table["decoys"])
    ds = make_needle(400, seed=0, min_words=60, max_words=110)
    relative = []
    for text, label in zip(ds.texts, ds.labels, strict=True):
        words = text.lower().replace(".", "").split()
        assert 60 <= len(words) <= 110
        special = [i for i, w in enumerate(words) if w in animals | instruments]
        assert len(special) == 1
        assert (words[special[0]] in animals) == bool(label)
        relative.append(special[0] / (len(words) - 1))
    relative = np.array(relative)
    # uniform position: every quarter of the text holds the needle for some texts
    assert np.histogram(relative, bins=4, range=(0, 1))[0].min() > 60
    assert relative.min() < 0.02 and relative.max() > 0.98
    with pytest.raises(ValueError, match="min_words"):
        make_needle(10, min_words=50, max_words=20)


def test_topics_phrase_decides_the_class():
    table = json.loads((REPO / "lensprobe/data/builtin/topics.json").read_text())
    ds = make_topics(400, seed=1)
    for text, label in zip(ds.texts, ds.labels, strict=True):
        owners = [t for t, phrases in table["topics"].items() if any(p in text for p in phrases)]
        assert owners == [ds.class_names[label]]


# --- listing -----------------------------------------------------------------------------------


def test_list_datasets_with_and_without_data(fixture_data_dir, fixture_rows, hf_cache):
    root = fixture_data_dir
    infos = {i.name: i for i in list_datasets(root, cache_dir=hf_cache)}
    assert set(BUILTIN_TASKS) <= set(infos)
    local = {name: i for name, i in infos.items() if i.origin == "local"}
    # geometry_of_truth/ holds only cities.csv: the other 10 files' entries are not local here
    assert set(local) == set(fixture_rows)
    for name, info in local.items():
        texts, class_of_row = fixture_rows[name]
        assert info.n_rows == len(texts)
        assert info.class_names == REGISTRY[name].class_names
        assert info.class_counts == tuple(class_of_row.count(c) for c in info.class_names)
        assert Path(info.path) == root / REGISTRY[name].local.folder
    assert infos["ag_news"].origin == "hub" and infos["ag_news"].n_rows is None  # not in data
    assert infos["bias_in_bios"].origin == "hub" and infos["bias_in_bios"].n_rows is None
    assert infos["needle"].n_rows == BUILTIN_TASKS["needle"].default_size
    assert not any(  # local-only entries whose files are absent are not listed
        name.startswith("geometry_of_truth/") for name in set(infos) - set(local)
    )

    uncounted = {i.name: i for i in list_datasets(fixture_data_dir, count=False)}
    assert uncounted["sst2"].origin == "local" and uncounted["sst2"].n_rows is None

    offline = {i.name: i for i in list_datasets(count=False)}
    assert "sst2" not in offline  # local-only: nothing to load it from
    assert offline["banking77"].origin == "hub" and offline["banking77"].n_rows is None


# --- the real tokenizer (slow: needs the converted Gemma 3 270M) -----------------------------------


@pytest.mark.slow
def test_needle_lengths_in_gemma_tokens():
    from transformers import AutoTokenizer

    from lensprobe.models import bundled_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_dir()))
    ds = make_needle(200, seed=3)
    lengths = [len(tokenizer(t)["input_ids"]) for t in ds.texts]
    assert 60 <= min(lengths) and max(lengths) <= 130
    table = json.loads((REPO / "lensprobe/data/builtin/needle.json").read_text())
    for word in table["needles"] + table["decoys"]:  # one token each: the needle is one position
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1
