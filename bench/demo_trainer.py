"""The trainer of ``seer train`` on the first rows of the embedded Do-Not-Answer set, built
the same way for every bench that times or compares its steps (bench/distributed.py,
bench/gpu_losses.py). Not a bench itself: the scripts import it from their own folder."""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from seer.core.data import load_concepts
from seer.core.models import load_model
from seer.training.build import build_trainer
from seer.training.config import TrainConfig
from seer.training.trainer import SeerTrainer


def demo_trainer(
    model: str,
    *,
    device: str,
    dtype: torch.dtype | None = None,
    max_per_concept: int,
    retain_rows: int,
    **config: Any,
) -> SeerTrainer:
    """``model`` loaded on ``device`` and one epoch's trainer over ``max_per_concept`` rows a
    concept (seed 0), the first ``retain_rows`` of them as retain data, writing to a fresh
    temporary folder; ``config`` sets the other ``TrainConfig`` fields."""
    lm, tok = load_model(model, device=device, dtype=dtype)
    folder = tempfile.mkdtemp(prefix="seer-bench-")
    cfg = TrainConfig(model=model, data="donotanswer", output=folder, epochs=1, **config)
    rows = load_concepts(
        cfg.data, "concept", "prompt", "response", max_per_concept=max_per_concept, seed=0
    )
    retain = [
        {"prompt": r["prompt"], "response": r.get("response", "")} for r in rows[:retain_rows]
    ]
    return build_trainer(cfg, lm, tok, rows, retain, output_dir=folder, progress=False)
