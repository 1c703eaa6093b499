import json
import shutil

import numpy as np
import pytest
import torch
from conftest import PROMPT, PROMPTS, make_explainer, tiny_llama

from seer.cli import main as cli_main
from seer.core.architecture import get_layers
from seer.core.formatting import encode, prompt_ids
from seer.core.represent import representations
from seer.errors import SeerError
from seer.inference.engine import Engine
from seer.inference.explainer import Monitor
from seer.inference.monitor import replay


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def explainer(run_dir, tokenizer):
    return make_explainer(run_dir, tokenizer)


@pytest.fixture(scope="module", params=["last", "mean"])
def any_run(request, run_dir):
    """The tiny run reading the last token, and one reading the 'mean' span."""
    return run_dir if request.param == "last" else request.getfixturevalue("trained_mean_run")


def plain_generate(explainer, prompt, n):
    ids = prompt_ids(explainer.tokenizer, prompt)
    out = explainer.model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids)),
        max_new_tokens=n,
        do_sample=False,
        use_cache=True,
        pad_token_id=explainer.tokenizer.pad_token_id,
    )
    return out[0, len(ids) :].tolist()


def only_token(explainer, token_id):
    """Make greedy generation emit ``token_id`` at every step (all other ids suppressed)."""
    n_vocab = explainer.model.get_base_model().config.vocab_size
    config = explainer.model.get_base_model().generation_config
    config.suppress_tokens = [i for i in range(n_vocab) if i != token_id]


def input_lengths(explainer):
    """A pre-hook on block 0 recording the sequence length of every forward pass."""
    lengths = []

    def hook(_module, args, kwargs):
        lengths.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    return lengths, get_layers(explainer.model)[0].register_forward_pre_hook(hook, with_kwargs=True)


def test_ranking_probabilities_and_score_trace(explainer, tokenizer):
    response = "it is very far away"
    result = explainer.score(PROMPT, response)
    cos = [r["cosine"] for r in result.ranking]
    assert sorted(r["concept"] for r in result.ranking) == ["cooking", "space", "sports"]
    assert cos == sorted(cos, reverse=True)
    assert sum(r["probability"] for r in result.ranking) == pytest.approx(1.0, abs=1e-9)
    assert result.top == (result.ranking[0]["concept"] if cos[0] >= explainer.threshold else "none")
    enc = encode(tokenizer, PROMPT, response, "full", 512)
    assert len(result.trace) == len(enc.input_ids) - enc.user_end - 1  # response + closing tags
    assert result.trace[-1]["probabilities"] == {
        r["concept"]: round(r["probability"], 4) for r in result.ranking
    }
    assert len(explainer.score(PROMPT).trace) == len(prompt_ids(tokenizer, PROMPT))


def test_none_below_threshold(run_dir, tmp_path, tokenizer):
    for threshold, expect_none in ((2.0, True), (-1.0, False)):
        copy = tmp_path / f"run{threshold}"
        shutil.copytree(run_dir, copy)
        meta = json.loads((copy / "seer.json").read_text())
        meta["calibration"]["threshold"] = threshold
        (copy / "seer.json").write_text(json.dumps(meta))
        explainer = make_explainer(copy, tokenizer)
        for result in (
            explainer.score(PROMPT, "far"),
            explainer.generate(PROMPT, max_new_tokens=3),
        ):
            assert (result.top == "none") == expect_none
            assert result.top in ("none", result.ranking[0]["concept"])
            assert {t["top"] == "none" for t in result.trace} == {expect_none}


