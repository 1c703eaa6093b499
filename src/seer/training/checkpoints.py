"""Which checkpoint an interrupted run resumes from: the newest one whose every file reads
back whole, since a resume must be exact or say what it cannot restore. A
damaged newer one is set aside (``checkpoints/damaged-checkpoint-N``), with a warning; with
none left, the run refuses in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from seer.core.run import partial_dir
from seer.errors import SeerError

__all__ = ["damage", "resumable_checkpoint"]

logger = logging.getLogger(__name__)

#: What exact resumption needs besides the adapter: the optimizer's moments, the learning-rate
#: schedule's position, the step and log history, and the random state.
_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json")


def _read_weights(path: Path) -> None:
    with safe_open(str(path), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118 (safe_open is no mapping)
            weights.get_tensor(name)


def damage(checkpoint: Path) -> str | None:
    """What makes ``checkpoint`` unfit to resume from exactly (a missing or unreadable file),
    or None."""
    missing = [name for name in _STATE if not (checkpoint / name).is_file()]
    if not any(checkpoint.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    if not (checkpoint / "adapter_model.safetensors").is_file():
        missing.append("adapter_model.safetensors")
    if missing:
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            raise ValueError("no global_step")
    except (OSError, UnicodeDecodeError, ValueError):
        return "trainer_state.json is truncated or corrupt"
    try:
        _read_weights(checkpoint / "adapter_model.safetensors")
    except (OSError, SafetensorError):
        return "adapter_model.safetensors is truncated or corrupt"
    for name in ("optimizer.pt", "scheduler.pt"):
        try:
            torch.load(checkpoint / name, map_location="cpu", weights_only=True)
        except Exception:  # random bytes raise any of pickle's and torch's errors
            return f"{name} is truncated or corrupt"
    return None


def resumable_checkpoint(output: str | Path, set_aside: bool = True) -> Path | None:
    """The newest complete checkpoint of the interrupted run at ``output`` that resumes
    exactly; None when it has none yet. Damaged newer ones are set aside (by the process that
    writes the run: ``set_aside``) with a warning; if every one is damaged, a SeerError says
    why and how to start again."""
    folder = partial_dir(output) / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    found = [p for p in found if (p / "trainer_state.json").is_file()]  # the Trainer's last
    found.sort(key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    damaged: list[tuple[Path, str]] = []
    for checkpoint in found:
        why = damage(checkpoint)
        if why is None:
            for bad, reason in damaged if set_aside else ():
                logger.warning(
                    "%s cannot be resumed from (%s): set aside as %s; resuming from %s instead",
                    bad,
                    reason,
                    bad.with_name(f"damaged-{bad.name}").name,
                    checkpoint.name,
                )
                bad.rename(bad.with_name(f"damaged-{bad.name}"))
            return checkpoint
        damaged.append((checkpoint, why))
    if damaged:
        bad, why = damaged[0]
        raise SeerError(
            f"cannot resume exactly from {bad}: {why}, and no earlier checkpoint is whole; "
            "pass --overwrite instead of --resume to start the run again"
        )
    return None
