"""JSON that strict parsers accept: ``NaN`` and ``Infinity`` (which Python's ``json`` writes
by default and a browser's ``JSON.parse`` rejects) are written as ``null``, "not defined"."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite_or_null"]


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return finite_or_null(obj.item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)
