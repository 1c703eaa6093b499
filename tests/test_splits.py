"""The three-way split and the calibration that is fitted on its calibration part only."""

import json
from collections import Counter

import pytest
from conftest import tiny_llama

from seer.core.data import load_concepts
from seer.core.run import load_trained, read_run
from seer.core.splits import split_examples, split_three
from seer.errors import SeerError
from seer.readout import fit_calibration
from seer.training.config import TrainConfig
from seer.training.train import train


def _key(row):
    return (row["prompt"], row["response"], row["concept"])


def test_split_three_is_disjoint_stratified_and_keeps_the_two_way_test_rows(concept_file):
    examples = load_concepts(str(concept_file), "concept", "prompt", "response")
    train_rows, cal, test = split_three(examples, 0.34, 0.2, seed=3)
    assert split_three(examples, 0.34, 0.2, seed=3) == (train_rows, cal, test)
    assert test == split_examples(examples, 0.34, seed=3)[1]
    keys = [set(map(_key, part)) for part in (train_rows, cal, test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert sum(map(len, keys)) == len(examples)
    for part, n in ((train_rows, 3), (cal, 1), (test, 2)):  # 6 per concept
        assert set(Counter(r["concept"] for r in part).values()) == {n}


def test_split_three_refuses_too_small_concepts_and_bad_fractions(concept_file):
    examples = load_concepts(str(concept_file), "concept", "prompt", "response")
    with pytest.raises(SeerError, match="keep 2 to train on"):
        split_three(examples, 0.34, 0.5, seed=0)
    with pytest.raises(SeerError, match="sum below 1"):
        split_three(examples, 0.5, 0.5, seed=0)
    with pytest.raises(SeerError, match="--calibration-fraction"):
        TrainConfig(calibration_fraction=0.0)


def _train(tmp_path, tokenizer, data, retain_file, name):
    config = TrainConfig(
        model="tiny",
        data=str(data),
        retain_data=str(retain_file),
        output=str(tmp_path / name),
        epochs=1,
        batch_size=4,
        layer=1,
        test_fraction=0.34,
    )
    return train(config, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, progress=False)


def test_no_calibration_value_is_computed_from_test_rows(
    tmp_path, tokenizer, concept_file, retain_file
):
    """Rewriting every test row's text leaves the stored calibration unchanged, and the
    stored values are exactly those fitted on the calibration split."""
    first = read_run(_train(tmp_path, tokenizer, concept_file, retain_file, "a"))
    test_keys = {_key(r) for r in first.split("test")}
    rows = [json.loads(line) for line in concept_file.read_text().splitlines()]
    for row in rows:
        if _key({"response": None, **row}) in test_keys:
            row["prompt"] = row["prompt"] + " zzz unrelated words zzz"
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = read_run(_train(tmp_path, tokenizer, changed, retain_file, "b"))
    assert second.split("test") != first.split("test")
    assert second.split("calibration") == first.split("calibration")
    assert second.calibration == first.calibration
    assert first.calibration["fitted_on"] == "calibration"
    assert first.calibration["n_rows"] == len(first.split("calibration")) == 3

    run, model, tok = load_trained(
        first.path, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer
    )
    refit = fit_calibration(
        model, tok, run.split("calibration"), run.concepts, run.prototypes.numpy(),
        layer=run.layer, positions=run.positions, max_length=512, layers_path=None,
    )  # fmt: skip
    assert refit == pytest.approx(first.calibration)
    on_test = fit_calibration(
        model, tok, run.split("test"), run.concepts, run.prototypes.numpy(),
        layer=run.layer, positions=run.positions, max_length=512, layers_path=None,
    )  # fmt: skip
    assert on_test["threshold"] != pytest.approx(first.calibration["threshold"])
