"""Fitting a run's readout at the end of training: the prototypes from the training split,
the temperature and the ``none`` threshold from the calibration split (never the test split),
and, for the ``centered`` representation, the center the states are read around."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from seer.core.normalize import state_mean
from seer.core.represent import from_raw, representations
from seer.readout.calibration import calibrate
from seer.readout.cosine import compute_prototypes

__all__ = ["FittedReadout", "fit_calibration", "fit_readout"]


@dataclass
class FittedReadout:
    """What :func:`fit_readout` returns and the run folder stores."""

    concepts: list[str]
    prototypes: np.ndarray  # [K, D] float32, the mean unit representation per concept
    calibration: dict[str, Any]  # temperature, threshold and how they were fitted
    center: torch.Tensor | None  # [P, H] for the centered representation, else None


def fit_readout(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: Sequence[dict],
    calibration_rows: Sequence[dict],
    *,
    layer: int,
    positions: Sequence[str],
    max_length: int,
    layers_path: str | None,
    centered: bool = False,
    progress: bool = False,
) -> FittedReadout:
    """Prototypes from ``train_rows``; the temperature and the ``none`` threshold from
    ``calibration_rows`` only; with ``centered``, both around the model's mean state at the
    read positions on ``train_rows``."""
    raw_train = representations(
        model,
        tokenizer,
        train_rows,
        [layer],
        positions,
        max_length=max_length,
        layers_path=layers_path,
        progress="prototypes" if progress else False,
        raw=True,
    )[layer]
    n_pos = len(positions)
    center = None
    if centered:
        center = state_mean(torch.from_numpy(raw_train).reshape(len(raw_train), n_pos, -1))
    concepts = [r["concept"] for r in train_rows]
    names, protos = compute_prototypes(from_raw(raw_train, n_pos, center), concepts)
    calibration = fit_calibration(
        model,
        tokenizer,
        calibration_rows,
        names,
        protos,
        layer=layer,
        positions=positions,
        max_length=max_length,
        layers_path=layers_path,
        progress=progress,
        center=center,
    )
    return FittedReadout(names, protos, calibration, center)


def fit_calibration(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    names: Sequence[str],
    prototypes: np.ndarray,
    *,
    layer: int,
    positions: Sequence[str],
    max_length: int,
    layers_path: str | None,
    progress: bool = False,
    center: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Representations of the calibration ``rows`` at ``layer`` (around ``center``, for a
    centered run), then :func:`calibrate`."""
    reps = representations(
        model,
        tokenizer,
        rows,
        [layer],
        positions,
        max_length=max_length,
        layers_path=layers_path,
        progress="calibration" if progress else False,
        centers={layer: center},
    )[layer]
    return calibrate(reps, [r["concept"] for r in rows], names, prototypes)
