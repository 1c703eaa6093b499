"""`seer serve` end to end: a real uvicorn server on 127.0.0.1 over a tiny random model run,
talked to with the official `openai` client and httpx; request validation unit-tested."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the serve extra: pip install -e '.[serve]'")
import httpx  # noqa: E402
from conftest import (  # noqa: E402
    embedded_run,
    health,
    make_explainer,
    post,
    serving,
    tiny_llama,
    wait_for,
)

from seer.cli import main as cli_main  # noqa: E402
from seer.errors import SeerError  # noqa: E402
from seer.inference.explainer import Explainer  # noqa: E402
from seer.inference.monitor import Monitor  # noqa: E402
from seer.inference.serve.app import create_app  # noqa: E402
from seer.inference.serve.errors import ApiError  # noqa: E402
from seer.inference.serve.page import render_html, write_html  # noqa: E402
from seer.inference.serve.requests import Limits, parse_chat_request  # noqa: E402
from seer.inference.serve.server import running  # noqa: E402

PROMPT = "how far away is the moon"
CONCEPTS = ["cooking", "space", "sports"]
# a streamed request that runs long enough (200 tokens) for others to arrive while it generates
LONG_STREAM = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 200, "stream": True}


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def reference(run_dir, tokenizer):
    return make_explainer(run_dir, tokenizer)


@pytest.fixture(scope="module")
def url(run_dir, tokenizer):
    with serving(run_dir, tokenizer, max_batch_size=4, max_queue=8) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def ask(client, prompt=PROMPT, model="tiny", **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw
    )


# --- the API with the official client --------------------------------------------------------
def test_models_and_health(client, url):
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.model_extra["seer"]["concepts"] == CONCEPTS
    assert health(url)["status"] == "ok"


def test_non_streamed_explanation_equals_explainer_generate(client, reference):
    out = ask(client, max_tokens=12)
    expected = reference.generate(PROMPT, 12)
    seer = out.model_extra["seer"]
    assert out.choices[0].message.content == expected.reply
    assert out.choices[0].finish_reason in ("stop", "length")
    assert seer["explanation"] == pytest.approx(expected.to_dict())
    assert seer["monitor"] is None
    assert out.usage.completion_tokens == len(expected.trace)


def test_streamed_chunks_carry_readouts_and_the_final_explanation(client, reference):
    chunks = list(ask(client, max_tokens=12, stream=True))
    expected = reference.generate(PROMPT, 12)
    readouts = [
        c.model_extra["seer"]["readout"] for c in chunks if "readout" in c.model_extra["seer"]
    ]
    assert readouts[0]["index"] == -1 and chunks[0].choices[0].delta.role == "assistant"
    assert [r["index"] for r in readouts] == list(range(-1, len(expected.trace)))
    for r, t in zip(readouts[1:], expected.trace, strict=True):
        assert set(r["probabilities"]) == set(CONCEPTS)
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert r["top"] == t["top"]
        assert r["probabilities"] == pytest.approx(t["probabilities"], abs=2e-4)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected.reply
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.model_extra["seer"]["explanation"] == pytest.approx(expected.to_dict())


def test_stream_usage_when_asked(client):
    chunks = list(ask(client, max_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_request_monitor_stop_ends_with_the_refusal(client, reference):
    first = ask(client, max_tokens=4, stream=True)
    prompt_end = next(iter(first)).model_extra["seer"]["readout"]
    first.close()
    concept = max(prompt_end["probabilities"], key=prompt_end["probabilities"].get)
    monitor = {"concept": concept, "threshold": 0.01, "mode": "stop", "refusal": "No."}
    out = ask(client, max_tokens=12, extra_body={"seer": {"monitor": monitor}})
    report = out.model_extra["seer"]["monitor"]
    assert out.choices[0].finish_reason == "monitor"
    assert out.choices[0].message.content == "No."
    assert report["acted"] and report["stopped"] and report["at"] == 0
    expected = reference.generate(PROMPT, 12, Monitor(**monitor))
    assert out.model_extra["seer"]["explanation"] == pytest.approx(expected.to_dict())
    chunks = list(
        ask(client, max_tokens=12, stream=True, extra_body={"seer": {"monitor": monitor}})
    )
    assert chunks[-1].choices[0].finish_reason == "monitor"
    assert chunks[-1].choices[0].delta.content == "No."


def test_steer_monitor_matches_explainer_generate(client, reference):
    monitor = {
        "concept": "space",
        "threshold": 0.01,
        "mode": "steer",
        "towards": "cooking",
        "scale": 2.0,
    }
    out = ask(client, max_tokens=8, extra_body={"seer": {"monitor": monitor}})
    expected = reference.generate(PROMPT, 8, Monitor(**monitor))
    report = out.model_extra["seer"]["monitor"]
    assert report["acted"] and report["at"] == 0 and not report["stopped"]
    assert out.choices[0].message.content == expected.reply
    assert out.model_extra["seer"]["explanation"] == pytest.approx(expected.to_dict())
    assert expected.reply != reference.generate(PROMPT, 8).reply  # steering changed the reply


def test_watch_monitor_reports_and_changes_nothing(client):
    plain = ask(client, max_tokens=8)
    monitor = {"concept": "space", "threshold": 0.01, "mode": "watch"}
    watched = ask(client, max_tokens=8, extra_body={"seer": {"monitor": monitor}})
    report = watched.model_extra["seer"]["monitor"]
    assert watched.choices[0].message.content == plain.choices[0].message.content
    assert report["mode"] == "watch" and report["acted"] and not report["stopped"]
    assert watched.choices[0].finish_reason != "monitor"


def test_server_default_monitor_and_turning_it_off(run_dir, tokenizer):
    default = Monitor("space", threshold=0.01, mode="stop", refusal="Stopped.")
    with serving(run_dir, tokenizer, monitor=default) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        assert ask(client, max_tokens=4).choices[0].message.content == "Stopped."
        off = ask(client, max_tokens=4, extra_body={"seer": {"monitor": None}})
        assert off.choices[0].finish_reason != "monitor"
        assert off.model_extra["seer"]["monitor"] is None


def test_concurrent_requests_share_batches_and_read_like_one_alone(url, reference):
    prompts = [
        "how far away is the moon",
        "rules of football",
        "a recipe for tomato soup",
        "what is a comet",
        "how to swim faster",
        "how do I bake bread",
    ]
    before = health(url)
    results: dict[str, dict] = {}

    def one(p):
        results[p] = post(
            url, {"messages": [{"role": "user", "content": p}], "max_tokens": 16}
        ).json()

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(url)
    served = after["completed"] - before["completed"]
    assert served == len(prompts)
    assert after["steps"] - before["steps"] < 17 * len(prompts)  # rows shared forward passes
    for p in prompts:
        expected = reference.generate(p, 16)
        assert results[p]["choices"][0]["message"]["content"] == expected.reply
        got = results[p]["seer"]["explanation"]
        assert got["top"] == expected.top
        assert got["ranking"] == pytest.approx(expected.to_dict()["ranking"], abs=1e-4)


def test_a_request_joins_the_running_batch_instead_of_waiting(run_dir, tokenizer):
    with serving(run_dir, tokenizer, pace=0.02, max_batch_size=2, max_queue=0) as base:
        body = LONG_STREAM
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as a:
            lines = a.iter_lines()
            next(lines)  # A is generating its 200 tokens, for 4 s at least
            short = post(
                base,
                {"messages": [{"role": "user", "content": "what is a comet"}], "max_tokens": 3},
            )
            assert short.status_code == 200
            stats = health(base)
            assert stats["running"] == 1 and stats["completed"] == 1 and stats["joined"] == 1
            rest = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert rest[-1]["choices"][0]["finish_reason"] == "length"  # A went on to its budget
        assert len(rest) == 200 + 1  # A's remaining tokens (the first came before B), the end


def _send_apart(base, prompts, gap, max_tokens=8):
    """Each prompt (not streamed) from its own thread, ``gap`` seconds after the one before;
    returns the status codes once all are answered."""
    codes = {}

    def one(p):
        body = {"messages": [{"role": "user", "content": p}], "max_tokens": max_tokens}
        codes[p] = post(base, body).status_code

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join()
    return list(codes.values())


def test_requests_sent_together_to_an_idle_server_start_one_batch(run_dir, tokenizer):
    # B arrives 0.3 s after A. Without the wait, A starts alone and B joins its batch a step
    # later (two prefill passes); with it, A waits for B and the two start together in one.
    # B fills the batch (max 2), which ends the wait long before its 10 s.
    with serving(run_dir, tokenizer, pace=0.02, max_batch_size=2, batch_wait=10.0) as base:
        before, start = health(base), time.monotonic()
        assert _send_apart(base, [PROMPT, "what is a comet"], 0.3) == [200, 200]
        assert time.monotonic() - start < 8
        after = health(base)
        assert after["batches"] - before["batches"] == 1
        assert after["prefills"] - before["prefills"] == 1
        assert after["joined"] - before["joined"] == 0


def test_requests_that_arrive_close_together_join_a_running_batch_together(run_dir, tokenizer):
    # A generates 200 tokens (4 s at least). B and C arrive 0.3 s apart while it runs; with a
    # 1.5 s wait they join in one prefill pass, A stepping on meanwhile (without the wait:
    # one pass each).
    with serving(run_dir, tokenizer, pace=0.02, max_batch_size=4, batch_wait=1.5) as base:
        body = LONG_STREAM
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as a:
            lines = a.iter_lines()
            next(lines)  # A is generating
            before = health(base)
            assert _send_apart(base, ["what is a comet", "rules of football"], 0.3) == [200, 200]
            after = health(base)
            rest = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert after["prefills"] - before["prefills"] == 1
        assert after["joined"] - before["joined"] == 2
        assert after["steps"] - before["steps"] > 10  # A went on while B waited for C
        assert rest[-1]["choices"][0]["finish_reason"] == "length"


def test_a_lone_request_waits_no_longer_than_the_batch_wait(run_dir, tokenizer):
    with serving(run_dir, tokenizer, max_batch_size=4, batch_wait=0.5) as base:
        start = time.monotonic()
        out = post(base, {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2})
        elapsed = time.monotonic() - start
        assert out.status_code == 200
        assert 0.5 <= elapsed < 5  # it waited for company, then started without any


# --- disconnects and a full queue ------------------------------------------------------------
def test_disconnect_mid_stream_frees_the_slot(run_dir, tokenizer):
    gate = threading.Event()
    with serving(run_dir, tokenizer, gate=gate, max_batch_size=1, max_queue=0) as base:
        body = LONG_STREAM
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            assert health(base)["running"] == 1
        gate.set()  # the row goes on only now, so it sees its client gone
        wait_for(lambda: health(base)["running"] == 0)
        stats = health(base)
        assert stats["cancelled"] == 1 and stats["completed"] == 0
        ok = post(base, {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3})
        assert ok.status_code == 200


def test_full_queue_answers_429_at_once(run_dir, tokenizer):
    # A must still be generating when C arrives. Were it free to run, the tiny model could finish
    # its 200 tokens first, B take its slot and C the free queue place (a 200, seen in CI).
    gate = threading.Event()
    with serving(run_dir, tokenizer, gate=gate, max_batch_size=1, max_queue=1) as base:
        body = LONG_STREAM
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as a:
            a_lines = a.iter_lines()  # kept: a dropped iterator closes the connection
            next(a_lines)  # A is generating
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as b:
                wait_for(lambda: health(base)["waiting"] == 1)  # B waits for the slot
                start = time.monotonic()
                c = post(base, {**body, "stream": False})
                assert time.monotonic() - start < 5
                assert c.status_code == 429
                assert c.json()["error"]["code"] == "queue_full"
                assert b.status_code == 200
                gate.set()
        wait_for(lambda: health(base)["running"] + health(base)["waiting"] == 0)


# --- bad input -------------------------------------------------------------------------------
LONG = " ".join(["moon"] * 400)
BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "tiny"}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 250}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}, 400, "temperature"),
    (
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
        400,
        "tools",
    ),
    ({"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400, "frobnicate"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}, 404, "model"),
    (
        {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]},
        400,
        "messages",
    ),
    (
        {
            "messages": [{"role": "user", "content": "hi"}],
            "seer": {"monitor": {"concept": "unicorns"}},
        },
        400,
        "seer.monitor",
    ),
    (
        {
            "messages": [{"role": "user", "content": "hi"}],
            "seer": {"monitor": {"concept": "space", "threshold": 1.5}},
        },
        400,
        "seer.monitor",
    ),
    (
        {
            "messages": [{"role": "user", "content": "hi"}],
            "seer": {"monitor": {"concept": "space", "threshold": 0}},
        },
        400,
        "seer.monitor",
    ),
    (
        {
            "messages": [{"role": "user", "content": "hi"}],
            "seer": {"monitor": {"concept": "space", "colour": "red"}},
        },
        400,
        "seer.monitor.colour",
    ),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_requests_get_openai_errors_between_good_ones(url, body, status, param):
    good = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2}
    assert post(url, good).status_code == 200
    r = post(url, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and len(error["message"]) > 20
    assert post(url, good).status_code == 200


def test_the_openai_client_raises_on_bad_input(client):
    with pytest.raises(openai.BadRequestError, match="greedily"):
        ask(client, temperature=0.9)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert ask(client, max_tokens=2).choices[0].message.content is not None


def limits(context=64):
    return Limits("m", tuple(CONCEPTS), context, max_tokens=100, default_max_tokens=50)


def parse(body, **kw):
    return parse_chat_request(
        json.dumps(body).encode(),
        limits(**kw),
        count_tokens=lambda text: len(text.split()),
        check_monitor=lambda m: None,
    )


def test_parse_defaults_and_greedy_equivalents():
    req = parse(
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}],
            "temperature": 0,
            "top_p": 1,
            "n": 1,
            "seed": 3,
            "user": "u",
        }
    )
    assert (req.prompt, req.prompt_tokens, req.max_tokens, req.stream) == ("a b", 2, 50, False)
    short = parse({"messages": [{"role": "user", "content": " ".join("x" * 60)}]})
    assert short.max_tokens == 4  # the default shrinks to the room left in the context
    with pytest.raises(ApiError, match="n=true"):
        parse({"messages": [{"role": "user", "content": "a"}], "n": True})
    with pytest.raises(ApiError, match="stream must be"):
        parse({"messages": [{"role": "user", "content": "a"}], "stream": "yes"})


# --- the page -------------------------------------------------------------------------------
def test_page_and_static_files_are_served_offline(url):
    page = httpx.get(f"{url}/").text
    assert "/static/view.js" in page and "/static/live.js" in page
    for name in ("view.js", "live.js", "view.css"):
        r = httpx.get(f"{url}/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text


def test_render_html_is_one_self_contained_file(reference):
    monitor = Monitor("space", threshold=0.01, mode="watch")
    result = reference.generate(PROMPT, 6, monitor)
    html = render_html(result, prompt=PROMPT + " </script>", monitor=monitor)
    assert "<script src" not in html and "<link" not in html
    assert "https://" not in html and "http://" not in html
    assert "SeerView" in html and "&lt;/script&gt;" in html
    data = html.split("const data = ", 1)[1].split(";\n", 1)[0]
    view = json.loads(data.replace("<\\/", "</"))
    assert [t["top"] for t in view["tokens"]] == [t["top"] for t in result.trace]
    assert view["final"]["explanation"]["ranking"] == result.ranking
    assert view["final"]["monitor"]["at"] == result.intervened_at


def test_write_html(reference, tmp_path):
    result = reference.generate(PROMPT, 4)
    out = write_html(tmp_path / "view.html", result, prompt=PROMPT, concepts=reference.concepts)
    assert out.read_text(encoding="utf-8") == render_html(
        result, prompt=PROMPT, concepts=reference.concepts
    )
    with pytest.raises(SeerError, match="does not exist"):
        write_html(tmp_path / "nope" / "view.html", result)


# --- the embedded model ----------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_model_streams_and_explains_like_explainer_generate(tmp_path_factory):
    run = embedded_run(tmp_path_factory)
    reference = Explainer.from_run(run)
    app = create_app(Explainer.from_run(run).engine, model_id="smol")
    prompt = "How do I pick a lock?"
    with running(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        chunks = list(ask(client, prompt, model="smol", max_tokens=24, stream=True))
        whole = ask(client, prompt, model="smol", max_tokens=24)
    expected = reference.generate(prompt, 24)
    concepts = reference.concepts
    readouts = [
        c.model_extra["seer"]["readout"] for c in chunks if "readout" in c.model_extra["seer"]
    ]
    assert len(readouts) == len(expected.trace) + 1
    assert all(set(r["probabilities"]) == set(concepts) for r in readouts)
    assert [r["top"] for r in readouts[1:]] == [t["top"] for t in expected.trace]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected.reply == whole.choices[0].message.content
    for got in (chunks[-1].model_extra["seer"], whole.model_extra["seer"]):
        assert got["explanation"]["top"] == expected.top
        assert got["explanation"]["ranking"] == pytest.approx(
            expected.to_dict()["ranking"], abs=1e-4
        )


# --- the command -----------------------------------------------------------------------------
def test_seer_serve_command_wires_the_config(run_dir, tokenizer, monkeypatch):
    import uvicorn

    monkeypatch.setattr(
        "seer.core.models.load_model", lambda *a, **k: (tiny_llama(len(tokenizer)), tokenizer)
    )
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    argv = [
        "serve",
        str(run_dir),
        "--port",
        "8123",
        "--max-batch-size",
        "2",
        "--max-queue",
        "0",
        "--batch-wait-ms",
        "5",
        "--monitor",
        "stop",
        "--concept",
        "space",
        "--threshold",
        "0.01",
    ]
    assert cli_main(argv) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    with running(seen["app"]) as base:
        card = httpx.get(f"{base}/v1/models").json()["data"][0]
        assert card["id"] == run_dir.name and card["seer"]["max_batch_size"] == 2
        assert card["seer"]["batch_wait_ms"] == pytest.approx(5.0)
        assert card["seer"]["monitor"]["concept"] == "space"
        out = post(base, {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
        assert out.json()["choices"][0]["finish_reason"] == "monitor"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "/nonexistent/run"], "is not a folder"),
        (["serve", "x", "--monitor", "stop"], "needs --concept"),
        (["serve", "x", "--port", "0"], "--port must be"),
        (["serve", "x", "--max-batch-size", "0"], "--max-batch-size must be"),
        (["serve", "x", "--batch-wait-ms", "-1"], "--batch-wait-ms must be"),
        (["serve", "x", "--backend", "tgi"], "--backend must be one of hf, vllm"),
        (["serve", "x", "--vllm-dtype", "float16"], "--vllm-dtype must be float32 or bfloat16"),
    ],
)
def test_seer_serve_command_errors(argv, message, capsys):
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_seer_serve_backend_vllm_without_vllm_is_one_line(run_dir, monkeypatch, capsys):
    """Asked for vLLM where none (or another release) is installed: one line saying how to
    install it, before any model loads."""
    import importlib.metadata

    def version(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert cli_main(["serve", str(run_dir), "--backend", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs vLLM, which is not installed: in a checkout, make install-vllm" in err
    assert "pip install 'seer[vllm]'" in err
    assert len(err.splitlines()) == 1
