"""Every command that writes a folder (``seer train``, ``seer export``) writes it the same way.

* **The overwrite rule.** An existing ``DIR`` is replaced only with ``--overwrite``, and only
  when seer wrote it (a run or an export: it holds a ``seer.json``) or it is empty. Never a
  folder the command is reading from, nor one of its ancestors.
* **One writer at a time.** ``DIR.lock`` (next to ``DIR.partial``) is created atomically
  (``O_EXCL``) and holds the writer's pid and host; while the writer lives it also holds an
  ``flock`` on it. A lock whose process is gone is stale and is taken over, with a warning.
  Commands that write into a run in place (``seer evaluate``: ``DIR/eval``; ``seer
  detox-eval``: ``DIR/detox``) hold the same kind of lock on what they write (:func:`hold_lock`),
  and replacing ``DIR`` waits for them.
* **Atomic results.** The folder is built under ``DIR.partial`` and renamed at the end. A run
  that fails leaves nothing behind (its ``.partial`` is removed, unless it was already there
  or holds a checkpoint); an interrupted or killed run keeps its checkpoint.
* **Only seer's own.** seer marks each ``DIR.partial`` it makes (:data:`PARTIAL_MARK` inside)
  and removes or replaces a ``.partial`` only with that mark; nor does it replace a folder
  that holds an input of the command (``inputs``: ``--data``, ``--model``, ...).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seer.errors import SeerError

__all__ = [
    "PARTIAL_MARK",
    "Claim",
    "apply_umask",
    "check_target",
    "claim_output",
    "hold_lock",
    "is_seer_partial",
    "lock_path",
    "partial_path",
    "replace_folder",
]

logger = logging.getLogger(__name__)

MARKER = "seer.json"
#: The file inside each ``DIR.partial`` that seer made: it removes or replaces no other.
PARTIAL_MARK = ".seer-partial"
#: Folders that commands write inside a run in place, each under its own lock (:func:`hold_lock`).
IN_PLACE = ("eval", "detox")


def _named(output: str | Path) -> Path:
    """``output`` with a last component to name its ``.partial`` and ``.lock`` after
    (``.`` and ``..`` made absolute); the root has none."""
    path = Path(output)
    if path.name in ("", ".", ".."):
        path = Path(os.path.abspath(path))
    if not path.name:
        raise SeerError(
            f"the output {output} is the root of the file system; seer writes a new folder: "
            "name one under it instead (e.g. runs/mine)"
        )
    return path


def partial_path(output: str | Path) -> Path:
    output = _named(output)
    return output.with_name(output.name + ".partial")


def lock_path(output: str | Path) -> Path:
    output = _named(output)
    return output.with_name(output.name + ".lock")


def is_seer_partial(partial: Path) -> bool:
    """Whether ``partial`` is a ``.partial`` folder that seer made: it holds the mark, or
    (a run interrupted before seer marked them) a training run's config and split."""
    if partial.is_symlink():
        return False
    legacy = (partial / "config.json").is_file() and (partial / "split" / "train.jsonl").is_file()
    return (partial / PARTIAL_MARK).is_file() or legacy


def _check_partial(output: Path, flag: str) -> None:
    partial = partial_path(output)
    if (partial.exists() or partial.is_symlink()) and not is_seer_partial(partial):
        raise SeerError(
            f"{partial} exists and was not written by seer (no {PARTIAL_MARK} inside); seer "
            f"builds {output} there, and replaces only what it wrote: move it away or choose "
            f"another {flag}"
        )


def _check_inputs(output: Path, inputs: Sequence[tuple[str, str | Path]], flag: str) -> None:
    """Refuse an ``output`` that is, or holds, an input of the command: replacing it would
    destroy what the command reads."""
    targets = _spellings(output)
    for name, source in inputs:
        if not isinstance(source, (str, Path)) or not str(source):
            continue  # a damaged seer.json's base model: the run's own check names it
        if not (Path(source).exists() or Path(source).is_symlink()):
            continue  # not a local path (a Hub name, the demo set)
        sources = _spellings(source)
        if any(_within(s, t) for s in sources for t in targets):
            raise SeerError(
                f"{output} holds {name} {source}, an input of this command; replacing it would "
                f"destroy it: choose another {flag}"
            )


