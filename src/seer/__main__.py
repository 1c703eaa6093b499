"""``python -m seer`` and the ``seer`` command: the CLI, with Ctrl-C during start-up (while
torch and transformers are imported) answered in one line, like Ctrl-C later on."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted(_signum: int, _frame: object) -> None:
    # Exit at once: a KeyboardInterrupt raised inside a C extension's import (numpy, torch)
    # surfaces as an unrelated ImportError. Nothing has been written yet.
    os.write(2, b"seer: interrupted while starting; nothing was written\n")
    os._exit(130)


def run() -> None:
    signal.signal(signal.SIGINT, _interrupted)  # until the command line is parsed
    from seer.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
