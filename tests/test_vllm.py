"""The vLLM backend (``seer[vllm]``) against the Hugging Face backend: the same tokens, readouts
within 1e-4 (probabilities) and final explanations, on rows that join and leave at different
steps; monitors that decide the same rows at the same tokens; a cancelled row that frees its
request; and ``seer serve --backend vllm`` under the official openai client.

The readout tolerance: vLLM's block output matches Hugging Face's to a relative error of about
3e-7 in float32 (measured: cosines within 2e-7, probabilities within 2e-6), so 1e-4 leaves a
wide margin and still catches a state read at the wrong position or row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PROMPTS, embedded_run, require_vllm, tiny_vllm_run

from seer.errors import SeerError
from seer.inference.backends import vllm_adapter
from seer.inference.engine import Engine
from seer.inference.loaded import LoadedRun
from seer.inference.monitor import Monitor

TOL = 1e-4
LIMITS = [12, 5, 16, 8]  # reply lengths: the rows end at different steps


def test_a_missing_or_wrong_vllm_is_one_line_that_says_how_to_install(monkeypatch):
    def version(name: str) -> str:
        raise vllm_adapter.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vllm_adapter.importlib.metadata, "version", version)
    with pytest.raises(
        SeerError, match=r"needs vLLM, which is not installed: in a checkout, make install-vllm"
    ) as e:
        vllm_adapter.check_vllm()
    assert "\n" not in str(e.value) and "seer[vllm]" in str(e.value)
    monkeypatch.setattr(vllm_adapter.importlib.metadata, "version", lambda name: "0.29.1")
    with pytest.raises(SeerError, match=r"needs vLLM 0.30.0, found 0.29.1"):
        vllm_adapter.check_vllm()


@pytest.fixture(scope="module", params=["tiny", "embedded"])
def engines(request, tmp_path_factory):
    """The HF engine and the vLLM engine of one loaded run (vLLM loads the merged model)."""
    require_vllm()
    from seer.inference.backends.vllm import VllmBackend

    if request.param == "tiny":
        run = tiny_vllm_run(tmp_path_factory.getbasetemp() / "vllm-tiny")
    else:
        run = embedded_run(tmp_path_factory)
    loaded = LoadedRun.from_run(run)
    return Engine(loaded), Engine(loaded, VllmBackend(loaded, max_num_seqs=16))


def staggered(engine, monitors=None, cancel_at=None):
    """PROMPTS generated with one row joining per step (so rows join a running batch and end
    at different steps); ``cancel_at``: (row, step) cancelled. Events per prompt index."""
    batch, out, index, step = engine.batch(), {}, {}, 0
    while True:
        if step < len(PROMPTS):
            monitor = monitors[step] if monitors else None
            index[batch.add(PROMPTS[step], max_new_tokens=LIMITS[step], monitor=monitor)] = step
        if cancel_at is not None and step == cancel_at[1]:
            batch.cancel(cancel_at[0])
        if not batch.active:
            return out
        for event in batch.step():
            out.setdefault(index[event.row], []).append(event)
        step += 1


def assert_same_rows(a, b):
    assert sorted(a) == sorted(b) == list(range(len(PROMPTS)))
    for i in a:
        ea, eb = a[i], b[i]
        ra, rb = ea[-1].result, eb[-1].result
        assert ra.tokens == rb.tokens and ra.reply == rb.reply
        assert ra.finish_reason == rb.finish_reason and ra.fired_at == rb.fired_at
        assert [e.index for e in ea] == [e.index for e in eb]
        assert [e.token for e in ea] == [e.token for e in eb]
        assert [e.monitor for e in ea] == [e.monitor for e in eb]
        assert "".join(e.text for e in ea) == "".join(e.text for e in eb)
        for x, y in zip(ea, eb, strict=True):
            np.testing.assert_allclose(y.probabilities, x.probabilities, atol=TOL)
            np.testing.assert_allclose(y.cosines, x.cosines, atol=TOL)
        if ra.explanation is not None:
            xa, xb = ra.explanation, rb.explanation
            assert xa.top == xb.top
            assert [r["concept"] for r in xa.ranking] == [r["concept"] for r in xb.ranking]
            for p, q in zip(xa.ranking, xb.ranking, strict=True):
                assert q["probability"] == pytest.approx(p["probability"], abs=TOL)
        assert ra.probabilities == pytest.approx(rb.probabilities, abs=TOL)


@pytest.mark.slow
def test_tokens_readouts_and_final_explanations_equal_the_hf_backend(engines):
    hf, vl = engines
    a, b = staggered(hf), staggered(vl)
    assert_same_rows(a, b)
    assert {a[i][-1].finish_reason for i in a} <= {"stop", "length"}
    backend = vl.backend
    assert not backend.readers and not backend.engine.busy  # every request has left vLLM


def _mid_reply_threshold(hf, concept):
    """A threshold the watched concept first reaches after the prompt's end in some row,
    halfway between that value and the highest before it (never at a value the backends'
    1e-6 differences could put on either side)."""
    watch = staggered(hf, [Monitor(concept, 1.0, "watch")] * len(PROMPTS))
    for events in watch.values():
        p = events[-1].result.probabilities
        k = int(np.argmax(p))
        if k > 0 and p[k] - max(p[:k]) > 1e-3:
            return (p[k] + max(p[:k])) / 2
    pytest.skip("the concept never rises after the prompt's end in these replies")


@pytest.mark.slow
@pytest.mark.parametrize("engines", ["tiny"], indirect=True)  # the embedded model: above
@pytest.mark.parametrize("mode", ["stop", "steer", "watch"])
def test_monitors_decide_the_same_rows_at_the_same_tokens(engines, mode):
    hf, vl = engines
    concepts = hf.loaded.concepts
    threshold = _mid_reply_threshold(hf, concepts[0])
    kw = {"towards": concepts[1], "scale": 2.0} if mode == "steer" else {}
    monitors = [Monitor(concepts[0], threshold, mode, **kw)] * len(PROMPTS)
    a, b = staggered(hf, monitors), staggered(vl, monitors)
    assert_same_rows(a, b)
    fired = [a[i][-1].result.fired_at for i in a]
    assert any(f is not None for f in fired)


@pytest.mark.slow
@pytest.mark.parametrize("engines", ["embedded"], indirect=True)  # a reply that re-tokenises
def test_the_final_read_reuses_the_rows_cached_blocks(engines, monkeypatch):
    """A finished row's final read computes only the reply's tail after the row's last full KV
    block, not the whole prompt and reply again (at vLLM's CPU default of 128 tokens a block, a
    short reply's final read recomputed all of it: bench/serve_vllm.py's costliest step)."""
    from seer.inference.backends import vllm as backend

    seen: list[tuple[int, int, bool]] = []
    take = backend._Closing.take

    def spy(self, positions, states):
        seen.append((int(positions[0]), self.close.cached, self.close.through))
        return take(self, positions, states)

    monkeypatch.setattr(backend._Closing, "take", spy)
    for _ in engines[1].stream([PROMPTS[1]], max_new_tokens=60):
        pass
    first, cached, through = seen[0]
    assert through and cached >= 64
    assert cached - first < 32, f"the final read recomputed {cached - first} tokens"
    assert first == cached // vllm_adapter.BLOCK_SIZE * vllm_adapter.BLOCK_SIZE


@pytest.mark.slow
@pytest.mark.parametrize("engines", ["tiny"], indirect=True)  # the embedded model: above
def test_reply_end_monitor_decides_like_the_hf_backend(engines):
    hf, vl = engines
    concept = hf.loaded.concepts[0]
    finals = [
        e[-1].result.final for e in staggered(hf, [Monitor(concept, 1.0, "watch")] * 4).values()
    ]
    monitor = Monitor(concept, float(np.median(finals)), "stop", reply_end=True)
    assert_same_rows(staggered(hf, [monitor] * 4), staggered(vl, [monitor] * 4))


@pytest.mark.slow
@pytest.mark.parametrize("engines", ["tiny"], indirect=True)  # the embedded model: above
def test_a_cancelled_row_leaves_the_engine_and_the_others_go_on(engines):
    hf, vl = engines
    a, b = staggered(hf, cancel_at=(0, 3)), staggered(vl, cancel_at=(0, 3))
    assert a[0][-1].finish_reason == b[0][-1].finish_reason == "cancelled"
    assert a[0][-1].result.tokens == b[0][-1].result.tokens
    for i in range(1, len(PROMPTS)):
        assert a[i][-1].result.tokens == b[i][-1].result.tokens
    assert not vl.backend.readers and not vl.backend.engine.busy


@pytest.mark.slow
@pytest.mark.parametrize("engines", ["tiny"], indirect=True)
def test_a_row_that_fails_while_generating_ends_alone_on_both_backends(engines):
    # A vector 1e6 times the prompt's hidden-state norm passes every check before the prompt
    # is read; the row finds it too large when its monitor fires at the prompt's end, and
    # ends with the error, unsteered; the other rows generate as they do without it.
    hf, vl = engines
    hidden = hf.loaded.readout.hidden_size
    huge = Monitor(hf.loaded.concepts[0], 1e-9, "steer", vector=torch.full((hidden,), 1e6))
    monitors = [None, huge, None, None]
    plain = staggered(hf)
    for engine in (hf, vl):
        rows = staggered(engine, monitors)
        assert rows[1][-1].finish_reason == "error"
        assert isinstance(rows[1][-1].result.error, SeerError)
        assert "vector" in str(rows[1][-1].result.error)
        for i in (0, 2, 3):
            assert rows[i][-1].result.tokens == plain[i][-1].result.tokens
    assert not vl.backend.readers and not vl.backend.engine.busy


@pytest.mark.slow
def test_seer_serve_on_vllm_under_the_openai_client(engines):
    openai = pytest.importorskip("openai")
    import httpx

    from seer.inference.serve.app import create_app
    from seer.inference.serve.server import running

    hf, vl = engines
    want = staggered(hf)[0][-1].result
    with running(create_app(vl, model_id="seer-vllm", max_batch_size=4)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        messages = [{"role": "user", "content": PROMPTS[0]}]
        done = client.chat.completions.create(
            model="seer-vllm", messages=messages, max_tokens=LIMITS[0]
        )
        assert done.choices[0].message.content == want.reply
        explanation = done.model_extra["seer"]["explanation"]
        assert explanation["top"] == want.explanation.top
        stream = client.chat.completions.create(
            model="seer-vllm", messages=messages, max_tokens=LIMITS[0], stream=True
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() == want.reply
        # a client that leaves mid-stream frees its row
        body = {"model": "seer-vllm", "messages": messages, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("seer"):
                    break
        for _ in range(200):
            health = httpx.get(f"{url}/health").json()
            if health["running"] == 0:
                break
            import time

            time.sleep(0.05)
        assert health["running"] == 0 and health["cancelled"] >= 1
    assert not vl.backend.readers and not vl.backend.engine.busy


@pytest.mark.slow
def test_a_seer_export_folder_serves_on_vllm_like_its_run(tmp_path_factory):
    require_vllm()
    from seer.inference.backends.vllm import VllmBackend, model_folder
    from seer.inference.export import export

    run = tiny_vllm_run(tmp_path_factory.getbasetemp() / "vllm-tiny")
    out = export(run, tmp_path_factory.mktemp("exported") / "out")
    folder = model_folder(out)
    assert not (folder / "prototypes.safetensors").exists()  # vLLM would read it as weights
    loaded = LoadedRun.from_run(out)
    got = staggered(Engine(loaded, VllmBackend(loaded, max_num_seqs=8)))
    want = staggered(Engine(LoadedRun.from_run(run)))
    assert_same_rows(want, got)
