"""Training past one process: which engine a launch asked for, and FSDP2 sharding of the model.

``accelerate launch`` tells its processes what its config file asked for through environment
variables (``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED``, ``FSDP_*``). seer reads them
here, once, and:

- **FSDP**: shards the frozen base model itself with FSDP2 (``fully_shard``), one shard group per
  decoder block, one for the embedding matrix, one for the LM head (the two together where they
  share their weights) and the root (the final norm), before the Trainer sees it. A pass cut
  after the target block gathers the embedding and blocks ``0..L`` only, one at a time, and
  frees each again after use (full shard); it never gathers an LM head of its own. The LoRA
  weights (a few MB) stay whole on every process; their gradients are averaged as under DDP.
  accelerate's own FSDP wrapping is switched off, since it does not exist on CPUs (accelerate
  1.16 turns an FSDP config into DDP there).
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

from seer.core.architecture import base_model, get_layers
from seer.errors import SeerError

__all__ = [
    "DEEPSPEED_ON_CPU",
    "ZERO3",
    "check_engine",
    "fsdp_requested",
    "gather",
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
    for group in _ends(model):
        fully_shard(group, reshard_after_forward=reshard, ignored_params=trainable)
    # the root keeps only the final norm (a vector) of its own: left gathered between passes,
    # so that a pass's backward through it never needs it again (see _end_cut_passes)
    fully_shard(model, reshard_after_forward=False, ignored_params=trainable)
    _end_cut_passes(model)
    model._is_accelerate_prepared = True  # type: ignore[assignment]  # accelerate's own flag
    logger.info(
        "FSDP2: %d decoder blocks, the embeddings and the rest sharded over %d processes; "
        "LoRA weights whole",
        len(blocks),
        torch.distributed.get_world_size(),
    )
    return model


def _ends(model: nn.Module) -> list[nn.Module | list[nn.Module]]:
    """The shard groups of the two ends of the model: the embedding matrix and the LM head
    each on its own, so that a pass cut after the target block frees the embedding once looked
    up and never gathers the head; one group of both where the head shares the embedding's
    weight (FSDP2 gathers a parameter in one group only)."""
    inner: Any = base_model(model)
    embed, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    if not isinstance(head, nn.Module) or not hasattr(head, "weight"):
        return [embed]
    if head.weight is embed.weight:
        return [[embed, head]]
    return [embed, head]


def gather(module: nn.Module) -> None:
    """Gather the shard group of ``module`` now, if it has one: for a weight read outside its
    module's forward (the chunked KL reads the LM head's). FSDP frees the group again when the
    step's backward has ended; without FSDP this does nothing."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        module.unshard()


def _end_cut_passes(model: nn.Module) -> None:
    """Let FSDP end a pass that a hook cut short (``StopForward``, raised in the target block).

    The exception leaves the root module's forward before FSDP's post-forward hook runs, so the
    groups the pass gathered stayed whole and FSDP's state "in forward" until the step's
    backward. PyTorch runs a forward hook marked ``always_call`` even when the forward raises:
    FSDP's own root hook is marked so (it then runs with no output), and ends the pass as if
    it had returned. With no output it registers no hook to gather the root again for the
    backward, which is why the root (the final norm alone) is never resharded after forward.
    ``tests/test_sharded.py`` checks what a cut pass leaves gathered."""
    handle = model._get_fsdp_state()._post_forward_hook_handle  # type: ignore[operator]
    model._forward_hooks_always_called[handle.id] = True


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
