"""Reading a representation: a run's concept prototypes and calibration applied to it.

Prototypes -> cosines -> calibrated probabilities (``softmax(cos / T)``) -> ``none`` below the
calibrated threshold; the position layout (``last``, ``user_end``, ``mean``) and the steering
direction. Pure tensor/numpy code with no model: used by evaluation, the explainer, the
generation engine and export.

    readout = Readout.from_run(read_run("runs/bt"))
    reading = readout.read(readout.vectors(user_end_state, last_states))
    reading.top, readout.ranking(reading.cosines[0], reading.probabilities[0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from seer.core.run import Run
from seer.errors import SeerError
from seer.readout.cosine import cosines, normalize_rows, softmax_probabilities
from seer.readout.record import readout_kind

__all__ = ["NONE", "Explanation", "Reading", "Readout"]

NONE = "none"


@dataclass
class Explanation:
    """What the model says it is processing. ``top`` is ``"none"`` when the representation
    is less similar to every prototype than the run's calibrated threshold; ``ranking`` lists
    every concept, most similar first. ``intervened_at`` is the number of generated tokens the
    model had read when a monitor acted (0: at the end of the prompt), else ``None``."""

    top: str
    ranking: list[dict[str, float | str]]
    reply: str | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    intervened_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reading:
    """The readout of ``n`` representations: cosines and probabilities ``[n, K]`` (numpy, in
    :attr:`Readout.concepts` order) and each row's top concept (or ``"none"``)."""

    cosines: np.ndarray
    probabilities: np.ndarray
    top: list[str]


class Readout:
    """A run's prototypes and calibration: representations in, readings out."""

    def __init__(
        self,
        concepts: Sequence[str],
        prototypes: torch.Tensor,
        positions: Sequence[str] = ("last",),
        temperature: float = 0.05,
        threshold: float = -1.0,
        center: torch.Tensor | None = None,
    ) -> None:
        self.concepts = list(concepts)
        self.positions = tuple(positions)
        # as given, for reading arrays in float64 (evaluation): normalized after the cast
        self._given = prototypes.detach().cpu().double().numpy()
        self.prototypes = normalize_rows(prototypes)  # [K, D] float32, unit rows
        # [P, H] subtracted from each position's state before normalizing (runs trained with
        # --representation centered); None: the raw representation
        self.center = None if center is None else center.float()
        self.temperature, self.threshold = float(temperature), float(threshold)
        if self.prototypes.shape[0] != len(self.concepts):
            raise SeerError(
                f"{self.prototypes.shape[0]} prototypes for {len(self.concepts)} concepts: the "
                "run's prototypes.safetensors does not match seer.json; train the run again"
            )

    @classmethod
    def from_run(cls, run: Run) -> Readout:
        """The readout recorded in a run folder (its kind checked first)."""
        readout_kind(run.meta, run.path)
        calibration = run.calibration
        return cls(
            run.concepts,
            run.prototypes,
            run.positions,
            float(calibration["temperature"]),
            float(calibration["threshold"]),
            run.center,
        )

    @classmethod
    def fitted(
        cls,
        concepts: Sequence[str],
        prototypes: np.ndarray,
        calibration: Mapping[str, float],
        positions: Sequence[str] = ("last",),
    ) -> Readout:
        """A readout from prototypes ``[K, D]`` and a calibration dict (``temperature``,
        ``threshold``), e.g. the base model's, fitted in evaluation."""
        return cls(
            concepts,
            torch.from_numpy(np.asarray(prototypes)),
            positions,
            float(calibration["temperature"]),
            float(calibration["threshold"]),
        )

    @property
    def hidden_size(self) -> int:
        """The target layer's hidden size (one position's block of a representation)."""
        return self.prototypes.shape[1] // len(self.positions)

    def index(self, concept: str) -> int:
        if concept not in self.concepts:
            raise SeerError(f"concept {concept!r} is not in this run; it has {self.concepts}")
        return self.concepts.index(concept)

    def vectors(
        self, user_end: torch.Tensor, tokens: torch.Tensor, mean: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Representations ``[n, D]``: 'last' := each row of ``tokens`` ``[n, H]``, 'user_end'
        := ``user_end`` (``[H]`` or ``[n, H]``), 'mean' := each row of ``mean`` ``[n, H]`` (the
        mean state of the span read so far); each minus the run's center (if it has one),
        normalized, concatenated in the run's position order and divided by
        ``sqrt(#positions)`` (unit norm, as in training)."""
        if "mean" in self.positions and mean is None:
            raise ValueError("this run reads the 'mean' span: pass its mean states")
        parts = []
        for k, name in enumerate(self.positions):
            given = {"user_end": user_end.expand_as(tokens), "mean": mean}.get(name, tokens)
            assert given is not None
            h = given.float()
            if self.center is not None:
                h = h - self.center[k].to(h.device)
            parts.append(normalize_rows(h))
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5

    def read(self, vectors: torch.Tensor) -> Reading:
        """The reading of representations ``[n, D]`` (float32, on their device)."""
        return self._reading(cosines(vectors, self.prototypes.to(vectors.device)).cpu().numpy())

    def read_array(self, X: np.ndarray) -> Reading:
        """The reading of representation rows ``[n, D]`` held as an array, in float64 (the
        prototypes as given, normalized in float64): the figures of ``seer evaluate``."""
        return self._reading(cosines(np.asarray(X, dtype=np.float64), self._given))

    def _reading(self, cos: np.ndarray) -> Reading:
        best = cos.argmax(axis=-1)
        top = [
            self.concepts[k] if c[k] >= self.threshold else NONE
            for k, c in zip(best.tolist(), cos, strict=True)
        ]
        return Reading(cos, softmax_probabilities(cos, self.temperature), top)

    def ranking(self, cos: np.ndarray, probs: np.ndarray) -> list[dict[str, float | str]]:
        """Every concept with its cosine and probability, most similar first."""
        order = np.argsort(-cos, kind="stable")
        return [
            {"concept": self.concepts[k], "cosine": float(cos[k]), "probability": float(probs[k])}
            for k in order
        ]

    def explanation(
        self,
        cos: np.ndarray,
        probs: np.ndarray,
        reply: str | None = None,
        trace: list | None = None,
    ) -> Explanation:
        """The :class:`Explanation` of one reading row."""
        ranking = self.ranking(cos, probs)
        top = str(ranking[0]["concept"]) if cos.max() >= self.threshold else NONE
        return Explanation(top=top, ranking=ranking, reply=reply, trace=trace or [])

    def trace_entry(self, token: str, cos: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """One :attr:`Explanation.trace` entry: the token, its top concept, the probabilities."""
        k = int(np.argmax(cos))
        rounded = [round(float(v), 4) for v in probs]
        return {
            "token": token,
            "top": self.concepts[k] if cos[k] >= self.threshold else NONE,
            "probabilities": dict(zip(self.concepts, rounded, strict=True)),
        }

    def direction(self, towards: str, away: str) -> torch.Tensor:
        """The unit direction ``prototype[towards] - prototype[away]`` in the target layer's
        hidden space (its 'last'-position block), e.g. for steering from unsafe to safe."""
        i, j = self.index(towards), self.index(away)
        if i == j:
            raise SeerError(f"steering from {away!r} towards itself has no direction")
        hidden = self.hidden_size
        block = self.positions.index("last") if "last" in self.positions else 0
        p = self.prototypes[:, block * hidden : (block + 1) * hidden]
        d = p[i] - p[j]
        return d / d.norm()
