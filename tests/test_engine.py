"""The generation engine: its streamed events are the explainer's trace, rows may join a
running batch, and a cancelled row stops."""

import pytest
from conftest import PROMPT, PROMPTS, make_explainer

from seer.errors import SeerError
from seer.inference.engine import Engine
from seer.inference.monitor import Monitor


@pytest.fixture(scope="module", params=["last", "mean"])
def explainer(request, tokenizer):
    """Every test runs on a run reading the last token and on one reading the 'mean' span."""
    run = request.getfixturevalue("trained_run" if request.param == "last" else "trained_mean_run")
    return make_explainer(run, tokenizer)


def rows_of(events):
    out = {}
    for event in events:
        out.setdefault(event.row, []).append(event)
    return out


def run(batch):
    events = []
    while batch.active:
        events += batch.step()
    return events


def assert_matches_generate(explainer, prompt, events, n, monitor=None, abs=0.0):
    """The row's events are Explainer.generate's trace, one per generated token, in order."""
    one = explainer.generate(prompt, n, monitor)
    assert [e.index for e in events] == list(range(-1, len(one.trace)))
    for event, entry in zip(events[1:], one.trace, strict=True):
        assert explainer.tokenizer.decode([event.token]) == entry["token"]
        assert event.top == entry["top"]
        got = dict(zip(explainer.concepts, event.probabilities.round(4).tolist(), strict=True))
        assert got == pytest.approx(entry["probabilities"], abs=abs)
    result = events[-1].result
    assert events[-1].finish_reason is not None and all(e.result is None for e in events[:-1])
    assert result.explanation.reply == result.reply == one.reply
    assert result.explanation.trace == one.trace if abs == 0 else True
    assert result.fired_at == one.intervened_at == result.explanation.intervened_at
    for a, b in zip(result.explanation.ranking, one.ranking, strict=True):
        assert a["concept"] == b["concept"]
        assert a["cosine"] == pytest.approx(b["cosine"], abs=max(abs, 1e-7))
    return result


def test_streamed_readouts_are_the_generate_trace(explainer):
    events = [
        e for step in Engine(explainer.loaded).stream([PROMPT], max_new_tokens=6) for e in step
    ]
    result = assert_matches_generate(explainer, PROMPT, events, 6)
    text = "".join(e.text for e in events)
    assert text.strip() == result.reply
    assert text == explainer.tokenizer.decode(result.tokens, skip_special_tokens=True)
    assert {e.monitor for e in events} == {"off"}
    assert result.finish_reason in ("stop", "length")


def test_batched_stream_rows_match_one_by_one(explainer):
    stream = Engine(explainer.loaded).stream(PROMPTS, max_new_tokens=5, batch_size=3)
    by_row = rows_of(e for step in stream for e in step)
    assert sorted(by_row) == list(range(len(PROMPTS)))
    for i, prompt in enumerate(PROMPTS):  # padded batches: the same trace to rounding
        assert_matches_generate(explainer, prompt, by_row[i], 5, abs=2e-4)


def test_a_row_joins_a_running_batch(explainer):
    batch = Engine(explainer.loaded).batch()
    first = batch.add(PROMPTS[1], max_new_tokens=6)  # the longer prompt starts
    events = batch.step() + batch.step()
    late = batch.add(PROMPT, max_new_tokens=4)
    short = batch.add(PROMPTS[2], max_new_tokens=3)  # and one shorter than the batch's cache
    assert batch.active == 3
    by_row = rows_of(events + run(batch))
    assert_matches_generate(explainer, PROMPTS[1], by_row[first], 6, abs=2e-4)
    assert_matches_generate(explainer, PROMPT, by_row[late], 4, abs=2e-4)
    assert_matches_generate(explainer, PROMPTS[2], by_row[short], 3, abs=2e-4)
    # a prompt longer than the running batch's cache: the running rows are padded instead
    batch = Engine(explainer.loaded).batch()
    first = batch.add(PROMPTS[2], max_new_tokens=5)
    events = batch.step()
    long = batch.add(PROMPTS[1], max_new_tokens=3)
    by_row = rows_of(events + run(batch))
    assert_matches_generate(explainer, PROMPTS[2], by_row[first], 5, abs=2e-4)
    assert_matches_generate(explainer, PROMPTS[1], by_row[long], 3, abs=2e-4)


def test_a_cancelled_row_stops(explainer):
    batch = Engine(explainer.loaded).batch()
    gone, stays = (batch.add(p, max_new_tokens=8) for p in PROMPTS[:2])
    never = batch.add(PROMPTS[2], max_new_tokens=8)
    batch.cancel(never)  # before its prompt is read
    first = batch.step()
    assert [e.finish_reason for e in first if e.row == never] == ["cancelled"]
    batch.step()
    batch.cancel(gone)
    step = batch.step()
    last = [e for e in step if e.row == gone]
    assert len(last) == 1 and last[0].finish_reason == "cancelled"
    assert last[0].result.finish_reason == "cancelled" and len(last[0].result.tokens) == 2
    assert batch.active == 1
    rest = run(batch)
    assert rest and {e.row for e in rest} == {stays}
    batch.cancel(gone)  # a no-op once the row ended
    with pytest.raises(SeerError, match="never added"):
        batch.cancel(99)


def test_monitor_events(explainer):
    stop = Monitor("space", threshold=1e-9, refusal="no.")
    events = [e for step in Engine(explainer.loaded).stream([PROMPT], monitors=stop) for e in step]
    assert len(events) == 1 and events[0].index == -1
    assert events[0].monitor == "stopped" and events[0].finish_reason == "monitor"
    assert events[0].result.reply == "no." and events[0].result.fired_at == 0
    late = Monitor("space", threshold=1e-9, mode="watch", watch_tokens=None, reply_end=True)
    events = [
        e
        for step in Engine(explainer.loaded).stream([PROMPT], max_new_tokens=3, monitors=late)
        for e in step
    ]
    assert [e.monitor for e in events] == ["idle"] * 3 + ["fired"]
    steer = Monitor("space", 1e-9, "steer", towards="cooking")
    events = [
        e
        for step in Engine(explainer.loaded).stream([PROMPT], max_new_tokens=3, monitors=steer)
        for e in step
    ]
    assert {e.monitor for e in events} == {"steering"}
    assert_matches_generate(explainer, PROMPT, events, 3, steer)
