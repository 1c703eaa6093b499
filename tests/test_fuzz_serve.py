"""Generated request bodies thrown at `seer serve` (issue 40): whatever arrives, the server
answers without a 500 or a traceback, every 4xx is an OpenAI error body, and a valid request
sent in the same batch still gets its reply. Bounded: a fixed number of examples, each with a
deadline, derandomized so that CI sees the same bodies every run (about a minute)."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
from conftest import health, post, serving  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CONCEPTS = ["cooking", "space", "sports"]
VALID = {"messages": [{"role": "user", "content": "rules of football"}], "max_tokens": 4}
STEER = {"concept": "space", "mode": "steer", "towards": "cooking", "threshold": 0.01}

# --- bodies: a valid request with zero to three of its fields replaced by generated values ---
NAN, INF = float("nan"), float("inf")
odd = st.sampled_from([NAN, INF, -INF, 1e30, 1e300, -1, 0, 0.5, 2**70, True, "", "abc", [], {}])
leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
    | odd
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
SPECIAL = ["a\u0000b\ud800c", "\ud800", "a\udfffb", "a\u0000b", " ", "é🙂", "\u202e", "\ufeff"]
text = st.sampled_from(SPECIAL) | st.text(st.characters(exclude_categories=()), max_size=30)
MONITOR_FIELDS = [
    "concept",
    "threshold",
    "mode",
    "towards",
    "scale",
    "vector",
    "refusal",
    "watch_tokens",
    "reply_end",
    "colour",
]
BODY_FIELDS = [
    "messages",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "n",
    "stop",
    "seer",
    "frobnicate",
]


@st.composite
def monitors(draw):
    """A monitor that fires at once (threshold 0.01) with up to two fields replaced."""
    mode = draw(st.sampled_from(["stop", "steer", "watch"]))
    m = {"concept": draw(st.sampled_from(CONCEPTS)), "threshold": 0.01, "mode": mode}
    if mode == "steer":
        m["towards"] = draw(st.sampled_from(CONCEPTS))
    vector = st.lists(st.floats(-1e6, 1e6) | odd, min_size=32, max_size=32)
    likely = st.sampled_from(MONITOR_FIELDS) | st.sampled_from(["scale", "vector", "refusal"])
    for name in draw(st.lists(likely, max_size=2, unique=True)):
        m[name] = draw(anything | vector if name == "vector" else anything | text)
    return m


@st.composite
def bodies(draw):
    """A valid request (its content generated) with up to three fields replaced."""
    body = {
        "messages": [{"role": "user", "content": draw(text.filter(str.strip) | st.just("hi"))}],
        "max_tokens": draw(st.integers(1, 8)),
        "stream": draw(st.booleans()),
    }
    if draw(st.booleans()):
        body["seer"] = {"monitor": draw(monitors())}
    for name in draw(st.lists(st.sampled_from(BODY_FIELDS), max_size=3, unique=True)):
        if name == "messages":
            role = draw(st.sampled_from(["user", "system", "wizard"]) | anything)
            body[name] = draw(anything | st.just([{"role": role, "content": draw(text)}]))
        else:
            body[name] = draw(anything)
    return body


raw = st.one_of(
    bodies().map(lambda b: json.dumps(b).encode()),
    bodies().map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    anything.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)


class Recorded(logging.Handler):
    """Every record at ERROR or above that the server logs (a traceback, a failed row)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def url(trained_run, tokenizer):
    with serving(trained_run, tokenizer, max_batch_size=8, max_queue=8, batch_wait=0.05) as base:
        yield base


@pytest.fixture(scope="module")
def server_errors():
    handler = Recorded()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "seer")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def check_answer(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert "Traceback" not in error["message"]
        return
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [x[6:] for x in response.text.splitlines() if x.startswith("data: ")]
        if events[-1] != "[DONE]":  # the row failed after its stream began: its error last
            error = json.loads(events[-1])["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
            assert error["type"] == "invalid_request_error", error  # no fault of the server
        return
    reply = response.json()["choices"][0]
    assert isinstance(reply["message"]["content"], str)
    assert reply["finish_reason"] in ("stop", "length", "monitor")


@settings(
    max_examples=80,
    deadline=timedelta(seconds=20),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw)
@example(  # the cases of issue 40, always tried whatever the generated ones are
    json.dumps({**VALID, "seer": {"monitor": {**STEER, "scale": "big"}}}).encode()
)
@example(json.dumps({**VALID, "seer": {"monitor": {**STEER, "scale": 1e30}}}).encode())
@example(json.dumps({**VALID, "seer": {"monitor": {"concept": "space", "refusal": 7}}}).encode())
@example(json.dumps({**VALID, "seer": {"monitor": {"concept": "x", "watch_tokens": "a"}}}).encode())
@example(json.dumps({"messages": [{"role": "user", "content": "a\u0000b\ud800c"}]}).encode())
@example(b"[" * 100_000 + b"]" * 100_000)
def test_generated_bodies_never_harm_the_server_or_a_valid_neighbour(url, server_errors, raw):
    with ThreadPoolExecutor(2) as pool:  # sent together: both enter one batch
        fuzzed, valid = pool.map(lambda b: post(url, b), [raw, VALID])
    check_answer(fuzzed)
    assert valid.status_code == 200, valid.text
    assert isinstance(valid.json()["choices"][0]["message"]["content"], str)
    logged = [r.getMessage() for r in server_errors]
    server_errors.clear()
    assert not logged, logged


def test_the_server_is_idle_and_serving_after_the_fuzzing(url):
    stats = health(url)
    assert stats["running"] == stats["waiting"] == 0
    assert post(url, VALID).status_code == 200
