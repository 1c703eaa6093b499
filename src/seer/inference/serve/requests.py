"""Validation of ``POST /v1/chat/completions`` bodies: OpenAI's request shape, the subset
a greedy self-explaining model can honour, and the ``seer`` extra body (a per-request
monitor). Every refusal is an :class:`ApiError` naming the field and the fix."""

# Every check of an OpenAI request, in one place: about 300 lines, kept whole.
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from seer.errors import SeerError
from seer.inference.monitor import Monitor
from seer.inference.serve.errors import ApiError

__all__ = ["ChatRequest", "Limits", "monitor_from_dict", "parse_chat_request"]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
#: Fields accepted and ignored: they change nothing in a greedy reply.
IGNORED = ("user", "metadata", "store", "seed", "service_tier", "parallel_tool_calls")
#: Fields accepted only at the value that means "off" (sampling, tools, other outputs).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "temperature": (None, 0),
    "top_p": (None, 1),
    "n": (None, 1),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "stop": (None, [], ""),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}
WHY = {
    "temperature": "seer serve decodes greedily (the explanation is read from that one reply)",
    "top_p": "seer serve decodes greedily; nucleus sampling does not apply",
    "n": "seer serve returns one greedy reply per request; send n separate requests instead",
}
USED = ("model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options")


@dataclass(frozen=True)
class Limits:
    """What the served model allows: its id, concepts, context and reply lengths."""

    model_id: str
    concepts: tuple[str, ...]
    context: int | None
    max_tokens: int
    default_max_tokens: int


@dataclass(frozen=True)
class ChatRequest:
    prompt: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    monitor: Monitor | None


#: The JSON type of every monitor field (``null`` is accepted where the field's default is).
MONITOR_TYPES = {
    "concept": "a string",
    "threshold": "a number",
    "mode": "a string",
    "towards": "a string",
    "scale": "a number",
    "vector": "a list of numbers",
    "refusal": "a string",
    "watch_tokens": "a whole number",
    "reply_end": "true or false",
}
#: The monitor fields that may be ``null`` (their default).
NULLABLE = ("towards", "vector", "watch_tokens")


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(message, param=param, code=code)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(
            f"the request body is not valid JSON ({exc}); send a JSON object", None, "invalid_json"
        ) from exc
    except RecursionError:
        raise _bad(
            "the request body is nested too deeply to read; send a chat request object",
            None,
            "invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object with 'messages'", None, "invalid_json")
    return body


