"""Stop training cleanly on Ctrl-C or ``SIGTERM`` (e.g. a cluster's time limit).

Inside ``with StopOnSignal() as stop:``, the first SIGINT/SIGTERM asks the Trainer to save a
checkpoint and stop at the end of the current step; a second one aborts at once (losing the
work since the last checkpoint). The old handlers are restored on exit. Used as a callback,
it also saves a checkpoint after the last step, so an interruption while the prototypes are
computed loses no training.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["StopOnSignal"]

logger = logging.getLogger(__name__)


class StopOnSignal(TrainerCallback):
    """A ``TrainerCallback`` and context manager; ``stopped`` says whether a signal came."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._old: dict[int, object] = {}

    @property
    def stopped(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:  # a second signal: stop waiting for the step to end
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        logger.warning(
            "%s: saving a checkpoint at the end of this step, then stopping "
            "(send it again to abort without saving)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopOnSignal:
        self.received = None
        if threading.current_thread() is threading.main_thread():  # signals reach only it
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._old.clear()

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: object,
    ) -> TrainerControl:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        elif state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True  # the last step too: see the module docstring
        return control
