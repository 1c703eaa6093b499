"""How much memory a SEER training step needs, estimated before training starts.

The estimate counts what autograd keeps for backward, per token and per decoder block, for the
passes of one step (see ``seer.training.trainer``): view 1 through the whole model (adapted
blocks 0..layer, frozen blocks above, kept for the KL gradient), view 2 and the retain texts
through blocks 0..layer, the frozen reference states of the retain texts, the chunked KL's
working set and the LoRA weights with their gradients and AdamW moments. Frozen linear layers
keep no input (their weights need no gradient); a LoRA layer keeps its dropped-out input.
With gradient checkpointing a block keeps only its input, and one block's activations are
rebuilt at a time in backward. ``bench/train_memory.py`` compares the estimate with the
measured peak.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from seer.core.architecture import config_value, eager_attention
from seer.core.losses import KL_CHUNK_ELEMENTS

__all__ = [
    "FREE_SHARE",
    "Dims",
    "MemoryPlan",
    "Shape",
    "estimate_step",
    "free_memory",
    "padding_share",
    "release_freed_memory",
    "set_checkpointing",
]

logger = logging.getLogger(__name__)

GIB = 2**30
OVERHEAD = 1.15  # allocator fragmentation and short-lived copies, from the bench's measurements
# The default budget: this share of the memory free at start, leaving room for the estimate's
# error and for whatever else the machine runs meanwhile.
FREE_SHARE = 0.5


@dataclass(frozen=True)
class Dims:
    """What of a model sets the memory of a step."""

    hidden: int
    intermediate: int
    heads: int
    n_layers: int
    vocab: int
    dtype_bytes: int
    eager_attention: bool
    lora_modules: int  # adapted linear layers per block
    lora_params: int  # trainable parameters

    @classmethod
    def of(cls, model: Any, n_layers: int, lora_modules: int) -> Dims:
        """Read the dims off a (PEFT-wrapped) Hugging Face model."""
        config = model.config
        hidden = config_value(config, "hidden_size")
        heads: int = config_value(config, "num_attention_heads", 1)
        inter = config_value(config, "intermediate_size")
        param = next(p for p in model.parameters())
        return cls(
            hidden=hidden,
            intermediate=inter or 4 * hidden,
            heads=heads,
            n_layers=n_layers,
            vocab=model.get_output_embeddings().weight.shape[0],
            dtype_bytes=param.element_size(),
            eager_attention=eager_attention(config),
            lora_modules=lora_modules,
            lora_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        )


@dataclass(frozen=True)
class Shape:
    """Rows and padded lengths of the passes of one forward (a batch or a micro-batch)."""

    rows: int
    view1: int
    view2: int
    retain: int  # 0: no retain texts


def _per_token(d: Dims, lora: bool, length: int) -> float:
    """Bytes kept for backward per token of one block (floats counted in units of H and I)."""
    h, i = d.hidden, d.intermediate
    floats: float = 11 * h + 3 * i  # norms, rotary q/k, attention in/out, the MLP's gate/up/product
    if lora:  # the dropped-out inputs of the adapted linears (and their masks, 1 byte each)
        floats += 1.25 * ((d.lora_modules - 1) * h + i)
    if d.eager_attention:  # attention probabilities and their softmax, per head
        floats += 2 * d.heads * length
    return floats * d.dtype_bytes


def _block_transient(d: Dims, tokens: int) -> float:
    """One block's short-lived tensors in forward or backward (gradients of activations)."""
    return 2 * tokens * (4 * d.hidden + 3 * d.intermediate) * d.dtype_bytes


