"""The engine's inside: the rows of a running batch (:class:`Row`: tokens, monitor state,
trace) and the passes over them (:class:`Step`): a left-padded prefill for new rows, one
decode pass for running rows with the read hook at the target layer (readout, monitor,
steering), and each finished row's final read through its own slice of the KV cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seer.core.architecture import cache_kwarg
from seer.core.formatting import content_start, encode
from seer.core.layers import add_to_layer, capture_layers, run_until
from seer.errors import SeerError
from seer.inference.cache import KV, new_cache
from seer.inference.decoding import Greedy, TextStream, forward, left_pad
from seer.inference.events import RowEvent, RowResult
from seer.inference.monitor import MAX_STEER, Monitor, MonitorState
from seer.readout import NONE, Reading

if TYPE_CHECKING:
    from seer.inference.explainer import Explainer

__all__ = ["Row", "Step"]


class Row:
    """One prompt being generated: its tokens, monitor state, readouts and trace."""

    def __init__(
        self,
        id: int,
        prompt: str,
        ids: list[int],
        max_new_tokens: int,
        monitor: Monitor | None,
        explainer: Explainer,
    ) -> None:
        self.id, self.prompt, self.ids, self.max_new_tokens = id, prompt, ids, max_new_tokens
        self.explainer, self.state = explainer, MonitorState(monitor)
        self.concept = explainer.readout.index(monitor.concept) if monitor else None
        self.tokens: list[int] = []
        self.text = TextStream(explainer.tokenizer)
        self.trace: list[dict[str, Any]] = []
        self.user_end: torch.Tensor | None = None  # the target layer's state at the prompt's end
        # the 'mean' span: its first token (of ids) and the sum and count of its states so far
        self.start = content_start(explainer.tokenizer, ids)
        self.span_sum: torch.Tensor | None = None
        self.span_count = 0
        self.prompt_norm: torch.Tensor | None = None
        self.steering: torch.Tensor | None = None
        self.cancelled = False
        self.error: Exception | None = None  # set when this row's own work failed: it ends

    def span_mean(self, more: torch.Tensor | None = None) -> torch.Tensor:
        """The mean state of the 'mean' span read so far, with the states ``more`` ``[n, H]``
        read after it (not kept)."""
        assert self.span_sum is not None
        if more is None:
            return self.span_sum / self.span_count
        return (self.span_sum + more.float().sum(0)) / (self.span_count + len(more))

    def observe(self, probabilities: np.ndarray) -> None:
        """The monitor's look at this pass; a steering monitor that fires switches on."""
        if self.concept is None:
            return
        if self.state.observe(len(self.tokens), probabilities[self.concept]) and self.state.steers:
            monitor = self.state.monitor
            assert monitor is not None and self.prompt_norm is not None
            if monitor.vector is not None:
                vector = monitor.vector.float().to(self.prompt_norm.device)
                ratio = float(vector.norm() / self.prompt_norm)
                if not ratio <= MAX_STEER:
                    raise SeerError(
                        f"the monitor vector's norm is {ratio:.3g} times the prompt's mean "
                        f"hidden-state norm at the target layer "
                        f"({float(self.prompt_norm):.3g}); the most is {MAX_STEER:g} times: "
                        "scale the vector down"
                    )
                self.steering = vector
            else:
                d = self.explainer.readout.direction(monitor.towards, monitor.concept)  # type: ignore[arg-type]
                self.steering = monitor.scale * self.prompt_norm * d.to(self.prompt_norm.device)

    def event(self, reading: Reading, i: int, text: str = "", **end: Any) -> RowEvent:
        """The event of the token this pass read (index -1: the prompt's end)."""
        j = len(self.tokens) - 1
        cos, probs = reading.cosines[i], reading.probabilities[i]
        token = self.tokens[j] if j >= 0 else None
        if token is not None:
            name = self.explainer.tokenizer.decode([token])
            self.trace.append(self.explainer.readout.trace_entry(name, cos, probs))
        return RowEvent(
            self.id, j, token, text, cos, probs, reading.top[i], self.state.status, **end
        )

    def finish(self, event: RowEvent, result: RowResult) -> None:
        """Make ``event`` the row's last: its finish reason, result and final monitor status."""
        event.finish_reason, event.result = result.finish_reason, result
        event.monitor = self.state.status

    def result(self, cos: np.ndarray, probs: np.ndarray, reply: str, reason: str) -> RowResult:
        if self.concept is not None:
            self.state.decide_at_end(len(self.tokens), probs[self.concept])
        reply = self.state.reply(reply)
        reason = "monitor" if self.state.stops else reason
        explanation = self.explainer.readout.explanation(cos, probs, reply, list(self.trace))
        explanation.intervened_at = self.state.fired_at
        return RowResult(
            reply,
            list(self.tokens),
            self.state.fired_at,
            list(self.state.probabilities),
            explanation,
            reason,
            self.state.final,
        )

    def failed(self) -> RowEvent:
        """The last event of a row whose own work failed (``error``): it ends alone."""
        empty = np.zeros(0)
        s = self.state
        result = RowResult(
            "",
            list(self.tokens),
            s.fired_at,
            list(s.probabilities),
            None,
            "error",
            error=self.error,
        )
        j = len(self.tokens) - 1
        return RowEvent(self.id, j, None, "", empty, empty, NONE, s.status, "error", result)

    def cancel_unstarted(self) -> RowEvent:
        """The only event of a row cancelled before its prompt was read."""
        empty = np.zeros(0)
        result = RowResult("", [], None, [], None, "cancelled")
        return RowEvent(
            self.id, -1, None, "", empty, empty, NONE, self.state.status, "cancelled", result
        )


