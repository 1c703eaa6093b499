"""Self-explanation at inference: the concept a SEER model is processing, read from the hidden
states of the same generation (one hook at the target layer), with no second model call
beyond a one-step continuation over the chat template's closing tokens.

    explainer = Explainer.from_run("runs/bt")
    result = explainer.generate("How do I pick a lock?")
    result.top, result.ranking[:3], result.trace[-1]
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seer.core.formatting import encode, prompt_ids
from seer.core.layers import StopForward, _hidden, _replace_hidden, get_layers, run_until
from seer.core.run import Run, load_trained, read_run
from seer.errors import SeerError
from seer.evaluation.calibration import softmax_probabilities

__all__ = ["Explainer", "Explanation", "Generation", "Monitor", "main"]

NONE = "none"
MAX_NEW_TOKENS = 4096


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
class Monitor:
    """Watch one concept while generating; act when its probability reaches ``threshold``.

    ``mode="stop"`` ends the reply and answers ``refusal`` instead. ``mode="steer"`` adds a
    vector to the target layer's output from the forward pass where it fires on (all prompt
    positions too, when it fires at the end of the prompt): ``vector`` if given, else ``scale``
    times the mean hidden-state norm of the prompt at that layer times the unit direction
    ``prototype[towards] - prototype[concept]``. ``mode="watch"`` only reports where it would
    have acted (shadow mode). ``watch_tokens`` limits the watch to the end of the prompt and
    the first ``watch_tokens`` generated tokens (``0``: decide at the end of the prompt, before
    the reply starts); ``None`` watches the whole reply. ``reply_end=True`` decides once, on
    the finished reply's final explanation, read where training reads it (the chat
    template's closing token after the reply): a ``stop`` monitor then holds the reply back
    and answers its refusal instead, a ``watch`` monitor only records; steering, which acts
    while the reply is written, cannot be combined with it.
    """

    concept: str
    threshold: float = 0.5
    mode: str = "stop"
    towards: str | None = None
    scale: float = 0.5
    vector: torch.Tensor | None = None
    refusal: str = "I'm sorry, but I can't help with that."
    watch_tokens: int | None = None
    reply_end: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("stop", "steer", "watch"):
            raise SeerError(f"monitor mode must be 'stop', 'steer' or 'watch', got {self.mode!r}")
        if self.mode == "steer" and self.vector is None and self.towards is None:
            raise SeerError("monitor mode 'steer' needs `towards` (a concept) or a `vector`")
        if not 0 < self.threshold <= 1:
            raise SeerError(f"monitor threshold is a probability in (0, 1], got {self.threshold}")
        if self.watch_tokens is not None and self.watch_tokens < 0:
            raise SeerError(
                f"watch_tokens is a number of generated tokens (0: the prompt's end only) or "
                f"None (the whole reply), got {self.watch_tokens}"
            )
        if self.reply_end and self.mode == "steer":
            raise SeerError(
                "a reply_end monitor decides after the reply is written, when steering can no "
                "longer change it: use mode 'stop' or 'watch' with reply_end, or drop reply_end"
            )
        if self.reply_end and self.watch_tokens is not None:
            raise SeerError(
                "reply_end decides on the finished reply; watch_tokens limits a per-token "
                "watch: pass one or the other"
            )

    def watching(self, reads: int) -> bool:
        """Whether the monitor looks at forward pass ``reads`` (0: the end of the prompt) of
        the generation (never, for a ``reply_end`` monitor)."""
        return not self.reply_end and (self.watch_tokens is None or reads <= self.watch_tokens)


@dataclass
class Generation:
    """What :meth:`Explainer.generate_many` returns, per prompt in the given order: the reply
    (a fired ``stop`` monitor's refusal in place of it), the number of generated tokens read
    when the monitor fired (``None``: never), and the monitored concept's probability after
    each forward pass the monitor looked at (empty without a monitor, or with a ``reply_end``
    one). With a ``reply_end`` monitor, ``final`` holds the concept's probability in each
    reply's final explanation (the reply a stop monitor held back), and ``fired_at`` is the
    reply's length in tokens where it acted."""

    replies: list[str]
    fired_at: list[int | None]
    probabilities: list[list[float]]
    final: list[float] = field(default_factory=list)


class _Watch:
    """The forward hook: records the target layer's output (batch row 0) on every call, lets
    ``on_state`` look at it, adds ``steering`` (while set), and with ``stop`` ends the pass."""

    def __init__(self) -> None:
        self.states: list[torch.Tensor] = []
        self.steering: torch.Tensor | None = None
        self.on_state: Callable[[_Watch], None] | None = None
        self.stop = False

    def __call__(self, _module: nn.Module, _args: object, output: object) -> object:
        hidden = _hidden(output)
        self.states.append(hidden[0].detach())
        if self.on_state is not None:
            self.on_state(self)
        if self.stop:
            raise StopForward
        if self.steering is None:
            return output
        return _replace_hidden(output, hidden + self.steering.to(hidden.dtype))


def _check_request(prompt: str, max_new_tokens: int = 1) -> None:
    if not prompt or not prompt.strip():
        raise SeerError("the prompt is empty; pass some text with --prompt")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SeerError(
            f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}"
        )


