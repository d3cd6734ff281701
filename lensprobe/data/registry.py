"""The dataset registry: one declarative entry per dataset, for its hub copy and its local copy.

An entry (:class:`DatasetSpec`) says where the rows live (:class:`HubSource`: a Hugging Face hub id;
:class:`LocalSource`: files of a local folder) and how rows become a text and a class
(:class:`Columns`). Both sources go through ``datasets.load_dataset`` and the same column mapping
(``lensprobe.data.loading``), so a hub id and a local folder of the same dataset yield the same
classes in the same order.

Local folders are the ones of the offline data collection (``<data_dir>/<folder>``); the library
never assumes where that collection lives: callers pass ``data_dir``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from lensprobe.data import _classes

__all__ = [
    "REGISTRY",
    "Columns",
    "DatasetSpec",
    "HubSource",
    "LocalFiles",
    "LocalSource",
    "find_spec",
]


def _freeze(mapping: Mapping[Any, Any] | None) -> Mapping[Any, Any]:
    """A read-only copy of a mapping (registry entries are shared module state)."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Columns:
    """How a row of a source becomes a text and a class name."""

    text: tuple[str, ...]
    """Column(s) holding the text; several are joined with one space (ag_news: title, description).
    Surrounding whitespace is stripped."""

    label: str
    """Column holding the label: a class name, a class id, or a value named by ``label_names``."""

    label_names: Mapping[Any, str] = field(default_factory=dict)
    """Raw label value -> class name, for labels that are neither names nor class ids (amazon star
    ratings 1 and 5). Empty: strings are class names and integers are class ids."""

    label_transform: Callable[[str], str] | None = None
    """Applied to a label's class name before it is matched (massive_scenario: the intent's
    prefix). Must be a module-level function so entries stay declarative."""

    where: Mapping[str, Any] = field(default_factory=dict)
    """Keep only rows whose column equals the value (github_code_lang: ``target == 1``)."""

    unknown_labels: Literal["error", "drop"] = "error"
    """What to do with a label that is not one of the entry's classes: raise, or drop the row
    (codeparrot/github-code holds 30 languages of which the task uses three)."""

    def __post_init__(self) -> None:
        if isinstance(self.text, str):
            object.__setattr__(self, "text", (self.text,))
        if not self.text:
            raise ValueError("Columns.text needs at least one column name")
        object.__setattr__(self, "label_names", _freeze(self.label_names))
        object.__setattr__(self, "where", _freeze(self.where))


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub, read with ``datasets.load_dataset(id, config, split)``."""

    id: str
    """Hub id, ``owner/name``."""

    columns: Columns
    """Column mapping of the hub copy."""

    split: str = "train"
    """Split loaded when the caller names none (the one the attention-probes study used)."""

    config: str | None = None
    """Hub configuration name, if the dataset has several."""

    streaming: bool = False
    """Stream rows instead of downloading the whole dataset (codeparrot/github-code is about
    1 TB); the stream stops once every class holds enough rows."""

    stream_rows_per_class: int = 2000
    """Rows kept per class when streaming and the caller gives no ``n``."""


@dataclass(frozen=True)
class LocalFiles:
    """Files of a local folder read with one ``datasets`` builder, split by split."""

    builder: Literal["csv", "json", "text", "parquet"]
    """The ``datasets`` packaged builder that reads the files."""

    splits: Mapping[str, tuple[str, ...]]
    """Split name -> file names (or glob patterns) inside the folder; ``.zst`` files are
    decompressed by ``datasets``."""

    options: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the builder (``sep="\\t"``, ``quoting=3`` for sms_spam)."""

    constants: Mapping[str, Any] = field(default_factory=dict)
    """Columns added to every row with a constant value (refusal: the label comes from the file
    name)."""

    label_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Split name -> files holding one integer label per line, aligned line by line with the text
    files (TweetEval). Read into the column ``label``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", _freeze(self.splits))
        object.__setattr__(self, "options", _freeze(self.options))
        object.__setattr__(self, "constants", _freeze(self.constants))
        object.__setattr__(self, "label_files", _freeze(self.label_files))
        if self.label_files and set(self.label_files) != set(self.splits):
            raise ValueError("LocalFiles.label_files must name the same splits as splits")


