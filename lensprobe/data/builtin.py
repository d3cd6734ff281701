"""Built-in generated tasks that ship with lensprobe: no download, deterministic, sized by argument.

- ``facts``: true/false factual statements rendered from a table of facts (cities and their
  countries, capitals, continents, animal classes). Binary: false (0), true (1).
- ``needle``: a long text of neutral filler words with exactly one special word at a uniformly
  random position, an animal (label 1) or a musical instrument (label 0). The label depends on
  one token anywhere in the text: a last-token or mean probe has to find a one-token signal
  diluted over 60-110 words, while an attention probe can attend to it.
- ``topics``: the topic of a templated sentence. Four classes: sports, cooking, weather,
  technology.

The tables live in ``lensprobe/data/builtin/*.json`` (package data, written for this project).
Every generator returns classes that are balanced to within one row and the same rows for the
same ``(n, seed)``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import numpy as np

from lensprobe.data.dataset import TextDataset
from lensprobe.errors import InputError

__all__ = [
    "BUILTIN_TASKS",
    "BuiltinTask",
    "make_facts",
    "make_needle",
    "make_topics",
]


@functools.cache
def _table(name: str) -> Mapping[str, Any]:
    """A JSON table of ``lensprobe/data/builtin`` (read once; callers must not mutate it)."""
    text = resources.files("lensprobe.data").joinpath("builtin", f"{name}.json").read_text("utf-8")
    return json.loads(text)


def _class_sizes(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` split into ``n_classes`` sizes that differ by at most one (extras to random classes)."""
    sizes = np.full(n_classes, n // n_classes, dtype=np.int64)
    sizes[rng.permutation(n_classes)[: n % n_classes]] += 1
    return sizes


def _check_size(n: int, task: str) -> None:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 2:
        raise InputError(f"{task}: n must be an integer of at least 2, got {n!r}")


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _fact_statements(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Every true statement of the table and one false twin of each (a wrong object)."""
    true, false = [], []
    for relation in _table("facts")["relations"]:
        facts: dict[str, str] = relation["facts"]
        objects = sorted(set(facts.values()))
        for template in relation["templates"]:
            for subject, obj in facts.items():
                wrong = [o for o in objects if o != obj]
                other = wrong[int(rng.integers(len(wrong)))]
                true.append(_capitalize(template.format(subject=subject, object=obj)))
                false.append(_capitalize(template.format(subject=subject, object=other)))
    return true, false


def make_facts(n: int = 400, *, seed: int = 0) -> TextDataset:
    """True/false factual statements: "The city of Osaka is in Japan." (1) vs a wrong country (0).

    Args:
        n: Number of statements, at most twice the number of facts (862).
        seed: Seed of the draw (which facts, which wrong objects, which order).

    Returns:
        ``n`` statements, classes ``("false", "true")`` balanced to within one.

    Raises:
        ValueError: If ``n`` is below 2 or above the table's capacity.
    """
    _check_size(n, "facts")
    rng = np.random.default_rng(seed)
    true, false = _fact_statements(rng)
    capacity = 2 * min(len(true), len(false))
    if n > capacity:
        raise InputError(f"facts: n={n} exceeds the {capacity} distinct statements the table holds")
    n_false, n_true = _class_sizes(n, 2, rng)
    rows = [(false[i], 0) for i in rng.choice(len(false), size=n_false, replace=False)]
    rows += [(true[i], 1) for i in rng.choice(len(true), size=n_true, replace=False)]
    order = rng.permutation(len(rows))
    return TextDataset(
        "facts",
        [rows[i][0] for i in order],
        [rows[i][1] for i in order],
        ("false", "true"),
        source=f"builtin:facts(n={n}, seed={seed})",
    )


def _haystack(
    rng: np.random.Generator, filler: list[str], special: str, n_words: int
) -> tuple[str, int]:
    """Filler sentences of ``n_words`` words with ``special`` at a uniform word position."""
    words = [filler[i] for i in rng.integers(len(filler), size=n_words - 1)]
    position = int(rng.integers(n_words))
    words.insert(position, special)
    sentences, start = [], 0
    while start < n_words:  # sentences of 8-14 words, each capitalised and closed by a period
        stop = min(n_words, start + int(rng.integers(8, 15)))
        sentences.append(_capitalize(" ".join(words[start:stop])) + ".")
        start = stop
    return " ".join(sentences), position


def make_needle(
    n: int = 400, *, seed: int = 0, min_words: int = 60, max_words: int = 110
) -> TextDataset:
    """Needle in a haystack: is the one special word in a long filler text an animal?

    Each text holds ``min_words`` to ``max_words`` words (uniform) of neutral filler in sentences,
    plus exactly one special word at a uniformly random word position: an animal (label 1) or a
    musical instrument (label 0). Both classes have one unusual word, so its presence says
    nothing; only its identity does. With the Gemma 3 tokenizer a text is about 65-125 tokens and
    every special word is a single token.

    Args:
        n: Number of texts.
        seed: Seed of the draw.
        min_words: Fewest words in a text (the special word included).
        max_words: Most words in a text.

    Returns:
        ``n`` texts, classes ``("instrument", "animal")`` balanced to within one.

    Raises:
        ValueError: If ``n`` is below 2 or the word bounds are not ``1 <= min_words <= max_words``.
    """
    _check_size(n, "needle")
    if not 1 <= min_words <= max_words:
        raise InputError(f"needle: need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    table = _table("needle")
    rng = np.random.default_rng(seed)
    sizes = _class_sizes(n, 2, rng)
    labels = np.repeat(np.arange(2), sizes)[rng.permutation(n)]
    texts = []
    for label in labels.tolist():
        pool = table["needles"] if label == 1 else table["decoys"]
        special = pool[int(rng.integers(len(pool)))]
        n_words = int(rng.integers(min_words, max_words + 1))
        texts.append(_haystack(rng, table["filler"], special, n_words)[0])
    return TextDataset(
        "needle",
        texts,
        labels,
        ("instrument", "animal"),
        source=f"builtin:needle(n={n}, seed={seed}, words={min_words}-{max_words})",
    )


def make_topics(n: int = 400, *, seed: int = 0) -> TextDataset:
    """Topic of a templated sentence: sports, cooking, weather or technology.

    A sentence joins a name, a topic phrase and a time phrase ("Anna baked a loaf of bread on
    Monday." or "On Monday, Anna baked a loaf of bread."); the topic phrase alone decides the class.
    Sentences are drawn without replacement.

    Args:
        n: Number of sentences (at most 4 x 7,200).
        seed: Seed of the draw.

    Returns:
        ``n`` sentences, classes ``("sports", "cooking", "weather", "technology")`` balanced to
        within one.

    Raises:
        ValueError: If ``n`` is below 2 or above the number of distinct sentences.
    """
    _check_size(n, "topics")
    table = _table("topics")
    topics: dict[str, list[str]] = table["topics"]
    names, times = table["names"], table["times"]
    class_names = tuple(topics)
    rng = np.random.default_rng(seed)
    sizes = _class_sizes(n, len(class_names), rng)
    rows: list[tuple[str, int]] = []
    for label, phrases in enumerate(topics.values()):
        shape = (len(phrases), len(names), len(times), 2)
        capacity = int(np.prod(shape))
        if sizes[label] > capacity:
            raise InputError(
                f"topics: n={n} exceeds the {capacity * len(class_names)} distinct sentences"
            )
        for flat in rng.choice(capacity, size=int(sizes[label]), replace=False).tolist():
            p, who, when, order = np.unravel_index(flat, shape)
            phrase, name, time = phrases[p], names[who], times[when]
            if order == 0:
                text = f"{name} {phrase} {time}."
            else:
                text = f"{_capitalize(time)}, {name} {phrase}."
            rows.append((text, label))
    order = rng.permutation(len(rows))
    return TextDataset(
        "topics",
        [rows[i][0] for i in order],
        [rows[i][1] for i in order],
        class_names,
        source=f"builtin:topics(n={n}, seed={seed})",
    )


@dataclass(frozen=True)
class BuiltinTask:
    """A generated task that ships with the package."""

    name: str
    """Name ``load_dataset`` knows it by."""

    task: str
    """What the label says, in a few words."""

    class_names: tuple[str, ...]
    """Class names in label order."""

    make: Callable[..., TextDataset]
    """Generator: ``make(n, seed=seed)``."""

    default_size: int
    """Rows generated when the caller gives no ``n``."""


BUILTIN_TASKS: Mapping[str, BuiltinTask] = MappingProxyType(
    {
        "facts": BuiltinTask(
            "facts",
            "factual statement is true (1) or false (0)",
            ("false", "true"),
            make_facts,
            400,
        ),
        "needle": BuiltinTask(
            "needle",
            "the one special word in a long filler text is an animal (1) or an instrument (0)",
            ("instrument", "animal"),
            make_needle,
            400,
        ),
        "topics": BuiltinTask(
            "topics",
            "topic of a sentence: sports, cooking, weather, technology",
            ("sports", "cooking", "weather", "technology"),
            make_topics,
            400,
        ),
    }
)
"""The built-in tasks by name."""
