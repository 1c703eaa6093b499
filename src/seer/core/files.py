"""Files replaced atomically: written under a temporary name next to the target and renamed
over it, so a reader (or a process killed mid-write) never sees half a file. Folders are
:mod:`seer.core.folders`' business."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replacing", "write_text_atomic"]


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; when the block ends without an
    error it replaces ``path`` (``os.replace``), otherwise it is removed. The temporary
    name holds the process id, so concurrent writers do not share it; the file is created
    by the caller with ordinary permissions (the user's umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
