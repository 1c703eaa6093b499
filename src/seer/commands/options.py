"""Command-line options generated from config dataclasses, the way trl's ``TrlParser`` reads
``ScriptArguments``: one ``--option`` per field, with the field's ``help`` and its default.

The fields are declared with :func:`seer.core.fields.option`. A field without a default is a
positional argument. A field whose type is itself a config
dataclass becomes an argument group (its ``help`` is the group's title) whose fields are
flattened into the same namespace. The type mapping:

- ``bool``: ``--flag`` / ``--no-flag``;
- ``int``, ``float``, ``str``, ``pathlib.Path``: one value of that type;
- ``Literal[...]``: one of the listed choices;
- ``list[X]`` or ``tuple[X, ...]``: one or more values; ``tuple[X, X, X]``: exactly three;
- ``X | None``: as ``X`` (the default ``None`` stays unless the option is given).

Options not given on the command line are left out of the namespace, so the dataclass is the
only place a default is written. Metadata keys read: ``help``, ``aliases`` (more flags),
``metavar``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union

__all__ = ["add_arguments", "from_namespace"]

_SCALARS = (int, float, str, Path)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _value(tp: Any, where: str) -> dict[str, Any]:
    """``type``/``choices`` of one value of type ``tp``."""
    if typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        return {"type": type(choices[0]), "choices": choices}
    if tp in _SCALARS:
        return {"type": tp}
    raise TypeError(f"{where}: no command-line form for a value of type {tp!r}")


def _kwargs(tp: Any, where: str) -> dict[str, Any]:
    """The ``add_argument`` keywords (besides help and default) for a field of type ``tp``."""
    tp = _strip_optional(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(set(args)) != 1:
                raise TypeError(f"{where}: a fixed-length tuple needs one element type, {tp!r}")
            return {"nargs": len(args), **_value(args[0], where)}
        return {"nargs": "+", **_value(args[0], where)}
    return _value(tp, where)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def _help(f: dataclasses.Field, tp: Any) -> str:
    text = str(f.metadata.get("help", "")).replace("%", "%%")
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return text  # positional
    if _strip_optional(tp) is bool:
        shown = _flag(f.name) if default else "--no-" + f.name.replace("_", "-")
    else:
        shown = _shown(default).replace("%", "%%")
    return f"{text} (default: {shown})" if text else f"(default: {shown})"


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """Add one argument per field of the config dataclass ``cls`` to ``parser`` (a parser or
    an argument group); nested config dataclasses become argument groups."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        where = f"{cls.__name__}.{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            group = parser.add_argument_group(f.metadata.get("help") or f.name)
            add_arguments(group, tp)
            continue
        kw = _kwargs(tp, where)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if kw.get("action") is not None:
                raise TypeError(f"{where}: a bool field needs a default")
            parser.add_argument(f.name, help=_help(f, tp), **kw)
            continue
        flags = [_flag(f.name), *f.metadata.get("aliases", ())]
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(*flags, dest=f.name, help=_help(f, tp), default=argparse.SUPPRESS, **kw)


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The config ``cls`` built from the options given in ``namespace`` (the others keep the
    dataclass's defaults); its ``__post_init__`` validates it."""
    given = vars(namespace)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[f.name] = from_namespace(tp, namespace)
        elif f.name in given:
            value = given[f.name]
            if typing.get_origin(_strip_optional(tp)) is tuple and isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
    return cls(**values)
