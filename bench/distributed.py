"""Step time and memory per process: 1 process, DDP x2 and FSDP x2, side by side.

    python bench/distributed.py [--model embedded] [--steps 3] [--batch-size 4]
    python bench/distributed.py --random-model 1024 4096 16 --allocator release


launches, one after the other, the same training steps of ``seer train`` (the embedded
SmolLM2-135M by default, the first rows of the Do-Not-Answer set) in one process, under
``torchrun --nproc_per_node 2`` (DDP) and under ``accelerate launch --config_file
examples/accelerate/fsdp_cpu.yaml`` (FSDP2, a shard group per decoder block), and prints one
table. Every process trains on its own ``--batch-size`` pairs; the time is the median of the
timed steps (after one warm-up step), the memory the peak resident set of each process: while
loading and sharding the model (``load``), and during the steps alone (``steps``, the peak
counter reset after the trainer is built). On 2 cores 2 processes cannot be faster than one:
the figure that matters is memory per process.

``--random-model HIDDEN INTERMEDIATE BLOCKS`` trains a randomly initialised Llama of that shape
(the embedded tokenizer and vocabulary), written once to a temporary folder: a model whose
weights, not its activations, fill a step's memory, as on the 7-9B models SEER is trained on.
``--allocator`` is ``seer train --allocator`` (``release``: glibc hands freed blocks over
128 KiB back at once, so the peak counts live memory, not what the heap kept). The last
column is the resident set after the steps, and once glibc has returned its free heap pages
(``malloc_trim``): the difference is memory the allocator kept, not tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FSDP_CPU = ROOT / "examples" / "accelerate" / "fsdp_cpu.yaml"


def _status_mib(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _trimmed_mib() -> float:
    """The resident set once glibc has handed its free heap pages back (``malloc_trim``):
    what the process holds live, without what the allocator kept."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return float("nan")
    return _status_mib("VmRSS")


def worker(args: argparse.Namespace) -> None:
    """One process: build the trainer, run 1 + ``steps`` training steps, print one JSON row."""
    import torch
    from demo_trainer import demo_trainer

    from seer.training.sharding import is_sharded
    from seer.training.train import close_process_group

    trainer = demo_trainer(
        args.model,
        device="cpu",
        max_per_concept=20,
        retain_rows=64,
        batch_size=args.batch_size,
        max_length=args.max_length,
        kl_weight=0.0 if args.no_kl else 1.0,
        allocator=args.allocator,
    )
    trainer.create_optimizer()
    load_peak = _status_mib("VmHWM")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset the peak resident set: the steps' own peak from here
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    ds, n, times = trainer.train_dataset, args.batch_size, []
    for step in range(1 + args.steps):
        items = [ds[(step * (rank + 1) * n + i) % len(ds)] for i in range(n)]
        start = time.perf_counter()
        trainer.training_step(trainer.model, trainer.data_collator(items))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    row = dict(
        rank=rank,
        sharded=is_sharded(trainer.model),
        step_s=statistics.median(times),
        load_peak_mib=load_peak,
        step_peak_mib=_status_mib("VmHWM"),
        after_mib=_status_mib("VmRSS"),
        trimmed_mib=_trimmed_mib(),
    )
    print("ROW " + json.dumps(row), flush=True)
    if torch.distributed.is_initialized():  # both done, then the group ends before Python does
        torch.distributed.barrier()
    close_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, prefix: list[str], args: argparse.Namespace) -> list[dict]:
    me = [str(Path(__file__).resolve()), "--worker", "--model", args.model]
    me += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    me += ["--max-length", str(args.max_length), "--allocator", args.allocator]
    me += ["--no-kl"] if args.no_kl else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(prefix + me, env=env, capture_output=True, text=True, timeout=3000)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x[4:]) for x in proc.stdout.splitlines() if x.startswith("ROW ")]
    return [dict(r, setup=name) for r in sorted(rows, key=lambda r: r["rank"])]


def random_model(hidden: int, intermediate: int, blocks: int) -> str:
    """A randomly initialised Llama of this shape with the embedded tokenizer, saved to a
    temporary folder (seed 0); returns the folder."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from seer.core.models import load_model

    _, tokenizer = load_model("embedded", device="cpu")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=blocks,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tempfile.mkdtemp(prefix="seer-random-llama-")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded", help="HF path, or 'embedded' (SmolLM2-135M)")
    p.add_argument("--steps", type=int, default=3, help="timed steps, after 1 warm-up step")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per process and step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--no-kl", action="store_true", help="--kl-weight 0 (no full-model pass)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--allocator", default="system", choices=["system", "release"])
    p.add_argument(
        "--random-model",
        type=int,
        nargs=3,
        metavar=("HIDDEN", "INTERMEDIATE", "BLOCKS"),
        help="a random Llama of this shape instead of --model",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    shape = args.random_model
    if shape:
        args.model = random_model(*shape)
    py = [sys.executable]
    run = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    acc = ["-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU)]
    rows = launch("1 process", py, args)
    rows += launch("DDP x2", py + run + [str(_port())], args)
    rows += launch("FSDP x2", py + acc + ["--main_process_port", str(_port())], args)
    model = f"random Llama {'x'.join(map(str, shape))}" if shape else args.model
    print(
        f"model={model} allocator={args.allocator} pairs/process={args.batch_size} "
        f"max_length={args.max_length} kl={'off' if args.no_kl else 'on'} "
        f"threads/process={args.threads}"
    )
    print(
        "| setup | rank | sharded | step (s) | peak RSS, load (MiB) | peak RSS, steps (MiB) "
        "| RSS after the steps / trimmed (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setup']} | {r['rank']} | {r['sharded']} | {r['step_s']:.2f} "
            f"| {r['load_peak_mib']:.0f} | {r['step_peak_mib']:.0f} "
            f"| {r['after_mib']:.0f} / {r['trimmed_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
