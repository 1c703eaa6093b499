"""``seer.training.train``: from a config to a finished run folder."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from seer.core.data import load_concepts, load_prompts, read_jsonl, split_three, write_jsonl
from seer.core.formatting import warn_truncated
from seer.core.layers import get_layers
from seer.core.models import fingerprint, load_model
from seer.core.represent import representations
from seer.core.run import check_output, finalize, last_checkpoint, partial_dir, write_meta
from seer.errors import SeerError
from seer.evaluation.calibration import fit_calibration
from seer.evaluation.metrics import compute_prototypes
from seer.training.config import TrainConfig
from seer.training.retain import general_text, load_retain
from seer.training.signals import StopOnSignal
from seer.training.trainer import PairCollator, PairDataset, SeerTrainer, build_pairs

__all__ = ["default_layer", "train"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "test")


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def default_layer(n_layers: int) -> int:
    """The middle block, ``ceil(n/2) - 1``: block 14 of SmolLM2's 30."""
    return max(0, math.ceil(n_layers / 2) - 1)


def _learning_rate(config: TrainConfig, model: torch.nn.Module) -> float:
    if config.learning_rate is not None:
        return config.learning_rate
    n_params = sum(p.numel() for p in model.parameters())
    return 1e-4 if n_params >= 1e9 else 3e-3


def _lora_targets(model: torch.nn.Module, wanted: tuple[str, ...]) -> list[str]:
    names = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
    }
    found = [t for t in wanted if t in names]
    if not found:
        raise SeerError(
            f"none of the LoRA target modules {list(wanted)} exist in this model; its linear "
            f"layers are named {sorted(names)}: pass --target-modules with some of those"
        )
    return found


def _prepare_data(
    config: TrainConfig, partial: Path, main: bool
) -> tuple[list[dict], list[dict], list[dict]]:
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
        exclude_prompts=load_prompts(config.exclude_prompts_from)
        if config.exclude_prompts_from
        else (),
    )
    return split_three(examples, config.test_fraction, config.calibration_fraction, config.seed)


def _check_same_config(config: TrainConfig, partial: Path, write: bool = True) -> None:
    """Record the options of a run; a resumed run must use the same ones."""
    path = partial / "config.json"
    mine = {k: v for k, v in config.to_dict().items() if k not in ("resume", "overwrite")}
    if config.resume and path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
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


