"""Training past one process: which engine a launch asked for, and FSDP2 sharding of the model.

``accelerate launch`` tells its processes what its config file asked for through environment
variables (``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED``, ``FSDP_*``). seer reads them
here, once, and:

- **FSDP**: shards the frozen base model itself with FSDP2 (``fully_shard``), one shard group per
  decoder block and one for the rest (embeddings, final norm, LM head), before the Trainer sees
  it. A pass cut after the target block gathers blocks ``0..L`` only, one at a time, and frees
  each again after use (full shard). The LoRA weights (a few MB) stay whole on every process;
  their gradients are averaged as under DDP. accelerate's own FSDP wrapping is switched off,
  since it does not exist on CPUs (accelerate 1.16 turns an FSDP config into DDP there).
- **DeepSpeed** ZeRO-1/2: left to accelerate and the Trainer (the weights stay whole; the
  engine reduces the gradients). Refused in one line where accelerate cannot run it (CPUs) and
  for ZeRO-3 (see :data:`ZERO3`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from seer.core.architecture import get_layers
from seer.errors import SeerError

__all__ = [
    "DEEPSPEED_ON_CPU",
    "ZERO3",
    "check_engine",
    "fsdp_requested",
    "gather_for_inference",
    "is_sharded",
    "shard",
    "without_accelerate_fsdp",
    "zero_stage",
]

logger = logging.getLogger(__name__)

DEEPSPEED_ON_CPU = (
    "DeepSpeed needs a GPU here: accelerate runs DeepSpeed on CUDA devices only (on CPUs it "
    "would silently fall back to DDP); on CPUs use the FSDP config "
    "(examples/accelerate/fsdp_cpu.yaml) or plain DDP (torchrun)"
)


ZERO3 = (
    "DeepSpeed ZeRO-3 is not supported yet: after training one process writes the run folder "
    "alone, which needs the partitioned weights whole; use ZeRO-1/2 (the paper used ZeRO-1) or "
    "FSDP, which shards the base weights the same way (examples/accelerate/fsdp.yaml)"
)


def zero_stage() -> int | None:
    """The ZeRO stage a DeepSpeed launch asked for (the accelerate option, else the
    ``zero_optimization.stage`` of its DeepSpeed config file); None without DeepSpeed."""
    if not _flag("ACCELERATE_USE_DEEPSPEED"):
        return None
    if stage := os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(stage)
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return int(json.load(f).get("zero_optimization", {}).get("stage", 0))
    return 0


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """Whether this process was launched with an FSDP config (``accelerate launch``)."""
    return _flag("ACCELERATE_USE_FSDP")


def check_engine() -> None:
    """Refuse, in one line, an engine this launch cannot run."""
    if fsdp_requested() and os.environ.get("FSDP_VERSION", "2") != "2":
        raise SeerError(
            "seer shards with FSDP2: set fsdp_version: 2 in the accelerate config file "
            "(examples/accelerate/fsdp.yaml)"
        )
    stage = zero_stage()
    if stage is not None and not torch.cuda.is_available():
        raise SeerError(DEEPSPEED_ON_CPU)
    if stage == 3:
        raise SeerError(ZERO3)


def shard(model: nn.Module, layers_path: str | None = None) -> nn.Module:
    """Shard ``model`` (a PeftModel) in place with FSDP2: each decoder block, then the rest.

    The trainable (LoRA) parameters are left out of the shards: whole on every process, so the
    optimizer, the checkpoints and ``--resume`` see plain tensors. The model is marked prepared,
    so that accelerate does not wrap it again (in DDP, or in its own FSDP)."""
    from accelerate import PartialState
    from torch.distributed.fsdp import fully_shard

    # the process group as accelerate makes it, each process on its own GPU (LOCAL_RANK): the
    # default mesh of fully_shard is then one dimension over all processes, on that device
    PartialState()
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0")
    trainable = {p for p in model.parameters() if p.requires_grad}
    blocks = get_layers(model, layers_path)
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard, ignored_params=trainable)
    fully_shard(model, reshard_after_forward=reshard, ignored_params=trainable)
    model._is_accelerate_prepared = True  # type: ignore[assignment]  # accelerate's own flag
    logger.info(
        "FSDP2: %d decoder blocks and the rest sharded over %d processes; LoRA weights whole",
        len(blocks),
        torch.distributed.get_world_size(),
    )
    return model


@contextlib.contextmanager
def without_accelerate_fsdp() -> Iterator[None]:
    """Build the Trainer's Accelerator without FSDP: the model is sharded already (:func:`shard`)
    and accelerate must neither shard it again nor save it as its own FSDP model."""
    saved = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def gather_for_inference(model: nn.Module, keep: bool) -> None:
    """After training, gather every shard group whole (a collective: every process calls it),
    for passes that one process runs alone (prototypes, calibration). ``keep``: this process
    keeps the whole weights; the others free them again at once."""
    from torch.distributed.fsdp import FSDPModule

    groups: list[Any] = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for group in groups:
        group.set_reshard_after_forward(False, recurse=False)
        group.unshard()
    if not keep:
        for group in groups:
            group.reshard()
