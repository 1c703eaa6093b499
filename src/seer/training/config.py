"""Configuration of ``seer train``: one dataclass, fields grouped, each with a help text.

Defaults reproduce the SEER paper unless a field's help says otherwise.
"""

# One field per `seer train` option with its help text: about 310 lines, kept whole.
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any, Literal

from seer.core.formatting import POSITIONS
from seer.core.normalise import REPRESENTATIONS, RETAIN_L2_FORMS
from seer.errors import MissingPackageError, SeerError

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "TRAINER_FIELDS",
    "TrainConfig",
]

DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

# TrainConfig fields that are TrainingArguments fields of the same name and meaning.
TRAINER_FIELDS = (
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "bf16",
    "fp16",
    "save_total_limit",
    "dataloader_num_workers",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=partial(type(default), default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# --temperature: the contrastive logits are cosines / tau; below 1e-3 they overflow the loss.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0


def _check_trackers(names: tuple[str, ...]) -> None:
    """Each ``--report-to`` tracker is one transformers knows and its package is installed
    (a tracker's callback raises when it is not: made here, before anything is loaded)."""
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        callbacks = get_reporting_integration_callbacks(list(names))
    except ValueError as exc:
        raise SeerError(f"--report-to {' '.join(names)}: {exc}") from exc
    for callback in callbacks:
        try:
            callback()
        except (RuntimeError, ImportError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MissingPackageError(
                f"--report-to {' '.join(names)}: {first} (or leave --report-to at none)"
            ) from exc


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------
    model: str = _f(
        "embedded", "HF model id (cached locally) or folder; 'embedded' = SmolLM2-135M-Instruct"
    )
    layer: int | None = _f(
        None,
        "0-based decoder block whose output is the representation; LoRA adapts blocks 0..layer. "
        "None: four fifths of the depth, floor(4 n_layers / 5) (block 24 of SmolLM2's 30; the "
        "paper read 25 of 32): why, in docs/training.md",
    )
    layers_path: str | None = _f(None, "dotted path to the decoder blocks if seer cannot find them")
    positions: tuple[Literal["last", "user_end", "mean"], ...] = _f(
        ("last",),
        "where the representation is read: 'last' (last real token), 'user_end' (end of the "
        "user turn), 'mean' (the mean state over the user's message and the reply); with "
        "several, the representation is the mean of their cosines (paper's detox setting: "
        "user_end and last)",
    )
    max_length: int = _f(512, "texts longer than this many tokens are truncated (with a warning)")
    # --- data --------------------------------------------------------------------------
    data: str = _f(
        "donotanswer", "CSV/JSONL path, HF dataset name, or 'donotanswer' (embedded demo)"
    )
    concept_column: str = _f("concept", "column holding the concept label")
    prompt_column: str = _f("prompt", "column holding the user turn")
    response_column: str | None = _f("response", "column holding the assistant turn (optional)")
    max_per_concept: int | None = _f(None, "keep at most this many examples per concept (seeded)")
    test_fraction: float = _f(0.2, "share of each concept held out for evaluation")
    calibration_fraction: float = _f(
        0.2,
        "share of each concept (taken from training) that fits the probability temperature, the "
        "'none' threshold and monitor thresholds, never trained or reported on; at least 1 row "
        "per concept; the test rows are those of a two-way split with the same "
        "--test-fraction (why this default: docs/evaluation.md, 'Three splits')",
    )
    exclude_prompts_from: str | None = _f(
        None,
        "CSV/JSONL whose 'prompt' column lists prompts to drop from the concept data (e.g. an "
        "evaluation set, so it is never trained on); the number of rows kept is logged",
    )
    retain_data: str | None = _f(
        None,
        "JSONL/CSV of general text: 'prompt' (or 'text') and optional 'response' columns; "
        "None: generated by the base model",
    )
    seed: int = _f(0, "seed of the split, the pairing, the formats and training")
    # --- objective ---------------------------------------------------------------------
    objective: Literal["paper", "supcon"] = _f(
        "supcon",
        "'paper': InfoNCE over pairs, other in-batch pairs are negatives; 'supcon': supervised "
        "contrastive, every same-concept item is a positive, concept-balanced batches (the "
        "default: why, in docs/training.md)",
    )
    temperature: float = _f(0.1, "contrastive temperature tau")
    # issue 19: both stay at the paper's forms until measured on real data (BeaverTails-6, MATH-7).
    representation: Literal["raw", "centered"] = _f(
        "raw",
        "'raw': the cosine of the hidden states as they are (the paper); 'centered': of the "
        "hidden states minus a mean state (in training the contrastive batch's; afterwards the "
        "trained model's on the training texts, stored as 'center' in prototypes.safetensors "
        "for prototypes and readout), so that what every text shares cannot dominate",
    )
    retain_l2_form: Literal["raw", "relative"] = _f(
        "raw",
        "'raw': the hidden-state distance in the model's units (the paper); 'relative': each "
        "token's distance over its reference norm (free of the model's scale; "
        "massive-activation tokens weigh like any other; try --retain-l2-weight ~100 with it)",
    )
    contrastive_weight: float = _f(10.0, "weight of the disentanglement loss")
    retain_l2_weight: float = _f(0.6, "weight of the hidden-state l2 retain loss on general text")
    health_check_at: float = _f(
        0.3,
        "share of the steps after the warm-up after which the training-health check warns if "
        "the contrastive loss is still at chance or one loss part carries almost all of the "
        "gradient (0 = off)",
    )
    kl_weight: float = _f(5.0, "weight of the next-token KL retain loss on concept texts (0 = off)")
    format_probs: tuple[float, float, float] = _f(
        (0.75, 0.125, 0.125),
        "probabilities of formatting a text as prompt+response, prompt, response",
    )
    gather_across_processes: bool = _f(
        True, "under DDP, contrast against the representations of every process"
    )
    # --- LoRA --------------------------------------------------------------------------
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    target_modules: tuple[str, ...] = _f(
        DEFAULT_TARGET_MODULES, "module names LoRA adapts (blocks 0..layer)"
    )
    # --- optimisation ------------------------------------------------------------------
    epochs: float = _f(1.0, "passes over the training split (each example is view 1 once per pass)")
    batch_size: int = _f(
        8,
        "pairs per step (per process); supcon and paper both need 2 or more (an item's "
        "positives, or the negatives, are the other pairs of its batch)",
    )
    group_by_length: bool = _f(
        False,
        "put texts of similar length in the same batch (within runs of batches, each batch "
        "keeping its mix of concepts), so less of a step is padding; it cost held-out "
        "accuracy where measured (docs/training.md)",
    )
    learning_rate: float | None = _f(
        None,
        "AdamW learning rate (the peak of --lr-scheduler-type; the default schedule decays it "
        "to 0 by a cosine). None: the paper's rate for models of a billion "
        "parameters or more, a larger one below (the values and their measurements: "
        "docs/training.md)",
    )
    micro_batch_size: int | None = _f(
        None,
        "pairs per forward pass; below --batch-size, gradient caching (Gao et al. 2021) gives "
        "the contrastive loss the whole batch at the memory of a micro-batch. None: the whole "
        "batch at once",
    )
    memory_budget: float | None = _f(
        None,
        "GiB a training step may use; gradient checkpointing turns on when the estimated peak "
        "of the largest batch exceeds it, and training refuses to start when even that does "
        "not fit. None: half the memory the machine (or the GPU) has free at start",
    )
    gradient_checkpointing: bool = _f(
        False,
        "recompute activations in backward to save memory, always; otherwise it turns on by "
        "itself when the step would not fit in --memory-budget",
    )
    allocator: Literal["release", "system"] = _f(
        "system",
        "how the process's freed CPU memory is handled: 'system' (the C library's own policy) "
        "or 'release' (glibc: every block over 128 KiB comes from and goes back to the OS, so "
        "freed activations do not stay resident: a far lower peak, but far slower steps; "
        "measured in docs/performance.md). A MALLOC_MMAP_THRESHOLD_ in the environment wins",
    )
    pad_to_multiple_of: int | None = _f(None, "round padded lengths up (e.g. 64 on GPUs)")
    # --- run ---------------------------------------------------------------------------
    output: str = _f("runs/seer", "run folder to write (written atomically)")
    overwrite: bool = _f(False, "replace an existing run folder")
    checkpoint_every: int = _f(50, "save a resumable checkpoint every N steps")
    resume: bool = _f(False, "continue from the last checkpoint of an interrupted run at --output")
    logging_steps: int = _f(5, "log the loss parts every N steps")
    # --- trainer (passed to transformers.TrainingArguments) ----------------------------
    gradient_accumulation_steps: int = _f(1, "steps whose gradients are summed per update")
    lr_scheduler_type: str = _f(
        "cosine", "learning-rate schedule (a transformers SchedulerType; 'constant' keeps the peak)"
    )
    warmup_steps: int = _f(0, "linear warm-up of the learning rate over this many updates")
    bf16: bool = _f(
        False,
        "bfloat16 autocast of the step's passes; faster only where the hardware computes "
        "bfloat16 natively (recent GPUs, CPUs with AVX-512 BF16 or AMX): the log says",
    )
    fp16: bool = _f(False, "float16 autocast with loss scaling (GPUs)")
    report_to: tuple[str, ...] = _f(("none",), "trackers for the logs: none, tensorboard, wandb")
    save_total_limit: int | None = _f(1, "checkpoints kept (the latest); None: all")
    dataloader_num_workers: int = _f(0, "worker processes that collate batches")

    def __post_init__(self) -> None:
        self.positions = tuple(self.positions)
        self.target_modules = tuple(self.target_modules)
        self.format_probs = tuple(float(p) for p in self.format_probs)  # type: ignore[assignment]
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise SeerError(
                f"--positions {bad or '()'} not understood; use one or more of {POSITIONS}"
            )
        if self.objective not in ("paper", "supcon"):
            raise SeerError(f"--objective must be 'paper' or 'supcon', got {self.objective!r}")
        self._check_forms()
        for name in ("model", "data", "output", "concept_column", "prompt_column"):
            if not str(getattr(self, name)).strip():
                raise SeerError(f"{_flag(name)} is empty; give a value")
        positive = ("batch_size", "lora_r", "lora_alpha", "max_length", "checkpoint_every")
        for name in (*positive, "logging_steps"):
            if getattr(self, name) <= 0:
                raise SeerError(
                    f"{_flag(name)} must be a positive integer, got {getattr(self, name)}"
                )
        if not self.epochs > 0 or math.isinf(self.epochs):  # `not > 0` also catches NaN
            raise SeerError(f"--epochs must be a number > 0, got {self.epochs}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise SeerError(
                f"--temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g} "
                f"(the paper's is 0.1; below, the loss overflows), got {self.temperature}"
            )
        if not 0 <= self.seed < 2**32:
            raise SeerError(f"--seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        lr = self.learning_rate
        if lr is not None and not (0 < lr < math.inf):
            raise SeerError(f"--learning-rate must be > 0 (e.g. 1e-4), got {lr}")
        if self.batch_size < 2:
            why = (
                "other pairs are its negatives"
                if self.objective == "paper"
                else "a batch of one has no other example to contrast with (loss 0, no gradient)"
            )
            raise SeerError(f"--objective {self.objective} needs --batch-size >= 2: {why}")
        for name in ("contrastive_weight", "retain_l2_weight", "kl_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise SeerError(f"{_flag(name)} must be a number >= 0, got {getattr(self, name)}")
        probs = self.format_probs
        if len(probs) != 3 or not all(p >= 0 for p in probs) or not abs(sum(probs) - 1) <= 1e-6:
            raise SeerError(
                f"--format-probs must be three non-negative numbers summing to 1, got {probs}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise SeerError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 < self.test_fraction < 1:
            raise SeerError(
                f"--test-fraction must be between 0 and 1 (e.g. 0.2), got {self.test_fraction}"
            )
        if not 0 < self.calibration_fraction < 1 - self.test_fraction:
            raise SeerError(
                f"--calibration-fraction must be > 0 and leave rows to train on (below 1 - "
                f"--test-fraction = {1 - self.test_fraction:g}), got {self.calibration_fraction}"
            )
        if self.max_per_concept is not None and self.max_per_concept < 2:
            raise SeerError(f"--max-per-concept must be at least 2, got {self.max_per_concept}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise SeerError(f"--pad-to-multiple-of must be positive, got {self.pad_to_multiple_of}")
        self._check_trainer_fields()
        if self.layer is not None and self.layer < 0:
            raise SeerError(f"--layer must be >= 0 (0 is the first block), got {self.layer}")

    def _check_forms(self) -> None:
        """``representation``, ``retain_l2_form`` and ``health_check_at`` (issue 19)."""
        if self.representation not in REPRESENTATIONS:
            raise SeerError(
                f"--representation must be one of {REPRESENTATIONS}, got {self.representation!r}"
            )
        if self.retain_l2_form not in RETAIN_L2_FORMS:
            raise SeerError(
                f"--retain-l2-form must be one of {RETAIN_L2_FORMS}, got {self.retain_l2_form!r}"
            )
        if not 0 <= self.health_check_at < 1:
            raise SeerError(
                f"--health-check-at is a share of the steps in [0, 1), got {self.health_check_at}"
            )

    def _check_trainer_fields(self) -> None:
        from transformers.trainer_utils import SchedulerType  # heavy: only when validating

        self.report_to = tuple(self.report_to)
        for name in ("micro_batch_size", "gradient_accumulation_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SeerError(f"{_flag(name)} must be a positive integer, got {value}")
        for name in ("warmup_steps", "dataloader_num_workers"):
            if getattr(self, name) < 0:
                raise SeerError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        budget = self.memory_budget
        if budget is not None and not 0 < budget < math.inf:
            raise SeerError(f"--memory-budget is in GiB and must be > 0 (e.g. 8), got {budget}")
        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise SeerError(
                f"--lr-scheduler-type {self.lr_scheduler_type!r} is not a transformers "
                f"scheduler; use one of {schedulers}"
            )
        if self.bf16 and self.fp16:
            raise SeerError("--bf16 and --fp16 are both set; choose one mixed precision")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise SeerError(f"--report-to {list(self.report_to)} mixes 'none' with trackers")
        if self.report_to != ("none",):
            _check_trackers(self.report_to)

    def trainer_arguments(self) -> dict[str, Any]:
        """The fields passed through to ``transformers.TrainingArguments`` as they are."""
        return {name: getattr(self, name) for name in TRAINER_FIELDS} | {
            "report_to": list(self.report_to),
            "seed": self.seed,
            "logging_steps": self.logging_steps,
            "save_steps": self.checkpoint_every,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config as saved with a run (``seer.json``'s ``config``); fields added since the
        run was trained take their defaults, names no longer known are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
