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