class Step:
    """The running rows (in cache order), their KV cache, and the passes over them."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer
        self.model, self.tokenizer = explainer.model, explainer.tokenizer
        self.greedy = Greedy(self.model)
        self.rows: list[Row] = []
        self.kv: KV | None = None
        self._forward: list[Row] = []
        self._reading: Reading | None = None
        self._prefill = False

    def _hook(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """At the target layer: read the newest position of every row, let its monitor look,
        and return the steering to add (``None``: none of the rows is steered)."""
        rows, newest = self._forward, hidden[:, -1].detach()
        if self._prefill:
            for i, row in enumerate(rows):
                row.user_end = newest[i]
                prompt = hidden[i, -len(row.ids) :].detach().float()
                row.prompt_norm = prompt.norm(dim=-1).mean()
                row.span_sum, row.span_count = prompt[row.start :].sum(0), len(row.ids) - row.start
        else:
            for i, row in enumerate(rows):
                assert row.span_sum is not None  # set by the row's prefill
                row.span_sum, row.span_count = row.span_sum + newest[i].float(), row.span_count + 1
        readout = self.explainer.readout
        user_end = torch.stack([r.user_end for r in rows])  # type: ignore[misc]
        means = torch.stack([r.span_mean() for r in rows])
        self._reading = readout.read(readout.vectors(user_end, newest, means))
        for i, row in enumerate(rows):
            try:
                row.observe(self._reading.probabilities[i])
            except Exception as exc:  # this row's own monitor failed: it alone ends
                row.error = exc
        if all(r.steering is None or r.error is not None for r in rows):
            return None
        delta = hidden.new_zeros(len(rows), 1, hidden.shape[-1], dtype=torch.float32)
        for i, row in enumerate(rows):
            if row.steering is not None and row.error is None:
                delta[i, 0] = row.steering
        return delta

    def _pass(self, rows: list[Row], prefill: bool, **inputs: Any) -> Reading:
        self._forward, self._prefill = rows, prefill
        ex = self.explainer
        with add_to_layer(self.model, ex.layer, self._hook, layers_path=ex.layers_path):
            out = forward(self.model, **inputs)
        self._next = self.greedy(out.logits)
        assert self._reading is not None
        return self._reading

    def prefill(self, rows: list[Row]) -> list[RowEvent]:
        device = self.explainer.device
        batch = left_pad([r.ids for r in rows], self.tokenizer.pad_token_id)
        mask = batch["attention_mask"].to(device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = new_cache()
        reading = self._pass(
            rows,
            True,
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
        )
        kv = KV(cache, mask)
        events, keep = self._advance(rows, reading, kv)
        kept = kv.keep(keep)
        self.kv = kept if self.kv is None or not self.rows else self.kv.join(kept)
        self.rows += [rows[i] for i in keep]
        return events

    def decode(self) -> list[RowEvent]:
        if not self.rows or self.kv is None:
            return []
        device, kv = self.explainer.device, self.kv
        pending = torch.tensor([[r.tokens[-1]] for r in self.rows], device=device)
        positions = torch.tensor(
            [[len(r.ids) + len(r.tokens) - 1] for r in self.rows], device=device
        )
        reading = self._pass(
            self.rows,
            False,
            input_ids=pending,
            attention_mask=kv.grow(),
            position_ids=positions,
            cache=kv.cache,
        )
        events, keep = self._advance(self.rows, reading, kv)
        self.kv, self.rows = kv.keep(keep), [self.rows[i] for i in keep]
        return events

    def cancel(self) -> list[RowEvent]:
        """Final reads of the running rows cancelled since the last step."""
        if self.kv is None or not any(r.cancelled for r in self.rows):
            return []
        events = self._finals(
            [(i, r, "cancelled") for i, r in enumerate(self.rows) if r.cancelled], self.kv
        )
        keep = [i for i, r in enumerate(self.rows) if not r.cancelled]
        self.kv, self.rows = self.kv.keep(keep), [self.rows[i] for i in keep]
        return events

    def _advance(
        self, rows: list[Row], reading: Reading, kv: KV
    ) -> tuple[list[RowEvent], list[int]]:
        """After a pass: each row's event, its next token, and the rows that go on (the rows
        that end here get their final read together, after all the rows' events)."""
        events: list[RowEvent] = []
        keep: list[int] = []
        ending: list[tuple[int, Row, str]] = []
        for i, row in enumerate(rows):
            try:
                if row.error is None:
                    self._advance_row(i, row, reading, events, keep, ending)
            except Exception as exc:  # this row's own readout or monitor failed: it alone ends
                row.error = exc
            if row.error is not None:
                events.append(row.failed())
        return events + self._finals(ending, kv), keep

    def _advance_row(
        self,
        i: int,
        row: Row,
        reading: Reading,
        events: list[RowEvent],
        keep: list[int],
        ending: list[tuple[int, Row, str]],
    ) -> None:
        text = row.text.push(row.tokens[-1]) if row.tokens else ""
        events.append(row.event(reading, i, text))
        if row.state.stops:  # a stop monitor fired at this pass: the row ends here
            cos, probs = reading.cosines[i], reading.probabilities[i]
            row.finish(events[-1], row.result(cos, probs, "", "monitor"))
            return
        token = self._next[i]
        row.tokens.append(token)
        if token in self.greedy.eos:
            ending.append((i, row, "stop"))
        elif len(row.tokens) >= row.max_new_tokens:
            ending.append((i, row, "length"))
        else:
            keep.append(i)

    def _read(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The target layer's states ``[B, T, H]`` for ``inputs`` (no later layer runs)."""
        ex = self.explainer
        with capture_layers(
            self.model, [ex.layer], stop_after=True, layers_path=ex.layers_path
        ) as h:
            run_until(self.model, **inputs)
            return h[ex.layer].detach()

    def _read_after(self, kv: KV, suffixes: list[list[int]]) -> torch.Tensor:
        """The target layer's states ``[R, T, H]`` for each row's ``suffix`` read after its
        cached tokens, all rows in one pass (suffixes right-padded: causal attention keeps
        the padding out of every real token's view). The pass extends ``kv``'s cache."""
        device, n = self.explainer.device, max(len(s) for s in suffixes)
        ids = torch.full((kv.rows, n), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        new = torch.zeros((kv.rows, n), dtype=torch.long)
        for j, suffix in enumerate(suffixes):
            ids[j, : len(suffix)] = torch.tensor(suffix)
            new[j, : len(suffix)] = 1
        cached = kv.mask.sum(-1, keepdim=True)
        inputs: dict[str, Any] = {
            "input_ids": ids.to(device),
            "attention_mask": torch.cat([kv.mask, new.to(device)], dim=1),
            "position_ids": cached + torch.arange(n, device=device)[None],
            cache_kwarg(self.model): kv.cache,
            "use_cache": True,
        }
        return self._read(inputs)

    def _finals(self, ending: list[tuple[int, Row, str]], kv: KV) -> list[RowEvent]:
        """The last events of the rows that end now, given as (index in ``kv``, row, finish
        reason): each row's last token read with the chat template's closing tokens through
        its cache, all such rows in one pass (a full pass of its own for a row whose reply
        re-tokenises differently)."""
        if not ending:
            return []
        replies, states, through = [], {}, []
        for k, (i, row, _) in enumerate(ending):
            reply = self.tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
            replies.append(reply)
            target = encode(self.tokenizer, row.prompt, reply or None, "full", 10**9).input_ids
            cached = len(row.ids) + len(row.tokens) - 1
            if target[: cached + 1] == row.ids + row.tokens:
                through.append((k, i, target[cached:]))
            else:
                device = self.explainer.device
                alone = {
                    "input_ids": torch.tensor([target], device=device),
                    "attention_mask": torch.ones(1, len(target), dtype=torch.long, device=device),
                    "position_ids": torch.arange(len(target), device=device)[None],
                    "use_cache": False,
                }
                read = self._read(alone)[0]
                mean = read[content_start(self.tokenizer, target) :].float().mean(0)
                states[k] = (read[-1], read[-1], mean, mean)
        if through:
            hidden = self._read_after(kv.keep([i for _, i, _ in through]), [s for *_, s in through])
            for j, (k, _, suffix) in enumerate(through):
                row, read = ending[k][1], hidden[j, : len(suffix)]
                states[k] = (read[0], read[-1], row.span_mean(read[:1]), row.span_mean(read))
        events = []
        for k, (_, row, reason) in enumerate(ending):
            try:
                events.append(self._final(row, states[k], replies[k], reason))
            except Exception as exc:  # this row's own final read failed: it alone ends
                row.error = exc
                events.append(row.failed())
        return events

    def _final(
        self, row: Row, states: tuple[torch.Tensor, ...], reply: str, reason: str
    ) -> RowEvent:
        token_state, last, token_mean, mean = states
        readout = self.explainer.readout
        reading = readout.read(
            readout.vectors(
                row.user_end,  # type: ignore[arg-type]
                torch.stack([token_state, last]),
                torch.stack([token_mean, mean]),
            )
        )
        text = row.text.push(row.tokens[-1]) + row.text.flush()
        event = row.event(reading, 0, text)
        cos, probs = reading.cosines[1], reading.probabilities[1]
        row.finish(event, row.result(cos, probs, reply, reason))
        return event