def test_score_matches_representations_and_calibration(any_run, tokenizer):
    explainer = make_explainer(any_run, tokenizer)
    rows = explainer.run.split("calibration")
    reps = representations(explainer.model, tokenizer, rows, [explainer.layer], explainer.positions)
    cos = reps[explainer.layer] @ explainer.prototypes.numpy().T
    for row, expected in zip(rows, cos, strict=True):
        ranking = explainer.score(row["prompt"], row["response"]).ranking
        assert ranking[0]["concept"] == explainer.concepts[int(np.argmax(expected))]
        got = {r["concept"]: r["cosine"] for r in ranking}
        np.testing.assert_allclose([got[c] for c in explainer.concepts], expected, atol=1e-5)
    predicted = [explainer.concepts[int(np.argmax(c))] for c in cos]
    hits = np.mean([p == r["concept"] for p, r in zip(predicted, rows, strict=True)])
    assert hits == pytest.approx(explainer.run.calibration["calibration_accuracy"])


def test_generate_reply_and_trace_match_plain_generation(explainer, tokenizer):
    new = plain_generate(explainer, PROMPT, 6)
    result = explainer.generate(PROMPT, max_new_tokens=6)
    assert result.reply == tokenizer.decode(new, skip_special_tokens=True).strip()
    assert len(result.trace) == len(new) and result.intervened_at is None
    assert [t["token"] for t in result.trace] == [tokenizer.decode([t]) for t in new]


@pytest.mark.parametrize("token, path", [("a", "cache"), ("Ġthe", "full pass")])
def test_final_explanation_equals_scoring_the_reply(any_run, tokenizer, token, path):
    explainer = make_explainer(any_run, tokenizer)
    only_token(explainer, tokenizer.convert_tokens_to_ids(token))
    lengths, handle = input_lengths(explainer)
    try:
        result = explainer.generate(PROMPT, max_new_tokens=5)
    finally:
        handle.remove()
    scored = explainer.score(PROMPT, result.reply)
    target = encode(tokenizer, PROMPT, result.reply, "full", 512).input_ids
    # prompt, 4 cached steps, then the closing read: 3 tokens through the cache, or a full pass
    assert lengths[:5] == [len(prompt_ids(tokenizer, PROMPT)), 1, 1, 1, 1] and len(lengths) == 6
    assert lengths[5] == (3 if path == "cache" else len(target))
    assert len(result.trace) == 5
    for a, b in zip(result.ranking, scored.ranking, strict=True):
        assert a["concept"] == b["concept"] and a["cosine"] == pytest.approx(b["cosine"], abs=1e-5)
    if path == "cache":  # the generation's per-token states are the scoring pass's states
        assert result.reply == "aaaaa"
        for a, b in zip(result.trace, scored.trace[:5], strict=True):
            assert a["token"] == b["token"]
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=2e-4)


def test_rows_ending_together_take_their_final_read_in_one_pass(any_run, tokenizer):
    explainer = make_explainer(any_run, tokenizer)
    only_token(explainer, tokenizer.convert_tokens_to_ids("a"))
    prompts = PROMPTS[:3]  # three prompt lengths: a left-padded batch
    lengths, handle = input_lengths(explainer)
    try:
        steps = list(Engine(explainer.loaded).stream(prompts, max_new_tokens=4, batch_size=3))
    finally:
        handle.remove()
    # one prefill, 3 decode steps, then one closing read of 3 tokens for all three rows
    assert lengths[1:] == [1, 1, 1, 3]
    ends = [e for e in steps[-1] if e.finish_reason is not None]
    assert sorted(e.row for e in ends) == [0, 1, 2]
    for event in ends:
        result = event.result
        assert result.reply == "aaaa"
        scored = explainer.score(prompts[event.row], result.reply)
        for a, b in zip(result.explanation.ranking, scored.ranking, strict=True):
            assert a["concept"] == b["concept"]
            assert a["cosine"] == pytest.approx(b["cosine"], abs=1e-5)


def test_monitor_stop(explainer, tokenizer):
    refusal = "no."
    result = explainer.generate(PROMPT, 6, Monitor("space", threshold=1e-9, refusal=refusal))
    assert result.intervened_at == 0 and result.reply == refusal and result.trace == []
    never = explainer.generate(PROMPT, 6, Monitor("space", threshold=1.0))
    assert never.intervened_at is None
    assert (
        never.reply
        == tokenizer.decode(plain_generate(explainer, PROMPT, 6), skip_special_tokens=True).strip()
    )


