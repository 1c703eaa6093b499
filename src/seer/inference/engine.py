"""The generation engine: one batched, left-padded greedy decoding loop over a KV cache, with
the read hook at the target layer, that yields step by step, for every row, the token the
model has just read, its readout, and what the row's monitor did. Everything that generates
with an explanation consumes it: ``Explainer.generate`` (a batch of one),
``Explainer.generate_many``, ``seer explain``, ``seer detox-eval`` and ``seer serve``.

    batch = Engine(LoadedRun.from_run("runs/bt")).batch()
    row = batch.add("How do I pick a lock?", max_new_tokens=64, monitor=Monitor("unsafe"))
    while batch.active:
        for event in batch.step():
            print(event.text, event.top, event.monitor)

The engine steps a backend (:mod:`seer.inference.backends`: Hugging Face by default, or
an in-process vLLM engine), which runs the passes and hands the target layer's states over.
Events are token-centric (one per generated token, once the model has read it, plus one at
the prompt's end); a row's last event carries its :class:`RowResult`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from seer.core.formatting import prompt_ids
from seer.errors import SeerError
from seer.inference.backends import Backend, load_backend
from seer.inference.events import RowEvent, RowResult
from seer.inference.loaded import LoadedRun
from seer.inference.monitor import Monitor
from seer.inference.rows import Row

__all__ = ["Batch", "Engine", "RowEvent", "RowResult"]


class Batch:
    """One left-padded batch with its KV cache: rows are added (also between steps: a new
    row is prefilled and joins the running batch), cancelled, and stepped together."""

    def __init__(self, backend: Backend) -> None:
        self.loaded = backend.loaded
        self._step = backend.passes()
        self._pending: list[Row] = []
        self._ids = 0

    def add(self, prompt: str, *, max_new_tokens: int, monitor: Monitor | None = None) -> int:
        """Queue a prompt; it is prefilled at the next :meth:`step`. Returns its row id."""
        self.loaded.check_request(prompt, max_new_tokens)
        if monitor is not None:
            self.loaded.check_monitor(monitor)
        ids = prompt_ids(self.loaded.tokenizer, prompt)
        self.loaded.check_context(len(ids), max_new_tokens)
        row = Row(self._ids, prompt, ids, max_new_tokens, monitor, self.loaded)
        self._ids += 1
        self._pending.append(row)
        return row.id

    def cancel(self, row: int) -> None:
        """End ``row`` at the next step (finish reason ``cancelled``); a no-op once it ended."""
        if not 0 <= row < self._ids:
            raise SeerError(f"row {row} was never added to this batch")
        for r in self._pending + self._step.rows:
            if r.id == row:
                r.cancelled = True

    @property
    def active(self) -> int:
        """Rows still generating (including those added but not yet prefilled)."""
        return len(self._pending) + len(self._step.rows)

    @torch.no_grad()
    def step(self) -> list[RowEvent]:
        """One forward pass for every running row (and one prefill pass for new rows)."""
        events = [r.cancel_unstarted() for r in self._pending if r.cancelled]
        self._pending = [r for r in self._pending if not r.cancelled]
        events += self._step.cancel()
        rows, self._pending = self._pending, []
        return events + self._step.step(rows)


class Engine:
    """Batches of greedy, monitored, explained generations of one loaded run, on ``backend``
    (a :class:`Backend`, or its name: ``hf``, the default, or ``vllm``)."""

    def __init__(self, loaded: LoadedRun, backend: Backend | str = "hf") -> None:
        self.loaded = loaded
        self.backend = load_backend(backend, loaded) if isinstance(backend, str) else backend

    @property
    def joins(self) -> bool:
        """Whether rows may be added to a batch that is generating."""
        return self.backend.joins

    def batch(self) -> Batch:
        """An empty, live batch."""
        return Batch(self.backend)

    def stream(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int | Sequence[int] = 64,
        monitors: Monitor | None | Sequence[Monitor | None] = None,
        batch_size: int = 16,
    ) -> Iterator[list[RowEvent]]:
        """Every prompt generated, in batches of ``batch_size`` prompts of similar length (each
        run to its end); yields each step's events, whose ``row`` is the prompt's index."""
        n = len(prompts)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        watch = [monitors] * n if monitors is None or isinstance(monitors, Monitor) else monitors
        if len(limits) != n or len(watch) != n:
            raise SeerError("pass one max_new_tokens and one monitor per prompt, or one for all")
        for i, prompt in enumerate(prompts):  # every request checked before any generation
            self.loaded.check_request(prompt, limits[i])
            if watch[i] is not None:
                self.loaded.check_monitor(watch[i])  # type: ignore[arg-type]
        lengths = [len(prompt_ids(self.loaded.tokenizer, p)) for p in prompts]
        order = sorted(range(n), key=lambda i: lengths[i])
        for start in range(0, n, batch_size):
            batch = self.batch()
            index = {
                batch.add(prompts[i], max_new_tokens=limits[i], monitor=watch[i]): i
                for i in order[start : start + batch_size]
            }
            while batch.active:
                events = batch.step()
                for event in events:
                    event.row = index[event.row]
                    if event.result is not None and event.result.error is not None:
                        raise event.result.error  # one caller, one failure: say it
                yield events
