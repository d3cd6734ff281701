"""The registry is a table (lensprobe/data/registry.json) read into DatasetSpec entries."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from lensprobe.data import REGISTRY
from lensprobe.data.registry import LABEL_TRANSFORMS, read_table, scenario_of_intent


def _table() -> dict:
    text = resources.files("lensprobe.data").joinpath("registry.json").read_text(encoding="utf-8")
    return json.loads(text)


def test_the_shipped_table_is_the_registry():
    entries = read_table(json.dumps(_table()))
    assert tuple(REGISTRY.values()) == entries
    assert [e.name for e in entries][:3] == [
        "election_questions",
        "reject_prompts",
        "jailbreak_classification",
    ]


def test_named_transforms_and_typed_fields_survive_the_table():
    scenario = REGISTRY["massive_scenario"]
    assert scenario.local.columns.label_transform is scenario_of_intent
    assert LABEL_TRANSFORMS["scenario_of_intent"]("alarm_set") == "alarm"
    assert REGISTRY["sms_spam"].local.files[0].options == {"sep": "\t", "quoting": 3}
    assert REGISTRY["github_code_lang"].local.columns.where == {"target": 1}
    assert REGISTRY["github_code_lang"].hub.streaming
    assert REGISTRY["tweet_eval_emotion"].local.files[0].label_files["val"] == ("val_labels.txt",)
    assert len(REGISTRY["banking77"].class_names) == 77


def _one(entry: dict) -> str:
    return json.dumps({"datasets": [entry]})


def test_a_typo_or_an_unknown_transform_is_an_error():
    base = {"name": "x", "task": "t", "classes": None, "hub": {"id": "a/b", "text": ["t"]}}
    base["hub"]["label"] = "l"
    assert read_table(_one(base))[0].hub.id == "a/b"
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['tsak'\]"):
        read_table(_one({**base, "tsak": "t"}))
    bad = {**base, "hub": {**base["hub"], "label_transform": "lambda"}}
    with pytest.raises(ValueError, match="unknown label_transform 'lambda'"):
        read_table(_one(bad))
    with pytest.raises(ValueError, match="needs a hub or a local source"):
        read_table(_one({k: v for k, v in base.items() if k != "hub"}))
