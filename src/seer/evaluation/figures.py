"""Matplotlib without a display, and one way to save a figure: used by the evaluation
report and the safety trade-off plot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_figure"]

logger = logging.getLogger(__name__)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (creating its folder), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    pyplot().close(fig)
    logger.info("wrote %s", path)
    return path
