"""Issue 19: losses and readout free of the model's scale and of a direction every text shares.

Tiny random models of four architectures, built from configs, are given (a) hidden states 100
times larger, by scaling the residual stream exactly (the same function, the same logits),
and (b) a large constant direction added to the target block's output. The options of issue
19 (``--retain-l2-form relative``, ``--representation centered``; the defaults stay the
paper's ``raw`` forms until measured on real data) must behave the same on (a) and still
separate two synthetic concepts on (b); the tests pass them explicitly.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import write_retain
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

from seer.core import losses
from seer.core.architecture import get_layers
from seer.core.layers import capture_layers
from seer.training.config import TrainConfig
from seer.training.train import train

ARCHS = ("llama", "qwen2", "gemma", "gpt2")
RELATIVE = {"retain_l2_form": "relative", "retain_l2_weight": 100.0}  # the scale-free option
LAYER = 2
FOOD = ["bread", "soup", "pasta", "salad", "rice", "cake", "eggs", "sauce"]
SPACE = ["moon", "stars", "planet", "comet", "rocket", "orbit", "galaxy", "sun"]
TEMPLATES = ["tell me about {}", "how do I get {}", "what is the {} like", "i like {} and {}"]


def tiny_model(arch: str, vocab_size: int, seed: int = 0):
    """A 4-block random model; norms with a negligible epsilon and untied embeddings, so that
    :func:`scale_residual` changes its states' scale and nothing else."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=4,
            n_head=4,
            n_positions=256,
            layer_norm_epsilon=1e-12,
            tie_word_embeddings=False,
        )
    else:
        config = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig}[arch](
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=256,
            rms_norm_eps=1e-12,
            tie_word_embeddings=False,
        )
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def lora_targets(arch: str) -> tuple[str, ...]:
    """Layers whose inputs are normalized, so that their LoRA acts the same at any scale."""
    return ("c_attn", "c_fc") if arch == "gpt2" else ("q_proj", "k_proj", "v_proj", "up_proj")


@torch.no_grad()
def scale_residual(model, c: float) -> None:
    """Multiply every residual-stream state by ``c``: the embeddings and each block's output
    projections. Pre-norm blocks and the final norm see the same normalized inputs."""
    if hasattr(model, "transformer"):  # GPT-2
        model.transformer.wte.weight.mul_(c)
        model.transformer.wpe.weight.mul_(c)
        outs = [m for b in model.transformer.h for m in (b.attn.c_proj, b.mlp.c_proj)]
    else:
        model.model.embed_tokens.weight.mul_(c)
        outs = [m for b in model.model.layers for m in (b.self_attn.o_proj, b.mlp.down_proj)]
    for module in outs:
        module.weight.mul_(c)
        if getattr(module, "bias", None) is not None:
            module.bias.mul_(c)


