"""Labelled text for probing: the dataset registry, local and hub loading, built-in tasks.

Typical use::

    from lensprobe.data import load_dataset
    ds = load_dataset("banking77", data_dir="path/to/data", n=2000, seed=0)
    ds = load_dataset("legacy-datasets/banking77")        # the same entry, from the hub
    ds = load_dataset("needle", n=400)                     # a built-in generated task

The registry's entries are a table (``lensprobe/data/registry.json``); the sources and column
mappings it is built from live in :mod:`lensprobe.data.registry`.
"""

from __future__ import annotations

from lensprobe.data.builtin import BUILTIN_TASKS, BuiltinTask, make_facts, make_needle, make_topics
from lensprobe.data.dataset import TextDataset
from lensprobe.data.loading import DatasetInfo, list_datasets, load_dataset
from lensprobe.data.registry import REGISTRY, DatasetSpec, find_spec

__all__ = [
    "BUILTIN_TASKS",
    "REGISTRY",
    "BuiltinTask",
    "DatasetInfo",
    "DatasetSpec",
    "TextDataset",
    "find_spec",
    "list_datasets",
    "load_dataset",
    "make_facts",
    "make_needle",
    "make_topics",
]
