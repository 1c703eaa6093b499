"""Whether this machine computes bfloat16 natively, which ``seer train`` says in its log.

bf16 autocast (``--bf16``) pays where the hardware multiplies bfloat16 itself: CUDA GPUs that
support it, x86 CPUs with AVX-512 BF16 or AMX, Arm CPUs with the BF16 extension. Elsewhere
PyTorch emulates it and a step gets slower. The default stays float32 on every machine: on one
seed each, bf16 raised BeaverTails-6's held-out accuracy and lowered MATH-7's
(docs/results.md), so it is not yet a change to make for every user.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

__all__ = ["CPU_BF16_FLAGS", "choose_bf16", "native_bf16"]

logger = logging.getLogger(__name__)

#: /proc/cpuinfo flags of CPUs that compute bfloat16 natively (x86 ``flags``, Arm ``Features``).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpu_flags(cpuinfo: str) -> set[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16(cuda: bool, cpuinfo: str | None = None) -> str | None:
    """Why this machine computes bfloat16 natively (a phrase for the log), or ``None``.

    ``cuda``: the training runs on the GPU. ``cpuinfo``: the text of ``/proc/cpuinfo`` (read
    when not given; a system without it counts as not native).
    """
    if cuda:
        return "this GPU supports bfloat16" if torch.cuda.is_bf16_supported() else None
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    found = [f for f in CPU_BF16_FLAGS if f in _cpu_flags(cpuinfo)]
    return f"this CPU has {', '.join(found)}" if found else None


def choose_bf16(asked: bool, fp16: bool, cuda: bool) -> bool:
    """``asked`` (``--bf16``), with a log line on what the hardware makes of it: a warning when
    bf16 would be emulated (slower), a hint when float32 runs where bf16 is native."""
    why = native_bf16(cuda)
    where = "this GPU" if cuda else "this CPU"
    if asked and why is None:
        logger.warning(
            "--bf16 on %s, which does not compute bfloat16 natively: autocast is emulated "
            "and slower than float32 there; drop --bf16",
            where,
        )
    elif asked:
        logger.info("precision: bf16 autocast (%s)", why)
    elif not fp16 and why is not None:
        logger.info(
            "precision: float32; %s, so --bf16 would run the step faster (its accuracy "
            "against float32: docs/training.md)",
            why,
        )
    return asked
