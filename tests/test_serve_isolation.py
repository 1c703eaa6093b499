"""One request never harms another in `seer serve` (issue 40, items 5-8): every field is
checked before a request joins a batch, a failure inside one row ends that row alone, a
client that leaves frees its row at the next step, hostile bodies get 400s, and the command
refuses what it cannot serve at start-up and stops within its drain limit."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the serve extra: pip install -e '.[serve]'")
import httpx  # noqa: E402
from conftest import health, make_explainer, post, serving, tiny_llama, wait_for  # noqa: E402

from seer.cli import main as cli_main  # noqa: E402
from seer.errors import SeerError  # noqa: E402
from seer.inference.monitor import Monitor  # noqa: E402

PROMPT = "how far away is the moon"
GOOD = [PROMPT, "rules of football", "a recipe for tomato soup"]
STEER = {"concept": "space", "mode": "steer", "towards": "cooking", "threshold": 0.01}


def chat(content=PROMPT, max_tokens=6, **extra):
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def monitored(**fields):
    return chat(seer={"monitor": fields})


@pytest.fixture(scope="module")
def url(trained_run, tokenizer):
    # a request waits up to 0.3 s for others: requests sent together share one batch
    with serving(trained_run, tokenizer, max_batch_size=8, max_queue=8, batch_wait=0.3) as base:
        yield base


def assert_openai_error(response, status: int | None = None) -> dict:
    if status is not None:
        assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and len(error["message"]) > 20
    assert "Traceback" not in error["message"]
    return error


def together(url, bodies):
    """Send every body at once, each from its own thread; the responses in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(url, b), bodies))


# --- item 5: validation before a request joins a batch ---------------------------------------
def test_a_bad_monitor_value_fails_only_its_own_request(url):
    before = health(url)
    bad = monitored(**STEER, scale="big")
    responses = together(url, [bad] + [chat(p) for p in GOOD])
    error = assert_openai_error(responses[0], 400)
    assert error["param"] == "seer.monitor.scale" and "number" in error["message"]
    for r in responses[1:]:
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["choices"][0]["message"]["content"], str)
    assert health(url)["failed"] == before["failed"]


NAN = float("nan")
BAD_MONITORS = [
    ({**STEER, "scale": "big"}, "seer.monitor.scale"),
    ({**STEER, "scale": 1e30}, "seer.monitor"),
    ({**STEER, "scale": NAN}, "seer.monitor.scale"),
    ({**STEER, "scale": math.inf}, "seer.monitor.scale"),
    ({**STEER, "scale": -1}, "seer.monitor"),
    ({**STEER, "scale": True}, "seer.monitor.scale"),
    ({"concept": "space", "mode": "steer", "vector": [NAN] * 32}, "seer.monitor.vector"),
    ({"concept": "space", "mode": "steer", "vector": ["a"] * 32}, "seer.monitor.vector"),
    ({"concept": "space", "mode": "steer", "vector": [True] * 32}, "seer.monitor.vector"),
    ({"concept": "space", "mode": "steer", "vector": [[1.0] * 32]}, "seer.monitor.vector"),
    ({"concept": "space", "mode": "steer", "vector": 3}, "seer.monitor.vector"),
    ({"concept": "space", "refusal": 7}, "seer.monitor.refusal"),
    ({"concept": "space", "refusal": ["no"]}, "seer.monitor.refusal"),
    ({"concept": "space", "watch_tokens": "abc"}, "seer.monitor.watch_tokens"),
    ({"concept": "space", "watch_tokens": 1.5}, "seer.monitor.watch_tokens"),
    ({"concept": "space", "watch_tokens": True}, "seer.monitor.watch_tokens"),
    ({"concept": "space", "mode": 7}, "seer.monitor.mode"),
    ({"concept": "space", "mode": "explode"}, "seer.monitor"),
    ({"concept": "space", "mode": "steer", "towards": 7}, "seer.monitor.towards"),
    ({"concept": "space", "reply_end": "yes"}, "seer.monitor.reply_end"),
    ({"concept": "space", "threshold": "0.5"}, "seer.monitor.threshold"),
    ({"concept": "space", "threshold": NAN}, "seer.monitor.threshold"),
    ({"concept": "space", "threshold": True}, "seer.monitor.threshold"),
    ({"concept": 7}, "seer.monitor.concept"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_MONITORS, ids=lambda v: str(v)[:60])
def test_every_monitor_field_is_checked_before_the_batch(url, fields, param):
    responses = together(url, [monitored(**fields), chat(GOOD[1])])
    error = assert_openai_error(responses[0], 400)
    assert error["param"] == param, error
    assert "not supported between" not in error["message"]  # no Python comparison error
    assert responses[1].status_code == 200, responses[1].text


def test_stream_options_and_model_are_checked(url):
    error = assert_openai_error(post(url, chat(stream=True, stream_options={"include_usage": 1})))
    assert error["param"] == "stream_options"
    error = assert_openai_error(post(url, chat(model=["tiny"])), 400)
    assert error["param"] == "model"


# --- item 5: a failure inside one row ends that row only -------------------------------------
def test_a_row_that_fails_while_generating_ends_alone(trained_run, tokenizer):
    # A vector 1e6 times the prompt's hidden-state norm passes every check the request can have
    # before the prompt is read; the row finds it too large when its monitor fires, and ends.
    explainer = make_explainer(trained_run, tokenizer)
    alone = explainer.generate(GOOD[1], 8)
    batch = explainer.engine.batch()
    huge = Monitor("space", 0.01, "steer", vector=__import__("torch").full((32,), 1e6))
    bad = batch.add(PROMPT, max_new_tokens=8, monitor=huge)
    good = batch.add(GOOD[1], max_new_tokens=8)
    ends = {}
    while batch.active:
        for event in batch.step():
            if event.finish_reason is not None:
                ends[event.row] = event
    assert ends[bad].finish_reason == "error"
    assert isinstance(ends[bad].result.error, SeerError)
    assert "vector" in str(ends[bad].result.error)
    assert ends[good].result.reply == alone.reply
    assert ends[good].result.explanation.to_dict() == pytest.approx(alone.to_dict())


def test_a_failed_row_gets_its_own_error_and_the_batch_goes_on(url):
    before = health(url)
    bad = monitored(concept="space", mode="steer", threshold=0.01, vector=[1e6] * 32)
    responses = together(url, [bad] + [chat(p) for p in GOOD])
    error = assert_openai_error(responses[0], 400)
    assert error["param"] == "seer.monitor" and "norm" in error["message"]
    assert [r.status_code for r in responses[1:]] == [200] * 3
    after = health(url)
    assert after["completed"] - before["completed"] == 3
    assert after["failed"] - before["failed"] == 1
    streamed = post(url, {**bad, "stream": True})  # a stream gets the error as its last event
    assert streamed.status_code == 200
    events = [json.loads(x[6:]) for x in streamed.text.splitlines() if x.startswith("data: {")]
    assert events[-1]["error"]["param"] == "seer.monitor"


# --- item 6: a non-streamed client that leaves ------------------------------------------------
def test_a_non_streamed_client_that_leaves_frees_its_row_at_the_next_step(trained_run, tokenizer):
    with serving(trained_run, tokenizer, pace=0.02, max_batch_size=1, max_queue=0) as base:
        with pytest.raises(httpx.TimeoutException):
            post(base, chat(max_tokens=200), timeout=0.5)  # 200 passes of 0.02 s: 4 s at least
        left = time.monotonic()
        wait_for(lambda: health(base)["running"] == 0, timeout=10)
        assert time.monotonic() - left < 1.0
        stats = health(base)
        assert stats["cancelled"] == 1 and stats["completed"] == 0
        assert stats["steps"] < 60
        assert post(base, chat(max_tokens=2)).status_code == 200


# --- item 7: hostile bodies --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (json.dumps(chat("a\u0000b\ud800c")).encode(), "messages[0].content"),
        (json.dumps(chat("\udfff")).encode(), "messages[0].content"),
        ('{"messages": [{"role": "user", "content": "caf\xe9"}]}'.encode("latin-1"), None),
    ],
    ids=["deep-list", "deep-messages", "surrogate", "lone-low-surrogate", "latin-1"],
)
def test_hostile_bodies_get_400(url, raw, param):
    error = assert_openai_error(post(url, raw), 400)
    assert error["param"] == param
    assert post(url, chat(max_tokens=2)).status_code == 200