class Explainer:
    """A SEER model with its prototypes and calibration."""

    def __init__(self, model: nn.Module, tokenizer: Any, run: Run) -> None:
        self.model, self.tokenizer, self.run = model, tokenizer, run
        self.layer, self.positions = run.layer, run.positions
        self.concepts = list(run.concepts)
        self.prototypes = F.normalize(run.prototypes.float(), dim=-1)
        self.center = run.center  # [P, H] subtracted before normalising (None: raw; issue 19)
        self.temperature = float(run.calibration["temperature"])
        self.threshold = float(run.calibration["threshold"])
        self.max_length = int(run.config.get("max_length", 512))
        self._block = get_layers(model, run.config.get("layers_path"))[self.layer]

    @classmethod
    def from_run(cls, path: str | Path, *, model: Any = None, tokenizer: Any = None) -> Explainer:
        """Load a run folder (base model + adapter) or a folder written by ``seer export``."""
        path = Path(path)
        if (path / "adapter").is_dir():
            run, peft_model, tokenizer = load_trained(path, model=model, tokenizer=tokenizer)
            return cls(peft_model, tokenizer, run)
        from seer.core.models import load_model

        run = read_run(path)
        if model is None or tokenizer is None:
            model, tokenizer = load_model(str(path))
        return cls(model, tokenizer, run)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- scoring ---------------------------------------------------------------------------
    def _vectors(self, user_end: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Representations ``[n, D]`` with 'last' := each row of ``tokens`` ``[n, H]``."""
        parts = []
        for k, name in enumerate(self.positions):
            h = (user_end.expand_as(tokens) if name == "user_end" else tokens).float()
            if self.center is not None:
                h = h - self.center[k].to(h.device)
            parts.append(F.normalize(h, dim=-1))
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5

    def _rank(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        protos = self.prototypes.to(vectors.device)
        cos = (F.normalize(vectors, dim=-1) @ protos.T).cpu().numpy()
        return cos, softmax_probabilities(cos, self.temperature)

    def _explanation(
        self, cos: np.ndarray, probs: np.ndarray, reply: str | None, trace: list
    ) -> Explanation:
        order = np.argsort(-cos, kind="stable")
        ranking: list[dict[str, float | str]] = [
            {"concept": self.concepts[k], "cosine": float(cos[k]), "probability": float(probs[k])}
            for k in order
        ]
        top = self.concepts[order[0]] if cos[order[0]] >= self.threshold else NONE
        return Explanation(top=top, ranking=ranking, reply=reply, trace=trace)

    def _trace(self, tokens: list[str], vectors: torch.Tensor) -> list[dict[str, Any]]:
        cos, probs = self._rank(vectors)
        out = []
        for tok, c, p in zip(tokens, cos, probs, strict=True):
            k = int(np.argmax(c))
            top = self.concepts[k] if c[k] >= self.threshold else NONE
            rounded = [round(float(v), 4) for v in p]
            out.append(
                {
                    "token": tok,
                    "top": top,
                    "probabilities": dict(zip(self.concepts, rounded, strict=True)),
                }
            )
        return out

    def direction(self, towards: str, away: str) -> torch.Tensor:
        """The unit direction ``prototype[towards] - prototype[away]`` in the target layer's
        hidden space (its 'last'-position block), e.g. for steering from unsafe to safe."""
        for name in (towards, away):
            if name not in self.concepts:
                raise SeerError(f"concept {name!r} is not in this run; it has {self.concepts}")
        if towards == away:
            raise SeerError(f"steering from {away!r} towards itself has no direction")
        hidden = self._hidden_size()
        block = self.positions.index("last") if "last" in self.positions else 0
        p = self.prototypes[:, block * hidden : (block + 1) * hidden]
        d = p[self.concepts.index(towards)] - p[self.concepts.index(away)]
        return d / d.norm()

    @torch.no_grad()
    def score(self, prompt: str, response: str | None = None) -> Explanation:
        """Explain a given prompt (and response) with one forward pass, read exactly as in
        training and evaluation. The trace covers the tokens after the user turn (the
        response and the template's closing tags), or the whole prompt when there is no
        response; its last entry is the final explanation."""
        _check_request(prompt)
        enc = encode(self.tokenizer, prompt, response, "full", self.max_length)
        watch = _Watch()
        watch.stop = True
        with self._hooked(watch):
            ids = torch.tensor([enc.input_ids], device=self.device)
            run_until(self.model, input_ids=ids, use_cache=False)
        hidden = watch.states[-1]  # [T, H]
        start = enc.user_end + 1 if response else 0
        vectors = self._vectors(hidden[enc.user_end], hidden[start : enc.last + 1])
        cos, probs = self._rank(vectors[-1:])
        tokens = [self.tokenizer.decode([t]) for t in enc.input_ids[start : enc.last + 1]]
        return self._explanation(cos[0], probs[0], response, self._trace(tokens, vectors))

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
        from seer.core.represent import representations

        if len(prompts) != len(responses):
            raise SeerError(f"{len(prompts)} prompts but {len(responses)} responses: pair them")
        for prompt in prompts:
            _check_request(prompt)
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
            layers_path=self.run.config.get("layers_path"),
            progress=progress,
            centers={self.layer: self.center},
        )[self.layer]
        return self._rank(torch.from_numpy(vectors))[1]

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

    @contextlib.contextmanager
    def _hooked(self, watch: _Watch) -> Iterator[_Watch]:
        handle = self._block.register_forward_hook(watch)
        try:
            yield watch
        finally:
            handle.remove()

    # --- generation ------------------------------------------------------------------------
    def check_monitor(self, monitor: Monitor) -> None:
        """Raise :class:`SeerError` unless ``monitor`` fits this run (its concepts exist, a
        given vector has the target layer's size)."""
        for name in (monitor.concept, monitor.towards):
            if name is not None and name not in self.concepts:
                raise SeerError(f"monitor concept {name!r} is not in this run: {self.concepts}")
        if monitor.vector is not None and monitor.vector.shape != (self._hidden_size(),):
            raise SeerError(
                f"monitor vector has shape {tuple(monitor.vector.shape)}; the target layer's "
                f"hidden size is {self._hidden_size()}: pass a 1-d vector of that size"
            )
        if monitor.mode == "steer" and monitor.vector is None:
            self.direction(monitor.towards, monitor.concept)  # type: ignore[arg-type]

    def _cache_kwarg(self) -> str:
        """The forward argument taking a KV cache: ``cache`` in newer transformers, else
        ``past_key_values``."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return (
            "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        )

    def _hidden_size(self) -> int:
        return self.prototypes.shape[1] // len(self.positions)

    def _on_state(self, monitor: Monitor, fired: list[int]) -> Callable[[_Watch], None]:
        """The monitor: after each forward pass of the generation, the target concept's
        probability at the newest position; the first time it reaches the threshold, note the
        pass and (steer mode) switch the steering vector on."""
        target = self.concepts.index(monitor.concept)

        def on_state(w: _Watch) -> None:
            if fired or not monitor.watching(len(w.states) - 1):
                return
            _, p = self._rank(self._vectors(w.states[0][-1], w.states[-1][-1:]))
            if p[0, target] >= monitor.threshold:
                fired.append(len(w.states) - 1)
                if monitor.mode == "steer":
                    norm = w.states[0].float().norm(dim=-1).mean()
                    w.steering = self._steering(monitor, norm)

        return on_state

    def _steering(self, monitor: Monitor, prompt_norm: torch.Tensor) -> torch.Tensor:
        """The vector a steering monitor adds: its own ``vector``, else ``scale`` times the
        prompt's mean hidden-state norm times the unit safe-minus-unsafe direction."""
        if monitor.vector is not None:
            return monitor.vector.float().to(prompt_norm.device)
        d = self.direction(monitor.towards, monitor.concept)  # type: ignore[arg-type]
        return monitor.scale * prompt_norm * d.to(prompt_norm.device)

    @torch.no_grad()
    def generate(
        self, prompt: str, max_new_tokens: int = 64, monitor: Monitor | None = None
    ) -> Explanation:
        """Generate a greedy reply and explain it from the same forward passes.

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
        _check_request(prompt, max_new_tokens)
        if monitor is not None:
            self.check_monitor(monitor)
        ids = prompt_ids(self.tokenizer, prompt)
        watch = _Watch()
        fired: list[int] = []
        if monitor is not None:
            watch.on_state = self._on_state(monitor, fired)
        stopping = monitor is not None and monitor.mode == "stop"
        with self._hooked(watch):
            out = self.model.generate(
                input_ids=torch.tensor([ids], device=self.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=[_StopWhen(lambda: stopping and bool(fired))],
                return_dict_in_generate=True,
            )
            # The explanation's own passes neither trigger the monitor nor need later layers.
            watch.on_state, watch.stop = None, True
            new = out.sequences[0, len(ids) :].tolist()
            reply = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            stopped = stopping and bool(fired)
            cache = out["cache"] if "cache" in out else out.get("past_key_values")
            result = self._finish(watch, prompt, ids, new, reply, cache, stopped)
        if monitor is not None and monitor.reply_end:
            p = next(r["probability"] for r in result.ranking if r["concept"] == monitor.concept)
            if p >= monitor.threshold:
                fired.append(len(new))
                stopped = monitor.mode == "stop"
        if stopped:
            result.reply = monitor.refusal  # type: ignore[union-attr]
        result.intervened_at = fired[0] if fired else None
        return result

    def _finish(
        self,
        watch: _Watch,
        prompt: str,
        ids: list[int],
        new: list[int],
        reply: str,
        cache: Any,
        stopped: bool,
    ) -> Explanation:
        user_end = watch.states[0][-1]
        # Pass k >= 1 of the generation read generated token k - 1; the last token is never read.
        per_token = [s[-1] for s in watch.states[1:]]
        last = per_token[-1] if per_token else user_end
        if not stopped:
            target = encode(self.tokenizer, prompt, reply or None, "full", 10**9).input_ids
            cached = len(ids) + len(new) - 1
            exact = len(watch.states) == len(new) and target[: cached + 1] == ids + new
            if cache is not None and exact:
                # One step through the cache: the last generated token and the closing tags.
                closing = target[cached:]
                run_until(
                    self.model,
                    input_ids=torch.tensor([closing], device=self.device),
                    attention_mask=torch.ones(1, len(target), dtype=torch.long, device=self.device),
                    use_cache=True,
                    **{self._cache_kwarg(): cache},
                )
                per_token.append(watch.states[-1][0])
            else:  # re-tokenised differently: read the formatted text with one full pass
                ids = torch.tensor([target], device=self.device)
                run_until(self.model, input_ids=ids, use_cache=False)
                per_token.append(watch.states[-1][-1])
            last = watch.states[-1][-1]
        tokens = [self.tokenizer.decode([t]) for t in new[: len(per_token)]]
        trace = (
            self._trace(tokens, self._vectors(user_end, torch.stack(per_token))) if tokens else []
        )
        cos, probs = self._rank(self._vectors(user_end, last[None]))
        return self._explanation(cos[0], probs[0], reply, trace)

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
        from seer.inference.generation import generate_batches

        for prompt in prompts:
            _check_request(prompt, max_new_tokens)
        if monitor is not None:
            self.check_monitor(monitor)
        out = Generation([""] * len(prompts), [None] * len(prompts), [[] for _ in prompts])
        w = _BatchWatch(self, monitor, [])  # each batch's own, once its context opens

        @contextlib.contextmanager
        def watch(lengths: list[int]) -> Iterator[list[Any]]:
            nonlocal w
            w = _BatchWatch(self, monitor, lengths)
            with self._hooked(w):  # type: ignore[arg-type]
                yield [_StopRows(w)] if w.stops else []

        batches = generate_batches(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            watch=watch,
        )
        lengths = [0] * len(prompts)
        for idx, rows in batches:
            for row, (i, tokens) in enumerate(zip(idx, rows, strict=True)):
                lengths[i] = len(tokens)
                # Pass k reads generated token k - 1; passes after the row's end read padding.
                ended = len(tokens) - 1
                k = w.fired[row]
                out.fired_at[i] = k if k is not None and k <= ended else None
                reads = min(ended + 1, len(w.probabilities))
                out.probabilities[i] = [float(p[row]) for p in w.probabilities[:reads]]
                if out.fired_at[i] is not None and w.stops:
                    out.replies[i] = monitor.refusal  # type: ignore[union-attr]
                else:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    out.replies[i] = text.strip()
        if monitor is not None and monitor.reply_end:
            self._judge_reply_ends(out, prompts, lengths, monitor, batch_size, progress)
        return out

    def _judge_reply_ends(
        self,
        out: Generation,
        prompts: list[str],
        lengths: list[int],
        monitor: Monitor,
        batch_size: int,
        progress: bool | str,
    ) -> None:
        """A ``reply_end`` monitor's decision on finished replies: their final explanations
        (one batched pass, read as in training), and the refusal where a stop monitor acts."""
        desc = f"{progress}: reply ends" if isinstance(progress, str) else progress
        out.final = self.final_probability(monitor.concept, prompts, out.replies, batch_size, desc)
        for i, p in enumerate(out.final):
            if p >= monitor.threshold:
                out.fired_at[i] = lengths[i]
                if monitor.mode == "stop":
                    out.replies[i] = monitor.refusal


class _BatchWatch:
    """The forward hook of :meth:`Explainer.generate_many`: after each pass, the monitored
    concept's probability at every row's newest position; a row fires once, and a steering
    monitor then adds its vector to that row from that pass on."""

    def __init__(self, explainer: Explainer, monitor: Monitor | None, lengths: list[int]) -> None:
        self.explainer, self.monitor, self.lengths = explainer, monitor, lengths
        self.fired: list[int | None] = [None] * len(lengths)
        self.probabilities: list[np.ndarray] = []
        self.stops = monitor is not None and monitor.mode == "stop"
        self.passes = 0
        self.user_end: torch.Tensor | None = None
        self.steering: torch.Tensor | None = None

    def __call__(self, _module: nn.Module, _args: object, output: object) -> object:
        hidden = _hidden(output)
        if self.passes == 0:
            self.user_end = hidden[:, -1].detach()
        if self.monitor is not None and self.monitor.watching(self.passes):
            self._watch(hidden)
        self.passes += 1
        if self.steering is None:
            return output
        return _replace_hidden(output, hidden + self.steering[:, None].to(hidden.dtype))

    def _watch(self, hidden: torch.Tensor) -> None:
        ex, monitor = self.explainer, self.monitor
        assert monitor is not None and self.user_end is not None
        _, p = ex._rank(ex._vectors(self.user_end, hidden[:, -1].detach()))
        p = p[:, ex.concepts.index(monitor.concept)]
        self.probabilities.append(p)
        for row in np.flatnonzero(p >= monitor.threshold):
            if self.fired[row] is not None:
                continue
            self.fired[row] = self.passes
            if monitor.mode == "steer":
                if self.steering is None:
                    self.steering = hidden.new_zeros(hidden.shape[0], hidden.shape[-1]).float()
                n = self.lengths[row]  # left-padded: the prompt is the last n positions
                norm = hidden[row, -n:].float().norm(dim=-1).mean()
                self.steering[row] = self.explainer._steering(monitor, norm)


class _StopRows:
    """A stopping criterion that ends the rows whose stop monitor fired."""

    def __init__(self, watch: _BatchWatch) -> None:
        self.watch = watch

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        done = [k is not None for k in self.watch.fired]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _StopWhen:
    """A stopping criterion that asks a callable after each step."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        done = self.predicate()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


# --- the `seer explain` command ------------------------------------------------------------
def _requests(args: Any) -> list[dict]:
    """The prompts to explain, validated before any model is loaded."""
    if args.prompt is None and args.file is None:
        raise SeerError(
            'pass --prompt "TEXT", or --file PROMPTS.jsonl with one {"prompt": ...} a line'
        )
    if args.prompt is not None and args.file is not None:
        raise SeerError("pass either --prompt or --file, not both")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise SeerError(
            f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, got {args.max_new_tokens}"
        )
    if getattr(args, "monitor", None) is not None and args.response is not None:
        raise SeerError("--monitor acts while a reply is generated: drop --response to use it")
    if args.file is None:
        _check_request(args.prompt)
        return [{"prompt": args.prompt, "response": args.response}]
    if args.response is not None:
        raise SeerError("--response goes with --prompt; with --file, give each line a 'response'")
    from seer.core.data import read_jsonl

    rows = read_jsonl(args.file)
    if not rows:
        raise SeerError(f"{args.file} holds no prompts; write one JSON object a line")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SeerError(f"{args.file}, entry {number}: needs a non-empty 'prompt' string")
    return rows


def _monitor(args: Any) -> Monitor | None:
    """The ``--monitor`` options as a :class:`Monitor` (``None`` without ``--monitor``)."""
    if getattr(args, "monitor", None) is None:
        return None
    if not args.concept:
        raise SeerError("--monitor needs --concept, the concept to watch (e.g. --concept unsafe)")
    extra = {"refusal": args.refusal} if args.refusal else {}
    return Monitor(
        args.concept,
        threshold=args.threshold,
        mode=args.monitor,
        towards=args.towards,
        scale=args.steer_scale,
        watch_tokens=args.watch_tokens,
        reply_end=args.reply_end,
        **extra,
    )


def _table(row: dict, result: Explanation, trace: bool, shadow: bool = False) -> str:
    w = max(len(str(r["concept"])) for r in result.ranking) + 2
    lines = [f"prompt: {row['prompt']}"]
    if row.get("concept") is not None:
        lines.append(f"given concept: {row['concept']}")
    lines += [f"top concept: {result.top}", f"  {'concept':<{w}}{'cosine':>8}{'probability':>13}"]
    lines += [
        f"  {str(r['concept']):<{w}}{r['cosine']:>8.3f}{r['probability']:>13.3f}"
        for r in result.ranking
    ]
    if result.intervened_at is not None:
        acted = "would have acted (watch mode)" if shadow else "acted"
        lines.append(f"monitor {acted} after {result.intervened_at} generated tokens")
    lines.append(f"reply: {result.reply}")
    if trace:
        lines.append("trace (token, top concept, its probability):")
        for t in result.trace:
            p = max(t["probabilities"].values())
            lines.append(f"  {t['token']!r:<20}{t['top']:<{w}}{p:.3f}")
    return "\n".join(lines) + "\n"


def main(args: Any) -> int:
    """``seer explain DIR --prompt TEXT [--response TEXT] | --file PROMPTS.jsonl``.

    Generates a reply (or scores the given response, exactly as ``seer evaluate`` reads it)
    and prints the model's self-explanation; with ``--monitor``, the generation is watched
    (and stopped or steered) as :class:`Monitor` describes. With ``--file``, lines that
    carry a ``concept`` are counted into a final accuracy of the top-ranked concept (ignoring
    the ``none`` threshold): on ``DIR/split/test.jsonl`` it reproduces ``prototype_accuracy``.
    """
    from tqdm.auto import tqdm

    rows = _requests(args)
    monitor = _monitor(args)
    explainer = Explainer.from_run(args.run)
    if monitor is not None:
        explainer.check_monitor(monitor)
        if any(row.get("response") is not None for row in rows):
            raise SeerError("--monitor acts while a reply is generated; --file has 'response's")
    batch = args.file is not None
    correct = labelled = 0
    bar = tqdm(
        rows,
        desc="explaining",
        unit="prompt",
        file=sys.stderr,
        disable=not batch or getattr(args, "quiet", False),
    )
    for row in bar:
        if row.get("response") is not None:
            result = explainer.score(row["prompt"], row["response"])
        else:
            result = explainer.generate(row["prompt"], args.max_new_tokens, monitor)
        if row.get("concept") is not None:
            labelled += 1
            correct += result.ranking[0]["concept"] == str(row["concept"])
        if args.json:
            out = {"prompt": row["prompt"], **result.to_dict()}
            if row.get("concept") is not None:
                out["concept"] = row["concept"]
            if not args.trace:
                del out["trace"]
            text = json.dumps(out, ensure_ascii=False)
        else:
            text = _table(row, result, args.trace, monitor is not None and monitor.mode == "watch")
        tqdm.write(text, file=sys.stdout)
    if labelled:
        accuracy = correct / labelled
        if args.json:
            summary = {"accuracy": accuracy, "correct": correct, "labelled": labelled}
            print(json.dumps({"summary": summary}))
        else:
            print(f"accuracy of the top-ranked concept: {accuracy:.4f} ({correct}/{labelled})")
    return 0