def capture_first_pass(explainer, **kw):
    """The target layer's output in the first forward pass (read as the next block's input)."""
    seen = []

    def hook(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = get_layers(explainer.model)[explainer.layer + 1].register_forward_pre_hook(
        hook, with_kwargs=True
    )
    try:
        result = explainer.generate(PROMPT, max_new_tokens=4, **kw)
    finally:
        handle.remove()
    return seen[0], result


def test_steering_adds_the_vector_at_the_layer(explainer):
    plain, _ = capture_first_pass(explainer)
    vector = torch.linspace(-1, 1, plain.shape[-1])
    steered, result = capture_first_pass(
        explainer, monitor=Monitor("space", 1e-9, "steer", vector=vector)
    )
    assert result.intervened_at == 0
    torch.testing.assert_close(steered, plain + vector, rtol=0, atol=1e-6)
    towards, _ = capture_first_pass(
        explainer, monitor=Monitor("space", 1e-9, "steer", towards="cooking", scale=2.0)
    )
    expected = 2.0 * plain[0].norm(dim=-1).mean() * explainer.direction("cooking", "space")
    torch.testing.assert_close(towards, plain + expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "monitor",
    [
        None,
        Monitor("space", threshold=1e-9, refusal="no."),
        Monitor("space", threshold=1.0),
        Monitor("space", 1e-9, "steer", towards="cooking", scale=2.0),
        Monitor("space", threshold=1e-9, mode="watch"),
        Monitor("space", threshold=1e-9, refusal="no.", watch_tokens=0),
    ],
    ids=["plain", "stop", "never", "steer", "watch", "prompt-end"],
)
def test_batched_monitor_matches_one_by_one(explainer, monitor):
    out = explainer.generate_many(PROMPTS, 5, monitor, batch_size=3)
    for prompt, reply, at in zip(PROMPTS, out.replies, out.fired_at, strict=True):
        one = explainer.generate(prompt, 5, monitor)
        assert reply == one.reply
        assert at == one.intervened_at


def _first_rise(probabilities: list[float]) -> int | None:
    """The first pass after the prompt's end whose probability beats every earlier one."""
    return next(
        (k for k in range(1, len(probabilities)) if probabilities[k] > max(probabilities[:k])),
        None,
    )


def test_batched_monitor_fires_mid_reply_like_one_by_one(explainer):
    """A threshold first met by a generated token fires at that token in both APIs."""
    for concept in explainer.concepts:
        watched = explainer.generate_many([PROMPT], 6, Monitor(concept, 1.0, "watch"))
        probs = watched.probabilities[0]
        k = _first_rise(probs)
        if k is not None:
            break
    assert k is not None, "no concept's probability rises during the reply"
    threshold = (max(probs[:k]) + probs[k]) / 2
    monitor = Monitor(concept, threshold=threshold, refusal="no.")
    one = explainer.generate(PROMPT, 6, monitor)
    out = explainer.generate_many([PROMPT, "cars"], 6, monitor)
    assert one.intervened_at == out.fired_at[0] == k > 0
    assert out.replies[0] == one.reply == "no."
    # watching only the prompt's end, the same threshold never fires
    late = Monitor(concept, threshold=threshold, refusal="no.", watch_tokens=k - 1)
    assert explainer.generate_many([PROMPT], 6, late).fired_at == [None]


def test_watch_mode_records_what_stop_would_do(explainer):
    """The probabilities a watch-mode pass records decide exactly where a stop monitor fires:
    the evaluation's one-pass threshold sweep rests on it."""
    watched = explainer.generate_many(PROMPTS, 5, Monitor("space", 1.0, "watch"), batch_size=2)
    plain = explainer.generate_many(PROMPTS, 5, batch_size=2)
    assert watched.replies == plain.replies and plain.probabilities == [[]] * len(PROMPTS)
    every = sorted({p for row in watched.probabilities for p in row})
    threshold = every[len(every) // 2]
    stop = explainer.generate_many(PROMPTS, 5, Monitor("space", threshold), batch_size=2)
    for row, at, reply, plain_reply in zip(
        watched.probabilities, stop.fired_at, stop.replies, plain.replies, strict=True
    ):
        first = next((k for k, p in enumerate(row) if p >= threshold), None)
        assert at == first == replay(Monitor("space", threshold), row)
        assert reply == (plain_reply if first is None else Monitor("space").refusal)


def test_score_many_reads_like_score(explainer):
    responses = ["the moon is far", None, "", "a rocket to the stars and back again"]
    many = explainer.score_many(PROMPTS, responses, batch_size=3)
    assert many.shape == (len(PROMPTS), len(explainer.concepts))
    for row, prompt, response in zip(many, PROMPTS, responses, strict=True):
        one = explainer.score(prompt, response)
        expected = {r["concept"]: r["probability"] for r in one.ranking}
        got = dict(zip(explainer.concepts, row.tolist(), strict=True))
        # padded and one-by-one passes differ by float32 rounding, which the calibrated
        # softmax scales to about 1e-5 here (1.1e-5 seen with the cosine-schedule defaults)
        assert got == pytest.approx(expected, abs=1e-4)
    space = explainer.final_probability("space", PROMPTS, responses, batch_size=3)
    assert space == many[:, explainer.concepts.index("space")].tolist()
    with pytest.raises(SeerError, match="pair them"):
        explainer.score_many(PROMPTS, responses[:2])
    with pytest.raises(SeerError, match="not in this run"):
        explainer.final_probability("cars", PROMPTS, responses)


def test_reply_end_monitor_decides_on_the_final_explanation(explainer):
    """A reply_end stop monitor lets the reply be written, reads its final explanation where
    training reads it, and holds back exactly the replies at or above the threshold; the
    batched and one-by-one APIs agree, and a watch-mode pass records the same values."""
    plain = explainer.generate_many(PROMPTS, 5, batch_size=2)
    watched = explainer.generate_many(
        PROMPTS, 5, Monitor("space", 1.0, "watch", reply_end=True), batch_size=2
    )
    assert watched.replies == plain.replies and watched.probabilities == [[]] * len(PROMPTS)
    final = explainer.score_many(PROMPTS, plain.replies)[:, explainer.concepts.index("space")]
    assert watched.final == pytest.approx(final.tolist(), abs=1e-4)  # float32 rounding, above
    ordered = sorted(final)
    threshold = float(ordered[1] + ordered[2]) / 2  # two replies above, two below
    monitor = Monitor("space", threshold, refusal="no.", reply_end=True)
    out = explainer.generate_many(PROMPTS, 5, monitor, batch_size=3)
    for i, prompt in enumerate(PROMPTS):
        held = final[i] >= threshold
        assert out.replies[i] == ("no." if held else plain.replies[i])
        assert (out.fired_at[i] is not None) == held
        one = explainer.generate(prompt, 5, monitor)
        assert (one.reply, one.intervened_at) == (out.replies[i], out.fired_at[i])
        assert replay(monitor, [0.0] * len(one.trace), float(final[i])) == out.fired_at[i]
        if held:  # it acted after reading every generated token
            assert out.fired_at[i] > 0
    assert sum(r == "no." for r in out.replies) == 2


def test_bad_input(explainer):
    with pytest.raises(SeerError, match="empty"):
        explainer.generate("  ")
    with pytest.raises(SeerError, match="max-new-tokens"):
        explainer.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(SeerError, match="not in this run"):
        explainer.generate(PROMPT, monitor=Monitor("cars"))
    with pytest.raises(SeerError, match="hidden size"):
        explainer.generate(PROMPT, monitor=Monitor("space", mode="steer", vector=torch.ones(3)))
    with pytest.raises(SeerError, match="towards"):
        Monitor("space", mode="steer")
    with pytest.raises(SeerError, match="watch_tokens"):
        Monitor("space", watch_tokens=-1)
    with pytest.raises(SeerError, match="'watch'"):
        Monitor("space", mode="log")
    with pytest.raises(SeerError, match="steering can no longer"):
        Monitor("space", mode="steer", towards="cooking", reply_end=True)
    with pytest.raises(SeerError, match="one or the other"):
        Monitor("space", watch_tokens=0, reply_end=True)


@pytest.fixture
def cli(monkeypatch, tokenizer):
    monkeypatch.setattr(
        "seer.core.models.load_model", lambda *a, **k: (tiny_llama(len(tokenizer)), tokenizer)
    )
    return cli_main


def _traced(run_dir) -> list[str]:
    """``seer explain`` of PROMPT with a 3-token reply, as JSON with the per-token trace."""
    return [
        "explain",
        str(run_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "3",
        "--json",
        "--trace",
    ]


def test_cli_json(cli, run_dir, capsys):
    assert cli(_traced(run_dir)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == PROMPT and len(out["trace"]) == 3 and len(out["ranking"]) == 3
    assert cli(["explain", str(run_dir), "--prompt", PROMPT, "--response", "far", "--trace"]) == 0
    text = capsys.readouterr().out
    assert "top concept:" in text and "reply: far" in text and "trace" in text


def test_cli_monitor(cli, run_dir, capsys):
    argv = ["explain", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", "3", "--json"]
    stop = ["--monitor", "stop", "--concept", "space", "--threshold", "1e-9", "--refusal", "no."]
    assert cli([*argv, *stop]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reply"] == "no." and out["intervened_at"] == 0
    assert cli([*argv, *stop, "--reply-end"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reply"] == "no." and out["intervened_at"] > 0  # after the whole reply
    steer = ["--monitor", "steer", "--concept", "space", "--threshold", "1e-9"]
    assert cli([*argv, *steer, "--towards", "cooking", "--steer-scale", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["intervened_at"] == 0 and out["reply"] != "no."
    watch = ["--monitor", "watch", "--concept", "space", "--threshold", "1e-9"]
    assert cli([a for a in argv if a != "--json"] + watch) == 0
    assert "monitor would have acted (watch mode) after 0" in capsys.readouterr().out
    assert cli([*argv, *steer]) == 2
    assert "towards" in capsys.readouterr().err
    assert cli([*argv, "--monitor", "stop"]) == 2
    assert "--concept" in capsys.readouterr().err
    assert cli([*argv, *stop, "--response", "far"]) == 2
    assert "drop --response" in capsys.readouterr().err


def test_cli_file_reproduces_held_out_accuracy(cli, run_dir, capsys):
    split = run_dir / "split" / "calibration.jsonl"
    assert cli(["--quiet", "explain", str(run_dir), "--file", str(split), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(split.read_text().splitlines()) + 1
    summary = lines[-1]["summary"]
    calibration = json.loads((run_dir / "seer.json").read_text())["calibration"]
    assert summary["accuracy"] == pytest.approx(calibration["calibration_accuracy"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", " "], "prompt is empty"),
        ([], "pass --prompt"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "between 1 and 4096"),
        (["--prompt", "hi", "--max-new-tokens", "5000"], "between 1 and 4096"),
    ],
)
def test_cli_errors(cli, run_dir, capsys, argv, message):
    assert cli(["explain", str(run_dir), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_html_writes_the_explained_generation(cli, run_dir, tmp_path, capsys):
    """``seer explain --html`` writes one self-contained page holding the reply's tokens and
    the final explanation's concepts; with --file, or into a missing folder, it is refused."""
    page = tmp_path / "view.html"
    argv = _traced(run_dir)
    assert cli([*argv, "--html", str(page)]) == 0
    out = json.loads(capsys.readouterr().out)
    text = page.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html")
    assert "<script src=" not in text and "<link " not in text  # self-contained, offline
    for concept in ("cooking", "space", "sports"):
        assert concept in text
    assert all(json.dumps(t["token"])[1:-1] in text or t["token"] in text for t in out["trace"])
    assert cli([*argv, "--html", str(tmp_path / "missing" / "view.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
