"""The training summary of a run, whole across ``--resume``: total seconds and mean loss.

A resumed Trainer knows only its own process: its ``training_loss`` averages the steps it ran
(0.0 when the checkpoint was the last step) and its runtime is its own. The loss of earlier
steps is in the restored ``log_history``; the seconds of earlier processes are kept in
``DIR.partial/elapsed.json``, written at every checkpoint and when a process stops.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import (
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

__all__ = ["RunClock", "logs_off_stdout", "whole_run_loss"]

logger = logging.getLogger(__name__)

_FILE = "elapsed.json"


class RunClock(TrainerCallback):
    """Seconds spent on a run by every process that worked on it."""

    def __init__(self, partial: Path, resume: bool) -> None:
        self.partial = partial
        self.before = 0.0
        if resume:
            try:
                self.before = float(json.loads((partial / _FILE).read_text())["seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                self.before = 0.0
        self.started = time.time()

    @property
    def seconds(self) -> float:
        return self.before + time.time() - self.started

    def save(self) -> None:
        if self.partial.is_dir():
            (self.partial / _FILE).write_text(json.dumps({"seconds": self.seconds}))

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: object,
    ) -> TrainerControl:
        self.save()
        return control


def whole_run_loss(
    log_history: list[dict[str, Any]], resumed_at: int, steps: int, this_loss: float
) -> float | None:
    """Mean training loss over the whole run: the logged losses of the steps before
    ``resumed_at`` (each weighted by the steps it averages), then this process's mean over
    the ``steps - resumed_at`` steps it ran."""
    total, covered, last = 0.0, 0, 0
    for entry in log_history:
        step = entry.get("step")
        if "loss" not in entry or not isinstance(step, int) or step > resumed_at:
            continue
        total += float(entry["loss"]) * (step - last)
        covered += step - last
        last = step
    ran = steps - resumed_at
    if ran > 0:
        total += this_loss * ran
        covered += ran
    if not covered:
        return None
    mean = total / covered
    return mean if math.isfinite(mean) else None


class _LogProgress(ProgressCallback):
    """The Trainer's progress bar, with its log dicts sent to the logger (stderr), not stdout:
    stdout carries only a command's result."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if state.is_world_process_zero and logs and "train_runtime" not in logs:  # seer sums up
            logger.info("step %d: %s", state.global_step, _compact(logs))


def _compact(logs: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
    )


def logs_off_stdout(trainer: Trainer) -> None:
    """Swap the Trainer's printing callbacks for :class:`_LogProgress`."""
    progress = trainer.pop_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress is not None:
        trainer.add_callback(_LogProgress)
