"""The one exception type for mistakes a user can fix."""

from __future__ import annotations

__all__ = ["MissingPackageError", "SeerError"]


class SeerError(ValueError):
    """Bad input or a bad option. The message says what is wrong and how to fix it.

    The CLI prints it as one line and exits with status 2 (``--debug`` shows the traceback).
    """


class MissingPackageError(SeerError, ModuleNotFoundError):
    """An optional package is not installed; the message says what to ``pip install``.

    Also a ``ModuleNotFoundError``, so library callers may catch it as the import error it is.
    """
