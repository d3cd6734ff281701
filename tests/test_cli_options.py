"""The ``lensprobe`` parser is generated from the options dataclasses: one definition per flag."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass

import pytest

from lensprobe.cli import COMMANDS, main
from lensprobe.cli.options import DATA_DIR_ENV, DEMO_HOOKS, DatasetsOptions
from lensprobe.cli.parsing import add_flags, field_docs, flag, flag_name, parse_options
from lensprobe.specs import DEFAULT_PROBES


def _parser(options: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_flags(parser, options)
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_field_is_a_flag_with_its_default_and_docstring(name, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    options = COMMANDS[name].options
    actions = _actions(_parser(options))
    fields = dataclasses.fields(options)
    assert set(actions) == {f.name for f in fields}
    docs = field_docs(options)
    for f in fields:
        action = actions[f.name]
        assert action.option_strings[-1] == flag_name(f)
        if f.default is dataclasses.MISSING:
            assert action.required, f.name
        else:
            assert action.default == f.default and not action.required, f.name
        # the help is the docstring's words (quotes and case aside), not a second text
        words = docs[f.name].replace("``", "`").rstrip(".").split()
        assert " ".join(words[1:]) in " ".join(action.help.split()), f.name
        hint = typing.get_type_hints(options)[f.name]
        if typing.get_origin(hint) is typing.Literal:
            assert action.choices == list(typing.get_args(hint))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_parsing_nothing_gives_the_dataclass_defaults(name, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    options = COMMANDS[name].options
    required = {
        f.name: "x" for f in dataclasses.fields(options) if f.default is dataclasses.MISSING
    }
    args = [a for k, v in required.items() for a in (f"--{k.replace('_', '-')}", v)]
    parsed = parse_options(options, _parser(options).parse_args(args))
    assert parsed == options(**required)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_a_spelling_that_survives_torchrun(name):
    """``torchrun ... -m lensprobe capture --n-texts 64`` reaches lensprobe's parser unchanged.

    torchrun's own parser classifies every argument first and stops at a prefix of its options
    ("--n" could be --nnodes or --nproc-per-node); the long spelling of each flag must not be one.
    """
    from torch.distributed.run import get_args_parser

    launcher = ["--standalone", "--nproc-per-node", "2", "-m", "lensprobe", name]
    for action in _actions(_parser(COMMANDS[name].options)).values():
        spelling = action.option_strings[-1]
        value = [] if action.nargs == 0 else ["1"]
        args = get_args_parser().parse_args([*launcher, spelling, *value])
        assert args.training_script_args == [name, spelling, *value], spelling
    with pytest.raises(SystemExit):  # why --n-texts exists: the short --n is ambiguous there
        get_args_parser().parse_args([*launcher, "--n", "5"])


def test_every_options_field_has_a_docstring():
    for command in COMMANDS.values():
        docs = field_docs(command.options)
        missing = [f.name for f in dataclasses.fields(command.options) if not docs.get(f.name)]
        assert not missing, f"lensprobe {command.name}: fields without a docstring: {missing}"


def test_a_field_without_a_docstring_is_refused():
    @dataclass(frozen=True)
    class Half:
        documented: int = 1
        """Has help."""
        silent: int = 2

    assert set(field_docs(Half)) == {"documented"}
    with pytest.raises(TypeError, match=r"Half\.silent has no docstring"):
        _parser(Half)


def test_flag_kinds_follow_the_field_types(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, "/from/env")
    parser = _parser(DatasetsOptions)
    assert parse_options(DatasetsOptions, parser.parse_args([])) == DatasetsOptions(
        data_dir="/from/env", count=True
    )
    assert not parse_options(DatasetsOptions, parser.parse_args(["--no-count"])).count
    run = COMMANDS["run"].options
    parsed = parse_options(
        run, _parser(run).parse_args(["--dataset", "d", "--hooks", " a, b,,", "--n", "5"])
    )
    assert parsed.hooks == ("a", "b") and parsed.n_texts == 5
    long = parse_options(run, _parser(run).parse_args(["--dataset", "d", "--n-texts", "7"]))
    assert long.n_texts == 7
    assert parsed.probes == DEFAULT_PROBES  # the library's default, not a copy
    assert COMMANDS["demo"].options().hooks == DEMO_HOOKS
    # one default size for the API and every command
    import inspect

    from lensprobe.capturing import capture

    defaults = inspect.signature(capture).parameters
    for name in ("run", "capture", "demo"):
        options = COMMANDS[name].options
        for field in ("max_length", "batch_size"):
            default = options.__dataclass_fields__[field].default
            assert default == defaults[field].default, (name, field)
    with pytest.raises(SystemExit):
        _parser(run).parse_args(["--dataset", "d", "--backend", "torch"])


def test_help_shows_the_docstring_and_the_default(capsys):
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--quick a one-minute run (80 texts per task, 300 AdamW steps, one layer)" in out
    assert (
        "--max-length MAX_LENGTH tokens kept per text, BOS included (as in lp.capture) "
        "(default: 256)" in out
    )
    assert "--seeds SEEDS splits per probe: a count (3 means seeds 0,1,2) or a list" in out


def test_flag_metadata_adds_what_the_type_does_not_say():
    @dataclass(frozen=True)
    class Special:
        out: str = flag("here", short="-o", metavar="DIR")
        """Where to write."""
        scale: float = flag(1.0, type=lambda text: float(text) / 100)
        """Percent."""

    parser = _parser(Special)
    actions = _actions(parser)
    assert actions["out"].option_strings == ["-o", "--out"] and actions["out"].metavar == "DIR"
    assert actions["out"].help == "where to write (default: here)"
    assert parse_options(Special, parser.parse_args(["-o", "x", "--scale", "50"])) == Special(
        out="x", scale=0.5
    )


def test_the_parser_loads_no_torch():
    """``lensprobe --help`` answers at once: building the parser imports no torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lensprobe.cli import build_parser\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_draws_the_subsample_and_seeds_the_splits():
    import lensprobe as lp
    from lensprobe.cli import steps

    def texts(*flags: str) -> tuple[str, ...]:
        options = parse_options(
            COMMANDS["run"].options, _parser(COMMANDS["run"].options).parse_args(flags)
        )
        return steps.load_text_dataset(options).texts

    base = ("--dataset", "topics", "--n", "24")
    assert texts(*base, "--seed", "3") == lp.load_dataset("topics", n=24, seed=3).texts
    assert texts(*base, "--seed", "3") != texts(*base)  # default seed 0
    # --classes fixes the class order (probe output i is the i-th name)
    flags = [*base, "--classes", "weather,sports,technology,cooking"]
    options = parse_options(
        COMMANDS["run"].options, _parser(COMMANDS["run"].options).parse_args(flags)
    )
    ds = steps.load_text_dataset(options)
    assert ds.class_names == ("weather", "sports", "technology", "cooking")
    default = lp.load_dataset("topics", n=24)
    assert [ds.class_names[i] for i in ds.labels] == [
        default.class_names[i] for i in default.labels
    ]


def test_seeds_is_a_count_or_a_list_in_the_cli_and_in_python():
    import lensprobe as lp
    from lensprobe.cli.steps import seeds_flag
    from lensprobe.errors import InputError

    assert seeds_flag("3") == lp.ProtocolConfig(seeds=3).seeds == (0, 1, 2)
    assert seeds_flag("0,4,7") == lp.ProtocolConfig(seeds=(0, 4, 7)).seeds == (0, 4, 7)
    assert seeds_flag("5,") == (5,)  # a trailing comma makes a list of one seed
    for bad in ("0", "x", "", "1.5"):
        with pytest.raises(InputError, match="seed"):
            seeds_flag(bad)
    with pytest.raises(InputError, match="at least one seed"):
        lp.ProtocolConfig(seeds=0)
