import os
import random
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import tiny_llama
from peft import PeftModel

from seer.core.run import load_trained, read_run
from seer.errors import SeerError
from seer.training.config import TrainConfig
from seer.training.train import train
from seer.training.trainer import build_pairs


def config(tmp_path, concept_file, retain_file, **kw):
    values = dict(
        model="tiny",
        data=str(concept_file),
        retain_data=str(retain_file),
        output=str(tmp_path / "run"),
        epochs=2,
        batch_size=4,
        layer=1,
        test_fraction=0.34,
        logging_steps=1,
    )
    values.update(kw)
    return TrainConfig(**values)


def test_build_pairs_schedule():
    concepts = ["a"] * 6 + ["b"] * 6 + ["c"] * 6
    pairs = build_pairs(
        concepts,
        [True] * 18,
        epochs=2,
        batch_size=6,
        balanced=True,
        format_probs=(0.75, 0.125, 0.125),
        n_retain=5,
        seed=0,
    )
    assert len(pairs) == 36
    assert Counter(p["view1"] for p in pairs) == {i: 2 for i in range(18)}  # once per epoch
    for p in pairs:
        assert p["view1"] != p["view2"] and concepts[p["view1"]] == concepts[p["view2"]]
    for start in range(0, 36, 6):  # balanced: every batch holds 2 of each concept
        assert Counter(concepts[p["view1"]] for p in pairs[start : start + 6]) == {
            "a": 2,
            "b": 2,
            "c": 2,
        }
    assert pairs == build_pairs(
        concepts,
        [True] * 18,
        epochs=2,
        batch_size=6,
        balanced=True,
        format_probs=(0.75, 0.125, 0.125),
        n_retain=5,
        seed=0,
    )
    prompt_only = build_pairs(
        concepts,
        [False] * 18,
        epochs=1,
        batch_size=6,
        balanced=False,
        format_probs=(0.75, 0.125, 0.125),
        n_retain=0,
        seed=0,
    )
    assert {p["mode1"] for p in prompt_only} == {"prompt"} and {
        p["retain"] for p in prompt_only
    } == {-1}


def test_grouping_by_length_keeps_the_schedule_and_each_batchs_concept_mix():
    from seer.core.memory import padding_share
    from seer.training.pairs import group_by_length

    concepts = [c for c in "abcd" for _ in range(30)]
    kw = dict(epochs=2, balanced=True, format_probs=(0.75, 0.125, 0.125), n_retain=50, seed=3)
    pairs = build_pairs(concepts, [True] * 120, batch_size=8, **kw)
    rng = random.Random(0)
    text = [rng.randint(10, 400) for _ in range(120)]
    retain = [rng.randint(10, 400) for _ in range(50)]
    lengths = [(text[p["view1"]], text[p["view2"]], retain[p["retain"]]) for p in pairs]
    grouped = group_by_length(pairs, lengths, batch_size=8, window=5, seed=3)
    assert grouped == group_by_length(pairs, lengths, batch_size=8, window=5, seed=3)  # seeded

    def drop_retain(ps):
        return sorted(tuple(sorted((k, v) for k, v in p.items() if k != "retain")) for p in ps)

    assert drop_retain(grouped) == drop_retain(pairs)  # the same pairs and positives
    for start in range(0, len(pairs), 40):  # each run of 5 batches keeps its retain texts
        window = slice(start, start + 40)
        assert Counter(p["retain"] for p in grouped[window]) == Counter(
            p["retain"] for p in pairs[window]
        )
        for b in range(start, start + 40, 8):  # 2 of each concept per batch, give or take 1
            counts = Counter(concepts[p["view1"]] for p in grouped[b : b + 8])
            assert set(counts) == set("abcd") and max(counts.values()) <= 3

    def real(ps):
        parts = [
            [[text[p["view1"]] for p in ps[b : b + 8]] for b in range(0, len(ps), 8)],
            [[retain[p["retain"]] for p in ps[b : b + 8]] for b in range(0, len(ps), 8)],
        ]
        return [padding_share(part) for part in parts]

    before, after = real(pairs), real(grouped)
    assert after[0] > before[0] + 0.15 and after[1] > before[1] + 0.15  # view 1, retain
    assert [p["view1"] for p in grouped] != [p["view1"] for p in pairs]


