"""``seer train``: fine-tune a model with SEER and write a run folder. Its config is
:class:`~seer.training.config.TrainConfig` (every field is an option)."""

from __future__ import annotations

from seer.training.config import TrainConfig

__all__ = ["HELP", "NAME", "Config", "main"]

NAME = "train"
HELP = "fine-tune a model with SEER and write a run folder"
Config = TrainConfig


def main(config: TrainConfig, *, progress: bool = True) -> int:
    from seer.training.train import process_group_ended, train  # deferred: torch, transformers

    with process_group_ended():  # a launch's group ends before Python's shutdown
        out = train(config, progress=progress)
    print(f"run written to {out}")
    print(f"next: seer evaluate {out}")
    return 0
