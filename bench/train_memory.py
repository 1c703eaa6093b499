"""Peak memory and speed of one default SEER training step, for two versions of the code.

Every figure comes from a fresh child process (``spawn`` of this script with ``--child``) so
that one measurement's memory never inflates the next. ``--base-src`` names the ``src`` folder
of another checkout (e.g. a git worktree of the commit before the change): its children run
with ``PYTHONPATH`` set to it, side by side with children of the current code.

Memory: one default step (``TrainConfig()`` defaults, B=8 pairs, the embedded model, float32)
on texts of exactly N tokens: real BeaverTails prompts and responses, the response repeated
until the text reaches ``--max-length N``; the retain texts are built the same way. Printed:
the peak RSS of the whole process (``VmHWM``) and its growth over the RSS before the step.
A child whose allocations pass ``--limit-gb`` of address space stops with "out of memory"
instead of waking the kernel's out-of-memory killer.

Speed: real BeaverTails batches (the same ones for every child), ``--steps`` timed steps after
one warm-up: seconds per real token, the step's model FLOP/s (2 x params per token forward,
2 more backward, params = blocks each pass goes through, +LM head where reached) and the share
of a float32 2048x2048 matmul's FLOP/s measured in the same process; ``--bf16`` adds a child of
the current code under ``torch.autocast("cpu", bfloat16)``.

    python bench/train_memory.py --base-src /tmp/b-base/src

``--allocators`` adds the current code under ``--allocator release`` (freed blocks over
128 KiB go back to the OS at once) beside the default ``system``, in both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LENGTHS = (64, 128, 256, 512, 1024)
DATA = "../shared/data/beavertails_multiclass.csv"


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1))


def _rows(path: str, repeat_to: int | None) -> tuple[list[dict], list[dict]]:
    """Concept rows (BeaverTails ``value`` as the concept) and retain rows; with ``repeat_to``
    every response is repeated until the text has at least that many tokens."""
    from seer.core.data import load_concepts
    from seer.inference.general import instructions

    examples = load_concepts(path, "value", "prompt", "response")
    if repeat_to:
        times = repeat_to // 8 + 2  # a response has more than 8 tokens
        for e in examples:
            e["response"] = " ".join([e["response"]] * times)
    safe = [e["response"] for e in examples if e["concept"] == "safe" and e["response"]]
    retain = [{"prompt": q, "response": safe[i]} for i, q in enumerate(instructions("retain"))]
    return examples, retain


def _trainer(config, model, tokenizer, rows, retain, output_dir: str):
    """The trainer as ``seer train`` builds it, in whichever version of the code is imported."""
    try:
        from seer.training.train import build_trainer
    except ImportError:  # older seer assembled it inside train()
        return _trainer_before(config, model, tokenizer, rows, retain, output_dir)
    return build_trainer(config, model, tokenizer, rows, retain, output_dir=output_dir)


def _trainer_before(config, model, tokenizer, rows, retain, output_dir: str):
    """A copy of the assembly in ``seer.training.train.train`` at commit 7d90a71."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from seer.core.architecture import get_layers
    from seer.training import train as train_module
    from seer.training.trainer import PairCollator, PairDataset, SeerTrainer, build_pairs

    layer = config.layer
    if layer is None:
        layer = train_module.default_layer(len(get_layers(model)))
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=list(range(layer + 1)),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    both = [bool(r.get("response")) and bool(r.get("prompt")) for r in rows]
    pairs = build_pairs(
        [r["concept"] for r in rows],
        both,
        epochs=config.epochs,
        batch_size=config.batch_size,
        balanced=config.objective == "supcon",
        format_probs=config.format_probs,
        n_retain=len(retain),
        seed=config.seed,
    )
    dataset = PairDataset(rows, retain, pairs, tokenizer, config.max_length)
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        learning_rate=train_module._learning_rate(config, model),
        lr_scheduler_type="constant",
        weight_decay=0.0,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
    )
    collator = PairCollator(tokenizer.pad_token_id, config.positions, config.pad_to_multiple_of)
    return SeerTrainer(
        model=peft_model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        seer_config=config,
        layer=layer,
    )


