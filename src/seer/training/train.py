"""``seer.training.train``: from a config to a finished run folder."""

# `train()` and its named steps, read top to bottom: about 315 lines, kept whole.
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_utils import TrainOutput

from seer.core.data import load_concepts, load_prompts
from seer.core.folders import Claim, claim_output
from seer.core.models import clamp_max_length, ensure_pad_token, fingerprint, load_model
from seer.core.run import check_output, finalize, last_checkpoint, partial_dir, write_meta
from seer.core.splits import split_three
from seer.core.tables import read_jsonl, write_jsonl
from seer.errors import SeerError
from seer.inference.general import general_text
from seer.readout import FittedReadout, fit_readout, record
from seer.training.build import build_trainer, default_layer, resolve_layer
from seer.training.checkpoints import resumable_checkpoint
from seer.training.config import TrainConfig
from seer.training.pairs import schedule_length
from seer.training.retain import load_retain
from seer.training.sharding import check_engine, gather_for_inference, is_sharded
from seer.training.signals import StopOnSignal
from seer.training.summary import RunClock, logs_off_stdout, whole_run_loss
from seer.training.trainer import SeerTrainer

__all__ = ["build_trainer", "close_process_group", "default_layer", "process_group_ended", "train"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "test")

Rows = tuple[list[dict], list[dict], list[dict]]  # the train, calibration and test rows


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def close_process_group() -> None:
    """Tear down the default process group, if one is up (a no-op in one plain process).

    Call it once at the end of a script that trained under ``torchrun`` or ``accelerate launch``,
    after its last collective (:func:`train` ends on a barrier), as PyTorch asks of every process:
    a gloo group left to the interpreter's shutdown can abort a process that has finished its work
    ("terminate called without an active exception", exit -6): its worker threads still hold work
    objects whose tensors are freed after Python is gone. ``seer train`` ends the group it started
    (:func:`process_group_ended`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def process_group_ended() -> Iterator[None]:
    """End, on the way out, a process group that came up inside the block (accelerate starts one
    in each process of a launch); one that was already up belongs to its caller (a serving
    engine's, a script's own) and is left alone."""
    before = torch.distributed.is_available() and torch.distributed.is_initialized()
    try:
        yield
    finally:
        if not before:
            close_process_group()


def _prepare_data(config: TrainConfig, partial: Path) -> Rows:
    """``(train, calibration, test)`` rows: read back on --resume, else split afresh."""
    split_dir = partial / "split"
    if config.resume and (split_dir / "calibration.jsonl").is_file():
        return tuple(read_jsonl(split_dir / f"{n}.jsonl") for n in SPLITS)  # type: ignore[return-value]
    examples = load_concepts(
        config.data,
        config.concept_column,
        config.prompt_column,
        config.response_column,
        max_per_concept=config.max_per_concept,
        seed=config.seed,
        exclude_prompts=load_prompts(config.exclude_prompts_from, flag="--exclude-prompts-from")
        if config.exclude_prompts_from
        else (),
    )
    return split_three(examples, config.test_fraction, config.calibration_fraction, config.seed)


def _check_same_config(config: TrainConfig, partial: Path, write: bool = True) -> None:
    """Record the options of a run; a resumed run must use the same ones."""
    path = partial / "config.json"
    mine = {k: v for k, v in config.to_dict().items() if k not in ("resume", "overwrite")}
    if config.resume and path.is_file():
        # read back as a TrainConfig: options added since the run was started take defaults
        stored = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))).to_dict()
        changed = [
            f"{k}={stored.get(k)} (now {mine[k]})" for k in sorted(mine) if stored.get(k) != mine[k]
        ]
        if changed:
            raise SeerError(
                f"--resume with other options than the interrupted run: {', '.join(changed)}; "
                "rerun with the same options, or pass --overwrite to start again"
            )
    if write:
        path.write_text(json.dumps(mine, indent=2), encoding="utf-8")


def _start_folder(config: TrainConfig, claim: Claim, rows: tuple[list, list, list]) -> None:
    """Create (or, resuming, keep) the partial run folder with the config and the split."""
    partial = claim.partial
    if not (config.resume and partial.exists()):
        claim.start()  # afresh: --overwrite discards an old one (seer's own: checked)
    _check_same_config(config, partial)
    (partial / "split").mkdir(exist_ok=True)
    for name, split in zip(SPLITS, rows, strict=True):
        write_jsonl(partial / "split" / f"{name}.jsonl", split)


def _retain_text(
    config: TrainConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    base_fingerprint: str,
) -> list[dict]:
    if config.retain_l2_weight <= 0:
        return []
    if config.retain_data:
        return load_retain(config.retain_data)
    return general_text(model, tokenizer, base_fingerprint)


def _fit(trainer: SeerTrainer, partial: Path, checkpoint: Path | None) -> TrainOutput:
    """``trainer.train()``, resumed from ``checkpoint`` (with ``--resume``)."""
    resume_from = str(checkpoint) if checkpoint else None
    if resume_from:
        logger.info("resuming from %s", resume_from)
    logs_off_stdout(trainer)
    with StopOnSignal() as stop:
        trainer.add_callback(stop)
        result = trainer.train(resume_from_checkpoint=resume_from)
    if stop.stopped:
        raise KeyboardInterrupt(
            f"stopped at step {trainer.state.global_step} with a checkpoint in "
            f"{partial / 'checkpoints'}: rerun the same command with --resume"
        )
    return result


def _readout(
    trainer: SeerTrainer,
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    rows: Rows,
    progress: bool,
) -> FittedReadout:
    """The trained model's readout: prototypes from the training split (``rows[0]``), the
    temperature and the ``none`` threshold from the calibration split (``rows[1]``) only."""
    model = trainer.model
    assert model is not None  # the trained model
    return fit_readout(
        model,
        tokenizer,
        rows[0],
        rows[1],
        layer=trainer.layer,
        positions=config.positions,
        max_length=config.max_length,
        layers_path=config.layers_path,
        centered=config.representation == "centered",
        progress=progress,
    )


def _write_run(
    trainer: SeerTrainer,
    config: TrainConfig,
    partial: Path,
    rows: Rows,
    readout: FittedReadout,
    info: dict[str, Any],
) -> None:
    peft_model: Any = trainer.model  # build_trainer's PeftModel: this writes the adapter
    peft_model.save_pretrained(str(partial / "adapter"))
    clock: RunClock = info["clock"]
    checkpoint = last_checkpoint(config.output) if config.resume else None
    resumed_at = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    train_loss = whole_run_loss(  # the whole run's, across --resume
        trainer.state.log_history,
        resumed_at,
        trainer.state.global_step,
        info["result"].training_loss,
    )
    log_history = [
        {**e, "train_loss": train_loss, "seconds": round(clock.seconds, 1)}
        if "train_loss" in e
        else e
        for e in trainer.state.log_history
    ]
    (partial / "train_log.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in log_history), encoding="utf-8"
    )
    meta = {
        "config": config.to_dict(),
        "base_model": config.model,
        "base_fingerprint": info["fingerprint"],
        "layer": trainer.layer,
        "n_layers": info["n_layers"],
        "positions": list(config.positions),
        "concepts": readout.concepts,
        "learning_rate": trainer.args.learning_rate,
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "float32",
        "readout": record(),
        "calibration": readout.calibration,
        "health": trainer.health.warnings,
        "train": {
            "steps": trainer.state.global_step,
            "examples": len(rows[0]),
            "calibration": len(rows[1]),
            "held_out": len(rows[2]),
            "pairs": len(cast(Sized, trainer.train_dataset)),  # a PairDataset
            "seconds": round(clock.seconds, 1),  # every process's, across --resume
            "train_loss": train_loss,
        },
    }
    prototypes = torch.from_numpy(np.asarray(readout.prototypes))
    write_meta(partial, meta, prototypes, center=readout.center)


def train(
    config: TrainConfig,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool = True,
) -> Path:
    """Train SEER as configured and write the run folder; returns its path.

    ``model``/``tokenizer`` may be passed in (e.g. a tiny test model) instead of loading
    ``config.model``. The output folder is locked while it is written (one writer at a
    time); a run that fails leaves no ``.partial`` unless it holds a checkpoint.
    """
    check_engine()  # before anything is written
    clock = RunClock(partial_dir(config.output), config.resume)  # seconds across resumes
    # Under torchrun / accelerate launch every process trains; only rank 0 writes the run folder.
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(config, model, tokenizer, progress, clock, None)
    inputs = [
        ("--data", config.data),
        ("--retain-data", config.retain_data),
        ("--exclude-prompts-from", config.exclude_prompts_from),
        ("--model", config.model),
    ]
    with claim_output(
        config.output,
        config.overwrite,
        inputs=[(flag, path) for flag, path in inputs if path],
        keep_partial=lambda _: last_checkpoint(config.output) is not None,
    ) as claim:
        check_output(config.output, config.overwrite, config.resume)
        try:
            return _train(config, model, tokenizer, progress, clock, claim)
        finally:
            clock.save()  # into DIR.partial, if the run stopped before its end


def _train(
    config: TrainConfig,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase | None,
    progress: bool,
    clock: RunClock,
    claim: Claim | None,
) -> Path:
    """The run itself, once the output folder is claimed (rank 0) or not (other ranks)."""
    started, partial, main = time.time(), partial_dir(config.output), claim is not None
    # Everything that can fail on bad input happens before anything is written.
    rows = _prepare_data(config, partial)
    schedule_length(config.epochs, len(rows[0]), config.batch_size)  # refused before any load
    if main:
        _check_same_config(config, partial, write=False)
    # the newest whole checkpoint (a damaged one is set aside, saying so, or refused)
    checkpoint = resumable_checkpoint(config.output, set_aside=main) if config.resume else None
    if model is None or tokenizer is None:
        model, tokenizer = load_model(config.model)
    ensure_pad_token(tokenizer)
    _, n_layers = resolve_layer(config, model)
    if claim is not None:
        _start_folder(config, claim, rows)
    config.max_length = clamp_max_length(model, config.max_length)  # config.json keeps the asked
    base_fingerprint = fingerprint(model)
    logger.info(
        "%d training, %d calibration and %d test examples, %d concepts",
        len(rows[0]),
        len(rows[1]),
        len(rows[2]),
        len({row["concept"] for row in rows[0]}),
    )
    retain = _retain_text(config, model, tokenizer, base_fingerprint)
    if main:
        write_jsonl(partial / "retain.jsonl", retain)
    output_dir = str(partial / "checkpoints")
    trainer = build_trainer(
        config, model, tokenizer, rows[0], retain, output_dir=output_dir, progress=progress
    )
    trainer.add_callback(clock)
    result = _fit(trainer, partial, checkpoint)
    assert trainer.model is not None  # build_trainer's PEFT model
    trainer.model.eval()
    if is_sharded(trainer.model):  # the readout below runs in the main process alone
        gather_for_inference(trainer.model, keep=main)
    if not main:  # the main process writes the run folder
        _barrier()
        return Path(config.output)
    readout = _readout(trainer, config, tokenizer, rows, progress)
    info = dict(fingerprint=base_fingerprint, n_layers=n_layers, result=result, clock=clock)
    _write_run(trainer, config, partial, rows, readout, info)
    out = finalize(partial, config.output)
    _barrier()
    logger.info("run written to %s (%.0f s)", out, time.time() - started)
    return out
