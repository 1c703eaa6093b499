"""OpenAI response shapes with a ``seer`` object beside the standard fields: per streamed
token its readout, and at the end the final explanation and what the monitor did."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from seer.inference.events import RowEvent, RowResult
from seer.inference.monitor import Monitor

__all__ = [
    "Context",
    "completion",
    "delta_chunk",
    "final_chunk",
    "monitor_fields",
    "monitor_report",
    "readout",
    "sse",
    "usage",
    "usage_chunk",
]


@dataclass(frozen=True)
class Context:
    """What every chunk of one response repeats."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def sse(obj: Any) -> str:
    """One server-sent event; ``obj`` is a JSON-able object or the literal ``[DONE]``."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def readout(event: RowEvent, concepts: list[str]) -> dict[str, Any]:
    """The readout after the model has read one token (``index`` -1: the prompt's end):
    the top concept (``none`` below the calibrated threshold) and every concept's
    calibrated probability."""
    probabilities = [round(float(p), 4) for p in event.probabilities]
    return {
        "index": event.index,
        "token": event.token,
        "top": event.top,
        "probabilities": dict(zip(concepts, probabilities, strict=True)),
        "monitor": event.monitor,
    }


def monitor_fields(monitor: Monitor) -> dict[str, Any]:
    """A monitor's settings as JSON (its vector, if any, as its length)."""
    vector = getattr(monitor, "vector", None)
    return {
        "concept": monitor.concept,
        "mode": monitor.mode,
        "threshold": monitor.threshold,
        "towards": monitor.towards,
        "watch_tokens": monitor.watch_tokens,
        "reply_end": monitor.reply_end,
        "vector_size": None if vector is None else int(vector.numel()),
    }


def monitor_report(monitor: Monitor | None, result: RowResult) -> dict[str, Any] | None:
    """Whether and where the request's monitor acted (``None`` without a monitor)."""
    if monitor is None:
        return None
    return {
        **monitor_fields(monitor),
        "acted": result.fired_at is not None,
        "at": result.fired_at,
        "stopped": result.finish_reason == "monitor",
        "probabilities": [round(float(p), 4) for p in result.probabilities],
    }


def final_seer(monitor: Monitor | None, result: RowResult) -> dict[str, Any]:
    return {
        "explanation": None if result.explanation is None else result.explanation.to_dict(),
        "monitor": monitor_report(monitor, result),
    }


def usage(prompt_tokens: int, result: RowResult) -> dict[str, int]:
    n = len(result.tokens)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
    }


def _chunk(ctx: Context, delta: dict, finish: str | None, seer: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if seer is not None:
        out["seer"] = seer
    return out


def delta_chunk(ctx: Context, event: RowEvent, concepts: list[str]) -> dict[str, Any]:
    """The chunk of one token (the first one, the prompt's end, opens the assistant turn)."""
    # A stop monitor's last event: the token that tipped it is not shown (the refusal follows).
    text = "" if event.finish_reason == "monitor" else event.text
    delta = {"role": "assistant", "content": ""} if event.index < 0 else {"content": text}
    return _chunk(ctx, delta, None, {"readout": readout(event, concepts)})


def final_chunk(ctx: Context, monitor: Monitor | None, result: RowResult) -> dict[str, Any]:
    """The closing chunk: the finish reason (``monitor``: a stop monitor ended the reply, and
    the delta is its refusal) and the final explanation."""
    delta = {"content": result.reply} if result.finish_reason == "monitor" else {}
    return _chunk(ctx, delta, result.finish_reason, final_seer(monitor, result))


def usage_chunk(ctx: Context, prompt_tokens: int, result: RowResult) -> dict[str, Any]:
    out = _chunk(ctx, {}, None, None)
    out["choices"], out["usage"] = [], usage(prompt_tokens, result)
    return out


def completion(
    ctx: Context, prompt_tokens: int, monitor: Monitor | None, result: RowResult
) -> dict[str, Any]:
    """The non-streamed response (a stop monitor's refusal is also in ``message.refusal``)."""
    refusal = result.reply if result.finish_reason == "monitor" else None
    return {
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.reply, "refusal": refusal},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, result),
        "seer": final_seer(monitor, result),
    }
