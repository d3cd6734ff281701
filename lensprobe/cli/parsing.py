"""Command-line flags generated from an options dataclass: one definition per flag.

Each field of a frozen options dataclass is one flag, ``--field-name`` (underscores become
dashes), and everything ``argparse`` needs is read from the field:

- help: the field's docstring, the string literal written under it in the class body (read with
  ``ast``, base classes included); ``(default: ...)`` is added unless the docstring names one;
- order: the class's own fields, then those it inherits (the flags several commands share);
- default: the field's default; a field without one is a required flag;
- ``Literal[...]``: the choices; ``bool``: a switch (``--name`` when the default is False,
  ``--no-name`` when it is True); ``tuple[str, ...]``: a comma-separated list;
- anything else goes in the field's metadata through :func:`flag`: an environment variable that
  overrides the default, a short spelling, a metavar, a converter.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from typing import Any

from lensprobe.errors import InputTypeError

__all__ = [
    "FlagSpec",
    "add_flags",
    "comma_list",
    "field_docs",
    "flag",
    "flag_arguments",
    "flag_name",
    "flag_order",
    "parse_options",
]

_META_KEY = "lensprobe.cli"


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """What a field's type and default do not say about its flag."""

    env: str | None = None
    """Environment variable whose non-empty value replaces the default."""
    metavar: str | None = None
    """Placeholder shown in the usage line (default: the field name in capitals)."""
    short: str | None = None
    """Another spelling before the long one: a letter (``-o``) or a short name (``--n``)."""
    type: Callable[[str], Any] | None = None
    """Converts the typed text, where the field's type alone does not say how."""


def flag(default: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field with a default and :class:`FlagSpec` settings (``env=``, ``short=``, ...)."""
    return dataclasses.field(default=default, metadata={_META_KEY: FlagSpec(**spec)})


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: a comma-separated flag value, blanks dropped."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal right under the field in a class body.

    Base classes are read first, so a subclass that redefines a field with a docstring
    replaces the base's text, and one that redefines it without keeps it.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        (node,) = ast.parse(textwrap.dedent(inspect.getsource(klass))).body
        assert isinstance(node, ast.ClassDef)
        for field, after in zip(node.body, node.body[1:], strict=False):
            doc = after.value if isinstance(after, ast.Expr) else None
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Constant)
                and isinstance(doc.value, str)
            ):
                docs[field.target.id] = inspect.cleandoc(doc.value)
    return docs


def flag_name(field: dataclasses.Field[Any]) -> str:
    """``--max-length`` for ``max_length``; ``--no-count`` for a bool that defaults to True."""
    name = "--" + field.name.replace("_", "-")
    if field.default is True:
        name = "--no-" + name[2:]
    return name


def _help(doc: str, default: Any, negated: bool) -> str:
    """The docstring as one line of help, with the default unless it is named or there is none.

    A ``--no-`` switch reads ``do not ...`` followed by the docstring (written as an imperative).
    """
    text = " ".join(doc.replace("``", "`").split())
    text = text.removesuffix(".") if not text.endswith("...") else text
    first = text.split(" ", 1)[0]
    if not first[1:].isupper():  # keep acronyms such as KIND or BOS
        text = text[:1].lower() + text[1:]
    if negated:
        text = "do not " + text
    shown = not (default is None or isinstance(default, bool) or default in ((), MISSING))
    if shown and "default" not in text:
        text += f" (default: {','.join(default) if isinstance(default, tuple) else default})"
    return text.replace("%", "%%")


def _base_type(hint: Any) -> Any:
    """``X`` of ``X | None``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _type_arguments(hint: Any) -> dict[str, Any]:
    """``type`` / ``choices`` for argparse from a field's (unwrapped) type hint."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = list(typing.get_args(hint))
        return {"choices": choices, "type": type(choices[0])}
    if origin in (tuple, list):
        return {"type": comma_list}
    if hint in (int, float):
        return {"type": hint}
    return {}


def flag_arguments(cls: type, field: dataclasses.Field[Any]) -> dict[str, Any]:
    """The keyword arguments of ``parser.add_argument`` for one field of ``cls``."""
    hint = _base_type(typing.get_type_hints(cls)[field.name])
    spec: FlagSpec = field.metadata.get(_META_KEY, FlagSpec())
    default = field.default
    kwargs: dict[str, Any] = {"dest": field.name}
    if hint is bool:
        kwargs["action"] = "store_false" if default is True else "store_true"
    else:
        kwargs.update(_type_arguments(hint))
        kwargs.update({k: v for k, v in (("metavar", spec.metavar), ("type", spec.type)) if v})
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = (os.environ.get(spec.env) or default) if spec.env else default
    doc = field_docs(cls).get(field.name)
    if doc is None:
        raise InputTypeError(f"{cls.__name__}.{field.name} has no docstring: it is the flag's help")
    kwargs["help"] = _help(doc, default, negated=default is True)
    return kwargs


def flag_order(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` in the order of its help: its own first, then the inherited ones.

    A field a base class defines keeps the base's place even where ``cls`` redefines it (a
    command that changes a shared flag's default).
    """
    inherited = {
        f.name
        for base in cls.__mro__[1:]
        if dataclasses.is_dataclass(base)
        for f in dataclasses.fields(base)
    }
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name not in inherited] + [
        f for f in fields if f.name in inherited
    ]


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the options dataclass ``cls`` (see the module docstring)."""
    for field in flag_order(cls):
        spec: FlagSpec = field.metadata.get(_META_KEY, FlagSpec())
        names = [spec.short] if spec.short else []
        parser.add_argument(*names, flag_name(field), **flag_arguments(cls, field))


def parse_options(cls: type, namespace: argparse.Namespace) -> Any:
    """The options dataclass built from a parsed namespace (other attributes ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})