@dataclass(frozen=True)
class LocalSource:
    """A local copy: a folder, the files in it, and their column mapping."""

    folder: str
    """Folder name inside ``data_dir``."""

    files: tuple[LocalFiles, ...]
    """File groups, concatenated in order (refusal: harmful files, then harmless files)."""

    columns: Columns
    """Column mapping of the local copy."""

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split some file group provides, in first-seen order."""
        seen: dict[str, None] = {}
        for group in self.files:
            seen.update(dict.fromkeys(group.splits))
        return tuple(seen)


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: a labelled-text dataset and where its copies live."""

    name: str
    """Registry name, lowercase with underscores (``geometry_of_truth/<file>`` for that
    collection's files)."""

    task: str
    """What the label says, in a few words."""

    class_names: tuple[str, ...] | None
    """Class names in label-id order; None: taken from the data (a ``ClassLabel``'s names, else
    the sorted distinct values)."""

    hub: HubSource | None = None
    """The hub copy, if there is one."""

    local: LocalSource | None = None
    """The local copy's layout, if the offline collection has one."""

    aliases: tuple[str, ...] = ()
    """Other names that resolve to this entry."""

    def __post_init__(self) -> None:
        if self.hub is None and self.local is None:
            raise ValueError(f"{self.name}: a registry entry needs a hub or a local source")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every name this entry answers to (name, hub id, aliases), lowercase."""
        names = [self.name, *self.aliases]
        if self.hub is not None:
            names.append(self.hub.id)
        return tuple(dict.fromkeys(k.lower() for k in names))


# --- preparation functions (module level, so entries stay declarative) -------------------------


def scenario_of_intent(intent: str) -> str:
    """MASSIVE scenario of an intent: its prefix before the first ``_`` (``alarm_set`` -> alarm)."""
    return intent.split("_", 1)[0]


# --- the entries ---------------------------------------------------------------------------------

_TWEET_SPLITS = ("train", "val", "test")


def _tweet_eval_files() -> tuple[LocalFiles, ...]:
    return (
        LocalFiles(
            "text",
            splits={s: (f"{s}_text.txt",) for s in _TWEET_SPLITS},
            label_files={s: (f"{s}_labels.txt",) for s in _TWEET_SPLITS},
        ),
    )


def _github_file(language: str, file: str) -> LocalFiles:
    return LocalFiles("csv", splits={"train": (file,)}, constants={"language": language})


_GITHUB_FILES = {"C": "158_code_C.csv.zst", "Python": "159_code_Python.csv.zst"}
_GITHUB_FILES["HTML"] = "160_code_HTML.csv.zst"

_GEOMETRY_OF_TRUTH: dict[str, str] = {
    "cities": "a city is in a country",
    "neg_cities": "a city is not in a country",
    "cities_cities_conj": "conjunction of two city statements",
    "cities_cities_disj": "disjunction of two city statements",
    "sp_en_trans": "a Spanish word means an English word",
    "neg_sp_en_trans": "a Spanish word does not mean an English word",
    "larger_than": "one number is larger than another",
    "smaller_than": "one number is smaller than another",
    "common_claim_true_false": "common claims",
    "companies_true_false": "facts about companies",
    "counterfact_true_false": "counterfact facts",
}

_MASSIVE_FILES = (
    LocalFiles(
        "json",
        splits={
            "train": ("train.jsonl",),
            "validation": ("validation.jsonl",),
            "test": ("test.jsonl",),
        },
    ),
)
"""The local copy of MASSIVE (en-US), which both MASSIVE tasks read."""

_ENTRIES: list[DatasetSpec] = [
    DatasetSpec(
        "election_questions",
        "US election question is harmful (1) or harmless (0)",
        ("Harmless", "Harmful"),
        hub=HubSource(
            "Anthropic/election_questions", Columns(("question",), "label"), split="test"
        ),
    ),
    DatasetSpec(
        "reject_prompts",
        "prompt a model should reject (labels as the hub gives them)",
        None,
        hub=HubSource("AIM-Harvard/reject_prompts", Columns(("text",), "label")),
    ),
    DatasetSpec(
        "jailbreak_classification",
        "prompt is a jailbreak (1) or benign (0)",
        ("benign", "jailbreak"),
        hub=HubSource("jackhhao/jailbreak-classification", Columns(("prompt",), "type")),
        local=LocalSource(
            "jailbreak_classification",
            (
                LocalFiles(
                    "csv",
                    splits={
                        "train": ("jailbreak_dataset_train_balanced.csv",),
                        "test": ("jailbreak_dataset_test_balanced.csv",),
                    },
                ),
            ),
            Columns(("prompt",), "type"),
        ),
        aliases=("jailbreak",),
    ),
    DatasetSpec(
        "massive_intent",
        "intent of a voice-assistant request (60 classes)",
        _classes.MASSIVE_INTENTS,
        hub=HubSource("willcb/massive-intent", Columns(("input",), "label")),
        local=LocalSource(
            "massive_intent_en",
            _MASSIVE_FILES,
            Columns(("text",), "label_text"),
        ),
    ),
    DatasetSpec(
        "massive_scenario",
        "scenario of a voice-assistant request (18 classes)",
        _classes.MASSIVE_SCENARIOS,
        hub=HubSource("willcb/massive-scenario", Columns(("input",), "label")),
        local=LocalSource(
            "massive_intent_en",
            _MASSIVE_FILES,
            Columns(("text",), "label_text", label_transform=scenario_of_intent),
        ),
    ),
    DatasetSpec(
        "banking77",
        "intent of a banking customer query (77 classes)",
        _classes.BANKING77,
        hub=HubSource("legacy-datasets/banking77", Columns(("text",), "label")),
        local=LocalSource(
            "banking77",
            (LocalFiles("csv", splits={"train": ("train.csv",), "test": ("test.csv",)}),),
            Columns(("text",), "category"),
        ),
    ),
    DatasetSpec(
        "tweet_eval_stance_abortion",
        "stance of a tweet on abortion: none, against, favor",
        ("none", "against", "favor"),
        hub=HubSource("SetFit/tweet_eval_stance_abortion", Columns(("text",), "label_text")),
        local=LocalSource(
            "tweet_eval_stance_abortion", _tweet_eval_files(), Columns(("text",), "label")
        ),
    ),
    DatasetSpec(
        "bias_in_bios",
        "gender of the person a biography describes: male (0), female (1)",
        ("male", "female"),
        hub=HubSource("LabHC/bias_in_bios", Columns(("hard_text",), "gender")),
    ),
    DatasetSpec(
        "bias_in_bios_profession",
        "profession of the person a biography describes (28 classes)",
        _classes.BIAS_IN_BIOS_PROFESSIONS,
        hub=HubSource("LabHC/bias_in_bios", Columns(("hard_text",), "profession")),
    ),
    DatasetSpec(
        "amazon_reviews_1and5",
        "Amazon review has 5 stars (1) or 1 star (0)",
        ("1 star", "5 stars"),
        hub=HubSource(
            "canrager/amazon_reviews_mcauley_1and5",
            Columns(("text",), "rating", label_names={1: "1 star", 5: "5 stars"}),
        ),
        local=LocalSource(
            "amazon_reviews_1and5",
            (LocalFiles("csv", splits={"train": ("157_amazon_5star.csv",)}),),
            Columns(("prompt",), "target"),
        ),
    ),
    DatasetSpec(
        "github_code_lang",
        "programming language of a code snippet: C, Python, HTML",
        ("C", "Python", "HTML"),
        hub=HubSource(
            "codeparrot/github-code",
            Columns(("code",), "language", unknown_labels="drop"),
            streaming=True,
        ),
        local=LocalSource(
            "github_code_lang",
            tuple(_github_file(lang, file) for lang, file in _GITHUB_FILES.items()),
            Columns(("prompt",), "language", where={"target": 1}),
        ),
        aliases=("github_code",),
    ),
    *(
        DatasetSpec(
            f"github_code_{lang.lower()}",
            f"code snippet is {lang} (1) or another language (0)",
            ("other", lang),
            local=LocalSource(
                "github_code_lang",
                (LocalFiles("csv", splits={"train": (file,)}),),
                Columns(("prompt",), "target"),
            ),
        )
        for lang, file in _GITHUB_FILES.items()
    ),
    DatasetSpec(
        "ag_news",
        "topic of a news article: World, Sports, Business, Sci/Tech",
        ("World", "Sports", "Business", "Sci/Tech"),
        hub=HubSource("fancyzhx/ag_news", Columns(("text",), "label")),
        local=LocalSource(
            "ag_news",
            (LocalFiles("csv", splits={"test": ("test.csv",)}),),
            Columns(("title", "description"), "class"),
        ),
    ),
    *(
        DatasetSpec(
            f"geometry_of_truth/{stem}",
            f"statement is true (1) or false (0): {what}",
            ("false", "true"),
            local=LocalSource(
                "geometry_of_truth",
                (LocalFiles("csv", splits={"train": (f"{stem}.csv",)}),),
                Columns(("statement",), "label"),
            ),
            aliases=(f"got_{stem}",),
        )
        for stem, what in _GEOMETRY_OF_TRUTH.items()
    ),
    DatasetSpec(
        "refusal_harmful_harmless",
        "instruction is harmful (1) or harmless (0); very imbalanced (871 vs 31,323)",
        ("harmless", "harmful"),
        local=LocalSource(
            "refusal_harmful_harmless",
            tuple(
                LocalFiles(
                    "json",
                    splits={s: (f"{kind}_{s}.json",) for s in ("train", "val", "test")},
                    constants={"kind": kind},
                )
                for kind in ("harmful", "harmless")
            ),
            Columns(("instruction",), "kind"),
        ),
        aliases=("refusal",),
    ),
    DatasetSpec(
        "sms_spam",
        "SMS is spam (1) or ham (0); imbalanced (747 vs 4,827)",
        ("ham", "spam"),
        local=LocalSource(
            "sms_spam",
            (
                LocalFiles(
                    "csv",
                    splits={"train": ("SMSSpamCollection",)},
                    # Tab-separated with a header line; quotes are literal text, not quoting.
                    options={"sep": "\t", "quoting": 3},
                ),
            ),
            Columns(("SMS",), "Label"),
        ),
    ),
    DatasetSpec(
        "sst2",
        "sentiment of a movie-review phrase: negative (0), positive (1)",
        ("negative", "positive"),
        local=LocalSource(
            "sst2",
            (LocalFiles("csv", splits={"train": ("92_glue_sst2.csv",)}),),
            Columns(("prompt",), "target"),
        ),
    ),
    DatasetSpec(
        "tweet_eval_emotion",
        "emotion of a tweet: anger, joy, optimism, sadness",
        ("anger", "joy", "optimism", "sadness"),
        local=LocalSource("tweet_eval_emotion", _tweet_eval_files(), Columns(("text",), "label")),
    ),
]

REGISTRY: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in _ENTRIES})
"""Every registry entry by name, in a stable order (study datasets first)."""

_BY_KEY: Mapping[str, DatasetSpec] = MappingProxyType(
    {key: spec for spec in reversed(_ENTRIES) for key in spec.keys}
)


def find_spec(name: str) -> DatasetSpec | None:
    """The registry entry a name, hub id or alias refers to (case-insensitive), or None.

    A hub id shared by several entries (LabHC/bias_in_bios) resolves to the first of them.
    """
    return _BY_KEY.get(name.strip().lower())
