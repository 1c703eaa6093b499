"""The ``seer`` command. Each subcommand is a module of :mod:`seer.commands`: one config
dataclass (``Config``), whose fields become the subcommand's options, and a thin ``main``.

Errors a user can fix print one line and exit with status 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn

from seer.commands.options import add_arguments, from_namespace
from seer.errors import SeerError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: Modules of ``seer.commands``, in the order ``seer --help`` lists them.
SUBCOMMANDS = ("train", "evaluate", "explain", "export", "detox_eval", "serve")


def _commands() -> list[ModuleType]:
    found = []
    for name in SUBCOMMANDS:
        try:
            found.append(importlib.import_module(f"seer.commands.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"seer.commands.{name}":
                raise
    return found


def _runner(module: ModuleType) -> Callable[[argparse.Namespace], int]:
    """The parsed options as ``module``'s config (validated there), passed to its main."""

    def run(args: argparse.Namespace) -> int:
        config = from_namespace(module.Config, args)
        return int(module.main(config, progress=not args.quiet))

    return run


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``seer: error:`` line (status 2), like every other error; the
    subcommands' parsers inherit it (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("seer").strip()
        hint = f"see `seer {where} --help`" if where else "see `seer --help`"
        self.exit(2, f"seer: error: {' '.join(message.split())} ({hint})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="seer", description="Make a language model explain itself (SEER).")
    flags = {"debug": "show Python tracebacks on errors", "quiet": "no progress bars or info logs"}
    common = OneLineParser(add_help=False)  # the same flags after the subcommand
    for name, text in flags.items():
        parser.add_argument(f"--{name}", action="store_true", help=text)
        common.add_argument(f"--{name}", action="store_true", default=argparse.SUPPRESS, help=text)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _commands():
        p = sub.add_parser(module.NAME, parents=[common], help=module.HELP, description=module.HELP)
        add_arguments(p, module.Config)
        p.set_defaults(func=_runner(module))
    return parser


def _not_utf8(args: argparse.Namespace) -> str | None:
    """The first argument that is not UTF-8 (Python holds its bytes as lone surrogates)."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    flag = f"--{name.replace('_', '-')}" if name != "run" else "the run folder"
                    byte = ord(text[exc.start]) & 0xFF
                    return (
                        f"{flag} is not valid UTF-8 text (byte 0x{byte:02x}); pass UTF-8, e.g. "
                        "set a UTF-8 locale (LANG=C.UTF-8) or convert it with iconv"
                    )
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt as exc:  # while starting: one line too
        return _interrupted(exc)
    _started()
    if (bad := _not_utf8(args)) is not None:
        print(f"seer: error: {bad}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (SeerError, OSError) as exc:  # OSError: a missing file, permissions, a full disk
        if args.debug:
            raise
        print(f"seer: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        return _interrupted(exc)
    except ImportError as exc:  # Ctrl-C inside a C extension's import surfaces as this
        if args.debug or not isinstance(exc.__context__, KeyboardInterrupt):
            raise
        return _interrupted(exc.__context__)


def _started() -> None:
    """Hand Ctrl-C back to Python once the command line is parsed: ``seer.__main__`` exits
    at once on Ctrl-C while the parser's modules are imported."""
    handler = signal.getsignal(signal.SIGINT)
    # its module is __main__ under `python -m seer`, seer.__main__ under the `seer` script
    if getattr(handler, "__module__", None) in ("seer.__main__", "__main__") and (
        getattr(handler, "__name__", None) == "_interrupted"
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(exc: KeyboardInterrupt) -> int:
    hint = str(exc) or "rerun the same command (a `seer train` continues with --resume)"
    print(f"seer: interrupted: {' '.join(hint.split())}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