@contextlib.contextmanager
def shared_direction(model, tokenizer, times: float, layer: int = LAYER):
    """Add one fixed direction, ``times`` the typical state norm, to block ``layer``'s output:
    every text's representation is then dominated by it (base cosines near 1)."""
    ids = torch.tensor([tokenizer("tell me about the moon")["input_ids"]])
    with torch.no_grad(), capture_layers(model, [layer]) as hidden:
        model(input_ids=ids)
    direction = torch.randn(hidden[layer].shape[-1], generator=torch.Generator().manual_seed(1))
    shift = times * hidden[layer].norm(dim=-1).mean() * direction / direction.norm()

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (output[0] + shift, *output[1:])
        return output + shift

    handle = get_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def write_two_concepts(path: Path, per_concept: int = 24) -> Path:
    rng = random.Random(0)
    rows = []
    for concept, words in (("food", FOOD), ("space", SPACE)):
        for _ in range(per_concept):
            template = rng.choice(TEMPLATES)
            prompt = template.format(*rng.sample(words, template.count("{}")))
            rows.append(
                {"prompt": prompt, "response": f"sure, {rng.choice(words)}", "concept": concept}
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_tiny(tmp_path: Path, tokenizer, model, name: str, **kw) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    values = dict(
        model="tiny",
        data=str(write_two_concepts(tmp_path / "concepts.jsonl")),
        retain_data=str(write_retain(tmp_path / "retain.jsonl")),
        output=str(tmp_path / name),
        layer=LAYER,
        batch_size=8,
        epochs=1,
        test_fraction=0.25,
        logging_steps=1,
    )
    values.update(kw)
    torch.manual_seed(0)  # the LoRA initialisation
    return train(TrainConfig(**values), model=model, tokenizer=tokenizer, progress=False)


def loss_log(run: Path) -> list[dict]:
    lines = (run / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if "contrastive" in e]


def lora_b(run: Path) -> torch.Tensor:
    """Every LoRA B matrix of a run (zero at initialisation: their value is the update)."""
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    return torch.cat([w.flatten() for k, w in sorted(weights.items()) if "lora_B" in k])


# --- the construction itself -----------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_scale_residual_scales_states_and_keeps_the_function(arch, tokenizer):
    ids = torch.tensor([tokenizer("how far away is the moon")["input_ids"]])
    plain, scaled = tiny_model(arch, len(tokenizer)), tiny_model(arch, len(tokenizer))
    scale_residual(scaled, 100.0)
    with (
        torch.no_grad(),
        capture_layers(plain, [LAYER]) as h1,
        capture_layers(scaled, [LAYER]) as h2,
    ):
        out1, out2 = plain(input_ids=ids).logits, scaled(input_ids=ids).logits
    torch.testing.assert_close(out2, out1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h2[LAYER], 100.0 * h1[LAYER], rtol=1e-4, atol=1e-4)


# --- pure functions ------------------------------------------------------------------------
def test_relative_retain_l2_is_scale_free_and_not_ruled_by_massive_tokens():
    from seer.core.normalize import relative_retain_l2

    torch.manual_seed(0)
    ref = torch.randn(2, 5, 16)
    ref[:, 0] *= 1000.0  # a "massive activation" on the first token
    moved = ref + 0.1 * ref.norm(dim=-1, keepdim=True) * torch.nn.functional.normalize(
        torch.randn(2, 5, 16), dim=-1
    )
    mask = torch.ones(2, 5, dtype=torch.long)
    rel = relative_retain_l2([moved], [ref], mask)
    assert rel.item() == pytest.approx(0.1, rel=1e-4)  # every token moved by 10% of its norm
    assert relative_retain_l2([100 * moved], [100 * ref], mask).item() == pytest.approx(
        rel.item(), rel=1e-5
    )
    raw = losses.retain_l2([moved], [ref], mask)
    assert losses.retain_l2([100 * moved], [100 * ref], mask).item() == pytest.approx(
        100 * raw.item(), rel=1e-5
    )  # the paper's form: in the model's units
    first = torch.linalg.vector_norm(moved[:, 0] - ref[:, 0], dim=-1).sum()
    assert first / (raw * 10) > 0.99  # ... where the two massive tokens are nearly all of it


def test_centered_representation_ignores_a_shared_shift():
    from seer.core.normalize import batch_center
    from seer.core.represent import gather_positions

    torch.manual_seed(0)
    hidden = torch.randn(6, 4, 8)
    pos = torch.tensor([[3], [2], [3], [1], [3], [0]])
    shifted = hidden + 50.0 * torch.randn(8)
    picked = [hidden.gather(1, pos[:, :, None].expand(-1, -1, 8))]
    picked_shifted = [shifted.gather(1, pos[:, :, None].expand(-1, -1, 8))]
    z = gather_positions(hidden, pos, batch_center(picked))
    z_shifted = gather_positions(shifted, pos, batch_center(picked_shifted))
    torch.testing.assert_close(z_shifted, z, rtol=1e-4, atol=1e-4)
    raw = gather_positions(shifted, pos)
    assert (raw @ raw.T).min() > 0.98  # raw cosines see only the shift


# --- (a) hidden states 100 times larger ---------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_scaling_states_by_100_keeps_the_balance_and_the_update(arch, tmp_path, tokenizer):
    """With ``--retain-l2-form relative``. Failed before the fix: the retain l2 grew 100-fold
    against the contrastive term and turned the update (and, for GPT-2, train() refused its
    Conv1D layers)."""
    runs = {}
    for c in (1.0, 100.0):
        model = tiny_model(arch, len(tokenizer))
        scale_residual(model, c)
        runs[c] = train_tiny(
            tmp_path / str(c),
            tokenizer,
            model,
            "run",
            target_modules=lora_targets(arch),
            **RELATIVE,
        )
    logs = {c: loss_log(run) for c, run in runs.items()}
    assert len(logs[1.0]) >= 3
    for small, large in zip(logs[1.0], logs[100.0], strict=True):
        for part in ("contrastive", "retain_l2", "kl"):
            assert large[part] == pytest.approx(small[part], rel=0.02, abs=2e-4), part
    b1, b100 = lora_b(runs[1.0]), lora_b(runs[100.0])
    assert torch.nn.functional.cosine_similarity(b1, b100, dim=0) > 0.99


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_parts_start_comparable_on_four_architectures(arch, tmp_path, tokenizer):
    """After the first steps the weighted contrastive and retain-l2 terms are within a factor
    of 100 of each other on every architecture with ``--retain-l2-form relative`` (KL is in
    nats per token already)."""
    model = tiny_model(arch, len(tokenizer))
    targets = ("c_attn", "c_fc", "c_proj") if arch == "gpt2" else TrainConfig().target_modules
    run = train_tiny(
        tmp_path, tokenizer, model, "run", target_modules=targets, epochs=1.0, **RELATIVE
    )
    config = json.loads((run / "seer.json").read_text())["config"]
    last = loss_log(run)[-1]
    contrastive = config["contrastive_weight"] * last["contrastive"]
    l2 = config["retain_l2_weight"] * last["retain_l2"]
    assert 1 / 100 < l2 / contrastive < 100, (contrastive, l2)


# --- (b) a large shared direction ----------------------------------------------------------
@pytest.fixture(scope="module")
def shifted_runs(tmp_path_factory, tokenizer):
    """The same tiny Llama with a shared direction 8 times the states' norm, trained with the
    centered and with the paper's raw representation (both with the relative retain l2, as
    when the tests were written; otherwise the defaults)."""
    runs = {}
    for representation in ("centered", "raw"):
        model = tiny_model("llama", len(tokenizer))
        with shared_direction(model, tokenizer, 8.0):
            runs[representation] = train_tiny(
                tmp_path_factory.mktemp(representation),
                tokenizer,
                model,
                "run",
                epochs=2,
                representation=representation,
                **RELATIVE,
            )
    return runs


def _gap(entry: dict) -> float:
    return entry["same_concept_cos"] - entry["diff_concept_cos"]


def test_shared_direction_no_longer_stops_two_concepts_separating(shifted_runs):
    """The raw cosine (the only one before the fix) keeps every representation parallel (same-
    and different-concept cosines both 1.00) and the contrastive loss at chance."""
    log = loss_log(shifted_runs["centered"])
    assert log[-1]["contrastive"] < 0.75 * log[0]["contrastive"]
    assert _gap(log[-1]) > 0.5
    raw = loss_log(shifted_runs["raw"])
    assert abs(_gap(raw[-1])) < 0.05  # the construction does defeat the raw representation
    chance = math.log(2 * 8 - 1)
    assert raw[-1]["contrastive"] == pytest.approx(chance, rel=0.02)


def test_centered_run_stores_its_center_and_the_readout_uses_it(shifted_runs, tokenizer):
    from seer.core.run import read_run

    run = read_run(shifted_runs["centered"])
    assert run.config["representation"] == "centered"
    assert run.center is not None and run.center.shape == (1, 32)
    assert read_run(shifted_runs["raw"]).center is None  # a raw run: no center, as before
    accuracy = {
        name: json.loads((path / "seer.json").read_text())["calibration"]["calibration_accuracy"]
        for name, path in shifted_runs.items()
    }
    assert accuracy["centered"] >= accuracy["raw"]


def test_health_check_fires_on_the_stuck_run_and_not_on_the_healthy_one(shifted_runs):
    warnings = {
        name: json.loads((path / "seer.json").read_text())["health"]
        for name, path in shifted_runs.items()
    }
    assert warnings["centered"] == []
    assert any("chance value" in w and "--representation centered" in w for w in warnings["raw"])


def test_evaluate_reads_a_centered_run_as_training_did(
    shifted_runs, tokenizer, monkeypatch, tmp_path
):
    from seer.evaluation.evaluate import evaluate

    monkeypatch.setenv("SEER_CACHE", str(tmp_path))  # the generated general text
    model = tiny_model("llama", len(tokenizer))
    with shared_direction(model, tokenizer, 8.0):
        metrics = evaluate(
            shifted_runs["centered"],
            sweep=False,
            figures=False,
            n_generations=0,
            progress=False,
            model=model,
            tokenizer=tokenizer,
        )
    # the Explainer's readout (through the run's stored center) gives the same test accuracy
    from seer.core.run import read_run
    from seer.inference.explainer import Explainer

    fresh = tiny_model("llama", len(tokenizer))
    with shared_direction(fresh, tokenizer, 8.0):
        explainer = Explainer.from_run(shifted_runs["centered"], model=fresh, tokenizer=tokenizer)
        test = read_run(shifted_runs["centered"]).split("test")
        probs = explainer.score_many([r["prompt"] for r in test], [r.get("response") for r in test])
    read = [explainer.concepts[int(k)] for k in probs.argmax(axis=1)]
    accuracy = sum(a == r["concept"] for a, r in zip(read, test, strict=True)) / len(test)
    assert metrics["seer"]["prototype_accuracy"] == pytest.approx(accuracy)
    assert metrics["seer"]["intra_cos"] - metrics["seer"]["inter_cos"] > 0.3
    # the base model is read around its own mean: not every cosine near 1
    assert metrics["base"]["inter_cos"] < 0.9


# --- the health check on its own -------------------------------------------------------------
def _feed(
    callback, logs_by_step: dict[int, dict], max_steps: int = 10, warmup_steps: int = 0
) -> list[str]:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    state = TrainerState(max_steps=max_steps)
    args = TrainingArguments(output_dir="unused", warmup_steps=warmup_steps)
    for step, logs in sorted(logs_by_step.items()):
        state.global_step = step
        callback.on_log(args, state, TrainerControl(), logs=logs)
    return callback.warnings


def test_chance_loss_is_the_log_of_the_candidates():
    from seer.training.health import chance_loss

    assert chance_loss("supcon", 8) == pytest.approx(math.log(15))
    assert chance_loss("paper", 8) == pytest.approx(math.log(8))


def test_health_warns_once_when_the_contrastive_loss_sits_at_chance():
    from seer.training.health import HealthCallback

    chance = math.log(15)
    stuck = {
        s: {"contrastive": chance - 0.01, "same_concept_cos": 0.99, "diff_concept_cos": 0.99}
        for s in range(1, 11)
    }
    warnings = _feed(HealthCallback(chance, check_at=0.3), stuck)
    assert len(warnings) == 1
    assert "after 3 of 10 steps" in warnings[0] and f"{chance:.3f}" in warnings[0]
    assert "--representation centered" in warnings[0] and "0.990" in warnings[0]
    falling = {s: {"contrastive": chance * (1 - 0.05 * s)} for s in range(1, 11)}
    assert _feed(HealthCallback(chance, check_at=0.3), falling) == []
    # A centered run starts far above chance and falls: healthy; one that stays put is not.
    centered = {s: {"contrastive": 7.0 - 0.3 * s} for s in range(1, 11)}
    assert _feed(HealthCallback(chance, check_at=0.3), centered) == []
    flat = {s: {"contrastive": 7.0} for s in range(1, 11)}
    assert (
        "has not fallen from its first value 7.000"
        in _feed(HealthCallback(chance, check_at=0.3), flat)[0]
    )
    # A centered run fallen by less than the tolerance: the message says by how much, not "not
    # below" (it once read "2.238, not below its first value 2.331").
    slow = {1: {"contrastive": 7.0}, **{s: {"contrastive": 6.8} for s in range(2, 11)}}
    (message,) = _feed(HealthCallback(chance, check_at=0.3), slow)
    assert "fallen only 2.9% from its first value 7.000 (less than 5%)" in message
    # A first logged value already below chance (the mean of the first logging interval, which
    # has learned) is not the reference: measured from chance the loss has moved. Both of
    # these MATH-7 runs (--temperature 0.05, seeds 1 and 0) learned (held-out 0.738, 0.631).
    for first, value in ((2.477, 2.360), (2.331, 2.238)):
        learning = {5: {"contrastive": first}, 10: {"contrastive": value}}
        assert _feed(HealthCallback(math.log(15), check_at=0.3), learning, max_steps=31) == []
    # ... but one that comes back within the tolerance of chance is still caught.
    back = {5: {"contrastive": 2.5}, 10: {"contrastive": 2.65}}
    (message,) = _feed(HealthCallback(math.log(15), check_at=0.3), back, max_steps=31)
    assert "still at its chance value" in message
    assert _feed(HealthCallback(chance, check_at=0.0), stuck) == []  # switched off


# Logged contrastive losses (5-step means) of real SmolLM2 runs at the health check's step:
# runs that learned (BeaverTails-6 at --max-per-concept 100, docs/results.md: 0.69-0.71
# held-out) and runs whose contrastive loss did not leave chance (the second
# architecture; MATH-7 with solutions, retain l2 93% of the gradient; the paper objective's
# detoxification run, log 8 candidates; a 64-pair batch, log 127).
LEARNED_AT_CHECK = [2.578, 2.562, 2.556, 2.510]
STUCK_AT_CHECK = [(2.68, 15), (2.653, 15), (2.077, 8), (4.944, 127)]


@pytest.mark.parametrize("value", LEARNED_AT_CHECK)
def test_health_stays_silent_on_runs_that_learned(value):
    """These runs were 4.8-7.3% under chance at step 15 of 45; one warned (mpc100w, seed 1)
    while the check allowed 5%."""
    from seer.training.health import HealthCallback

    logs = {5: {"contrastive": 2.874}, 10: {"contrastive": 2.714}, 15: {"contrastive": value}}
    assert _feed(HealthCallback(math.log(15)), logs, max_steps=45) == []


@pytest.mark.parametrize(("value", "candidates"), STUCK_AT_CHECK)
def test_health_warns_on_runs_that_stayed_at_chance(value, candidates):
    """These stayed within 2.1% of chance (above it or below)."""
    from seer.training.health import HealthCallback

    logs = {5: {"contrastive": value}, 10: {"contrastive": value}, 15: {"contrastive": value}}
    (message,) = _feed(HealthCallback(math.log(candidates)), logs, max_steps=45)
    assert "still at its chance value" in message and "after 15 of 45 steps" in message


def test_health_is_silent_when_a_centered_loss_passes_chance_while_separating():
    """A centered run starts far above chance and may pass through it on the way down: the
    SmolLM2 run `sflr1` (issue 41; held-out 0.700, it learned) logged 6.16 at step 5 and 2.707
    at the check (step 20 of 56), then 2.337 at step 30, with same- and different-concept
    cosines 0.057 / -0.085 there. A collapse at chance (cosines alike) still warns."""
    from seer.training.health import HealthCallback

    chance = math.log(15)
    logs = {5: {"contrastive": 6.16}, 10: {"contrastive": 2.693}, 15: {"contrastive": 2.471}}
    logs[20] = {"contrastive": 2.707, "same_concept_cos": 0.0568, "diff_concept_cos": -0.0851}
    assert _feed(HealthCallback(chance), logs, max_steps=56) == []
    logs[20] = {"contrastive": 2.707, "same_concept_cos": 0.31, "diff_concept_cos": 0.30}
    (message,) = _feed(HealthCallback(chance), logs, max_steps=56)
    assert "still at its chance value" in message


def test_health_counts_its_share_of_the_steps_after_the_warm_up():
    """A warm-up's steps move the model little (its first steps run at a fraction of the
    rate): the check's 30% is of the steps after it. The seed-1 run of `--max-per-concept 100
    --warmup-steps 4` (45 steps; 0.692 held-out) logged 2.578 at step 15, 2.488 at 20."""
    from seer.training.health import HealthCallback, check_step, probe_steps

    assert check_step(45, 0.3) == 14
    assert check_step(45, 0.3, warmup=4) == 4 + 13
    assert probe_steps(45, 0.3, warmup=4) == frozenset({16})
    assert check_step(10, 0.3, warmup=20) == 10  # never past the last step
    assert probe_steps(45, 0.0, warmup=4) == frozenset()
    logs = {5: 2.874, 10: 2.714, 15: 2.578, 20: 2.488}
    logs = {s: {"contrastive": v} for s, v in logs.items()}
    callback = HealthCallback(math.log(15), tolerance=0.05)  # even at the old tolerance
    assert _feed(callback, logs, max_steps=45, warmup_steps=4) == []
    stuck = {s: {"contrastive": 2.70} for s in (5, 10, 15, 20)}
    (message,) = _feed(HealthCallback(math.log(15)), stuck, max_steps=45, warmup_steps=4)
    assert "after 20 of 45 steps" in message  # not at 15: the first log at or past step 17


def test_training_measures_the_gradient_at_the_step_the_check_reads():
    from seer.training.build import _probe_steps
    from seer.training.config import TrainConfig

    config = TrainConfig(data="unused", warmup_steps=4, batch_size=8)
    assert _probe_steps(config, 8 * 45) == frozenset({16})
    assert _probe_steps(TrainConfig(data="unused", batch_size=8), 8 * 45) == frozenset({13})


def test_health_warns_when_one_part_carries_the_gradient():
    from seer.training.health import HealthCallback, gradient_shares

    w = torch.ones(3, requires_grad=True)
    shares = gradient_shares({"contrastive": w.sum(), "retain_l2": 99 * w.sum()}, [w])
    assert shares == pytest.approx({"contrastive": 0.01, "retain_l2": 0.99})
    logs = {s: {"contrastive": 2.0 - 0.1 * s} for s in range(1, 11)}
    logs[4] = {"contrastive": 1.6, **{f"grad_share_{k}": v for k, v in shares.items()}}
    warnings = _feed(HealthCallback(math.log(15)), logs)
    assert len(warnings) == 1 and "retain_l2 carries 99.0% of the gradient" in warnings[0]
    assert "--retain-l2-weight" in warnings[0]
    balanced = {s: {"contrastive": 2.0 - 0.1 * s} for s in range(1, 11)}
    balanced[4] = {"contrastive": 1.6, "grad_share_contrastive": 0.6, "grad_share_kl": 0.4}
    assert _feed(HealthCallback(math.log(15)), balanced) == []


# Gradient shares at the check of real SmolLM2 runs (the logs' `grad_share_` fields): the
# largest retain l2 share among the study's runs that learned, BeaverTails-6 at block 27,
# seed 2 (its logged contrastive losses at steps 5-20 of 56, 13% under chance at the check;
# at most 0.947 in the study's other runs), and the paper objective's detoxification run,
# whose contrastive loss stayed at chance (2.077 at step 15 of 37, retain l2 99.3%;
# docs/results.md, "Detoxification under both counting rules"; only those two figures are on
# record: its losses before the check are filled in at the same value, its other shares to
# sum to 1).
LEARNED_SHARES = {"contrastive": 0.0378, "retain_l2": 0.9567, "kl": 0.0055}
STUCK_SHARES = {"contrastive": 0.005, "retain_l2": 0.993, "kl": 0.002}


def test_health_stays_silent_on_the_gradient_shares_of_a_run_that_learned():
    from seer.training.health import HealthCallback

    logs = {5: {"contrastive": 2.851}, 10: {"contrastive": 2.627}, 15: {"contrastive": 2.531}}
    logs[20] = {"contrastive": 2.356, **{f"grad_share_{k}": v for k, v in LEARNED_SHARES.items()}}
    assert _feed(HealthCallback(math.log(15)), logs, max_steps=56) == []
    stuck = {5: {"contrastive": 2.077}, 10: {"contrastive": 2.077}}
    stuck[15] = {"contrastive": 2.077, **{f"grad_share_{k}": v for k, v in STUCK_SHARES.items()}}
    warnings = _feed(HealthCallback(math.log(8)), stuck, max_steps=37)
    assert len(warnings) == 2 and "retain_l2 carries 99.3% of the gradient" in warnings[1]
    assert "after 15 of 37 steps" in warnings[1]


# --- base models without a chat template -------------------------------------------------------
@pytest.fixture
def base_tokenizer(tokenizer):
    import copy

    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    return base


@pytest.mark.parametrize("bos", [None, "<|im_start|>"])
def test_read_positions_of_a_base_model(base_tokenizer, bos):
    """Without a chat template a text is ``bos + prompt + "\\n" + response``: ``user_end`` is
    the prompt's last token in every mode, ``last`` the response's last token."""
    from seer.core.formatting import encode, prompt_ids

    base_tokenizer.bos_token = bos
    ids = lambda text: base_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, response = "how far away is the moon", "about 384,000 km"
    head = ([base_tokenizer.convert_tokens_to_ids(bos)] if bos else []) + ids(prompt)
    assert prompt_ids(base_tokenizer, prompt) == head  # generation continues the bare prompt
    full = encode(base_tokenizer, prompt, response, "full")
    assert full.input_ids[: len(head)] == head and full.user_end == len(head) - 1
    assert base_tokenizer.decode(full.input_ids[full.user_end + 1 :]) == "\n" + response
    assert full.input_ids[full.last] == ids(response)[-1]
    only = encode(base_tokenizer, prompt, response, "prompt")
    assert only.input_ids == head and only.user_end == only.last == len(head) - 1
    reply = encode(base_tokenizer, prompt, response, "response")
    assert base_tokenizer.decode(reply.input_ids) == (bos or "") + response
    # A prompt ending in whitespace may merge with the newline: user_end stays inside the
    # common prefix, on the last token that is wholly the prompt's.
    spaced_head = prompt_ids(base_tokenizer, prompt + " ")
    spaced = encode(base_tokenizer, prompt + " ", response, "full")
    assert spaced.input_ids[: spaced.user_end + 1] == spaced_head[: spaced.user_end + 1]
    assert spaced.user_end <= len(spaced_head) - 1


def test_a_base_model_trains_and_explains(tmp_path, base_tokenizer):
    from seer.inference.explainer import Explainer

    model = tiny_model("llama", len(base_tokenizer))
    run = train_tiny(
        tmp_path,
        base_tokenizer,
        model,
        "run",
        positions=("last", "user_end"),
        representation="centered",
    )
    explainer = Explainer.from_run(
        run, model=tiny_model("llama", len(base_tokenizer)), tokenizer=base_tokenizer
    )
    assert explainer.center is not None and explainer.center.shape == (2, 32)
    result = explainer.score("how far away is the moon", "very far")
    assert result.ranking[0]["concept"] in ("food", "space")
    assert explainer.generate("tell me about soup", max_new_tokens=3).ranking
