"""Self-explanation at inference: the concept a SEER model is processing, read from the hidden
states of the same generation (one hook at the target layer), with no second model call
beyond a one-step continuation over the chat template's closing tokens.

    explainer = Explainer.from_run("runs/bt")
    result = explainer.generate("How do I pick a lock?")
    result.top, result.ranking[:3], result.trace[-1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from seer.core.formatting import encode
from seer.core.layers import capture_layers, run_until
from seer.core.represent import representations, running_means
from seer.core.run import Run, load_run_model
from seer.errors import SeerError
from seer.inference.backends import Backend
from seer.inference.engine import Engine, RowResult
from seer.inference.loaded import MAX_NEW_TOKENS, LoadedRun, check_context, check_request
from seer.inference.monitor import Monitor
from seer.readout import Explanation

__all__ = [
    "MAX_NEW_TOKENS",
    "Explainer",
    "Explanation",
    "Generation",
    "Monitor",
    "check_context",
    "check_request",
]

logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """What :meth:`Explainer.generate_many` returns, per prompt in the given order: the reply
    (a fired ``stop`` monitor's refusal in place of it), the number of generated tokens read
    when the monitor fired (``None``: never), and the monitored concept's probability after
    each forward pass the monitor looked at (empty without a monitor, or with a ``reply_end``
    one). With a monitor, ``final`` holds the concept's probability in each reply's final
    explanation (for a ``reply_end`` monitor: what it decided on; for a stop monitor that
    fired, read where it fired); with a ``reply_end`` monitor, ``fired_at`` is the reply's
    length in tokens where it acted."""

    replies: list[str]
    fired_at: list[int | None]
    probabilities: list[list[float]]
    final: list[float] = field(default_factory=list)


class Explainer:
    """A SEER model with its readout (prototypes and calibration), generating on ``backend``
    (``hf``, the default, or ``vllm``: see :mod:`seer.inference.backends`)."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, run: Run, backend: Backend | str = "hf"
    ) -> None:
        self.loaded = LoadedRun.of(model, tokenizer, run)
        self.model, self.tokenizer, self.run = model, tokenizer, run
        self.readout = self.loaded.readout
        self.layer, self.positions = run.layer, run.positions
        self.concepts = self.readout.concepts
        self.prototypes = self.readout.prototypes
        self.center = self.readout.center  # [P, H] or None (the centered representation)
        self.temperature, self.threshold = self.readout.temperature, self.readout.threshold
        self.max_length = self.loaded.max_length
        self.context = self.loaded.context  # the longest prompt + reply generated
        self.layers_path = self.loaded.layers_path
        self.engine = Engine(self.loaded, backend)

    @classmethod
    def from_run(
        cls, path: str | Path, *, model: Any = None, tokenizer: Any = None, backend: str = "hf"
    ) -> Explainer:
        """Load a run folder (base model + adapter) or a folder written by ``seer export``;
        generate on ``backend``."""
        run, model, tokenizer = load_run_model(path, model=model, tokenizer=tokenizer)
        return cls(model, tokenizer, run, backend)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    check_request = staticmethod(check_request)

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """:func:`check_context` against this model's context."""
        self.loaded.check_context(prompt_tokens, max_new_tokens)

    def check_monitor(self, monitor: Monitor) -> None:
        """Raise :class:`SeerError` unless ``monitor`` fits this run (its concepts exist, a
        given vector has the target layer's size)."""
        self.loaded.check_monitor(monitor)

    def direction(self, towards: str, away: str) -> torch.Tensor:
        """The unit direction ``prototype[towards] - prototype[away]`` in the target layer's
        hidden space (its 'last'-position block), e.g. for steering from unsafe to safe."""
        return self.readout.direction(towards, away)

    # --- scoring ---------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompt: str, response: str | None = None) -> Explanation:
        """Explain a given prompt (and response) with one forward pass, read exactly as in
        training and evaluation. The trace covers the tokens after the user turn (the
        response and the template's closing tags), or the whole prompt when there is no
        response; its last entry is the final explanation. A run reading the ``mean`` span
        reads each token with the mean state from the user's message up to that token."""
        check_request(prompt)
        enc = encode(self.tokenizer, prompt, response, "full", self.max_length)
        if enc.truncated:
            logger.warning(
                "the text is longer than the run's --max-length of %d tokens; its end is cut "
                "and the explanation reads the first %d tokens",
                self.max_length,
                self.max_length,
            )
        with capture_layers(
            self.model, [self.layer], stop_after=True, layers_path=self.layers_path
        ) as h:
            ids = torch.tensor([enc.input_ids], device=self.device)
            run_until(self.model, input_ids=ids, use_cache=False)
            hidden = h[self.layer][0].detach()  # [T, H]
        start = enc.user_end + 1 if response else 0
        means = running_means(hidden, enc.span_start("mean"))[start : enc.last + 1]
        reading = self.readout.read(
            self.readout.vectors(hidden[enc.user_end], hidden[start : enc.last + 1], means)
        )
        tokens = [self.tokenizer.decode([t]) for t in enc.input_ids[start : enc.last + 1]]
        trace = [
            self.readout.trace_entry(t, c, p)
            for t, c, p in zip(tokens, reading.cosines, reading.probabilities, strict=True)
        ]
        return self.readout.explanation(
            reading.cosines[-1], reading.probabilities[-1], response, trace
        )

    @torch.no_grad()
    def score_many(
        self,
        prompts: list[str],
        responses: list[str | None],
        batch_size: int = 16,
        progress: bool | str = False,
    ) -> np.ndarray:
        """The final explanation of many prompt/response pairs, in batches, read exactly as
        :meth:`score` reads one: each concept's probability, ``[n, n_concepts]`` in
        :attr:`concepts` order (a ``None`` or empty response: the prompt alone)."""
        if len(prompts) != len(responses):
            raise SeerError(f"{len(prompts)} prompts but {len(responses)} responses: pair them")
        for prompt in prompts:
            check_request(prompt)
        pairs = zip(prompts, responses, strict=True)
        examples = [{"prompt": p, "response": r or None} for p, r in pairs]
        vectors = representations(
            self.model,
            self.tokenizer,
            examples,
            [self.layer],
            self.positions,
            batch_size=batch_size,
            max_length=self.max_length,
            layers_path=self.layers_path,
            progress=progress,
            centers={self.layer: self.readout.center},
        )[self.layer]
        return self.readout.read(torch.from_numpy(vectors)).probabilities

    def final_probability(
        self,
        concept: str,
        prompts: list[str],
        responses: list[str | None],
        batch_size: int = 16,
        progress: bool | str = False,
    ) -> list[float]:
        """One concept's probability in the final explanation of each prompt/response pair
        (:meth:`score_many`'s column for ``concept``): what a ``reply_end`` monitor reads."""
        if concept not in self.concepts:
            raise SeerError(f"concept {concept!r} is not in this run; it has {self.concepts}")
        probs = self.score_many(prompts, responses, batch_size, progress)
        return [float(p) for p in probs[:, self.concepts.index(concept)]]

    # --- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, prompt: str, max_new_tokens: int = 64, monitor: Monitor | None = None
    ) -> Explanation:
        """Generate a greedy reply and explain it from the same forward passes (a batch of one
        of :class:`~seer.inference.engine.Engine`).

        The trace has one entry per generated token: the concept scores once the model has
        read that token. The final explanation is read where training reads it, at the
        'last' token of the chat-formatted prompt and reply: the template's closing tokens
        are fed through the generation's KV cache (a one-step continuation, up to the target
        layer only). Where the reply re-tokenises differently from the generated tokens, the
        formatted text is read with one full pass instead, and the last trace entry is that
        text's last token. With a ``stop`` monitor that fired, the reply is its refusal and
        the explanation is read at the position where it fired (for a ``reply_end`` monitor:
        the explanation of the reply it held back).
        """
        batch = self.engine.batch()
        batch.add(prompt, max_new_tokens=max_new_tokens, monitor=monitor)
        while batch.active:
            for event in batch.step():
                if event.result is not None:
                    assert event.result.explanation is not None
                    return event.result.explanation
        raise AssertionError("the engine ended a row without its result")  # pragma: no cover

    @torch.no_grad()
    def generate_many(
        self,
        prompts: list[str],
        max_new_tokens: int = 64,
        monitor: Monitor | None = None,
        batch_size: int = 16,
        progress: bool | str = False,
    ) -> Generation:
        """Greedy replies to many prompts in left-padded batches, each watched by ``monitor``
        exactly as :meth:`generate` watches one (same passes, same threshold, same steering
        vector per prompt), for serving-time monitoring and evaluations. No explanation or
        trace is kept; use :meth:`generate` for those."""
        results: list[RowResult | None] = [None] * len(prompts)
        desc = progress if isinstance(progress, str) else "generating"
        with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt") as bar:
            stream = self.engine.stream(
                prompts, max_new_tokens=max_new_tokens, monitors=monitor, batch_size=batch_size
            )
            for events in stream:
                for event in events:
                    if event.result is not None:
                        results[event.row] = event.result
                        bar.update()
        done = [r for r in results if r is not None]
        return Generation(
            [r.reply for r in done],
            [r.fired_at for r in done],
            [r.probabilities for r in done],
            [r.final for r in done if r.final is not None] if monitor is not None else [],
        )