def _same(value: Any, allowed: Any) -> bool:
    """``value == allowed``, except that booleans only equal booleans (``n=True`` is no 1)."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    return bool(value == allowed)


def _check_fields(body: dict[str, Any]) -> None:
    known = set(USED) | set(IGNORED) | set(NEUTRAL) | {"seer"}
    for name in body:
        if name not in known:
            raise _bad(
                f"unknown field {name!r}: remove it (seer serve takes OpenAI's chat fields "
                "and a 'seer' object)",
                name,
                "unknown_parameter",
            )
    for name, allowed in NEUTRAL.items():
        value = body.get(name)
        if any(_same(value, a) for a in allowed):
            continue
        why = WHY.get(name, f"seer serve does not support {name!r}")
        shown = ", ".join("left out" if a is None else json.dumps(a) for a in allowed)
        raise _bad(
            f"{name}={json.dumps(value)} is not supported: {why}; use {shown}",
            name,
            "unsupported_value",
        )


def _text(content: Any, param: str) -> str:
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(
                    "only text content parts ({'type': 'text', 'text': ...}) are supported",
                    f"{param}[{k}]",
                )
            if not isinstance(part.get("text"), str):
                raise _bad("a text part needs a 'text' string", f"{param}[{k}].text")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise _bad("message content must be a string (or a list of text parts)", param)
    if not content.strip():
        raise _bad("message content is empty; write the prompt in it", param)
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(
            f"message content holds a lone UTF-16 surrogate ({content[exc.start]!r} at "
            f"character {exc.start}), which is no Unicode text: send valid UTF-8",
            param,
        ) from None
    return content


def _prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise _bad(
            "'messages' must be a non-empty list of {'role', 'content'} objects",
            "messages",
            "missing_required_parameter" if messages is None else "invalid_value",
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad("each message must be an object with 'role' and 'content'", f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise _bad(
                f"unknown role {m.get('role')!r}; use one of {', '.join(ROLES)}",
                f"messages[{i}].role",
            )
        _text(m.get("content"), f"messages[{i}].content")
    if len(messages) != 1 or messages[0]["role"] != "user":
        roles = [m["role"] for m in messages]
        raise _bad(
            f"got messages with roles {roles}; seer serve explains one user turn (SEER reads "
            "the representation where training read it, after a single user message): send "
            "exactly one {'role': 'user'} message",
            "messages",
            "unsupported_value",
        )
    return _text(messages[0]["content"], "messages[0].content")


def _max_tokens(body: dict[str, Any], limits: Limits, prompt_tokens: int) -> int:
    given = {k: body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise _bad("max_tokens and max_completion_tokens differ; send one", "max_tokens")
    room = None if limits.context is None else limits.context - prompt_tokens
    if room is not None and room < 1:
        raise _bad(
            f"the prompt is {prompt_tokens} tokens and the model's context is {limits.context}: "
            "shorten the prompt",
            "messages",
            "context_length_exceeded",
        )
    if not given:
        return limits.default_max_tokens if room is None else min(limits.default_max_tokens, room)
    name, value = next(iter(given.items()))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_tokens:
        raise _bad(
            f"{name} must be an integer between 1 and {limits.max_tokens}, got {value!r}", name
        )
    if room is not None and value > room:
        raise _bad(
            f"the prompt is {prompt_tokens} tokens and {name}={value}, beyond the model's context "
            f"of {limits.context} tokens: ask for at most {room} tokens or shorten the prompt",
            name,
            "context_length_exceeded",
        )
    return value


def monitor_from_dict(spec: dict[str, Any], param: str = "seer.monitor") -> Monitor:
    """A :class:`Monitor` from its JSON fields (``vector``: a list of numbers)."""
    if not isinstance(spec, dict):
        raise _bad(
            "the monitor must be an object of Monitor fields, e.g. "
            '{"concept": "unsafe", "threshold": 0.9, "mode": "stop"}',
            param,
        )
    names = [f.name for f in fields(Monitor)]
    for key in spec:
        if key not in names:
            raise _bad(
                f"unknown monitor field {key!r}; the fields are {', '.join(names)}",
                f"{param}.{key}",
                "unknown_parameter",
            )
    if not isinstance(spec.get("concept"), str):
        raise _bad(
            "the monitor needs a 'concept' string, the concept to watch",
            f"{param}.concept",
            "missing_required_parameter",
        )
    kw = dict(spec)
    for name, value in spec.items():
        kind = MONITOR_TYPES[name]
        if not (value is None and name in NULLABLE) and not _is(value, kind):
            shown = "left out" if name in NULLABLE else "given"
            raise _bad(
                f"the monitor's {name} must be {kind} (or {shown}), got {json.dumps(value)[:80]}",
                f"{param}.{name}",
            )
    for name in ("threshold", "scale"):
        if name in spec and not _finite(spec[name]):
            raise _bad(
                f"the monitor's {name} must be a finite number, got {spec[name]!r}",
                f"{param}.{name}",
            )
    if kw.get("vector") is not None:
        kw["vector"] = _vector(kw["vector"], f"{param}.vector")
    try:
        return Monitor(**kw)
    except (SeerError, TypeError) as exc:
        raise _bad(str(exc), param) from exc


def _is(value: Any, kind: str) -> bool:
    """Whether the JSON ``value`` is of ``kind`` (booleans are no numbers)."""
    if kind == "a string":
        return isinstance(value, str)
    if kind == "true or false":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "a whole number":
        return isinstance(value, int)
    if kind == "a number":
        return isinstance(value, (int, float))
    return isinstance(value, list)  # a list of numbers: its items are checked by _vector


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer beyond any float
        return False


def _vector(value: list[Any], param: str) -> torch.Tensor:
    if not value or not all(_is(x, "a number") and _finite(x) for x in value):
        raise _bad(
            "the monitor vector must be a flat, non-empty list of finite numbers, one per "
            "hidden dimension of the target layer",
            param,
        )
    try:
        return torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise _bad(f"the monitor vector must be a list of numbers ({exc})", param) from exc


def _monitor(
    body: dict[str, Any], default: Monitor | None, check: Callable[[Monitor], None]
) -> Monitor | None:
    seer = body.get("seer")
    if seer is None:
        return default
    if not isinstance(seer, dict) or set(seer) - {"monitor"}:
        raise _bad("'seer' must be an object with an optional 'monitor'", "seer")
    if "monitor" not in seer:
        return default
    if seer["monitor"] is None:
        return None  # this request turns the server's default monitor off
    monitor = monitor_from_dict(seer["monitor"])
    try:
        check(monitor)
    except SeerError as exc:
        raise _bad(str(exc), "seer.monitor") from exc
    return monitor


def parse_chat_request(
    raw: bytes,
    limits: Limits,
    *,
    count_tokens: Callable[[str], int],
    check_monitor: Callable[[Monitor], None],
    default_monitor: Monitor | None = None,
) -> ChatRequest:
    """The request in ``raw``, validated; raises :class:`ApiError` (4xx) otherwise."""
    body = _json(raw)
    if "messages" not in body:
        raise _bad(
            "the request has no 'messages'; send [{'role': 'user', 'content': ...}]",
            "messages",
            "missing_required_parameter",
        )
    _check_fields(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"model must be a string, got {json.dumps(model)[:80]}", "model")
    if model is not None and model != limits.model_id:
        raise ApiError(
            f"the model {model!r} is not served here; use {limits.model_id!r}",
            status=404,
            param="model",
            code="model_not_found",
        )
    prompt = _prompt(body["messages"])
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if (
        not isinstance(options, dict)
        or set(options) - {"include_usage"}
        or not isinstance(options.get("include_usage", False), bool)
    ):
        raise _bad("stream_options takes only {'include_usage': true or false}", "stream_options")
    monitor = _monitor(body, default_monitor, check_monitor)
    n = count_tokens(prompt)
    return ChatRequest(
        prompt=prompt,
        prompt_tokens=n,
        max_tokens=_max_tokens(body, limits, n),
        stream=stream,
        include_usage=bool(options.get("include_usage")) and stream,
        monitor=monitor,
    )
