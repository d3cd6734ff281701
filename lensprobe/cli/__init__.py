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
import errno
import re
import traceback
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

    example: str = ""
    """A typical command line, shown at the end of the subcommand's ``--help`` (tested to parse)."""

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
            "lensprobe datasets --data-dir ../shared/data",
        ),
        Command(
            "demo",
            "the bundled Gemma 3 270M on the built-in tasks: probes, table and HTML report",
            opts.DemoOptions,
            commands.run_demo,
            "lensprobe demo --quick",
        ),
        Command(
            "run",
            "capture any model at hooks on a dataset, train probes, write results and a report",
            opts.RunOptions,
            commands.run_run,
            "lensprobe run --dataset my_news.csv --text-column title --label-column topic "
            "--hooks blocks.6.hook_resid_post,blocks.9.hook_resid_post --probes attention-8,mean",
        ),
        Command(
            "capture",
            "capture a dataset at hooks into an on-disk activation store",
            opts.CaptureOptions,
            commands.run_capture,
            "lensprobe capture --dataset sst2 --n-texts 2000 --hooks blocks.9.hook_resid_post --out acts/",
        ),
        Command(
            "train",
            "train probes on a stored capture (results, probes, report)",
            opts.TrainOptions,
            commands.run_train,
            "lensprobe train --acts acts/ --probes attention-8,attention-1,mean,last --seeds 3 "
            "--max-memory 4GB",
        ),
        Command(
            "report",
            "rebuild the HTML report from saved results and the activation store",
            opts.ReportOptions,
            commands.run_report,
            "lensprobe report --results lensprobe-run",
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
        subparser = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help[:1].upper() + command.help[1:] + ".",
            epilog=f"example:\n  {command.example}" if command.example else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
        # also accepted after the command name; SUPPRESS keeps a top-level --debug
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


USER_OS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
"""OS errors that are about the user's machine even when they name no path (a full disk)."""


def is_user_error(err: BaseException) -> bool:
    """Whether the command line reports ``err`` as one line (else: a bug, with its traceback).

    One line for lensprobe's named errors and for OS errors on the user's paths (an error naming
    a file, or a full / read-only disk); any other exception is a bug in lensprobe.
    """
    if isinstance(err, LensprobeError):
        return True
    if isinstance(err, OSError):
        return err.filename is not None or err.errno in USER_OS_ERRNOS
    return False


def cli_spelling(text: str, namespace: argparse.Namespace) -> str:
    """An error's keyword arguments spelled as this command's flags.

    ``text_column=`` -> ``--text-column`` for each option the command has; a keyword inside a
    call (``run_protocol(max_memory=...)``) is left as written.
    """
    for dest in vars(namespace):
        flag = "--" + dest.replace("_", "-")
        text = re.sub(rf"(?<![\w(-]){re.escape(dest)}=(?=\S)", flag + " ", text)
        text = re.sub(rf"(?<![\w(-]){re.escape(dest)}=", flag, text)
    return text


BUG_REPORT = (
    "this is a bug in lensprobe, not in your input: please report it with the command and the "
    "traceback above"
)


def _run(command: Command, namespace: argparse.Namespace) -> int:
    """Run ``command``: a user's error or an interrupt is one line, a bug asks for a report."""
    debug = bool(getattr(namespace, "debug", False))
    try:
        return command.run(parse_options(command.options, namespace))
    except KeyboardInterrupt:
        if debug:
            raise
        say(
            f"lensprobe {command.name}: interrupted; rerun the same command to resume (finished "
            "capture shards and finished probes are kept)",
            err=True,
        )
        return 130
    except Exception as err:
        if debug:
            raise
        if not is_user_error(err):
            traceback.print_exc()
            say(f"lensprobe {command.name}: internal error: {BUG_REPORT}", err=True)
            return 70  # EX_SOFTWARE
        text = cli_spelling(" ".join(str(err).split()) or type(err).__name__, namespace)
        say(f"lensprobe {command.name}: error: {text}", err=True)
        return 1


def main(args: list[str] | None = None) -> int:
    """Run the ``lensprobe`` command line.

    Args:
        args: Arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when the command failed on the user's input, 2 for a
        usage error, 70 for a bug in lensprobe (traceback printed), 130 when interrupted.
    """
    parser = build_parser()
    try:
        namespace = parser.parse_args(args)
    except SystemExit as exit_:  # argparse exits on --help (0) and on usage errors (2)
        return int(exit_.code or 0)
    if namespace.command is None:
        parser.print_help()
        return 2
    from lensprobe.hardware import torchrun_place

    if namespace.command != "capture" and torchrun_place()[1] > 1:
        say(
            f"lensprobe {namespace.command}: error: of the commands only capture runs under "
            "torchrun (its ranks share one store): `torchrun ... -m lensprobe capture --out DIR`, "
            "then `lensprobe train --acts DIR` in one process",
            err=True,
        )
        return 2
    return _run(COMMANDS[namespace.command], namespace)
