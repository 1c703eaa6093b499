"""A loaded run: what every user of a trained SEER model shares (the model, its tokenizer, the
run's record and readout, the target layer) and the checks of what a request may ask of it.
The generation engine and its backends, the server and :class:`~seer.inference.explainer.
Explainer` all hold one; none of them reaches into another's attributes.

    loaded = LoadedRun.from_run("runs/bt")
    loaded.readout.concepts, loaded.layer, loaded.check_request("Hello", 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seer.core.models import context_length
from seer.core.run import Run, load_run_model
from seer.errors import SeerError
from seer.inference.monitor import Monitor
from seer.readout import Readout

__all__ = ["MAX_NEW_TOKENS", "LoadedRun", "check_context", "check_request"]

MAX_NEW_TOKENS = 4096


def check_request(prompt: str, max_new_tokens: int = 1) -> None:
    """Raise :class:`SeerError` for an empty prompt or a reply length out of range."""
    if not prompt or not prompt.strip():
        raise SeerError("the prompt is empty; pass some text with --prompt")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SeerError(
            f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}"
        )


def check_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    """Raise :class:`SeerError` when a prompt of ``prompt_tokens`` tokens and a reply of up to
    ``max_new_tokens`` do not fit the model's ``context`` (``None``: unknown, not checked):
    positions beyond it were never trained. The one length check of every generation."""
    if context is None:
        return
    room = context - prompt_tokens
    if room < 1:
        raise SeerError(
            f"the prompt is {prompt_tokens} tokens and the model's context is {context}: "
            "shorten the prompt"
        )
    if max_new_tokens > room:
        raise SeerError(
            f"the prompt is {prompt_tokens} tokens and --max-new-tokens is {max_new_tokens}, "
            f"beyond the model's context of {context} tokens: ask for at most {room} tokens "
            "or shorten the prompt"
        )


@dataclass
class LoadedRun:
    """A run folder (or ``seer export`` folder) loaded: the Hugging Face model (a PeftModel
    for a run folder, a plain model for an export), its tokenizer, the run's record
    (:class:`Run`: ``seer.json``, prototypes, calibration) and its :class:`Readout`."""

    model: nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    run: Run
    readout: Readout

    @classmethod
    def from_run(
        cls, path: str | Path, *, model: nn.Module | None = None, tokenizer: Any = None
    ) -> LoadedRun:
        """Load a run folder (base model + adapter) or a folder written by ``seer export``."""
        causal_lm: Any = model  # a transformers PreTrainedModel (or None)
        run, model, tokenizer = load_run_model(path, model=causal_lm, tokenizer=tokenizer)
        return cls(model, tokenizer, run, Readout.from_run(run))

    @classmethod
    def of(cls, model: nn.Module, tokenizer: Any, run: Run) -> LoadedRun:
        """A run whose model is already loaded."""
        return cls(model, tokenizer, run, Readout.from_run(run))

    @property
    def layer(self) -> int:
        """The decoder block whose output SEER reads (``hidden_states[layer]``)."""
        return self.run.layer

    @property
    def positions(self) -> tuple[str, ...]:
        return tuple(self.run.positions)

    @property
    def max_length(self) -> int:
        return int(self.run.config.get("max_length", 512))

    @property
    def layers_path(self) -> str | None:
        """The user's override of where the decoder blocks are (``None``: found)."""
        return self.run.config.get("layers_path")

    @property
    def concepts(self) -> list[str]:
        return self.readout.concepts

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def context(self) -> int | None:
        """The longest prompt + reply the model generates (``None``: unknown)."""
        return context_length(self.model)

    check_request = staticmethod(check_request)

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """:func:`check_context` against this model's context."""
        check_context(prompt_tokens, max_new_tokens, self.context)

    def check_monitor(self, monitor: Monitor) -> None:
        """Raise :class:`SeerError` unless ``monitor`` fits this run (its concepts exist, a
        given vector has the target layer's size)."""
        for name in (monitor.concept, monitor.towards):
            if name is not None and name not in self.concepts:
                raise SeerError(f"monitor concept {name!r} is not in this run: {self.concepts}")
        hidden = self.readout.hidden_size
        if monitor.vector is not None and monitor.vector.shape != (hidden,):
            raise SeerError(
                f"monitor vector has shape {tuple(monitor.vector.shape)}; the target layer's "
                f"hidden size is {hidden}: pass a 1-d vector of that size"
            )
        if monitor.mode == "steer" and monitor.vector is None:
            self.readout.direction(monitor.towards, monitor.concept)  # type: ignore[arg-type]
