"""Files replaced atomically: written under a temporary name next to the target and renamed
over it, so a reader (or a process killed mid-write) never sees half a file; and input files
checked to be what the user meant (:func:`input_file`). Folders are
:mod:`seer.core.folders`' business."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from seer.errors import SeerError

__all__ = ["input_file", "replacing", "write_text_atomic"]


def input_file(source: str | Path, flag: str) -> Path:
    """``source`` (given to ``flag``) as a regular file to read; else a SeerError that says
    what it is: missing, a dangling or looping link, a folder, a pipe."""
    path = Path(source)
    named = "data file" if flag == "--data" else f"{flag} file"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SeerError(
                f"{flag} {source}: its symbolic links loop (each points on to the next); "
                "point it at the file itself"
            ) from exc
        if path.is_symlink():
            raise SeerError(
                f"{flag} {source} is a symbolic link to {os.readlink(path)}, which does not "
                f"exist; point it at the file itself"
            ) from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SeerError(
                f"{named} {source} does not exist; check the path given to {flag}"
            ) from exc
        raise SeerError(f"{flag} {source} cannot be read ({exc.strerror})") from exc
    if stat.S_ISDIR(mode):
        raise SeerError(f"{source} is a folder; {flag} needs a CSV or JSONL file")
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
        raise SeerError(
            f"{flag} {source} is a pipe or device (like `<(cat f)`), not a file: seer reads "
            f"its input by name and suffix; save it to a file first (e.g. `cat f > data.csv`)"
        )
    if not stat.S_ISREG(mode):
        raise SeerError(f"{flag} {source} is not a regular file; pass a CSV or JSONL file")
    return path


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