def estimate_step(
    d: Dims, shape: Shape, *, layer: int, kl: bool, l2: bool, checkpointing: bool, cached: bool
) -> int:
    """Estimated peak bytes of a step on ``shape`` above the loaded model.

    ``cached``: gradient caching, where view 2 and the retain texts run as separate passes.
    """
    adapted = layer + 1
    t1, t2, tr = shape.rows * shape.view1, shape.rows * shape.view2, shape.rows * shape.retain
    tr = tr if l2 else 0
    rest = t2 + tr if cached else 2 * shape.rows * max(shape.view2, shape.retain if l2 else 0)
    rest_len = max(shape.view2, shape.retain)
    kept: float
    if checkpointing:  # block inputs only, plus one block rebuilt at a time
        kept = d.hidden * d.dtype_bytes * (t1 * (d.n_layers if kl else adapted) + rest * adapted)
        biggest = max(t1, rest) * _per_token(d, True, max(shape.view1, rest_len))
        kept += biggest
    else:
        kept = t1 * adapted * _per_token(d, True, shape.view1)
        if kl:
            kept += t1 * (d.n_layers - adapted) * _per_token(d, False, shape.view1)
        kept += rest * adapted * _per_token(d, True, rest_len)
    reference = tr * adapted * d.hidden * d.dtype_bytes  # frozen retain states for the l2 term
    kl_bytes = 0.0
    if kl:  # final states of both sides, their gradient, and one chunk's [chunk, vocab] blocks
        chunk = min(t1, max(1, KL_CHUNK_ELEMENTS // d.vocab)) * d.vocab
        kl_bytes = 3 * t1 * d.hidden * d.dtype_bytes + 6 * chunk * 4
    weights = 4 * d.lora_params * 4  # LoRA weights, gradients, AdamW's two moments (float32)
    transient = _block_transient(d, max(t1, rest))
    return int(OVERHEAD * (kept + reference + kl_bytes + transient) + weights)


def padding_share(lengths: Sequence[Sequence[int]]) -> float:
    """Share of padded tokens that are real: ``lengths`` holds each batch's text lengths."""
    real = sum(sum(batch) for batch in lengths)
    padded = sum(len(batch) * max(batch) for batch in lengths if batch)
    return real / padded if padded else 1.0


def free_memory(device: torch.device | str) -> int:
    """Bytes free for a step: the GPU's free memory, or the machine's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryPlan:
    """What was decided for a run's memory, and why."""

    estimate: int  # bytes of the largest step, with ``checkpointing`` as chosen
    without_checkpointing: int
    budget: int
    budget_source: str  # "--memory-budget" or "free memory"
    checkpointing: bool
    forced: bool  # --gradient-checkpointing
    checkpointed_steps: int = 0  # steps over budget without checkpointing (all when forced)
    steps: int = 0
    # A batch's text lengths (view 1, view 2, retain per row) -> whether its step is
    # checkpointed; the trainer asks it before every step.
    needs_checkpointing: Callable[[Sequence[tuple[int, int, int]]], bool] | None = None

    def describe(self) -> str:
        if self.forced:
            gc = "on (asked for)"
        elif self.checkpointing:
            gc = f"on for the {self.checkpointed_steps} of {self.steps} steps that need it"
        else:
            gc = "off"
        line = (
            f"estimated peak of the largest step {gib(self.estimate)}, budget "
            f"{gib(self.budget)} ({self.budget_source}), gradient checkpointing {gc}"
        )
        if self.checkpointing and not self.forced:
            line += f" (the largest would need {gib(self.without_checkpointing)} without it)"
        return line


def gib(n: float) -> str:
    """Bytes for people: GiB, or MiB below 1 GiB."""
    if n == math.inf:
        return "unbounded"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Switch activation checkpointing of a model on which it was enabled (Hugging Face's
    ``gradient_checkpointing`` flag of every block that has one) on or off for the next
    step; its checkpoint function stays set."""
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing") and hasattr(
            module, "_gradient_checkpointing_func"
        ):
            setattr(module, "gradient_checkpointing", on)  # noqa: B010 (a plain bool flag)


# glibc's mallopt parameters (malloc.h) and the block size above which memory goes back at once.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RELEASE_ABOVE = 128 * 1024


def release_freed_memory() -> bool:
    """Have glibc's malloc serve every block over 128 KiB by ``mmap`` (so that freeing it
    unmaps it) and trim the heap's free top above 128 KiB, for the rest of the process.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB
    on 64-bit), so a training step's activations, freed in backward, are then served from the
    heap, where the pages stay resident; the peak RSS of the next step grows by what the heap
    kept. The price is time: every large block is then a fresh mapping, page-faulted and
    zeroed (a default CPU step ran 2.6x slower). ``bench/train_memory.py --allocators``
    measures both. Returns whether it was applied: not off
    glibc (musl, macOS, Windows: nothing happens), nor when the environment sets
    ``MALLOC_MMAP_THRESHOLD_`` (the user's choice wins).
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, RELEASE_ABOVE) and mallopt(M_TRIM_THRESHOLD, RELEASE_ABOVE)
    )
