"""Assemble a :class:`SeerTrainer` from a config: layer, LoRA, schedule, memory plan, arguments.

``build_trainer`` is what ``seer.training.train.train`` and ``bench/train_step.py`` both use, so
that the bench times the step that ``seer train`` runs.
"""

# The trainer's assembly and its memory plan, which share the schedule's lengths: about
# 310 lines, kept together.
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments, set_seed

from seer.core.architecture import DEFAULT_TARGET_MODULES, get_layers, linear_names
from seer.core.formatting import warn_truncated
from seer.core.memory import (
    FREE_SHARE,
    GIB,
    Dims,
    MemoryPlan,
    Shape,
    estimate_step,
    free_memory,
    gib,
    padding_share,
    release_freed_memory,
)
from seer.core.precision import choose_bf16
from seer.errors import SeerError
from seer.training.config import TrainConfig
from seer.training.health import HealthCallback, chance_loss, probe_steps
from seer.training.pairs import (
    LENGTH_WINDOW,
    PairCollator,
    PairDataset,
    build_pairs,
    group_by_length,
)
from seer.training.sharding import (
    check_engine,
    fsdp_requested,
    is_sharded,
    shard,
    without_accelerate_fsdp,
)
from seer.training.trainer import SeerTrainer

__all__ = [
    "add_lora",
    "build_trainer",
    "default_layer",
    "learning_rate",
    "lora_targets",
    "plan_memory",
]

logger = logging.getLogger(__name__)


