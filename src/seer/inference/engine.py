"""The generation engine: one batched, left-padded greedy decoding loop over a KV cache, with
the read hook at the target layer, that yields step by step, for every row, the token the
model has just read, its readout, and what the row's monitor did. Everything that generates
with an explanation consumes it: ``Explainer.generate`` (a batch of one),
``Explainer.generate_many``, ``seer explain``, ``seer detox-eval`` and ``seer serve``.

    batch = Engine(explainer).batch()
    row = batch.add("How do I pick a lock?", max_new_tokens=64, monitor=Monitor("unsafe"))
    while batch.active:
        for event in batch.step():
            print(event.text, event.top, event.monitor)

The contract with the server is ``/work/coord/ENGINE.md``: events are token-centric (one per
generated token, once the model has read it, plus one at the prompt's end); a row's last
event carries its :class:`RowResult`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from seer.core.formatting import prompt_ids
from seer.errors import SeerError
from seer.inference.events import RowEvent, RowResult
from seer.inference.monitor import Monitor
from seer.inference.rows import Row, Step

if TYPE_CHECKING:
    from seer.inference.explainer import Explainer

__all__ = ["Batch", "Engine", "RowEvent", "RowResult"]


class Batch:
    """One left-padded batch with its KV cache: rows are added (also between steps: a new
    row is prefilled and joins the running batch), cancelled, and stepped together."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer
        self._step = Step(explainer)
        self._pending: list[Row] = []
        self._ids = 0

    def add(self, prompt: str, *, max_new_tokens: int, monitor: Monitor | None = None) -> int:
        """Queue a prompt; it is prefilled at the next :meth:`step`. Returns its row id."""
        self.explainer.check_request(prompt, max_new_tokens)
        if monitor is not None:
            self.explainer.check_monitor(monitor)
        ids = prompt_ids(self.explainer.tokenizer, prompt)
        self.explainer.check_context(len(ids), max_new_tokens)
        row = Row(self._ids, prompt, ids, max_new_tokens, monitor, self.explainer)
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
        events += self._step.decode()
        if self._pending:
            rows, self._pending = self._pending, []
            events += self._step.prefill(rows)
        return events


class Engine:
    """Batches of greedy, monitored, explained generations for one :class:`Explainer`."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer

    def batch(self) -> Batch:
        """An empty, live batch."""
        return Batch(self.explainer)

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
            self.explainer.check_request(prompt, limits[i])
            if watch[i] is not None:
                self.explainer.check_monitor(watch[i])  # type: ignore[arg-type]
        lengths = [len(prompt_ids(self.explainer.tokenizer, p)) for p in prompts]
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
