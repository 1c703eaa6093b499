"""The monitor options, declared once: ``seer explain``, ``seer detox-eval`` and ``seer serve``
take them as one argument group and turn them into :class:`~seer.inference.monitor.Monitor`
objects. No torch here: the command line imports it."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from seer.core.fields import option
from seer.errors import SeerError

if TYPE_CHECKING:
    from seer.inference.monitor import Monitor

__all__ = ["MonitorOptions"]


def _default(f: Field) -> Any:
    return f.default if f.default_factory is MISSING else f.default_factory()


Mode = Literal["off", "stop", "steer", "watch"]


@dataclass
class MonitorOptions:
    monitor: list[Mode] = option(
        ["off"],
        "watch --concept while generating and act when its probability reaches --threshold: "
        "stop (answer --refusal instead), steer (towards --towards), watch (only report); "
        "detox-eval takes several modes and evaluates one variant per mode and threshold",
    )
    concept: str | None = option(
        None,
        "the concept the monitor watches (explain: required with --monitor; detox-eval: "
        "'unsafe' when not given)",
        aliases=["--unsafe-concept"],
    )
    threshold: list[float] = option(
        [0.5],
        "the concept's calibrated probability that triggers the monitor; only with --monitor "
        "(detox-eval: several values evaluate one variant each)",
    )
    towards: str | None = option(
        None,
        "steer: the concept to move towards (detox-eval: 'safe' when not given)",
        aliases=["--safe-concept"],
    )
    steer_scale: float = option(
        0.5, "steer: strength, a multiple of the prompt's mean hidden-state norm"
    )
    watch_tokens: int | None = option(
        None,
        "watch only the prompt's end and this many generated tokens (0: decide before the "
        "reply starts); not given: the whole reply",
    )
    reply_end: bool = option(
        False,
        "decide once, on the finished reply's final explanation (read where training reads "
        "it), and hold the reply back; stop or watch only",
    )
    refusal: str | None = option(None, "stop: the reply given instead; not given: a short refusal")

    def __post_init__(self) -> None:
        self.monitor = list(self.monitor)
        self.threshold = list(self.threshold)
        from seer.inference.monitor import MAX_STEER  # deferred: torch

        if not 0 < self.steer_scale <= MAX_STEER:
            raise SeerError(
                f"--steer-scale must be a number in (0, {MAX_STEER:g}], got {self.steer_scale}"
            )
        if self.modes:
            if not self.threshold:
                raise SeerError("pass at least one --threshold for the monitor")
            return
        # Every option below --concept only shapes a monitor: without one it does nothing.
        unused = [
            "--" + f.name.replace("_", "-")
            for f in fields(self)
            if f.name not in ("monitor", "concept") and getattr(self, f.name) != _default(f)
        ]
        if unused:
            raise SeerError(
                f"{', '.join(unused)} would have no effect without a monitor: add --monitor "
                "stop, steer or watch, or drop them"
            )

    @property
    def modes(self) -> list[str]:
        """The monitor modes asked for, in order, without repeats and without ``off``."""
        return [m for m in dict.fromkeys(self.monitor) if m != "off"]

    def check_single(self, command: str) -> None:
        """Refuse more than one mode or threshold: ``command`` (``seer explain``, ``seer
        serve``) runs one monitor; ``seer detox-eval`` is the one that compares several."""
        if len(self.modes) > 1 or (self.modes and len(set(self.threshold)) > 1):
            raise SeerError(
                f"{command} runs one monitor: pass one --monitor mode and one --threshold "
                "(seer detox-eval compares several)"
            )
        if self.modes and not self.concept:
            raise SeerError(
                "--monitor needs --concept, the concept to watch (e.g. --concept unsafe)"
            )

    def single(self, concept: str | None = None) -> Monitor | None:
        """The one :class:`Monitor` these options describe (``None``: no ``--monitor``)."""
        monitors = self.monitors(concept)
        return monitors[0] if monitors else None

    def monitors(self, concept: str | None = None, towards: str | None = None) -> list[Monitor]:
        """One :class:`Monitor` per mode and threshold; ``concept``/``towards`` stand in for
        the options when they are not given (``seer detox-eval``: unsafe, safe)."""
        from seer.inference.monitor import Monitor  # deferred: torch and the model stack

        concept = self.concept or concept
        towards = self.towards or towards
        if self.modes and not concept:
            raise SeerError(
                "--monitor needs --concept, the concept to watch (e.g. --concept unsafe)"
            )
        extra: dict[str, Any] = {"refusal": self.refusal} if self.refusal else {}
        return [
            Monitor(
                concept,  # type: ignore[arg-type]  # checked above
                threshold=t,
                mode=mode,
                towards=towards if mode == "steer" else None,
                scale=self.steer_scale,
                watch_tokens=self.watch_tokens,
                reply_end=self.reply_end,
                **extra,
            )
            for mode in self.modes
            for t in sorted(set(self.threshold))
        ]
