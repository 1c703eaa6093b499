"""Config dataclass fields that carry their help text: every ``seer`` command's config (and
the library's) declares its fields with :func:`option`, and the command line is generated from
them (:mod:`seer.commands.options`)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["option"]


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with a ``help`` text (and more metadata, e.g. ``aliases``); a list,
    tuple or dataclass default is copied per instance. Without ``default``: positional."""
    metadata = {"help": help, **metadata}
    if isinstance(default, (list, tuple, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
