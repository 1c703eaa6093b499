"""The engine's rows and what every backend does with them alike: a :class:`Row` (tokens,
monitor state, readouts, trace), taking in the target layer's states of a pass (the prompt's
at its prefill, one per decode pass), reading the newest position of every row, advancing
rows by their next tokens, and the final read of a finished row (the closing-template read).
A backend (:mod:`seer.inference.backends`) only runs the passes and hands the states over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seer.core.formatting import content_start, encode
from seer.errors import SeerError
from seer.inference.decoding import TextStream
from seer.inference.events import RowEvent, RowResult
from seer.inference.loaded import LoadedRun
from seer.inference.monitor import MAX_STEER, Monitor, MonitorState
from seer.readout import NONE, Reading

__all__ = ["Closing", "Row", "advance", "closing", "final_events", "read_newest"]


class Row:
    """One prompt being generated: its tokens, monitor state, readouts and trace."""

    def __init__(
        self,
        id: int,
        prompt: str,
        ids: list[int],
        max_new_tokens: int,
        monitor: Monitor | None,
        loaded: LoadedRun,
    ) -> None:
        self.id, self.prompt, self.ids, self.max_new_tokens = id, prompt, ids, max_new_tokens
        self.loaded, self.state = loaded, MonitorState(monitor)
        self.concept = loaded.readout.index(monitor.concept) if monitor else None
        self.tokens: list[int] = []
        self.text = TextStream(loaded.tokenizer)
        self.trace: list[dict[str, Any]] = []
        self.user_end: torch.Tensor | None = None  # the target layer's state at the prompt's end
        self.newest: torch.Tensor | None = None  # its state at the newest position read
        # the 'mean' span: its first token (of ids) and the sum and count of its states so far
        self.start = content_start(loaded.tokenizer, ids)
        self.span_sum: torch.Tensor | None = None
        self.span_count = 0
        self.prompt_norm: torch.Tensor | None = None
        self.steering: torch.Tensor | None = None
        self.cancelled = False
        self.error: Exception | None = None  # set when this row's own work failed: it ends

    def take_prompt(self, states: torch.Tensor) -> None:
        """The target layer's states ``[len(ids), H]`` of the whole prompt (its prefill)."""
        states = states.detach()
        self.user_end = self.newest = states[-1]
        prompt = states.float()
        self.prompt_norm = prompt.norm(dim=-1).mean()
        self.span_sum, self.span_count = prompt[self.start :].sum(0), len(self.ids) - self.start

    def take_token(self, state: torch.Tensor) -> None:
        """The target layer's state ``[H]`` of the newest token (a decode pass)."""
        assert self.span_sum is not None  # set by the row's prefill
        self.newest = state.detach()
        self.span_sum, self.span_count = self.span_sum + self.newest.float(), self.span_count + 1

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
                readout = self.loaded.readout
                d = readout.direction(monitor.towards, monitor.concept)  # type: ignore[arg-type]
                self.steering = monitor.scale * self.prompt_norm * d.to(self.prompt_norm.device)

    def event(self, reading: Reading, i: int, text: str = "", **end: Any) -> RowEvent:
        """The event of the token this pass read (index -1: the prompt's end)."""
        j = len(self.tokens) - 1
        cos, probs = reading.cosines[i], reading.probabilities[i]
        token = self.tokens[j] if j >= 0 else None
        if token is not None:
            name = self.loaded.tokenizer.decode([token])
            self.trace.append(self.loaded.readout.trace_entry(name, cos, probs))
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
        explanation = self.loaded.readout.explanation(cos, probs, reply, list(self.trace))
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


def read_newest(rows: list[Row]) -> Reading:
    """The readout at every row's newest position (after :meth:`Row.take_prompt` or
    :meth:`Row.take_token`), and each row's monitor's look at it (a row whose monitor fails
    gets its ``error``, and no steering from then on)."""
    readout = rows[0].loaded.readout
    user_end = torch.stack([r.user_end for r in rows])  # type: ignore[misc]
    newest = torch.stack([r.newest for r in rows])  # type: ignore[misc]
    means = torch.stack([r.span_mean() for r in rows])
    reading = readout.read(readout.vectors(user_end, newest, means))
    for i, row in enumerate(rows):
        try:
            row.observe(reading.probabilities[i])
        except Exception as exc:  # this row's own monitor failed: it alone ends
            row.error = exc
    return reading