def _spellings(path: str | Path) -> set[Path]:
    """``path`` through its links, and as written (absolute); a link loop is no error."""
    return {Path(os.path.realpath(path)), Path(os.path.abspath(path))}


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_target(
    output: str | Path,
    overwrite: bool,
    reading: Sequence[str | Path] = (),
    flag: str = "--output",
    inputs: Sequence[tuple[str, str | Path]] = (),
) -> None:
    """Refuse an ``output`` that must not be (re)written; writes nothing. ``reading``: runs
    the command reads (neither inside ``output`` nor around it); ``inputs``: ``(flag, path)``
    of the other files and folders it reads (not inside ``output``)."""
    output = _named(output)
    _check_inputs(output, inputs, flag)
    _check_partial(output, flag)
    targets = _spellings(output)
    for source in reading:
        sources = _spellings(source)
        if any(_within(s, t) for s in sources for t in targets):
            raise SeerError(
                f"{output} contains the run {source}, which this command reads; replacing it "
                f"would destroy the run: choose a {flag} outside it"
            )
        if any(_within(t, s) for s in sources for t in targets):
            raise SeerError(
                f"{output} is inside the run {source}, which this command reads: choose a "
                f"{flag} outside the run"
            )
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise SeerError(f"{output} already exists; choose another {flag} or pass --overwrite")
    if not output.is_dir() or output.is_symlink():
        raise SeerError(
            f"{output} exists and is not a folder; --overwrite replaces only folders seer "
            f"wrote: choose another {flag}"
        )
    if not (output / MARKER).is_file() and any(output.iterdir()):
        raise SeerError(
            f"{output} exists and is not a seer run folder (no {MARKER}); --overwrite replaces "
            f"only folders seer wrote (runs and exports): choose another {flag}"
        )


