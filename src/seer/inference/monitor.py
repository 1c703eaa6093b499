"""A monitor watches one concept while a reply is generated and acts when its probability
reaches a threshold. Its rules (threshold crossing, fire once, steer from then on, the watch
window, the reply-end decision, the per-row stop) are written once, in :class:`MonitorState`:
the generation engine keeps one per row, and :func:`replay` runs the same rules over
probabilities recorded by a watch-mode pass (the detoxification evaluation's stop variants).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seer.errors import SeerError

__all__ = ["MAX_STEER", "Monitor", "MonitorState", "replay"]

#: The strongest steering: a multiple of the prompt's mean hidden-state norm at the target
#: layer (``scale``, or a given vector's norm); beyond it the model reads only the steering.
MAX_STEER = 100.0


@dataclass
class Monitor:
    """Watch one concept while generating; act when its probability reaches ``threshold``.

    ``mode="stop"`` ends the reply and answers ``refusal`` instead. ``mode="steer"`` adds a
    vector to the target layer's output from the forward pass where it fires on (all prompt
    positions too, when it fires at the end of the prompt): ``vector`` if given, else ``scale``
    times the mean hidden-state norm of the prompt at that layer times the unit direction
    ``prototype[towards] - prototype[concept]``. ``mode="watch"`` only reports where it would
    have acted (shadow mode). ``watch_tokens`` limits the watch to the end of the prompt and
    the first ``watch_tokens`` generated tokens (``0``: decide at the end of the prompt, before
    the reply starts); ``None`` watches the whole reply. ``reply_end=True`` decides once, on
    the finished reply's final explanation, read where training reads it (the chat
    template's closing token after the reply): a ``stop`` monitor then holds the reply back
    and answers its refusal instead, a ``watch`` monitor only records; steering, which acts
    while the reply is written, cannot be combined with it.
    """

    concept: str
    threshold: float = 0.5
    mode: str = "stop"
    towards: str | None = None
    scale: float = 0.5
    vector: torch.Tensor | None = None
    refusal: str = "I'm sorry, but I can't help with that."
    watch_tokens: int | None = None
    reply_end: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("stop", "steer", "watch"):
            raise SeerError(f"monitor mode must be 'stop', 'steer' or 'watch', got {self.mode!r}")
        if self.mode == "steer" and self.vector is None and self.towards is None:
            raise SeerError("monitor mode 'steer' needs `towards` (a concept) or a `vector`")
        if not 0 < self.threshold <= 1:
            raise SeerError(f"monitor threshold is a probability in (0, 1], got {self.threshold}")
        if not 0 < self.scale <= MAX_STEER:
            raise SeerError(
                f"monitor scale is a multiple of the prompt's mean hidden-state norm in "
                f"(0, {MAX_STEER:g}], got {self.scale}: pass a smaller scale (0.5 is typical)"
            )
        if self.vector is not None and not bool(torch.isfinite(self.vector).all()):
            raise SeerError("the monitor vector holds NaN or infinite values: pass finite numbers")
        if self.watch_tokens is not None and self.watch_tokens < 0:
            raise SeerError(
                f"watch_tokens is a number of generated tokens (0: the prompt's end only) or "
                f"None (the whole reply), got {self.watch_tokens}"
            )
        if self.reply_end and self.mode == "steer":
            raise SeerError(
                "a reply_end monitor decides after the reply is written, when steering can no "
                "longer change it: use mode 'stop' or 'watch' with reply_end, or drop reply_end"
            )
        if self.reply_end and self.watch_tokens is not None:
            raise SeerError(
                "reply_end decides on the finished reply; watch_tokens limits a per-token "
                "watch: pass one or the other"
            )

    def watching(self, reads: int) -> bool:
        """Whether the monitor looks at forward pass ``reads`` (0: the end of the prompt) of
        the generation (never, for a ``reply_end`` monitor)."""
        return not self.reply_end and (self.watch_tokens is None or reads <= self.watch_tokens)


class MonitorState:
    """One row's monitor during one generation (``monitor=None``: no monitor, status "off").

    Call :meth:`observe` after each forward pass with the monitored concept's probability at
    the row's newest position, and :meth:`decide_at_end` with the probability in the finished
    reply's final explanation. ``fired_at`` is the pass where it acted (the number of generated
    tokens read; for ``reply_end``: the reply's length), ``probabilities`` what it looked at.
    """

    def __init__(self, monitor: Monitor | None) -> None:
        self.monitor = monitor
        self.fired_at: int | None = None
        self.probabilities: list[float] = []
        self.final: float | None = None
        self._reads = 0

    @property
    def steers(self) -> bool:
        """Whether the row's target-layer output is steered (from the pass it fired on)."""
        return (
            self.fired_at is not None and self.monitor is not None and self.monitor.mode == "steer"
        )

    @property
    def stops(self) -> bool:
        """Whether a stop monitor has acted: the row ends and answers the refusal."""
        return (
            self.fired_at is not None and self.monitor is not None and self.monitor.mode == "stop"
        )

    def observe(self, reads: int, probability: float) -> bool:
        """Pass ``reads`` has been read; ``True`` when the monitor fires at this pass (once)."""
        self._reads = reads
        m = self.monitor
        if m is None or not m.watching(reads):
            return False
        self.probabilities.append(float(probability))
        if self.fired_at is not None or probability < m.threshold:
            return False
        self.fired_at = reads
        return True

    def decide_at_end(self, length: int, probability: float) -> bool:
        """A ``reply_end`` monitor's decision on the finished reply of ``length`` tokens, from
        its final explanation's ``probability``; ``True`` when it acts."""
        self.final = float(probability)
        m = self.monitor
        if m is None or not m.reply_end or probability < m.threshold:
            return False
        self.fired_at = length
        return True

    @property
    def status(self) -> str:
        """``off`` | ``watching`` | ``idle`` (not watching this pass) | ``fired`` (a watch
        monitor that has fired) | ``steering`` | ``stopped``, after the latest pass."""
        m = self.monitor
        if m is None:
            return "off"
        if self.fired_at is not None:
            return {"stop": "stopped", "steer": "steering"}.get(m.mode, "fired")
        return "watching" if m.watching(self._reads) else "idle"

    def reply(self, reply: str) -> str:
        """The reply the row answers: a stop monitor's refusal once it has acted."""
        return self.monitor.refusal if self.stops and self.monitor is not None else reply


def replay(
    monitor: Monitor, probabilities: Sequence[float], final: float | None = None
) -> int | None:
    """Where ``monitor`` acts (``fired_at``; ``None``: never), from the probabilities a
    whole-reply watch recorded after each pass and, for ``reply_end``, the final explanation's
    ``final``. Exact for monitors that leave the generation untouched until they act (stop,
    watch): ``tests/test_explain.py`` checks it against live stop-mode runs."""
    if monitor.mode == "steer":
        raise SeerError("a steering monitor changes the reply once it fires: it cannot be replayed")
    state = MonitorState(monitor)
    for reads, p in enumerate(probabilities):
        if state.observe(reads, p):
            break
    if monitor.reply_end:
        if final is None:
            raise SeerError("replaying a reply_end monitor needs the final explanation's value")
        state.decide_at_end(len(probabilities), final)
    return state.fired_at
