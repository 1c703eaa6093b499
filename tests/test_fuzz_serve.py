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
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CONCEPTS = ["cooking", "space", "sports"]
VALID = {"messages": [{"role": "user", "content": "rules of football"}], "max_tokens": 4}

# --- bodies: mostly near-valid (each field its right shape or any JSON value) --------------
leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def either(good):
    """The field's right shape most of the time, any JSON value otherwise."""
    return st.one_of(good, good, anything)


text = st.text(st.characters(exclude_categories=()), max_size=30)
content = either(
    text
    | st.lists(
        st.fixed_dictionaries({"type": either(st.just("text")), "text": either(text)}), max_size=2
    )
)
message = st.fixed_dictionaries(
    {"role": either(st.sampled_from(["user", "user", "system", "assistant"])), "content": content}
)
monitor = st.fixed_dictionaries(
    {},
    optional={
        "concept": either(st.sampled_from([*CONCEPTS, "unicorns"])),
        "threshold": either(st.floats(-0.5, 1.5)),
        "mode": either(st.sampled_from(["stop", "steer", "watch", "explode"])),
        "towards": either(st.sampled_from(CONCEPTS)),
        "scale": either(st.floats(-1, 200) | st.sampled_from([1e30, 1e300])),
        "vector": either(
            st.lists(st.floats(-1e40, 1e40) | st.just(float("nan")), min_size=32, max_size=32)
        ),
        "refusal": either(text),
        "watch_tokens": either(st.integers(-2, 300)),
        "reply_end": either(st.booleans()),
    },
)
body = st.fixed_dictionaries(
    {"messages": either(st.lists(message, min_size=1, max_size=2))},
    optional={
        "model": either(st.sampled_from(["tiny", "gpt-9"])),
        "max_tokens": either(st.integers(-2, 300)),
        "max_completion_tokens": either(st.integers(-2, 300)),
        "stream": either(st.booleans()),
        "stream_options": either(st.fixed_dictionaries({"include_usage": either(st.booleans())})),
        "temperature": either(st.sampled_from([0, 0.7])),
        "n": either(st.integers(0, 3)),
        "stop": either(st.just([])),
        "seer": either(st.fixed_dictionaries({"monitor": st.none() | monitor})),
        "user": anything,
    },
)
raw = st.one_of(
    body.map(lambda b: json.dumps(b).encode()),
    body.map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")),
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
        assert events[-1] == "[DONE]", response.text[-300:]
        if "error" in json.loads(events[-1]):  # the row failed after its stream began
            error = json.loads(events[-1])["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
            assert error["type"] == "invalid_request_error", error  # no fault of the server
            return
        assert events[-1] == "[DONE]", response.text[-300:]
        return
    reply = response.json()["choices"][0]
    assert isinstance(reply["message"]["content"], str)
    assert reply["finish_reason"] in ("stop", "length", "monitor")


@settings(
    max_examples=120,
    deadline=timedelta(seconds=20),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw)
def test_generated_bodies_never_harm_the_server_or_a_valid_neighbour(url, server_errors, raw):
    with ThreadPoolExecutor(2) as pool:  # sent together: both enter one batch
        fuzzed, valid = pool.map(lambda b: post(url, b), [raw, VALID])
    check_answer(fuzzed)
    assert valid.status_code == 200, valid.text
    assert isinstance(valid.json()["choices"][0]["message"]["content"], str)
    assert not server_errors, [r.getMessage() for r in server_errors]


def test_the_server_is_idle_and_serving_after_the_fuzzing(url):
    stats = health(url)
    assert stats["running"] == stats["waiting"] == 0
    assert post(url, VALID).status_code == 200