def default_layer(n_layers: int) -> int:
    """The block at 0.8 of the depth, ``floor(0.8 n)`` (at most the last): block 24 of
    SmolLM2's 30, 25 of a 32-block model (the paper's block for Llama-3.1-8B). Chosen by the
    layer study on BeaverTails-6 and MATH-7 (docs/training.md, `--layer`)."""
    return min(n_layers - 1, (4 * n_layers) // 5)


def learning_rate(config: TrainConfig, model: torch.nn.Module) -> float:
    if config.learning_rate is not None:
        return config.learning_rate
    n_params = sum(p.numel() for p in model.parameters())
    return 1e-4 if n_params >= 1e9 else 3e-3


def lora_targets(model: torch.nn.Module, wanted: Sequence[str]) -> list[str]:
    names = linear_names(model)
    found = [t for t in wanted if t in names]
    if not found:
        raise SeerError(
            f"none of the LoRA target modules {list(wanted)} exist in this model; its linear "
            f"layers are named {sorted(names)}: pass --target-modules with some of those"
        )
    unknown = [t for t in wanted if t not in names]
    if unknown and tuple(wanted) != DEFAULT_TARGET_MODULES:  # the defaults fit models partly
        raise SeerError(
            f"--target-modules {unknown} match no module of this model; its linear layers are "
            f"named {sorted(names)}: pass only those"
        )
    return found


def resolve_layer(config: TrainConfig, model: torch.nn.Module) -> tuple[int, int]:
    """The target block and the number of blocks; a bad ``--layer`` is a SeerError."""
    n_layers = len(get_layers(model, config.layers_path))
    layer = default_layer(n_layers) if config.layer is None else config.layer
    if not 0 <= layer < n_layers:
        raise SeerError(f"--layer {layer} is out of range: this model has blocks 0..{n_layers - 1}")
    return layer, n_layers


def _batch_lengths(dataset: PairDataset, batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Text lengths (view 1, view 2, retain) of every row of every batch of the schedule."""
    lengths, size = dataset.lengths(), batch_size
    return [lengths[s : s + size] for s in range(0, len(lengths) - size + 1, size)]


EAGER_ATTENTION = (
    "this model runs eager attention, whose memory grows with the square of the text length; "
    "load it with attn_implementation='sdpa' if it supports that"
)


def train_device() -> torch.device:
    """The device this process trains on: its own GPU (``LOCAL_RANK``) where there is one.
    The model is still on the CPU when the plan is made; the Trainer moves it later."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _budget(config: TrainConfig, device: torch.device) -> tuple[int, str]:
    """The memory budget of a step in bytes, and where it came from: on a GPU its own free
    memory; on CPUs the host's, shared by the processes of this machine."""
    if config.memory_budget:
        return int(config.memory_budget * GIB), "--memory-budget"
    share = FREE_SHARE
    where = f"the memory free on {device}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cpu" and local > 1:
        share, where = FREE_SHARE / local, f"{where}, shared by {local} processes"
    return int(share * free_memory(device)), f"{share:.0%} of {where}"


def plan_memory(
    config: TrainConfig,
    model: PeftModel,
    dataset: PairDataset,
    layer: int,
    n_layers: int,
    lora_modules: int,
) -> MemoryPlan:
    """Decide gradient checkpointing from the estimated peak of the schedule's largest step;
    a SeerError (before anything trains) when even checkpointing does not fit the budget."""
    dims = Dims.of(model, n_layers, lora_modules)
    if dims.eager_attention:  # sdpa is what transformers picks where a model supports it
        logger.warning(EAGER_ATTENTION)
    batches = _batch_lengths(dataset, config.batch_size)
    micro = min(config.micro_batch_size or config.batch_size, config.batch_size)
    kl, l2 = config.kl_weight > 0, config.retain_l2_weight > 0 and len(dataset.retain) > 0
    real = padding_share([[r[k] for r in b] for b in batches for k in (0, 1, 2) if b[0][k]])
    grouped = "grouped by length" if config.group_by_length else "as drawn"
    logger.info(
        "padding: %.0f%% of the padded tokens of the schedule are real (%s)", 100 * real, grouped
    )

    Lengths = Sequence[tuple[int, int, int]]

    def step(batch: Lengths, checkpointing: bool, rows: int, cap: int) -> int:
        """The estimated peak of one batch's step (its rows in passes of ``rows``)."""
        peak = 0
        for s in range(0, len(batch), rows):
            part = batch[s : s + rows]
            lengths = [min(cap, max(r[k] for r in part)) for k in (0, 1, 2)]
            shape = Shape(len(part), *lengths)
            kw = dict(kl=kl, l2=l2, checkpointing=checkpointing, cached=rows < len(batch))
            peak = max(peak, estimate_step(dims, shape, layer=layer, **kw))
        return peak

    def worst(checkpointing: bool, rows: int = micro, cap: int = config.max_length) -> int:
        return max((step(b, checkpointing, rows, cap) for b in batches), default=0)

    budget, source = _budget(config, train_device())
    without = worst(False)
    checkpointing = config.gradient_checkpointing or without > budget

    def needs_checkpointing(batch: Lengths) -> bool:
        """Whether this batch's step exceeds the budget without checkpointing (decided step by
        step, so that a few long texts do not slow every other step)."""
        over = step(batch, False, micro, config.max_length) > budget
        return config.gradient_checkpointing or over

    plan = MemoryPlan(
        estimate=worst(True) if checkpointing else without,
        without_checkpointing=without,
        budget=budget,
        budget_source=source,
        checkpointing=checkpointing,
        forced=config.gradient_checkpointing,
        checkpointed_steps=sum(map(needs_checkpointing, batches)),
        steps=len(batches),
        needs_checkpointing=needs_checkpointing,
    )
    if plan.estimate > budget:
        raise SeerError(_over_budget(config, plan, micro, worst, kl))
    return plan


def _over_budget(
    config: TrainConfig, plan: MemoryPlan, micro: int, worst: Callable[..., int], kl: bool
) -> str:
    options = []
    rows = micro // 2
    while rows >= 1:
        if worst(True, rows=rows) <= plan.budget or rows == 1:
            options.append(f"--micro-batch-size {rows} ({gib(worst(True, rows=rows))})")
            break
        rows //= 2
    cap = config.max_length // 2
    while cap >= 32:
        if worst(True, cap=cap) <= plan.budget or cap < 64:
            options.append(f"--max-length {cap} ({gib(worst(True, cap=cap))})")
            break
        cap //= 2
    if kl:
        options.append("--kl-weight 0 (no full-model pass)")
    return (
        f"a training step would need about {gib(plan.estimate)} even with gradient "
        f"checkpointing ({micro} pairs per pass, texts of up to {config.max_length} tokens), "
        f"more than the budget of {gib(plan.budget)} ({plan.budget_source}); options that "
        f"reduce it: {', '.join(options)}; or raise --memory-budget if more memory is free"
    )


def _arguments(
    config: TrainConfig, output_dir: str, lr: float, progress: bool, gc: bool
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=1,  # the schedule from build_pairs already spans config.epochs
        learning_rate=lr,
        weight_decay=0.0,
        save_strategy="steps",
        remove_unused_columns=False,
        dataloader_drop_last=True,
        disable_tqdm=not progress,
        activation_checkpointing=gc,
        activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        use_cpu=not torch.cuda.is_available(),
        **config.trainer_arguments()
        | {"bf16": choose_bf16(config.bf16, config.fp16, torch.cuda.is_available())},
    )


def schedule(config: TrainConfig, train_rows: Sequence[dict], n_retain: int) -> list[dict]:
    """The run's pair schedule (:func:`~seer.training.pairs.build_pairs`) from its config."""
    return build_pairs(
        [r["concept"] for r in train_rows],
        [bool(r.get("response")) and bool(r.get("prompt")) for r in train_rows],
        epochs=config.epochs,
        batch_size=config.batch_size,
        balanced=config.objective == "supcon",
        format_probs=config.format_probs,
        n_retain=n_retain,
        seed=config.seed,
    )


def _probe_steps(config: TrainConfig, n_pairs: int) -> frozenset[int]:
    """The steps whose loss parts' gradient shares the health check reads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = config.batch_size * world * (config.gradient_accumulation_steps or 1)
    return probe_steps(n_pairs // per_step, config.health_check_at, config.warmup_steps)


def add_lora(
    config: TrainConfig, model: PreTrainedModel, targets: list[str], layer: int
) -> PeftModel:
    """``model`` with LoRA on ``targets`` in blocks 0..layer, its init drawn from the seed."""
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        layers_to_transform=list(range(layer + 1)),
        task_type="CAUSAL_LM",
    )
    set_seed(config.seed)  # the adapter's random init follows the seed, not the RNG's history
    return get_peft_model(model, lora)


def _health_check(config: TrainConfig) -> HealthCallback:
    """The training-health check, its chance loss counted over the pairs one step contrasts
    (every process's, when the contrastive batch is gathered across processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    pairs_seen = config.batch_size * (world if config.gather_across_processes else 1)
    return HealthCallback(chance_loss(config.objective, pairs_seen), config.health_check_at)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_trainer(
    config: TrainConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: Sequence[dict],
    retain: Sequence[dict],
    *,
    output_dir: str,
    progress: bool = True,
) -> SeerTrainer:
    """LoRA on blocks 0..layer of ``model``, the pair schedule, the memory plan (gradient
    checkpointing when the step would not fit) and the Trainer, ready for ``.train()``, with
    the training-health check as ``trainer.health`` (its warnings go into seer.json).

    Launched with an FSDP config, the model is sharded per decoder block
    (:mod:`seer.training.sharding`); an engine this machine cannot run is refused first."""
    check_engine()
    layer, n_layers = resolve_layer(config, model)
    lr = learning_rate(config, model)
    targets = lora_targets(model, config.target_modules)
    peft_model = add_lora(config, model, targets, layer)
    pairs = schedule(config, train_rows, len(retain))
    warn_truncated(tokenizer, list(train_rows), config.max_length, "training examples")
    dataset = PairDataset(train_rows, retain, pairs, tokenizer, config.max_length)
    if config.group_by_length:
        dataset.pairs = group_by_length(
            pairs,
            dataset.lengths(),
            batch_size=config.batch_size * int(os.environ.get("WORLD_SIZE", "1")),
            window=LENGTH_WINDOW,
            seed=config.seed,
        )
    plan = plan_memory(config, peft_model, dataset, layer, n_layers, len(targets))
    logger.info("memory: %s", plan.describe())
    if config.allocator == "release" and release_freed_memory():
        logger.info("memory: freed blocks over 128 KiB go back to the OS at once (--allocator)")
    if plan.checkpointing:
        peft_model.enable_input_require_grads()
        peft_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if fsdp_requested() and _world() > 1:
        shard(peft_model, config.layers_path)
    with without_accelerate_fsdp():  # sharded by seer already, or one process
        trainer = SeerTrainer(
            model=peft_model,
            args=_arguments(config, output_dir, lr, progress, plan.checkpointing),
            train_dataset=dataset,
            data_collator=PairCollator(
                tokenizer.pad_token_id, config.positions, config.pad_to_multiple_of
            ),
            processing_class=tokenizer,
            seer_config=config,
            layer=layer,
            gradient_probe_steps=_probe_steps(config, len(dataset)),
        )
    # autograd.grad through FSDP2's backward hooks crashes (torch 2.13); DeepSpeed's engine
    # owns the backward
    if is_sharded(peft_model) or trainer.is_deepspeed_enabled:
        logger.info("FSDP/DeepSpeed: the health check's gradient shares are not measured")
        trainer.gradient_probe_steps = frozenset()
    if plan.checkpointing and not plan.forced:  # on only for the steps that need it
        trainer.checkpoint_when = plan.needs_checkpointing
    trainer.health = _health_check(config)
    trainer.add_callback(trainer.health)
    trainer.memory_note = (
        f"{plan.describe()}; lower --micro-batch-size or --max-length, or set --memory-budget "
        "to the memory that is really free"
    )
    return trainer
