"""Hostile command lines (issue 40): values that used to print a Python traceback or succeed
with a wrong result now either work or give one `seer: error:` line (exit 2). Every case runs
through the real `seer` entry point on a tiny random Llama saved as a model folder; the last
test throws generated values at every option `seer train --help` declares."""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import (
    BENIGN,
    HARMFUL,
    one_error_line,
    save_tiny_model,
    train_argv_of,
    write_concepts,
    write_retain,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seer import cli
from seer.core.tables import read_jsonl


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny random Llama folder (context 256 tokens) and small concept and retain files."""
    folder = tmp_path_factory.mktemp("fuzz")
    save_tiny_model(folder / "model")
    write_concepts(folder / "concepts.jsonl")
    write_retain(folder / "retain.jsonl")
    return folder


@pytest.fixture(scope="module")
def trained(root) -> Path:
    """One tiny run trained through `seer train`; tests copy it to change it."""
    assert run_seer(train_argv(root, root / "run"))[0] == 0
    return root / "run"


def train_argv(root: Path, output: Path, data: Path | None = None) -> list[str]:
    data = data or root / "concepts.jsonl"
    return train_argv_of(root / "model", data, root / "retain.jsonl", output)


def run_seer(argv: list[str]) -> tuple[int, str]:
    """``seer ARGV`` in this process: (exit status, stderr); argparse's exits are statuses."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exc:
            status = int(exc.code or 0)
    return status, err.getvalue()


def refused(argv: list[str], *fragments: str) -> str:
    status, err = run_seer(argv)
    assert status == 2, err
    return one_error_line(err, *fragments)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- data that used to be misread -------------------------------------------------------------
def test_every_row_duplicated_keeps_test_rows_out_of_training(root, tmp_path, caplog):
    rows = read_jsonl(root / "concepts.jsonl")
    data = _jsonl(tmp_path / "twice.jsonl", rows + rows)
    assert run_seer(train_argv(root, tmp_path / "run", data))[0] == 0
    split = {name: read_jsonl(tmp_path / "run" / "split" / f"{name}.jsonl") for name in
             ("train", "calibration", "test")}  # fmt: skip
    key = lambda r: (r.get("prompt"), r.get("response"), r["concept"])  # noqa: E731
    seen = {key(r) for r in split["train"] + split["calibration"]}
    assert not [r for r in split["test"] if key(r) in seen]
    assert sum(map(len, split.values())) == len(rows)
    assert f"dropped {len(rows)} of {2 * len(rows)} rows that repeat an earlier row" in caplog.text


@pytest.mark.parametrize("cell", [["how", "to", "cook"], {"text": "how to cook"}])
def test_a_list_or_object_cell_is_refused(root, tmp_path, cell):
    rows = read_jsonl(root / "concepts.jsonl")
    rows[3]["prompt"] = cell
    data = _jsonl(tmp_path / "cells.jsonl", rows)
    refused(train_argv(root, tmp_path / "run", data), "row 4", "'prompt'", "not text")
    assert not (tmp_path / "run").exists()


def test_a_duplicate_csv_header_is_refused(root, tmp_path):
    data = tmp_path / "twice.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "concept", "prompt"])
        for row in read_jsonl(root / "concepts.jsonl"):
            writer.writerow([row["prompt"], row["concept"], row["response"]])
    refused(train_argv(root, tmp_path / "run", data), "twice.csv", "['prompt']", "more than once")


def test_jsonl_nested_100000_deep_is_refused(root, tmp_path):
    rows = read_jsonl(root / "concepts.jsonl")
    text = "".join(json.dumps(r) + "\n" for r in rows)
    deep = '{"prompt": "a", "concept": "x", "z": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    data = tmp_path / "deep.jsonl"
    data.write_text(text + deep, encoding="utf-8")
    refused(train_argv(root, tmp_path / "run", data), f"line {len(rows) + 1}", "nested")


def test_excluding_every_prompt_is_refused(root, tmp_path):
    argv = train_argv(root, tmp_path / "run")
    refused([*argv, "--exclude-prompts-from", str(root / "concepts.jsonl")], "every row")


# --- option values ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, fragments",
    [
        (["--seed", "-1"], ["--seed", "2**32"]),
        (["--seed", str(2**70)], ["--seed", "2**32"]),
        (["--temperature", "1e-30"], ["--temperature", "0.001"]),
        (["--contrastive-weight", "inf"], ["--contrastive-weight"]),
        (["--kl-weight", "nan"], ["--kl-weight"]),
        (["--report-to", "bogus"], ["--report-to", "not supported"]),
        (["--layers-path", "model.bogus"], ["--layers-path", "'model.bogus'"]),
    ],
)
def test_bad_train_options_are_refused(root, tmp_path, option, fragments):
    line = refused([*train_argv(root, tmp_path / "run"), *option], *fragments)
    assert "--learning-rate" not in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_report_to_a_tracker_not_installed_is_refused(root, tmp_path):
    refused([*train_argv(root, tmp_path / "run"), "--report-to", "wandb"], "pip install wandb")


def test_a_diverging_run_promises_no_checkpoint_it_lacks(root, tmp_path):
    """A learning rate that makes the loss non-finite stops training, saying no checkpoint
    was saved (none was: --checkpoint-every 50 on a 2-step run)."""
    argv = [*train_argv(root, tmp_path / "run"), "--learning-rate", "1e30", "--epochs", "3"]
    line = refused(argv, "loss is", "no checkpoint was saved")
    assert "is kept" not in line


