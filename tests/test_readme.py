"""Every Python example in the README runs as written (on the bundled model)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_examples():
    assert len(_examples()) >= 3


def _params() -> list:
    """One case per example; those that load the model are ``slow``, the rest run everywhere."""
    return [
        pytest.param(i, marks=[pytest.mark.slow] if "load_model" in code else [])
        for i, code in enumerate(_examples())
    ]


@pytest.mark.parametrize("index", _params())
def test_readme_example_runs_as_a_script_and_shows_its_result(index, tmp_path, monkeypatch, capsys):
    """Each block, run as a script, prints what it shows and writes the files it saves."""
    monkeypatch.chdir(tmp_path)  # examples may write files (probe/)
    code = _examples()[index]
    script = tmp_path / f"readme_example_{index + 1}.py"  # nnsight reads trace bodies from files
    script.write_text(code)
    runpy.run_path(str(script), run_name="__readme__")
    assert capsys.readouterr().out.strip(), f"README example {index + 1} prints nothing"
    for target in re.findall(r"""\.save\(["']([^"']+)["']\)""", code):
        assert (tmp_path / target).exists(), f"README example {index + 1} did not write {target}"


def test_capture_stays_callable_after_its_subpackage_is_imported():
    import subprocess
    import sys

    code = (
        "import sys, lensprobe.capturing, lensprobe as lp\n"
        "m = sys.modules['lensprobe.capturing']\n"
        "assert callable(lp.capture) and lp.capture is m.capture, type(lp.capture)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_lensprobe_is_cheap():
    """``import lensprobe`` loads no torch (nor any backend) until a name that needs it is used."""
    import subprocess
    import sys

    code = (
        "import sys, lensprobe as lp\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'nnsight', "
        "'datasets', 'circuitsvis', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert lp.__version__ and 'capture' in dir(lp)\n"
        "lp.capture\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
