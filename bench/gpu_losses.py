"""The first step's loss parts on CUDA in bf16 against the CPU in float32 (same model, batch).

    python bench/gpu_losses.py [--model embedded] [--batch-size 4] [--tolerance 0.05]

Builds the trainer of ``seer train`` twice (CPU float32; CUDA with ``--bf16`` autocast), runs
one training step of each on the same first batch of the Do-Not-Answer schedule, prints the
parts side by side and exits 1 when a part differs by more than ``--tolerance`` (relative).
"""

from __future__ import annotations

import argparse
import sys

import torch
from demo_trainer import demo_trainer

PARTS = ("contrastive", "retain_l2", "kl")


def first_step(args: argparse.Namespace, device: str) -> dict[str, float]:
    trainer = demo_trainer(
        args.model,
        device=device,
        dtype=torch.float32,
        max_per_concept=10,
        retain_rows=16,
        batch_size=args.batch_size,
        max_length=128,
        lora_dropout=0.0,
        bf16=device == "cuda",
    )
    ds = trainer.train_dataset
    trainer.training_step(trainer.model, trainer.data_collator([ds[i] for i in range(4)]))
    return {k: trainer._metrics[k][0] for k in PARTS if k in trainer._metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.05)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check compares CUDA bf16 with CPU float32")
    cpu, cuda = first_step(args, "cpu"), first_step(args, "cuda")
    worst = 0.0
    print("| part | CPU float32 | CUDA bf16 | rel. diff |\n|---|---|---|---|")
    for k in cpu:
        rel = abs(cuda[k] - cpu[k]) / max(abs(cpu[k]), 1e-8)
        worst = max(worst, rel)
        print(f"| {k} | {cpu[k]:.5f} | {cuda[k]:.5f} | {rel:.2e} |")
    print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