def advance(
    rows: list[Row], reading: Reading, next_tokens: list[int], eos: set[int]
) -> tuple[list[RowEvent], list[int], list[tuple[int, Row, str]]]:
    """After a pass: each row's event and its next token. Returns the events, the indices of
    the rows that go on, and the rows that end here with their finish reason (for their final
    read, :func:`final_events`); a row a stop monitor ended is finished already, and so is a
    row whose own work failed (its ``error``: its last event says so, the others go on)."""
    events: list[RowEvent] = []
    keep: list[int] = []
    ending: list[tuple[int, Row, str]] = []
    for i, row in enumerate(rows):
        try:
            if row.error is None:
                _advance_row(i, row, reading, next_tokens[i], eos, events, keep, ending)
        except Exception as exc:  # this row's own readout or monitor failed: it alone ends
            row.error = exc
        if row.error is not None:
            events.append(row.failed())
    return events, keep, ending


def _advance_row(
    i: int,
    row: Row,
    reading: Reading,
    token: int,
    eos: set[int],
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
    row.tokens.append(token)
    if token in eos:
        ending.append((i, row, "stop"))
    elif len(row.tokens) >= row.max_new_tokens:
        ending.append((i, row, "length"))
    else:
        keep.append(i)


@dataclass
class Closing:
    """What a finished row's final read reads: the chat-formatted prompt and reply
    (``target``, as training formats it) and how much of it the generation has read already
    (``cached``: the prompt and every generated token but the last). ``through`` says whether
    ``target`` continues the generated tokens, so that ``target[cached:]`` (the last token and
    the template's closing tokens) can be read after the generation's cache; where the reply
    re-tokenises differently, the whole ``target`` is read on its own instead."""

    reply: str
    target: list[int]
    cached: int
    through: bool

    @property
    def suffix(self) -> list[int]:
        return self.target[self.cached :]


def closing(row: Row) -> Closing:
    tokenizer = row.loaded.tokenizer
    reply = tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
    target = encode(tokenizer, row.prompt, reply or None, "full", 10**9).input_ids
    cached = len(row.ids) + len(row.tokens) - 1
    return Closing(reply, target, cached, target[: cached + 1] == row.ids + row.tokens)


def final_states(row: Row, close: Closing, read: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four states the final read needs from the target layer's states ``read``: of
    ``close.suffix`` (read through the cache) or of the whole ``close.target`` (read alone):
    the last generated token's state, the last position's, and the 'mean' span up to each."""
    if close.through:
        return read[0], read[-1], row.span_mean(read[:1]), row.span_mean(read)
    mean = read[content_start(row.loaded.tokenizer, close.target) :].float().mean(0)
    return read[-1], read[-1], mean, mean


def final_events(
    ending: list[tuple[Row, str, Closing]], states: list[tuple[torch.Tensor, ...]]
) -> list[RowEvent]:
    """The last events of rows that end now, from their :func:`final_states`: the readout of
    the last generated token (the row's last trace entry) and, where training reads it, the
    final explanation. A row whose own final read fails ends alone with its ``error``."""
    events = []
    for (row, reason, close), row_states in zip(ending, states, strict=True):
        try:
            events.append(_final(row, reason, close, row_states))
        except Exception as exc:  # this row's own final read failed: it alone ends
            row.error = exc
            events.append(row.failed())
    return events


def _final(row: Row, reason: str, close: Closing, states: tuple[torch.Tensor, ...]) -> RowEvent:
    token_state, last, token_mean, mean = states
    readout = row.loaded.readout
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
    row.finish(event, row.result(cos, probs, close.reply, reason))
    return event
