"""What the generation engine yields: one :class:`RowEvent` per token a row has read, the
last one carrying the row's :class:`RowResult`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seer.readout import Explanation

__all__ = ["RowEvent", "RowResult"]


@dataclass
class RowResult:
    """A finished row: the reply (a stop monitor's refusal once it acted), the generated
    tokens, where the monitor acted, what it watched, and the final explanation (read where
    training reads it; for a stop monitor that fired, where it fired)."""

    reply: str
    tokens: list[int]
    fired_at: int | None
    probabilities: list[float]
    explanation: Explanation | None
    finish_reason: str
    final: float | None = None  # the monitored concept in the final explanation
    error: Exception | None = None  # why the row failed (finish reason ``error``)


@dataclass
class RowEvent:
    """Generated token ``index`` of a row (``-1``: the prompt's end), once the model has read
        it: its text, the readout there, the monitor's status; the last event of a row has a
        ``finish_reason`` (stop, length, monitor, cancelled, or error: the row alone failed, its
    ``result.error`` says why) and the ``result``."""

    row: int
    index: int
    token: int | None
    text: str
    cosines: np.ndarray
    probabilities: np.ndarray
    top: str
    monitor: str
    finish_reason: str | None = None
    result: RowResult | None = None