def _setup(
    data: str,
    max_length: int,
    repeat: bool,
    batch_size: int,
    micro: int | None = None,
    allocator: str | None = None,
    layer: int | None = None,
):
    import torch

    from seer.core.models import load_model
    from seer.training.config import TrainConfig

    torch.manual_seed(0)
    model, tokenizer = load_model("embedded", device="cpu", dtype=torch.float32)
    rows, retain = _rows(data, max_length if repeat else None)
    extra: dict = {"micro_batch_size": micro} if micro else {}  # gradient caching: current only
    if allocator:  # --allocator: current code only
        extra["allocator"] = allocator
    if layer is not None:
        extra["layer"] = layer
    config = TrainConfig(max_length=max_length, batch_size=batch_size, epochs=1.0, **extra)
    trainer = _trainer(config, model, tokenizer, rows, retain, tempfile.mkdtemp(prefix="seer-"))
    trainer.create_optimizer()
    # Trainer.train() sets this per update; older seer needs it for a lone step
    trainer.current_gradient_accumulation_steps = 1
    return trainer, batch_size


def _batch(trainer, index: int, batch_size: int) -> dict:
    ds = trainer.train_dataset
    return trainer.data_collator([ds[index * batch_size + j] for j in range(batch_size)])


def _step(trainer, batch: dict, autocast: bool) -> float:
    import contextlib

    import torch

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    start = time.perf_counter()
    with ctx:
        trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _flops(trainer, batch: dict) -> float:
    """Model FLOPs of seer's step on real tokens (see the module docstring)."""
    from seer.core.architecture import get_layers

    model, layer = trainer.model, trainer.layer
    blocks = get_layers(model)
    per_block = sum(p.numel() for n, p in blocks[0].named_parameters() if "lora_" not in n)
    head = model.get_output_embeddings().weight.numel()
    full, cut = len(blocks) * per_block + head, (layer + 1) * per_block
    r1, r2 = (int(batch[k]["attention_mask"].sum()) for k in ("view1", "view2"))
    rr = int(batch["retain"]["attention_mask"].sum()) if "retain" in batch else 0
    return 2 * (cut * rr + full * r1) + 4 * (full * r1 + cut * (r2 + rr))


def _matmul_flops(n: int = 2048) -> float:
    import torch

    a, best = torch.randn(n, n), float("inf")
    for _ in range(10):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _estimate(trainer) -> float | None:
    """The memory plan's estimate of the schedule's largest step (current code only), MiB."""
    try:
        from seer.training.build import plan_memory
    except ImportError:
        return None
    from seer.core.architecture import get_layers

    cfg, n_layers = trainer.seer_config, len(get_layers(trainer.model))
    modules = len(cfg.target_modules)  # SmolLM2 has all seven
    plan = plan_memory(cfg, trainer.model, trainer.train_dataset, trainer.layer, n_layers, modules)
    return plan.estimate / 2**20


