"""Faults lose nothing already done: a killed or interrupted run resumes to the same result
as an uninterrupted one; a NaN loss stops with the step and the loss part named."""

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, write_concepts, write_retain
from transformers import TrainerControl, TrainerState

from seer.core.run import last_checkpoint, partial_dir, read_run
from seer.errors import SeerError
from seer.training import trainer as seer_trainer
from seer.training.config import TrainConfig
from seer.training.signals import StopOnSignal
from seer.training.train import train

STEPS = 9  # 9 training examples (18 - 6 test - 3 calibration) x 4 epochs / batch 4
TESTS = Path(__file__).parent

SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
from conftest import make_tokenizer, tiny_llama
from seer.training.config import TrainConfig
from seer.training.train import train
from seer.training.trainer import SeerTrainer

step = SeerTrainer.training_step
def slow_step(self, *args, **kwargs):  # slow enough to be caught mid-run; results unchanged
    out = step(self, *args, **kwargs)
    time.sleep(0.4)
    return out
SeerTrainer.training_step = slow_step

tokenizer = make_tokenizer()
try:
    train(TrainConfig(**json.loads(sys.argv[1])), model=tiny_llama(len(tokenizer)),
          tokenizer=tokenizer, progress=False)
except KeyboardInterrupt as exc:
    print("interrupted:", exc, flush=True)
    sys.exit(130)
"""


def settings(folder: Path, name: str, **kw) -> dict:
    values = dict(
        model="tiny",
        data=str(write_concepts(folder / "concepts.jsonl")),
        retain_data=str(write_retain(folder / "retain.jsonl")),
        output=str(folder / name),
        epochs=4,
        batch_size=4,
        layer=1,
        test_fraction=0.34,
        logging_steps=1,
        checkpoint_every=2,
    )
    values.update(kw)
    return values


def run_train(tokenizer, **values) -> Path:
    return train(
        TrainConfig(**values), model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, progress=False
    )


def step_logs(out: Path) -> dict[int, dict]:
    """Per-step loss parts from the training log (timings dropped)."""
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {e["step"]: {k: v for k, v in e.items() if k != "step"} for e in logs if "loss" in e}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("reference")
    return run_train(tokenizer, **settings(folder, "run"))


def assert_same_run(out: Path, ref: Path, first_step: int = 1) -> None:
    """Same prototypes, calibration and per-step losses. Exact: the pair schedule is fixed,
    the sampler sequential, and the Trainer restores its RNG state from the checkpoint."""
    a, b = read_run(out), read_run(ref)
    assert a.meta["train"]["steps"] == b.meta["train"]["steps"] == STEPS
    torch.testing.assert_close(a.prototypes, b.prototypes, rtol=0, atol=0)
    assert a.calibration == b.calibration
    logs, ref_logs = step_logs(out), step_logs(ref)
    assert {s: logs[s] for s in range(first_step, STEPS + 1)} == {
        s: ref_logs[s] for s in range(first_step, STEPS + 1)
    }


def start(folder: Path, values: dict) -> subprocess.Popen:
    script = folder / "train_tiny.py"
    script.write_text(textwrap.dedent(SCRIPT).format(tests=str(TESTS)))
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(values)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(proc: subprocess.Popen, output: str, timeout: float = 900) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = last_checkpoint(output)  # complete ones only
        if checkpoint is not None:
            return checkpoint
        if proc.poll() is not None:
            pytest.fail(f"training ended before a checkpoint: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def test_same_seed_same_metrics(tmp_path, tokenizer, reference):
    again = run_train(tokenizer, **settings(tmp_path, "again"))
    assert_same_run(again, reference)
    assert (
        read_run(again).meta["train"]["train_loss"]
        == read_run(reference).meta["train"]["train_loss"]
    )


def test_killed_run_resumes_to_the_same_result(tmp_path, tokenizer, reference):
    values = settings(tmp_path, "run")
    proc = start(tmp_path, values)
    checkpoint = wait_for_checkpoint(proc, values["output"])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    partial = partial_dir(values["output"])
    assert not Path(values["output"]).exists()  # a run folder is never half-written
    assert checkpoint.parent == partial / "checkpoints" and last_checkpoint(values["output"])
    assert {"config.json", "split", "retain.jsonl"} <= {p.name for p in partial.iterdir()}
    out = run_train(tokenizer, **{**values, "resume": True})
    assert not partial.exists() and not (out / "checkpoints").exists()
    assert_same_run(out, reference)


def test_sigint_saves_a_checkpoint_and_resumes(tmp_path, tokenizer, reference):
    values = settings(tmp_path, "run")
    proc = start(tmp_path, values)
    wait_for_checkpoint(proc, values["output"])
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 130, stderr[-3000:]
    assert "rerun the same command with --resume" in stdout
    stopped_at = int(stdout.split("stopped at step ")[1].split()[0])
    assert last_checkpoint(values["output"]).name == f"checkpoint-{stopped_at}"  # nothing lost
    assert not Path(values["output"]).exists()
    assert_same_run(run_train(tokenizer, **{**values, "resume": True}), reference)


def test_interrupted_after_training_keeps_every_step(tmp_path, tokenizer, reference, monkeypatch):
    values = settings(tmp_path, "run")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    # (seer.training.train, the attribute, is the function; the module is looked up by name)
    monkeypatch.setattr(importlib.import_module("seer.training.train"), "fit_readout", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_train(tokenizer, **values)
    assert last_checkpoint(values["output"]).name == f"checkpoint-{STEPS}"
    monkeypatch.undo()
    assert_same_run(run_train(tokenizer, **{**values, "resume": True}), reference)


def test_nan_loss_names_the_step_and_part(tmp_path, tokenizer, monkeypatch):
    supcon, calls = seer_trainer.losses.supcon, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = supcon(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(seer_trainer.losses, "supcon", nan_at_step_3)
    values = settings(tmp_path, "run")
    with pytest.raises(SeerError, match=r"the contrastive loss is nan at step 3.*--learning-rate"):
        run_train(tokenizer, **values)
    assert not Path(values["output"]).exists()
    assert last_checkpoint(values["output"]).name == "checkpoint-2"  # the work before is kept


def test_stop_on_signal_unit():
    previous = signal.getsignal(signal.SIGTERM)
    control, state = TrainerControl(), TrainerState(max_steps=10, global_step=3)
    with StopOnSignal() as stop:
        stop.on_step_end(None, state, control)
        assert not control.should_save and not stop.stopped
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.stopped
        stop.on_step_end(None, state, control)
        assert control.should_save and control.should_training_stop
        with pytest.raises(KeyboardInterrupt):  # a second signal aborts
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) == previous
    control, state = TrainerControl(), TrainerState(max_steps=10, global_step=10)
    StopOnSignal().on_step_end(None, state, control)
    assert control.should_save and not control.should_training_stop  # the last step is saved