def test_build_trainer_deals_the_schedule_by_length_when_asked(
    tmp_path, tokenizer, concept_file, retain_file
):
    from seer.core.data import load_concepts
    from seer.training.build import schedule
    from seer.training.pairs import LENGTH_WINDOW, group_by_length

    drawn = _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file)
    grouped = _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file, group_by_length=True)
    data = drawn.train_dataset
    rows = load_concepts(str(concept_file), "concept", "prompt", "response")
    cfg = config(tmp_path, concept_file, retain_file)
    assert data.pairs == schedule(cfg, rows, len(data.retain))  # as drawn by default
    expected = group_by_length(
        data.pairs, data.lengths(), batch_size=cfg.batch_size, window=LENGTH_WINDOW, seed=0
    )
    assert grouped.train_dataset.pairs == expected != data.pairs


@pytest.mark.parametrize("objective", ["supcon", "paper"])
def test_lora_changes_and_base_stays(tmp_path, tokenizer, concept_file, retain_file, objective):
    model = tiny_llama(len(tokenizer))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    out = train(
        config(tmp_path, concept_file, retain_file, objective=objective),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    run, peft_model, _ = load_trained(out, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    lora = {k: v for k, v in peft_model.named_parameters() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # lora_B starts at zero
    # adapters only on blocks 0..layer
    assert all(".layers.0." in k or ".layers.1." in k for k in lora)
    for name, tensor in peft_model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        torch.testing.assert_close(tensor, base_state[key], rtol=0, atol=0)
    assert run.layer == 1 and run.concepts == ["cooking", "space", "sports"]
    assert run.prototypes.shape == (3, 32)
    log = (out / "train_log.jsonl").read_text()
    for part in ("contrastive", "retain_l2", "kl", "same_concept_cos", "diff_concept_cos"):
        assert part in log


def test_run_folder_round_trip(tmp_path, tokenizer, concept_file, retain_file):
    out = train(
        config(tmp_path, concept_file, retain_file, epochs=1),
        model=tiny_llama(len(tokenizer)),
        tokenizer=tokenizer,
        progress=False,
    )
    assert not (tmp_path / "run.partial").exists()
    assert not (out / "checkpoints").exists()
    run = read_run(out)
    assert [len(run.split(s)) for s in ("train", "calibration", "test")] == [9, 3, 6]
    assert {"temperature", "threshold"} <= set(run.calibration)
    # the adapter folder is a plain PEFT adapter
    plain = PeftModel.from_pretrained(tiny_llama(len(tokenizer)), str(out / "adapter"))
    _, ours, _ = load_trained(out, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(plain(input_ids=ids).logits, ours(input_ids=ids).logits)
    with pytest.raises(SeerError, match="fingerprint"):
        load_trained(out, model=tiny_llama(len(tokenizer), seed=1), tokenizer=tokenizer)
    with pytest.raises(SeerError, match="already exists"):
        train(
            config(tmp_path, concept_file, retain_file, epochs=1),
            model=tiny_llama(len(tokenizer)),
            tokenizer=tokenizer,
            progress=False,
        )


def test_same_seed_same_result(tmp_path, tokenizer, concept_file, retain_file):
    protos = []
    for name in ("a", "b"):
        out = train(
            config(tmp_path, concept_file, retain_file, epochs=1, output=str(tmp_path / name)),
            model=tiny_llama(len(tokenizer)),
            tokenizer=tokenizer,
            progress=False,
        )
        protos.append(read_run(out).prototypes)
    torch.testing.assert_close(protos[0], protos[1], rtol=0, atol=0)


def _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file, **kw):
    from seer.core.data import load_concepts
    from seer.training.retain import load_retain
    from seer.training.train import build_trainer

    cfg = config(tmp_path, concept_file, retain_file, lora_dropout=0.0, **kw)
    rows = load_concepts(str(concept_file), "concept", "prompt", "response")
    trainer = build_trainer(
        cfg,
        tiny_llama(len(tokenizer)),
        tokenizer,
        rows,
        load_retain(str(retain_file)),
        output_dir=str(tmp_path / "out"),
        progress=False,
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh LoRA is the identity: make the adapted model differ
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return trainer


def _grads(trainer, batch) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    trainer.training_step(trainer.model, batch)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


CENTERED = {"representation": "centered", "retain_l2_form": "relative"}  # the unit-free forms


@pytest.mark.parametrize(
    ("objective", "forms"), [("supcon", {}), ("paper", {}), ("supcon", CENTERED)]
)
def test_gradient_caching_gives_the_whole_batch_gradients(
    tmp_path, tokenizer, concept_file, retain_file, objective, forms
):
    """Also for the centered representation: every micro-batch is centered on the whole
    contrastive batch's mean state, as the batch done at once is."""
    trainer = _trainer_on_tiny(
        tmp_path, tokenizer, concept_file, retain_file, objective=objective, batch_size=6, **forms
    )
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(6)])
    whole = _grads(trainer, batch)
    metrics_whole = {k: v[-1] for k, v in trainer._metrics.items()}
    for micro in (1, 4):  # equal micro-batches, and a short last one
        trainer.seer_config.micro_batch_size = micro
        cached = _grads(trainer, batch)
        for name, grad in whole.items():
            rel = ((cached[name] - grad).norm() / grad.norm()).item()
            assert rel < 1e-5, (micro, name, rel)
        for key, value in metrics_whole.items():  # the logged loss parts are the batch's
            assert trainer._metrics[key][-1] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert any(g.abs().sum() > 0 for n, g in whole.items() if "lora_A" in n)


def test_memory_plan_turns_checkpointing_on_or_refuses(
    tmp_path, tokenizer, concept_file, retain_file, caplog
):
    trainer = _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file)
    assert not trainer.args.activation_checkpointing  # a tiny model fits in free memory
    from seer.core.memory import GIB, Dims, Shape, estimate_step
    from seer.training.build import plan_memory

    dims = Dims.of(trainer.model, 4, 7)
    kw = dict(layer=1, kl=True, l2=True, cached=False)
    small, big = Shape(4, 20, 20, 20), Shape(4, 40, 40, 40)
    assert estimate_step(dims, small, checkpointing=False, **kw) < estimate_step(
        dims, big, checkpointing=False, **kw
    )
    full = estimate_step(dims, big, checkpointing=False, **kw)
    assert estimate_step(dims, big, checkpointing=True, **kw) < full
    cfg = trainer.seer_config
    ds = trainer.train_dataset
    without = plan_memory(cfg, trainer.model, ds, 1, 4, 7).without_checkpointing
    cfg.memory_budget = 0.95 * without / GIB  # over budget without checkpointing, not with
    plan = plan_memory(cfg, trainer.model, ds, 1, 4, 7)
    assert plan.checkpointing and plan.estimate <= plan.budget < without
    assert f"on for the {plan.checkpointed_steps} of {plan.steps} steps" in plan.describe()
    assert 1 <= plan.checkpointed_steps < plan.steps  # only the steps over budget
    # The decision is per batch: a short batch runs without checkpointing, a long one with it.
    assert plan.needs_checkpointing is not None
    assert not plan.needs_checkpointing([(3, 3, 3)] * 4)
    assert plan.needs_checkpointing([(cfg.max_length,) * 3] * 4)
    cfg.memory_budget = 1e-6
    with pytest.raises(SeerError, match="--micro-batch-size 1 .*--max-length .*--kl-weight 0"):
        plan_memory(cfg, trainer.model, ds, 1, 4, 7)


def test_trainer_fields_reach_training_arguments(tmp_path, tokenizer, concept_file, retain_file):
    trainer = _trainer_on_tiny(
        tmp_path,
        tokenizer,
        concept_file,
        retain_file,
        gradient_accumulation_steps=2,
        lr_scheduler_type="linear",
        warmup_steps=3,
        save_total_limit=2,
        seed=5,
    )
    args = trainer.args
    assert (args.gradient_accumulation_steps, args.warmup_steps, args.save_total_limit) == (2, 3, 2)
    assert args.lr_scheduler_type == "linear" and args.seed == 5 and args.report_to == []
    for bad, match in [
        (dict(bf16=True, fp16=True), "choose one"),
        (dict(lr_scheduler_type="sometimes"), "not a transformers scheduler"),
        (dict(gradient_accumulation_steps=0), "positive"),
        (dict(memory_budget=-1.0), "GiB"),
        (dict(micro_batch_size=0), "positive"),
    ]:
        with pytest.raises(SeerError, match=match):
            config(tmp_path, "c", "r", **bad)


def test_saved_config_reads_back_as_train_config(tmp_path, tokenizer, concept_file, retain_file):
    cfg = config(tmp_path, concept_file, retain_file, epochs=1, micro_batch_size=2)
    out = train(cfg, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, progress=False)
    back = TrainConfig.from_dict(read_run(out).config)
    assert back == cfg
    assert TrainConfig.from_dict({"batch_size": 3, "removed_option": 1}).batch_size == 3


def test_fsdp1_is_refused_at_start_up(tmp_path, tokenizer, concept_file, retain_file, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what an accelerate FSDP config sets
    monkeypatch.setenv("FSDP_VERSION", "1")  # seer shards with FSDP2 (tests/test_sharded.py)
    with pytest.raises(SeerError, match="seer shards with FSDP2"):
        train(
            config(tmp_path, concept_file, retain_file),
            model=tiny_llama(len(tokenizer)),
            tokenizer=tokenizer,
            progress=False,
        )
    assert not (tmp_path / "run.partial").exists()  # refused before anything was written


def test_gradient_checkpointing_gives_the_same_gradients(
    tmp_path, tokenizer, concept_file, retain_file
):
    plain = _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file)
    ds = plain.train_dataset
    batch = plain.data_collator([ds[i] for i in range(4)])
    expected = _grads(plain, batch)
    ckpt = _trainer_on_tiny(
        tmp_path, tokenizer, concept_file, retain_file, gradient_checkpointing=True
    )
    assert ckpt.args.activation_checkpointing and ckpt.model.is_gradient_checkpointing
    for micro in (None, 2):  # alone, and with gradient caching
        ckpt.seer_config.micro_batch_size = micro
        got = _grads(ckpt, batch)
        for name, grad in expected.items():
            assert ((got[name] - grad).norm() / grad.norm()).item() < 1e-5, (micro, name)


def test_train_help_lists_the_memory_and_trainer_options(capsys):
    from seer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--micro-batch-size", "--memory-budget", "--lr-scheduler-type", "--report-to"):
        assert flag in out


def test_out_of_memory_in_a_step_says_the_estimate_and_the_options(
    tmp_path, tokenizer, concept_file, retain_file, monkeypatch
):
    trainer = _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(trainer), "compute_loss", no_memory)
    with pytest.raises(SeerError, match="ran out of memory.*estimated peak.*--micro-batch-size"):
        trainer.training_step(trainer.model, batch)


