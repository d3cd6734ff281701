"""The lock file covers what pyproject asks for, and the README says how to refresh it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _locked() -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins.setdefault(m.group(1).lower().replace("_", "-"), []).append(m.group(2))
    return pins


def test_every_dependency_is_locked():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in reqs if not r.startswith("lensprobe")}
    missing = sorted(wanted - set(_locked()))
    assert not missing, f"not in requirements/lock.txt: {missing}; refresh the lock (README)"


def test_lock_pins_the_torch_that_setup_installs():
    torch_pin = (REPO / "requirements" / "torch.txt").read_text()
    version = re.search(r"^torch==(\S+)", torch_pin, flags=re.M).group(1)
    assert _locked()["torch"] == [version]


def test_readme_gives_the_command_that_made_the_lock():
    header = (REPO / "requirements" / "lock.txt").read_text().splitlines()[1]
    command = header.lstrip("# ").strip()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert command.startswith("pip install uv && uv pip compile")
    assert command in readme


def test_the_dev_extra_runs_the_notebooks_and_the_estimator_checks():
    """``pip install -e ".[dev]"`` is all a reader needs to execute the notebooks."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    needed = {"nbconvert", "nbclient", "ipykernel", "ipywidgets", "scikit-learn"}
    assert needed <= dev, f"the dev extra lacks {sorted(needed - dev)}"
