"""The top level holds the verbs and main classes; record types live only in their submodules."""

from __future__ import annotations

import importlib

import pytest

import lensprobe as lp


def test_the_top_level_is_small_and_importable():
    names = [n for n in lp.__all__ if not n.startswith("_")]
    assert len(names) <= 38, names  # verbs (monitor the latest), main classes, two estimators
    for name in names:
        assert getattr(lp, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        lp.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("package", "name"),
    [("lensprobe", "CaptureStats"), ("lensprobe.data", "Columns"), ("lensprobe.viz", "entropy")],
)
def test_names_of_lensprobe_0_1_that_moved_are_gone(package, name):
    with pytest.raises(AttributeError, match=name):
        getattr(importlib.import_module(package), name)