def test_lora_initialisation_follows_the_seed(tmp_path, tokenizer, concept_file, retain_file):
    """Two trainers built in one process with the same seed start from the same adapter (the
    LoRA A matrices are random): the second one used to differ, the global RNG having moved."""
    from seer.core.data import load_concepts
    from seer.training.retain import load_retain
    from seer.training.train import build_trainer

    rows = load_concepts(str(concept_file), "concept", "prompt", "response")

    def lora_a(sub: str) -> dict[str, torch.Tensor]:
        cfg = config(tmp_path / sub, concept_file, retain_file)
        model = tiny_llama(len(tokenizer))
        torch.rand(len(sub))  # whatever ran before (loading, another run) moved the global RNG
        trainer = build_trainer(
            cfg,
            model,
            tokenizer,
            rows,
            load_retain(str(retain_file)),
            output_dir=str(tmp_path / sub / "out"),
            progress=False,
        )
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}

    first, second = lora_a("a"), lora_a("bb")
    assert first and first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)


_RETAINED = """
import ctypes, sys
from seer.core.memory import release_freed_memory
applied = release_freed_memory() if sys.argv[1] == "release" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
big = libc.malloc(8 << 20); ctypes.memset(big, 1, 8 << 20); libc.free(big)  # a freed activation
base = rss()
blocks = [libc.malloc(1 << 20) for _ in range(200)]  # the next step's activations, 1 MiB each
for b in blocks: ctypes.memset(b, 1, 1 << 20)
pin = libc.malloc(1 << 20); ctypes.memset(pin, 1, 1 << 20)  # one kept above them
for b in blocks: libc.free(b)
print(applied, (rss() - base) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_release_freed_memory_gives_freed_blocks_back_to_the_os():
    """By glibc's own policy a freed large block raises the mmap threshold, so the next
    step's blocks come from the heap and stay resident once freed (200 MiB here); with
    ``--allocator release`` they are unmapped when freed. A
    MALLOC_MMAP_THRESHOLD_ in the environment is left as the user set it."""

    def retained(mode: str, **env: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _RETAINED, mode],
            capture_output=True, text=True, check=True, env={**os.environ, **env},
        ).stdout.split()  # fmt: skip
        return out[0], int(out[1])

    applied, kept = retained("release")
    assert applied == "True" and kept < 20, kept
    assert retained("system")[1] > 150  # what the release policy saves
    assert retained("release", MALLOC_MMAP_THRESHOLD_="131072")[0] == "False"


def test_checkpointing_is_switched_step_by_step(tmp_path, tokenizer, concept_file, retain_file):
    """With the plan checkpointing only the steps over budget, the trainer switches the
    blocks' checkpointing flag before each step from that batch's text lengths, and the
    gradients do not depend on it."""
    from seer.core.memory import set_checkpointing

    trainer = _trainer_on_tiny(tmp_path, tokenizer, concept_file, retain_file)
    model = trainer.model
    model.enable_input_require_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def flags() -> set[bool]:
        return {
            m.gradient_checkpointing
            for m in model.modules()
            if hasattr(m, "_gradient_checkpointing_func")
        }

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    seen = []
    trainer.checkpoint_when = lambda lengths: seen.append(lengths) or False
    plain = _grads(trainer, batch)
    assert flags() == {False}
    assert seen and len(seen[0]) == 4 and all(len(row) == 3 for row in seen[0])
    assert seen[0][0][0] == int(batch["view1"]["attention_mask"][0].sum())
    trainer.checkpoint_when = lambda lengths: True
    checkpointed = _grads(trainer, batch)
    assert flags() == {True}
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)
    set_checkpointing(model, False)
    assert flags() == {False}


def test_bf16_runs_the_step_under_autocast(tmp_path, tokenizer, concept_file, retain_file):
    """``--bf16`` reaches the step: its passes run on the unwrapped model, which accelerate's
    forward patch never sees, so the trainer opens the autocast context itself (before, a
    bf16 run's losses were bit for bit the float32 run's)."""
    plain = _trainer_on_tiny(tmp_path / "fp32", tokenizer, concept_file, retain_file)
    mixed = _trainer_on_tiny(tmp_path / "bf16", tokenizer, concept_file, retain_file, bf16=True)
    with mixed.compute_loss_context_manager():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with plain.compute_loss_context_manager():
        assert not torch.is_autocast_enabled("cpu")
    batch = plain.data_collator([plain.train_dataset[i] for i in range(4)])
    g32, g16 = _grads(plain, batch), _grads(mixed, batch)
    assert g32.keys() == g16.keys()
    assert any(not torch.equal(g32[n], g16[n]) for n in g32)
    for name in g32:  # bfloat16 keeps about 3 significant digits: close, as a whole
        error = (g16[name] - g32[name]).norm() / g32[name].norm().clamp_min(1e-12)
        assert error < 0.1, (name, float(error))
