"""The package's shape: imports flow one way (docs/architecture.md), and bodies stay short.

The rules live in ``scripts/structure.py`` (``LAYERS``), which also prints the figures; these tests
fail when a change adds an import cycle, an import that goes up a layer, or a function over 80 lines.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def structure():
    spec = importlib.util.spec_from_file_location(
        "lensprobe_structure", ROOT / "scripts/structure.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_no_import_cycle(structure):
    assert structure.cycles(structure.import_graph()) == []
    # imports inside functions count too: a lazy import is still a cycle
    assert structure.cycles(structure.import_graph(deferred=True)) == []


def test_imports_go_down_the_layers(structure):
    assert structure.layering_problems(structure.import_graph(deferred=True)) == []


def test_every_module_is_in_a_layer(structure):
    graph = structure.import_graph()
    unplaced = [m for m in graph if m != "lensprobe" and structure.layer_of(m) is None]
    assert unplaced == []


def test_the_checks_catch_a_cycle_an_upward_import_and_the_root(structure):
    graph = {
        "lensprobe.metrics": {"lensprobe.train.fit"},  # up: metrics is below train
        "lensprobe.train.fit": {"lensprobe.metrics", "lensprobe.train.split"},
        "lensprobe.train.split": {"lensprobe.train.fit"},  # a cycle inside train
        "lensprobe.viz.widgets": {"lensprobe"},  # the root package
        "lensprobe.somewhere": set(),  # in no layer
    }
    assert structure.cycles(graph) == [
        ["lensprobe.metrics", "lensprobe.train.fit", "lensprobe.train.split"]
    ]
    problems = "\n".join(structure.layering_problems(graph))
    assert "lensprobe.metrics (layer 2) imports lensprobe.train.fit" in problems
    assert "lensprobe.viz.widgets imports the root package" in problems
    assert "lensprobe.somewhere is in no layer" in problems
    assert "lensprobe.train.fit (layer 11) imports" not in problems  # down, or its own package
    assert "lensprobe.train.split (layer 11) imports" not in problems


def test_a_lazy_import_that_closes_a_cycle_is_reported(structure, tmp_path, monkeypatch):
    """Imports inside functions count, with no exemption (not even a DeprecationWarning shim)."""
    package = tmp_path / "lensprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "old.py").write_text(
        "import warnings\n"
        "def shim():\n"
        "    warnings.warn('use new', DeprecationWarning, stacklevel=2)\n"
        "    from lensprobe import new\n"
        "    return new\n"
    )
    (package / "new.py").write_text("from lensprobe import old\n")
    monkeypatch.setattr(structure, "ROOT", tmp_path)
    monkeypatch.setattr(structure, "PACKAGE", package)
    assert structure.cycles(structure.import_graph()) == []
    assert structure.cycles(structure.import_graph(deferred=True)) == [
        ["lensprobe.new", "lensprobe.old"]
    ]


def test_no_function_in_lensprobe_is_over_80_lines(structure):
    long = [(name, n) for name, n in structure.measure(top=10_000)["largest_functions"] if n > 80]
    assert long == []


def test_the_map_in_docs_lists_the_layers_the_test_enforces(structure):
    import re

    rows = re.findall(r"^\| (\d+) \| (.+?) \|", (ROOT / "docs/architecture.md").read_text(), re.M)
    documented = [tuple(re.findall(r"`([\w.]+)/?`", names)) for _, names in rows]
    assert [int(i) for i, _ in rows] == list(range(len(structure.LAYERS)))
    assert documented == [tuple(layer) for layer in structure.LAYERS]