def test_explain_refuses_a_prompt_beyond_the_models_context(trained):
    long = "tell me about the history of rome " * 2000  # ~12,000 tokens; the context is 256
    refused(["explain", str(trained), "--prompt", long], "context is 256", "shorten")
    short = "how far away is the moon"
    argv = ["explain", str(trained), "--prompt", short, "--max-new-tokens", "300"]
    refused(argv, "--max-new-tokens is 300", "context of 256")


# --- detox-eval -------------------------------------------------------------------------------
def _csv(path: Path, header: list[str], rows: list[list]) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def detox_argv(trained, tmp_path):
    """A copy of the tiny run and small BT / XSTest files: (run, argv without --judge-data)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    bt = _csv(tmp_path / "bt.csv", ["prompt"], [[p] for p, _ in HARMFUL[:3]])
    xst = _csv(tmp_path / "xst.csv", ["prompt"], [[f"how do I kill process {i}"] for i in range(3)])
    argv = ["detox-eval", str(run), "--harmful", bt, "--xstest", xst, "--max-new-tokens", "2"]
    return run, argv


def test_detox_judge_data_of_maybe_or_one_class_is_refused(detox_argv, tmp_path):
    run, argv = detox_argv
    header = ["prompt", "response", "is_safe"]
    maybe = [[p, r, "maybe"] for p, r in HARMFUL[5:8]]
    judge = _csv(tmp_path / "maybe.csv", header, [[p, r, True] for p, r in BENIGN] + maybe)
    refused([*argv, "--judge-data", judge], "maybe.csv", "is_safe", "'maybe'")
    assert not (run / "detox").exists()
    one = _csv(tmp_path / "safe.csv", header, [[p, r, True] for p, r in BENIGN])
    refused([*argv, "--judge-data", one], "safe.csv", "both safe and unsafe")


def test_detox_skip_base_names_a_corrupt_base_json(detox_argv, tmp_path):
    run, argv = detox_argv
    rows = [[p, r, False] for p, r in HARMFUL] + [[p, r, True] for p, r in BENIGN]
    judge = _csv(tmp_path / "judge.csv", ["prompt", "response", "is_safe"], rows)
    (run / "detox").mkdir()
    (run / "detox" / "base.json").write_text('{"settings": {"max_new')
    line = refused([*argv, "--judge-data", judge, "--skip-base"], "base.json", "corrupt")
    assert "without --skip-base" in line


# --- the fuzz test: generated values for every `seer train` option -----------------------------
# Paths are fixed (the files above); --allocator changes this process's malloc for good.
FIXED = {"model", "data", "retain_data", "output", "exclude_prompts_from", "allocator"}
HOSTILE = ["0", "-1", "1", "2", "0.5", "nan", "inf", "-inf", "1e-30", "1e30", "", " ", "x",
           "\u00e9", str(2**70), "-5", "3", "none"]  # fmt: skip
# Options where a large valid value only costs time or memory (the run is cut to 2 steps):
# they draw small values and invalid ones, never a huge valid one.
BOUNDED = {"epochs", "lora_r", "dataloader_num_workers", "pad_to_multiple_of", "batch_size",
           "micro_batch_size", "max_length", "max_per_concept", "lora_alpha"}  # fmt: skip
SMALL = ["0", "-1", "1", "2", "3", "0.5", "nan", "inf", "-inf", "1e-30", "", "x", "-5"]


def _train_options() -> list[argparse.Action]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    actions = [a for a in sub.choices["train"]._actions if a.option_strings]
    return [a for a in actions if a.dest not in FIXED | {"help", "debug", "quiet"}]


OPTIONS = _train_options()


@st.composite
def option_values(draw) -> list[str]:
    """One option of `seer train --help` with generated values (its flag form for booleans)."""
    action = draw(st.sampled_from(OPTIONS))
    if isinstance(action, argparse.BooleanOptionalAction):
        return [draw(st.sampled_from(action.option_strings))]
    pool = list(SMALL if action.dest in BOUNDED else HOSTILE)
    if action.choices:
        pool = [str(c) for c in action.choices] + ["bogus", ""]
    value = st.sampled_from(pool)
    if isinstance(action.nargs, int):
        return [action.option_strings[0], *draw(st.lists(value, min_size=1, max_size=4))]
    if action.nargs == "+":
        return [action.option_strings[0], *draw(st.lists(value, min_size=0, max_size=3))]
    return [action.option_strings[0], draw(value)]


@settings(
    max_examples=int(os.environ.get("SEER_FUZZ_EXAMPLES", "25")),
    deadline=timedelta(seconds=60),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(picks=st.lists(option_values(), min_size=1, max_size=4))
@example(picks=[["--seed", "-1"]])  # the cases issue 40 found, always tried first
@example(picks=[["--seed", str(2**70)]])
@example(picks=[["--temperature", "1e-30"]])
@example(picks=[["--contrastive-weight", "inf"]])
@example(picks=[["--layers-path", "model.bogus"]])
@example(picks=[["--report-to", "wandb"]])
def test_generated_train_options_run_or_give_one_line(root, picks):
    """Whatever the values: exit 0 with a run folder, or exit 2 with one `seer: error:` line
    and no folder left; never a Python traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "run"
        argv = [*train_argv(root, output), "--max-per-concept", "4", "--checkpoint-every", "1000"]
        argv += [word for pick in picks for word in pick]
        status, err = run_seer(argv)
        assert "Traceback" not in err, (argv, err)
        assert status in (0, 2), (argv, err)
        if status == 0:
            assert (output / "seer.json").is_file(), (argv, err)
        else:
            lines = [line for line in err.strip().splitlines() if line.startswith("seer: ")]
            assert len(lines) == 1 and lines[0].startswith("seer: error: "), (argv, err)
            assert not output.exists(), (argv, err)
        shutil.rmtree(output.with_name("run.partial"), ignore_errors=True)