def train(
    config: TrainConfig,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool = True,
) -> Path:
    """Train SEER as configured and write the run folder; returns its path.

    ``model``/``tokenizer`` may be passed in (e.g. a tiny test model) instead of loading
    ``config.model``.
    """
    # Under torchrun / accelerate launch every process trains; only rank 0 writes the run folder.
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        check_output(config.output, config.overwrite, config.resume)
    started = time.time()
    partial = partial_dir(config.output)
    # Everything that can fail on bad input happens before anything is written.
    train_rows, cal_rows, test_rows = _prepare_data(config, partial, main)
    if main:
        _check_same_config(config, partial, write=False)
    if model is None or tokenizer is None:
        model, tokenizer = load_model(config.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    n_layers = len(get_layers(model, config.layers_path))
    layer = default_layer(n_layers) if config.layer is None else config.layer
    if not 0 <= layer < n_layers:
        raise SeerError(f"--layer {layer} is out of range: this model has blocks 0..{n_layers - 1}")
    if main:
        if config.overwrite and not config.resume and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        _check_same_config(config, partial)
        (partial / "split").mkdir(exist_ok=True)
        for name, rows in zip(SPLITS, (train_rows, cal_rows, test_rows), strict=True):
            write_jsonl(partial / "split" / f"{name}.jsonl", rows)
    base_fingerprint = fingerprint(model)
    concepts = sorted({row["concept"] for row in train_rows})
    logger.info(
        "%d training, %d calibration and %d test examples, %d concepts",
        len(train_rows),
        len(cal_rows),
        len(test_rows),
        len(concepts),
    )

    if config.retain_l2_weight > 0:
        retain = (
            load_retain(config.retain_data)
            if config.retain_data
            else general_text(model, tokenizer, base_fingerprint)
        )
    else:
        retain = []
    if main:
        write_jsonl(partial / "retain.jsonl", retain)

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_lora_targets(model, config.target_modules),
        layers_to_transform=list(range(layer + 1)),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        peft_model.enable_input_require_grads()

    pairs = build_pairs(
        [r["concept"] for r in train_rows],
        [bool(r.get("response")) and bool(r.get("prompt")) for r in train_rows],
        epochs=config.epochs,
        batch_size=config.batch_size,
        balanced=config.objective == "supcon",
        format_probs=config.format_probs,
        n_retain=len(retain),
        seed=config.seed,
    )
    warn_truncated(tokenizer, train_rows, config.max_length, "training examples")
    dataset = PairDataset(train_rows, retain, pairs, tokenizer, config.max_length)
    lr = _learning_rate(config, model)
    args = TrainingArguments(
        output_dir=str(partial / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=1,  # the schedule from build_pairs already spans config.epochs
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.checkpoint_every,
        save_total_limit=1,
        report_to="none",
        seed=config.seed,
        remove_unused_columns=False,
        dataloader_drop_last=True,
        disable_tqdm=not progress,
        activation_checkpointing=config.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SeerTrainer(
        model=peft_model,
        args=args,
        train_dataset=dataset,
        data_collator=PairCollator(
            tokenizer.pad_token_id, config.positions, config.pad_to_multiple_of
        ),
        processing_class=tokenizer,
        seer_config=config,
        layer=layer,
    )
    checkpoint = last_checkpoint(config.output) if config.resume else None  # complete ones only
    resume_from = str(checkpoint) if checkpoint else None
    if resume_from:
        logger.info("resuming from %s", resume_from)
    with StopOnSignal() as stop:
        trainer.add_callback(stop)
        result = trainer.train(resume_from_checkpoint=resume_from)
    if stop.stopped:
        raise KeyboardInterrupt(
            f"stopped at step {trainer.state.global_step} with a checkpoint in "
            f"{partial / 'checkpoints'}: rerun the same command with --resume"
        )
    peft_model.eval()
    if not main:  # the main process writes the run folder
        _barrier()
        return Path(config.output)

    # Prototypes from the training split.
    reps_train = representations(
        peft_model,
        tokenizer,
        train_rows,
        [layer],
        config.positions,
        max_length=config.max_length,
        layers_path=config.layers_path,
        progress="prototypes" if progress else False,
    )[layer]
    names, protos = compute_prototypes(reps_train, [r["concept"] for r in train_rows])
    # Temperature and `none` threshold from the calibration split only (issue 18, e-eval).
    calibration = fit_calibration(
        peft_model,
        tokenizer,
        cal_rows,
        names,
        protos,
        layer=layer,
        positions=config.positions,
        max_length=config.max_length,
        layers_path=config.layers_path,
        progress=progress,
    )

    peft_model.save_pretrained(str(partial / "adapter"))
    log_history = trainer.state.log_history
    (partial / "train_log.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in log_history), encoding="utf-8"
    )
    meta = {
        "config": config.to_dict(),
        "base_model": config.model,
        "base_fingerprint": base_fingerprint,
        "layer": layer,
        "n_layers": n_layers,
        "positions": list(config.positions),
        "concepts": names,
        "learning_rate": lr,
        "calibration": calibration,
        "train": {
            "steps": trainer.state.global_step,
            "examples": len(train_rows),
            "calibration": len(cal_rows),
            "held_out": len(test_rows),
            "pairs": len(pairs),
            "seconds": round(time.time() - started, 1),
            "train_loss": result.training_loss,
        },
    }
    write_meta(partial, meta, torch.from_numpy(np.asarray(protos)))
    out = finalize(partial, config.output)
    _barrier()
    logger.info("run written to %s (%.0f s)", out, time.time() - started)
    return out
