"""The top level holds the verbs and main classes; names that moved still work for one release."""

from __future__ import annotations

import importlib

import pytest

import lensprobe as lp


def test_the_top_level_is_small_and_importable():
    names = [n for n in lp.__all__ if not n.startswith("_")]
    assert len(names) <= 35, names
    for name in names:
        assert getattr(lp, name) is not None


@pytest.mark.parametrize("name", sorted(lp._MOVED))
def test_moved_names_warn_and_point_to_their_home(name):
    home = lp._MOVED[name]
    with pytest.warns(DeprecationWarning, match=rf"use {home}\.{name}\b"):
        value = getattr(lp, name)
    assert value is getattr(importlib.import_module(home), name)
    assert name not in lp.__all__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        lp.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("package", "name"), [("lensprobe", "CaptureStats"), ("lensprobe.data", "Columns")]
)
def test_a_from_import_of_a_moved_name_warns_once_at_the_users_line(tmp_path, package, name):
    import subprocess
    import sys

    script = tmp_path / "user.py"
    script.write_text(f"import lensprobe\nfrom {package} import {name}\n")
    out = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in out.stderr.splitlines() if "DeprecationWarning" in line]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{script}:2: DeprecationWarning: {package}.{name}")


@pytest.mark.parametrize("name", ["Columns", "HubSource", "LocalFiles", "LocalSource"])
def test_registry_types_that_left_lensprobe_data_warn_and_still_work(name):
    from lensprobe import data
    from lensprobe.data import registry

    with pytest.warns(DeprecationWarning, match=rf"use lensprobe\.data\.registry\.{name}\b"):
        value = getattr(data, name)
    assert value is getattr(registry, name)
    assert name not in data.__all__
