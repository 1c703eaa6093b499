"""Whether this machine computes bfloat16 natively: what ``seer train`` uses when neither
``--bf16`` nor ``--no-bf16`` is given.

bf16 autocast pays where the hardware multiplies bfloat16 itself: CUDA GPUs that support it,
x86 CPUs with AVX-512 BF16 or AMX, Arm CPUs with the BF16 extension. Elsewhere PyTorch emulates
it and a step gets slower, so the default is float32 there (docs/results.md has the
comparison that made bf16 the default where it is native).
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


def choose_bf16(asked: bool | None, fp16: bool, cuda: bool) -> bool:
    """bf16 autocast or not: ``asked`` (``--bf16`` / ``--no-bf16``) wins; unset, it is on where
    :func:`native_bf16` says so and ``--fp16`` is not set. The choice is logged."""
    if asked is not None or fp16:
        return bool(asked)
    why = native_bf16(cuda)
    if why:
        logger.info("precision: bf16 autocast, since %s (--no-bf16 trains in float32)", why)
    else:
        where = "this GPU" if cuda else "this CPU"
        logger.info(
            "precision: float32, since %s does not compute bfloat16 natively (--bf16 forces "
            "autocast, slower here)",
            where,
        )
    return why is not None