def child_memory(args: argparse.Namespace) -> dict:
    limit = int(args.limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    trainer, b = _setup(
        args.data,
        args.length,
        repeat=True,
        batch_size=args.batch_size,
        micro=args.micro_batch_size,
        allocator=args.allocator,
        layer=args.layer,
    )
    batch = _batch(trainer, 0, b)
    padded = {k: tuple(v["input_ids"].shape) for k, v in batch.items() if isinstance(v, dict)}
    estimate = _estimate(trainer)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    before = _status_kib("VmRSS")
    try:
        seconds = _step(trainer, batch, autocast=False)
    except (RuntimeError, MemoryError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        return {"oom": True, "padded": padded, "peak_mib": _status_kib("VmHWM") / 1024}
    return {
        "oom": False,
        "padded": padded,
        "seconds": seconds,
        "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "peak_mib": _status_kib("VmHWM") / 1024,
        "growth_mib": (_status_kib("VmHWM") - before) / 1024,
        "estimate_mib": estimate,
    }


def child_speed(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    trainer, b = _setup(
        args.data,
        512,
        repeat=False,
        batch_size=args.batch_size,
        allocator=args.allocator,
        layer=args.layer,
    )
    batches = [_batch(trainer, i, b) for i in range(1 + args.steps)]
    _step(trainer, batches[0], args.autocast)  # warm-up
    walls, per_token, flops, real_share = [], [], [], []
    for batch in batches[1:]:
        wall = _step(trainer, batch, args.autocast)
        parts = [v for v in batch.values() if isinstance(v, dict)]
        real = sum(int(v["attention_mask"].sum()) for v in parts)
        real_share.append(real / sum(v["input_ids"].numel() for v in parts))
        walls.append(wall)
        per_token.append(wall / real)
        flops.append(_flops(trainer, batch) / wall)
    return {
        "s_per_token": statistics.median(per_token),
        "s_per_step": statistics.median(walls),
        "model_flops": statistics.median(flops),
        "matmul_fp32_flops": _matmul_flops(),
        "threads": torch.get_num_threads(),
        "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "real_share": statistics.mean(real_share),
    }


def estimates(args: argparse.Namespace) -> None:
    """The memory plan's estimates for the same steps, from a weightless (meta-device) model:
    nothing is trained and no weights are loaded."""
    import dataclasses

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from seer.core.models import resolve_model_path
    from seer.training.build import default_layer, plan_memory
    from seer.training.config import TrainConfig
    from seer.training.pairs import PairDataset, build_pairs

    path = resolve_model_path("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    n_layers = model.config.num_hidden_layers
    layer = default_layer(n_layers) if args.layer is None else args.layer
    base = TrainConfig(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size)
    lora = LoraConfig(
        r=base.lora_r,
        lora_alpha=base.lora_alpha,
        target_modules=list(base.target_modules),
        layers_to_transform=list(range(layer + 1)),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    print(f"{'tokens':>6} {'estimate GiB':>13} {'with checkpointing':>19}")
    for n in [*args.lengths, 0]:  # 0: the data as it is, the whole schedule, --max-length 512
        rows, retain = _rows(args.data, n or None)
        cfg = dataclasses.replace(base, max_length=n or 512, epochs=1.0, memory_budget=1e6)
        both = [True] * len(rows)
        pairs = build_pairs(
            [r["concept"] for r in rows],
            both,
            epochs=1.0,
            batch_size=cfg.batch_size,
            balanced=True,
            format_probs=cfg.format_probs,
            n_retain=len(retain),
            seed=cfg.seed,
        )[: cfg.batch_size if n else None]  # the step the memory table measures
        dataset = PairDataset(rows, retain, pairs, tokenizer, cfg.max_length)
        k = len(cfg.target_modules)
        plain = plan_memory(cfg, peft_model, dataset, layer, n_layers, k).estimate
        cfg = dataclasses.replace(cfg, gradient_checkpointing=True)
        ckpt = plan_memory(cfg, peft_model, dataset, layer, n_layers, k).estimate
        name = str(n) if n else "as is"
        print(f"{name:>6} {plain / 2**30:>13.1f} {ckpt / 2**30:>19.1f}", flush=True)


def run_child(version: tuple[str, list[str]], mode: str, extra: list[str]) -> dict:
    """One child of ``version`` (its src folder and its own child flags)."""
    src, flags = version
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, __file__, "--child", mode, *flags, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"oom": True, "error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", help="src folder of the code to compare against")
    p.add_argument("--data", default=DATA, help="BeaverTails CSV (prompt, response, value)")
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--layer",
        type=int,
        help="target block (default: seer's, block 24 of 30; the figures in "
        "docs/performance.md from before 2026-12-02 are at block 14, the default then)",
    )
    p.add_argument("--micro-batch-size", type=int, help="memory table: gradient caching")
    p.add_argument("--limit-gb", type=float, default=21.0, help="address-space cap of a child")
    p.add_argument("--steps", type=int, default=3, help="timed speed steps after 1 warm-up")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of speed children")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (current code)")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--estimate-only", action="store_true", help="the memory plan's estimates")
    p.add_argument("--only", choices=("base", "current"), help="measure one version only")
    p.add_argument(
        "--allocators",
        action="store_true",
        help="also measure the current code with --allocator release (freed blocks to the OS)",
    )
    p.add_argument("--allocator", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("memory", "speed"), help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


Versions = dict[str, tuple[str, list[str]]]


def _memory_table(args: argparse.Namespace, versions: Versions) -> dict:
    results: dict[str, dict[int, dict]] = {v: {} for v in versions}
    print(f"{'tokens':>6} " + " ".join(f"{v + ' peak MiB':>18} {'step MiB':>9}" for v in versions))
    for n in args.lengths:
        extra = ["--length", str(n), "--batch-size", str(args.batch_size), "--data", args.data]
        extra += ["--micro-batch-size", str(args.micro_batch_size)] * bool(args.micro_batch_size)
        extra += ["--limit-gb", str(args.limit_gb)]
        extra += ["--layer", str(args.layer)] * (args.layer is not None)
        for v, version in versions.items():
            results[v][n] = run_child(version, "memory", extra)
        cells = []
        for v in versions:
            r = results[v][n]
            if r.get("error"):
                print(f"{v} at {n} tokens: {r['error']}")
            if r.get("oom"):
                cells.append(f"{'> ' + str(int(args.limit_gb * 1024)):>18} {'oom':>9}")
            else:
                gc = "*" if r["checkpointing"] else " "
                cells.append(f"{r['peak_mib']:>17.0f}{gc} {r['growth_mib']:>9.0f}")
                if r.get("estimate_mib"):
                    cells.append(f"(estimated step {r['estimate_mib']:.0f})")
        print(f"{n:>6} " + " ".join(cells), flush=True)
    print("* gradient checkpointing on; oom: allocation failed at the address-space cap")
    return results


def _speed(args: argparse.Namespace, versions: Versions) -> None:
    variants = [(v, version, False) for v, version in versions.items()]
    if args.bf16:
        variants.append(("current+bf16", versions["current"], True))
    extra = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--data", args.data]
    extra += ["--threads", str(args.threads)]
    extra += ["--layer", str(args.layer)] * (args.layer is not None)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for _ in range(args.rounds):  # alternate, so that background load hits every variant
        for name, version, autocast in variants:
            runs[name].append(run_child(version, "speed", extra + ["--autocast"] * autocast))
    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "s_per_token" in r]
        if not ok:
            print(f"speed {name}: failed ({rs[0].get('error')})")
            continue
        s_tok = statistics.median(r["s_per_token"] for r in ok)
        mflops = statistics.median(r["model_flops"] for r in ok)
        peak = statistics.median(r["matmul_fp32_flops"] for r in ok)
        summary[name] = s_tok
        print(
            f"speed {name}: {1e3 * s_tok:.2f} ms per real token, "
            f"{statistics.median(r['s_per_step'] for r in ok):.2f} s/step, model "
            f"{mflops / 1e9:.1f} GFLOP/s = {100 * mflops / peak:.0f}% of a float32 2048^2 "
            f"matmul ({peak / 1e9:.0f} GFLOP/s, {ok[0]['threads']} threads), {len(ok)} rounds, "
            f"{100 * ok[0]['real_share']:.0f}% of padded tokens real, gradient checkpointing "
            f"{'on' if ok[0]['checkpointing'] else 'off'}"
        )
    if "base" in summary and "current" in summary:
        print(f"seconds per real token current/base: {summary['current'] / summary['base']:.3f}")
    if "current+release" in summary:
        ratio = summary["current+release"] / summary["current"]
        print(f"seconds per real token --allocator release/system: {ratio:.3f}")
    if "current+bf16" in summary:
        print(f"step speed bf16/float32: {summary['current'] / summary['current+bf16']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.estimate_only:
        estimates(args)
        return
    if args.child:
        result = child_memory(args) if args.child == "memory" else child_speed(args)
        print(json.dumps(result), flush=True)
        return
    current = str(Path(__file__).resolve().parents[1] / "src")
    versions: Versions = {"current": (current, [])}
    if args.base_src:
        versions = {"base": (args.base_src, []), **versions}
    if args.only:
        versions = {args.only: versions[args.only]}
    if args.allocators:
        versions["current+release"] = (current, ["--allocator", "release"])
    micro = f", micro-batches of {args.micro_batch_size}" if args.micro_batch_size else ""
    shown = {v: " ".join([src, *flags]) for v, (src, flags) in versions.items()}
    print(f"B={args.batch_size} pairs{micro}, embedded model, float32; versions: {shown}")
    if not args.no_speed:
        _speed(args, versions)
    if args.no_memory:
        return
    results = _memory_table(args, versions).get("current", {})
    if 512 in results and 1024 in results and not (results[512].get("oom")):
        p512, p1024 = results[512]["peak_mib"], results[1024].get("peak_mib", float("nan"))
        growth = p1024 / p512 if not results[1024].get("oom") else float("inf")
        print(f"peak_512={p512:.0f} growth_1024_over_512={growth:.2f}")


if __name__ == "__main__":
    main()