def _read_lock(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    started = holder.get("started")
    when = time.strftime(" since %H:%M:%S", time.localtime(started)) if started else ""
    return f"process {pid} on {host}{when}"


def _take_stale(path: Path) -> bool:
    """Remove ``path`` if its writer is gone; False if a live writer holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        holder = _read_lock(path)
        if holder.get("host", socket.gethostname()) != socket.gethostname():
            return False  # whether its process lives cannot be known from here
        if holder.get("pid") != os.getpid() and _alive(holder.get("pid")):
            return False
        if not holder and time.time() - os.fstat(fd).st_mtime < 10:
            return False  # being created this very moment
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                logger.warning(
                    "took over the stale lock %s of %s, which is no longer running",
                    path,
                    _describe(holder) if holder else "a writer",
                )
        return True
    finally:
        os.close(fd)


def _acquire(path: Path, output: Path, hint: str) -> int:
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if _take_stale(path):
                continue
            holder = _read_lock(path)
            raise SeerError(
                f"{output} is being written by {_describe(holder)} (lock {path}); {hint} (if "
                "that process is gone, e.g. on another machine, delete the lock file)"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        return fd
    raise SeerError(f"could not take the lock {path}; remove it if no seer is writing {output}")


@dataclass
class Claim:
    """The right to write ``output``: build it under ``partial`` (made by :meth:`start`),
    then :func:`replace_folder`."""

    output: Path
    partial: Path
    created: list[Path] = field(default_factory=list)
    started: bool = False  # this claim made ``partial`` (and so removes it if it fails)

    def start(self) -> Path:
        """Make ``partial`` afresh, marked as seer's, replacing an old one (seer's own: the
        claim's checks refused any other)."""
        if self.partial.exists() or self.partial.is_symlink():
            if not is_seer_partial(self.partial):  # appeared since the check
                raise SeerError(f"{self.partial} was not written by seer; move it away")
            shutil.rmtree(self.partial)
        self.partial.mkdir()
        self.started = True
        mark = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (self.partial / PARTIAL_MARK).write_text(json.dumps(mark), encoding="utf-8")
        return self.partial


def _make_parents(folder: Path) -> list[Path]:
    created = []
    for parent in reversed(folder.parents):
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:  # another writer made it a moment ago
                continue
            created.append(parent)
    return created


def _remove_parents(created: list[Path]) -> None:
    for parent in reversed(created):
        with contextlib.suppress(OSError):
            parent.rmdir()


@contextlib.contextmanager
def claim_output(
    output: str | Path,
    overwrite: bool,
    *,
    reading: Sequence[str | Path] = (),
    inputs: Sequence[tuple[str, str | Path]] = (),
    keep_partial: Callable[[Path], bool] | None = None,
    flag: str = "--output",
) -> Iterator[Claim]:
    """Hold the lock on ``output`` for the block. ``check_target`` runs under the lock.

    On an error (not an interrupt) the ``.partial`` this claim made (:meth:`Claim.start`) is
    removed, unless ``keep_partial(partial)`` says to keep it (e.g. it holds a resumable
    checkpoint); a full disk is said in one line.
    """
    output = _named(output)
    check_target(output, overwrite, reading, flag, inputs)  # before any write
    created = _make_parents(output)
    partial = partial_path(output)
    try:
        with hold_lock(output, "wait for it to finish or choose another output folder"):
            claim = Claim(output, partial, created)
            try:
                # again: another may have finished
                check_target(output, overwrite, reading, flag, inputs)
                yield claim
            except Exception as exc:
                keep = keep_partial is not None and keep_partial(partial)
                if claim.started and not keep and partial.exists():
                    shutil.rmtree(partial, ignore_errors=True)
                if _disk_full(exc):
                    raise SeerError(
                        f"no space left on the device writing {output}: free some space "
                        f"(`df -h {output.parent}`) or choose another {flag}"
                    ) from exc
                raise
    finally:
        if not output.exists() and not partial.exists():
            _remove_parents(created)  # only those still empty


@contextlib.contextmanager
def hold_lock(folder: str | Path, hint: str = "wait for it to finish") -> Iterator[Path]:
    """Hold ``folder``'s lock (``folder.lock``, beside it) for the block: one writer at a time.

    Commands that write into a folder in place (``seer evaluate`` into ``DIR/eval``,
    ``seer detox-eval`` into ``DIR/detox``) hold it while they run, so that two of them on one
    run refuse rather than interleave their files; a live holder is named in the SeerError,
    a dead one's lock is taken over; ``hint`` says what to do instead. The parent folder must
    exist."""
    folder = Path(folder)
    lock = lock_path(folder)
    fd = _acquire(lock, folder, hint)
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give what seer wrote the modes the user's umask asks for: some writers (safetensors,
    ``tempfile``) create files 0600 and folders 0700 whatever the umask."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def _writers_inside_done(output: Path, poll: float = 0.5) -> Iterator[None]:
    """Hold the locks of the commands that write into ``output`` in place (:data:`IN_PLACE`),
    waiting for a live holder to finish: they write by path, so replacing ``output`` under
    them would put the old run's results into the new one. Held, no new one starts."""
    held: list[tuple[Path, int]] = []
    try:
        for name in IN_PLACE if output.is_dir() else ():
            folder, waited = output / name, False
            while True:
                try:
                    held.append((lock_path(folder), _acquire(lock_path(folder), folder, "")))
                    break
                except SeerError:
                    if not waited:
                        logger.warning(
                            "waiting for %s to finish writing %s before replacing %s",
                            _describe(_read_lock(lock_path(folder))),
                            folder,
                            output,
                        )
                        waited = True
                    time.sleep(poll)
        yield
    finally:
        for lock, fd in held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            os.close(fd)


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota: writers in C and Rust
    (safetensors, torch.save) raise their own errors, naming the OS error in the text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if any(sign in text for sign in ("No space left", "StorageFull", "os error 28")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def replace_folder(partial: Path, output: str | Path) -> Path:
    """Atomically move the finished ``partial`` to ``output``, replacing an old one once no
    command writes inside it; its modes follow the user's umask. The ``.partial`` mark goes."""
    output = _named(output)
    apply_umask(partial)
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        with _writers_inside_done(output):
            os.replace(output, old)
            os.replace(partial, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, output)
    (output / PARTIAL_MARK).unlink(missing_ok=True)  # after: a kill before keeps it seer's
    return output
