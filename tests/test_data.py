"""Tests of lensprobe.data: the dataset noun, the registry's local and hub paths, built-in tasks.

Local copies are read from the offline collection (``$LENSPROBE_DATA_DIR``, default
``<repo>/../shared/data``); expected sizes come from its CATALOG.md, or from reading the files
with pandas where the catalog gives none. The hub path is exercised offline: ``datasets``
resolves a hub id to a local directory of that name, so the tests build directories shaped like
the hub repositories and load them by hub id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
def load(data_dir: Path, hf_cache: Path):
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


# --- the shared data collection: counts from CATALOG.md ------------------------------------------

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


@pytest.mark.parametrize(("name", "split", "rows", "n_classes"), CATALOG_COUNTS)
def test_catalog_counts(load, name, split, rows, n_classes):
    ds = load(name, split=split)
    assert len(ds) == rows
    present = sum(v > 0 for v in ds.class_counts().values())
    if n_classes is not None:
        assert present == n_classes
    assert ds.n_classes == len(REGISTRY[name].class_names)


def test_every_catalog_folder_has_a_registry_entry(data_dir):
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


def test_imbalanced_counts_match_catalog(load):
    sms = load("sms_spam")
    assert sms.class_counts() == {"ham": 4_827, "spam": 747}
    assert load("sst2").class_counts() == {"negative": 2_500, "positive": 2_500}
    ag = load("ag_news")
    assert ag.class_names == ("World", "Sports", "Business", "Sci/Tech")
    assert set(ag.class_counts().values()) == {1_900}


def test_ag_news_joins_title_and_description(load, data_dir):
    ag = load("ag_news")
    raw = pd.read_csv(data_dir / "ag_news" / "test.csv")
    assert ag.texts[0] == f"{raw.title[0]} {raw.description[0]}".strip()
    assert ag.class_names[ag.labels[0]] == raw["class"][0]
    expected = [ag.class_names.index(c) for c in raw["class"]]
    assert ag.labels.tolist() == expected


def test_banking77_classes_are_hub_order_and_match_by_name(load, data_dir):
    categories = json.loads((data_dir / "banking77" / "categories.json").read_text())
    assert REGISTRY["banking77"].class_names == tuple(sorted(categories, key=str.lower))
    ds = load("banking77", split="test")
    raw = pd.read_csv(data_dir / "banking77" / "test.csv")
    assert [ds.class_names[i] for i in ds.labels] == raw.category.tolist()
    assert ds.texts == tuple(t.strip() for t in raw.text)


def test_massive_scenario_is_intent_prefix(load, data_dir):
    intent = load("massive_intent", split="validation")
    scenario = load("massive_scenario", split="validation")
    assert intent.texts == scenario.texts
    for i, s in zip(intent.labels[:500], scenario.labels[:500], strict=True):
        assert intent.class_names[i].split("_")[0] == scenario.class_names[s]
    rows = [json.loads(x) for x in (data_dir / "massive_intent_en" / "validation.jsonl").open()]
    # the registry's intent order is MASSIVE's integer ids
    assert intent.labels.tolist() == [r["label"] for r in rows]


def test_tweet_eval_mapping_files_match_class_names(load, data_dir):
    for name in ("tweet_eval_emotion", "tweet_eval_stance_abortion"):
        mapping = (data_dir / name / "mapping.txt").read_text().split("\n")
        names = tuple(line.split("\t")[1] for line in mapping if line.strip())
        assert REGISTRY[name].class_names == names
        ds = load(name, split="val")
        labels = (data_dir / name / "val_labels.txt").read_text().split()
        assert ds.labels.tolist() == [int(x) for x in labels]


def test_github_code_lang_is_three_positive_sets(load, data_dir):
    ds = load("github_code_lang")
    assert ds.class_names == ("C", "Python", "HTML")
    folder = data_dir / "github_code_lang"
    for cls, file in enumerate(sorted(folder.glob("*.csv.zst"))):
        raw = pd.read_csv(file, compression="zstd")
        positives = raw.prompt[raw.target == 1].str.strip().tolist()
        assert ds.class_counts()[ds.class_names[cls]] == len(positives)
        got = [t for t, lab in zip(ds.texts, ds.labels, strict=True) if lab == cls]
        assert got == positives


def test_geometry_of_truth_files(load, data_dir):
    specs = [s for s in REGISTRY.values() if s.name.startswith("geometry_of_truth/")]
    files = sorted((data_dir / "geometry_of_truth").glob("*.csv"))
    assert len(specs) == len(files) == 11
    sizes = []
    for file in files:
        ds = load(f"geometry_of_truth/{file.stem}")
        raw = pd.read_csv(file)
        assert len(ds) == len(raw)
        assert ds.labels.tolist() == raw.label.tolist()
        assert ds.class_names == ("false", "true")
        sizes.append(len(ds))
    assert min(sizes) == 354 and max(sizes) == 31_964  # CATALOG.md: 354 - 31,964 per file


def test_refusal_labels_come_from_file_names(load, data_dir):
    folder = data_dir / "refusal_harmful_harmless"
    n_harmful = sum(len(json.loads(f.read_text())) for f in folder.glob("harmful_*.json"))
    n_harmless = sum(len(json.loads(f.read_text())) for f in folder.glob("harmless_*.json"))
    ds = load("refusal_harmful_harmless")
    assert ds.class_counts() == {"harmless": n_harmless, "harmful": n_harmful}
    assert n_harmless > 10 * n_harmful  # very imbalanced, as the catalog warns
    train = load("refusal", split="train")
    first = json.loads((folder / "harmful_train.json").read_text())[0]["instruction"]
    assert train.texts[0] == first.strip() and train.labels[0] == 1
    balanced = load("refusal_harmful_harmless", balance=True, seed=0)
    assert balanced.class_counts() == {"harmless": n_harmful, "harmful": n_harmful}


def test_jailbreak_multiline_prompts_survive(load, data_dir):
    ds = load("jailbreak_classification", split="test")
    raw = pd.read_csv(data_dir / "jailbreak_classification" / "jailbreak_dataset_test_balanced.csv")
    assert ds.texts == tuple(t.strip() for t in raw.prompt)
    assert any("\n" in t for t in ds.texts)


def test_load_subsample_through_load_dataset(load):
    a = load("sms_spam", n=200, seed=5)
    b = load("sms_spam", n=200, seed=5)
    assert len(a) == 200 and a.texts == b.texts
    assert a.class_counts() == {"ham": 173, "spam": 27}  # 747 / 5574 of 200 = 26.8 -> 27
    assert load("sms_spam", n=200, seed=6).texts != a.texts


def test_local_copy_from_a_path(data_dir, hf_cache):
    by_path = load_dataset(data_dir / "sst2", cache_dir=hf_cache)
    by_name = load_dataset("sst2", data_dir=data_dir, cache_dir=hf_cache)
    assert by_path.texts == by_name.texts and by_path.name == "sst2"
    folder_itself = load_dataset("sst2", data_dir=data_dir / "sst2", cache_dir=hf_cache)
    assert folder_itself.texts == by_name.texts
    cities = load_dataset(data_dir / "geometry_of_truth" / "cities.csv", cache_dir=hf_cache)
    assert cities.name == "geometry_of_truth/cities" and len(cities) == 1_496
    hub_id_local = load_dataset("fancyzhx/ag_news", data_dir=data_dir, cache_dir=hf_cache)
    assert hub_id_local.source.startswith("local:") and len(hub_id_local) == 7_600


def test_column_override_infers_classes(load, data_dir):
    ds = load("geometry_of_truth/cities", label_column="correct_country")
    raw = pd.read_csv(data_dir / "geometry_of_truth" / "cities.csv")
    assert ds.class_names == tuple(sorted(raw.correct_country.unique()))
    assert [ds.class_names[i] for i in ds.labels] == raw.correct_country.tolist()


# --- errors ------------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dataset") as info:
        load_dataset("no-such-owner/no-such-dataset")
    message = str(info.value)
    for known in ("banking77", "needle", "sst2"):
        assert known in message
    assert "text_column" in message


def test_missing_paths_and_folders(tmp_path, data_dir, hf_cache):
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
    shutil.copy(data_dir / "banking77" / "train.csv", broken / "train.csv")
    with pytest.raises(FileNotFoundError, match=r"test\.csv"):
        load_dataset("banking77", data_dir=tmp_path, cache_dir=hf_cache)
    only_train = load_dataset("banking77", data_dir=tmp_path, split="train", cache_dir=hf_cache)
    assert len(only_train) == 10_003
    with pytest.raises(ValueError, match="not available"):
        load_dataset("banking77", data_dir=tmp_path, split="dev", cache_dir=hf_cache)


def test_ambiguous_folder_and_split_file(data_dir):
    with pytest.raises(ValueError, match="massive_intent, massive_scenario"):
        load_dataset(data_dir / "massive_intent_en")
    with pytest.raises(ValueError, match="split='test'"):
        load_dataset(data_dir / "banking77" / "test.csv")


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
    with pytest.raises(ValueError, match="not found"):
        load_dataset(good, cache_dir=hf_cache)  # default columns text / label are absent


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


def test_hub_and_local_paths_agree_for_banking77(hub_root, data_dir, hf_cache):
    import datasets

    categories = json.loads((data_dir / "banking77" / "categories.json").read_text())
    hub_names = sorted(categories, key=str.lower)  # the hub's ClassLabel order
    raw = pd.read_csv(data_dir / "banking77" / "test.csv").iloc[::10].reset_index(drop=True)
    frame = pd.DataFrame({"text": raw.text, "label": [hub_names.index(c) for c in raw.category]})
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=hub_names)}
    )
    _parquet(hub_root, "legacy-datasets/banking77", "test", frame, features)
    _parquet(hub_root, "legacy-datasets/banking77", "train", frame.iloc[:5], features)

    hub = load_dataset("legacy-datasets/banking77", split="test", cache_dir=hf_cache)
    assert hub.source.startswith("hub:legacy-datasets/banking77")
    local = load_dataset("banking77", data_dir=data_dir, split="test", cache_dir=hf_cache)
    assert hub.class_names == local.class_names
    assert hub.texts == local.texts[::10]
    assert hub.labels.tolist() == local.labels[::10].tolist()
    default = load_dataset("banking77", cache_dir=hf_cache)  # no data_dir: the hub, study split
    assert len(default) == 5 and "(train)" in default.source


def test_hub_ag_news_and_amazon_shapes(hub_root, data_dir, hf_cache):
    import datasets

    raw = pd.read_csv(data_dir / "ag_news" / "test.csv").iloc[:40]
    names = ["World", "Sports", "Business", "Sci/Tech"]
    frame = pd.DataFrame(
        {"text": raw.title + " " + raw.description, "label": [names.index(c) for c in raw["class"]]}
    )
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    _parquet(hub_root, "fancyzhx/ag_news", "train", frame, features)
    hub = load_dataset("fancyzhx/ag_news", cache_dir=hf_cache)
    local = load_dataset("ag_news", data_dir=data_dir, cache_dir=hf_cache, source="local")
    assert hub.texts == local.texts[:40] and hub.labels.tolist() == local.labels[:40].tolist()

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


def test_list_datasets_with_and_without_data(data_dir, hf_cache):
    infos = {i.name: i for i in list_datasets(data_dir, cache_dir=hf_cache)}
    assert set(BUILTIN_TASKS) <= set(infos)
    assert infos["banking77"].origin == "local" and infos["banking77"].n_rows == 13_083
    assert infos["sms_spam"].class_counts == (4_827, 747)
    assert infos["bias_in_bios"].origin == "hub" and infos["bias_in_bios"].n_rows is None
    assert infos["needle"].n_rows == BUILTIN_TASKS["needle"].default_size
    folders = {p.name for p in data_dir.iterdir() if p.is_dir()}
    assert folders == {Path(i.path).name for i in infos.values() if i.origin == "local"}

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
