"""The ``lensprobe`` command line.

Each subcommand is one :class:`Command`: a frozen options dataclass whose fields are its flags
(:mod:`~lensprobe.cli.options`; the parser is generated from them by
:mod:`~lensprobe.cli.parsing`), and a function that runs it and returns an exit status
(:mod:`~lensprobe.cli.commands`, sharing the steps of :mod:`~lensprobe.cli.steps`). Adding a
command means adding an options class, a function and one entry to :data:`COMMANDS`. The command
line may print; the library never does.

Example:
    $ lensprobe datasets --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lensprobe.cli import commands
from lensprobe.cli import options as opts
from lensprobe.cli.commands import format_datasets_table
from lensprobe.cli.options import DATA_DIR_ENV, DatasetsOptions
from lensprobe.cli.parsing import add_flags, parse_options
from lensprobe.cli.steps import say
from lensprobe.errors import LensprobeError

__all__ = [
    "COMMANDS",
    "DATA_DIR_ENV",
    "Command",
    "DatasetsOptions",
    "format_datasets_table",
    "main",
]


@dataclass(frozen=True)
class Command:
    """A subcommand of ``lensprobe``."""

    name: str
    """Name typed after ``lensprobe``."""

    help: str
    """One line shown by ``lensprobe --help``."""

    options: type
    """Frozen dataclass of the subcommand's options; its fields are the parsed flags."""

    run: Callable[[Any], int]
    """Runs the subcommand on its options and returns the exit status."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add one flag per field of :attr:`options` (help, default and kind from the field)."""
        add_flags(parser, self.options)


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "datasets",
            "list built-in tasks and datasets, with sizes and classes",
            DatasetsOptions,
            commands.run_datasets,
        ),
        Command(
            "demo",
            "the bundled Gemma 3 270M on the built-in tasks: probes, table and HTML report",
            opts.DemoOptions,
            commands.run_demo,
        ),
        Command(
            "run",
            "capture any model at hooks on a dataset, train probes, write results and a report",
            opts.RunOptions,
            commands.run_run,
        ),
        Command(
            "capture",
            "capture a dataset at hooks into an on-disk activation store",
            opts.CaptureOptions,
            commands.run_capture,
        ),
        Command(
            "train",
            "train probes on a stored capture (results, probes, report)",
            opts.TrainOptions,
            commands.run_train,
        ),
        Command(
            "report",
            "rebuild the HTML report from saved results and the activation store",
            opts.ReportOptions,
            commands.run_report,
        ),
    )
}
"""Every subcommand by name."""

DEBUG_HELP = "show the full traceback of an error instead of one line"


def build_parser() -> argparse.ArgumentParser:
    """The ``lensprobe`` parser: ``--debug`` and one subparser per command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="lensprobe", description="Attention probes at TransformerLens / nnsight hook names."
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        subparser = sub.add_parser(command.name, help=command.help)
        command.add_arguments(subparser)
        # also accepted after the command name; SUPPRESS keeps a top-level --debug
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


USER_ERRORS: tuple[type[BaseException], ...] = (LensprobeError, ValueError, OSError, ImportError)
"""Errors the command line reports as one line (``--debug`` shows the traceback); any other
exception is a bug and keeps its traceback."""


def _run(command: Command, namespace: argparse.Namespace) -> int:
    """Run ``command`` on the parsed flags; a user's error or an interrupt becomes one line."""
    debug = bool(getattr(namespace, "debug", False))
    try:
        return command.run(parse_options(command.options, namespace))
    except KeyboardInterrupt:
        if debug:
            raise
        say(
            f"lensprobe {command.name}: interrupted; rerun the same command to resume (finished "
            "capture shards are kept)",
            err=True,
        )
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        say(f"lensprobe {command.name}: error: {text}", err=True)
        return 1


def main(args: list[str] | None = None) -> int:
    """Run the ``lensprobe`` command line.

    Args:
        args: Arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when the command failed, 2 for a usage error, 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        namespace = parser.parse_args(args)
    except SystemExit as exit_:  # argparse exits on --help (0) and on usage errors (2)
        return int(exit_.code or 0)
    if namespace.command is None:
        parser.print_help()
        return 2
    return _run(COMMANDS[namespace.command], namespace)