def test_a_nul_character_is_text_like_any_other(url):
    assert post(url, chat("a\u0000b")).status_code == 200


# --- item 8: the command ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5", "5000"])
def test_max_tokens_out_of_range_is_refused_at_start_up(value, capsys):
    assert cli_main(["serve", "x", "--max-tokens", value]) == 2
    assert "--max-tokens must be between 1 and 4096" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_drain_timeout_out_of_range_is_refused(value, capsys):
    assert cli_main(["serve", "x", "--drain-timeout", value]) == 2
    assert "--drain-timeout must be" in capsys.readouterr().err


def test_help_states_the_drain_limit(capsys):
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--drain-timeout" in out and "default: 30" in out


def test_a_port_in_use_is_one_seer_line(trained_run, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        argv = ["serve", str(trained_run), "--port", str(port)]
        assert cli_main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seer: error:"), err
    assert f"port {port}" in err and "in use" in err and "--port" in err


@pytest.fixture(scope="module")
def exported(trained_run, tokenizer, tmp_path_factory):
    """The tiny run exported: a folder a `seer serve` subprocess loads by itself."""
    from seer.inference.export import export

    out = tmp_path_factory.mktemp("serve-export") / "tiny"
    return export(trained_run, out, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def seer_serve(folder, *options):
    port = _free_port()
    argv = [sys.executable, "-m", "seer", "serve", str(folder), "--port", str(port), *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "seer serve did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@contextlib.contextmanager
def unfinished_request(port: int):
    """A request whose body never finishes arriving: the server waits for it while it drains."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b'\r\nContent-Length: 1000\r\n\r\n{"messages": '
        )
        time.sleep(0.3)
        yield


def test_draining_stops_at_the_drain_timeout(exported):
    with seer_serve(exported, "--drain-timeout", "2") as (proc, port), unfinished_request(port):
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - start < 10
    assert "Traceback" not in err and "terminate called" not in err, err
    assert proc.returncode in (0, 130), err


def test_a_second_ctrl_c_while_draining_stops_at_once_and_cleanly(exported):
    with seer_serve(exported) as (proc, port):
        done = threading.Event()

        def generate():  # keep the worker busy while it is told to stop
            while not done.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    post(f"http://127.0.0.1:{port}", chat(max_tokens=200), timeout=5)

        talker = threading.Thread(target=generate)
        talker.start()
        try:
            with unfinished_request(port):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                start = time.monotonic()
                _, err = proc.communicate(timeout=60)
                assert time.monotonic() - start < 30  # not held by the unfinished request
        finally:
            done.set()
            talker.join()
    assert "Traceback" not in err and "terminate called" not in err, err
    assert proc.returncode in (0, 130), err
    lines = [x for x in err.splitlines() if x.startswith("seer: ")]
    assert lines in (
        [],
        ["seer: interrupted: the server stopped; run the same command to serve again"],
    )
