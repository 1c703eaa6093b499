"""Time one SEER training step: the authors' recipe (reference) against seer's own step.

Both variants run interleaved in this one process, on the same model (one PEFT model, one LoRA)
and the same batches, and use the same loss functions from ``seer.core.losses``:

(a) reference, written from the paper's recipe: request left-padded to 512 tokens, response
    right-padded to 512, retain text right-padded to 1024; six full forward passes: frozen
    (adapter off, no grad) on retain (all hidden states, stacked) and view 1; with LoRA on
    retain (all hidden states), view 1 (hook at the target layer), view 2, view 1 again (KL);
    backward; AdamW. It drops outputs as early as it can (a lower bound on its memory).
(b) seer: ``SeerTrainer.compute_loss`` of the trainer from ``seer.training.build.build_trainer``
    (what ``seer train`` runs; objective="paper"), then backward and the trainer's optimizer.

See docs/performance.md for how memory and FLOPs (MFU) are counted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from seer.core import losses
from seer.core.architecture import get_layers
from seer.core.data import load_concepts
from seer.core.formatting import Encoded, pad_batch
from seer.core.layers import capture_layers
from seer.core.models import load_model
from seer.core.represent import gather_positions
from seer.inference.general import instructions
from seer.training.build import build_trainer, default_layer
from seer.training.config import TrainConfig

PARTS = ("contrastive", "retain_l2", "kl")
KEYS = ("view1", "view2", "retain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded", help="HF path, or 'embedded' (SmolLM2-135M)")
    p.add_argument("--random-llama8b", action="store_true", help="see docs/performance.md")
    p.add_argument("--data", default="../shared/data/beavertails_multiclass.csv")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--gradient-checkpointing", action="store_true", help="for both variants")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--layer", type=int, default=None, help="target block (default: seer's)")
    p.add_argument("--steps", type=int, default=3, help="timed steps of ours, after 1 warm-up")
    p.add_argument("--ref-steps", type=int, default=None, help="timed reference steps (<= steps)")
    lengths = ("REQUEST", "RESPONSE", "RETAIN")
    p.add_argument("--ref-lengths", type=int, nargs=3, default=(512, 512, 1024), metavar=lengths)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.random_llama8b:
        args.dtype = "bf16"
    args.ref_steps = min(args.steps, args.ref_steps or args.steps)
    return args


def _build(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    if args.random_llama8b:
        _, tokenizer = load_model("embedded", device="cpu")
        size = dict(hidden_size=4096, intermediate_size=14336, vocab_size=128256)
        heads = dict(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
        with torch.device(args.device):  # fp32 for the loss check; cast to bf16 after it
            model = AutoModelForCausalLM.from_config(LlamaConfig(**size, **heads))
        model.config.use_cache = False
    else:
        model, tokenizer = load_model(args.model, device=args.device, dtype=torch.float32)
    n_layers = len(get_layers(model))
    layer = default_layer(n_layers) if args.layer is None else args.layer
    B, gc = args.batch_size, args.gradient_checkpointing
    config = TrainConfig(
        objective="paper",
        batch_size=B,
        layer=layer,
        gradient_checkpointing=gc,
        epochs=1.0,
        seed=args.seed,
    )
    examples = load_concepts(args.data, "value", "prompt", "response")
    safe = [e["response"] for e in examples if e["concept"] == "safe" and e["response"]]
    retain = [{"prompt": q, "response": safe[i]} for i, q in enumerate(instructions("retain"))]
    # The trainer exactly as `seer train` builds it (LoRA, schedule, memory plan, arguments).
    output_dir = tempfile.mkdtemp(prefix="seer-bench-")
    trainer = build_trainer(config, model, tokenizer, examples, retain, output_dir=output_dir)
    trainer.current_gradient_accumulation_steps = 1
    peft_model, dataset, collator = trainer.model, trainer.train_dataset, trainer.data_collator
    # A fresh LoRA is the identity, which would make both retain terms exactly 0 at the loss
    # check; a seeded random B makes the adapted model differ from the base.
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    batches = [[dataset[i * B + j] for j in range(B)] for i in range(1 + args.steps)]
    lr = trainer.args.learning_rate
    trained = [p for p in peft_model.parameters() if p.requires_grad]
    opt_ref = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    bench = dict(model=peft_model, tokenizer=tokenizer, config=config, layer=layer, args=args)
    bench.update(batches=batches, trainer=trainer, collator=collator, opt_ref=opt_ref)
    bench["opt_ours"] = trainer.create_optimizer()
    return bench


def pad_fixed(
    encoded: list[Encoded], positions: tuple, pad_id: int, request_len: int, response_len: int
) -> dict[str, torch.Tensor]:
    """The authors' layout: request (up to ``user_end``) left-padded to ``request_len``,
    the rest right-padded to ``response_len``; either part is truncated at its end."""
    ids = torch.full((len(encoded), request_len + response_len), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    pos = torch.zeros((len(encoded), len(positions)), dtype=torch.long)
    for i, e in enumerate(encoded):
        cut = e.user_end + 1 if request_len else 0  # request_len 0: the whole text right-padded
        req, resp = e.input_ids[:cut][:request_len], e.input_ids[cut:][:response_len]
        start = request_len - len(req)
        ids[i, start : request_len + len(resp)] = torch.tensor(req + resp)
        mask[i, start : request_len + len(resp)] = 1
        for k, name in enumerate(positions):
            p = e.position(name)
            in_request = start + min(p, len(req) - 1)
            pos[i, k] = in_request if p < cut else request_len + min(p - cut, len(resp) - 1)
    return {"input_ids": ids, "attention_mask": mask, "positions": pos}


def reference_batch(items: list[dict], bench: dict, lengths: tuple[int, int, int] | None) -> dict:
    """Pad like the authors (``lengths``) or, for the loss check, like seer (``None``)."""
    positions, pad_id = bench["config"].positions, bench["tokenizer"].pad_token_id
    if lengths is None:
        return {k: pad_batch([it[k] for it in items], positions, pad_id) for k in KEYS}
    fixed = {"view1": lengths[:2], "view2": lengths[:2], "retain": (0, lengths[2])}
    return {k: pad_fixed([it[k] for it in items], positions, pad_id, *fixed[k]) for k in KEYS}


def reference_loss(model, batch: dict, config: TrainConfig, layer: int) -> tuple:
    v1, v2, retain = batch["view1"], batch["view2"], batch["retain"]

    def run(b: dict, **kw):
        return model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False, **kw
        )

    with torch.no_grad(), model.disable_adapter():
        ref_hidden = torch.stack(run(retain, output_hidden_states=True).hidden_states)
        ref_logits = run(v1).logits
    hidden = torch.stack(run(retain, output_hidden_states=True).hidden_states)
    with capture_layers(model, [layer]) as h1:
        run(v1)
    with capture_layers(model, [layer]) as h2:
        run(v2)
    logits = run(v1).logits
    keep = slice(1, layer + 2)  # hidden_states[i + 1] is the output of block i
    parts = {
        "contrastive": losses.info_nce(
            gather_positions(h1[layer], v1["positions"]),
            gather_positions(h2[layer], v2["positions"]),
            config.temperature,
        ),
        "retain_l2": losses.retain_l2(
            list(hidden[keep]), list(ref_hidden[keep]), retain["attention_mask"]
        ),
        "kl": losses.next_token_kl(ref_logits, logits, v1["attention_mask"]),
    }
    loss = (
        config.contrastive_weight * parts["contrastive"]
        + config.retain_l2_weight * parts["retain_l2"]
        + config.kl_weight * parts["kl"]
    )
    return loss, parts


def _to(batch: dict, device: str) -> dict:  # nested dicts of tensors
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def loss_of(variant: str, bench: dict, items: list[dict], lengths) -> tuple:
    device = bench["args"].device
    if variant == "reference":
        batch = _to(reference_batch(items, bench, lengths), device)
        return reference_loss(bench["model"], batch, bench["config"], bench["layer"])
    trainer = bench["trainer"]
    trainer._metrics.clear()
    loss = trainer.compute_loss(bench["model"], _to(bench["collator"](items), device))
    return loss, {k: trainer._metrics[k][-1] for k in PARTS}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(variant: str, bench: dict, items: list[dict]) -> tuple[float, float, float]:
    """One step (padding, losses, backward, optimizer): wall and process CPU seconds, and on
    CUDA the peak bytes allocated above what was allocated before it (else 0)."""
    args = bench["args"]
    opt = bench["opt_ref" if variant == "reference" else "opt_ours"]
    cuda = args.device.startswith("cuda")
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    _sync(args.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    loss, _ = loss_of(variant, bench, items, tuple(args.ref_lengths))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(args.device)
    peak = torch.cuda.max_memory_allocated() - base if cuda else 0.0
    return time.perf_counter() - start, time.process_time() - cpu_start, peak


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1))


def _memory_child(args: argparse.Namespace, variant: str, n_steps: int, queue) -> None:
    bench = setup(args)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    before = _status_kib("VmRSS")
    for items in bench["batches"][1 : 1 + n_steps]:
        train_step(variant, bench, items)
    queue.put((_status_kib("VmHWM") - before) * 1024)


def cpu_peak(args: argparse.Namespace, variant: str, n_steps: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_memory_child, args=(args, variant, n_steps, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the {variant} memory run exited with {child.exitcode} (-9: no RAM?)")
    return queue.get(timeout=10)


def setup(args: argparse.Namespace, check: bool = False) -> dict:
    """Build everything; ``check``: run the loss check (in float32) before casting to bf16."""
    bench = _build(args)
    bench["check"] = loss_check(bench) if check else None
    if args.dtype == "bf16":  # base weights only: LoRA weights stay float32, as PEFT keeps them
        for name, param in bench["model"].named_parameters():
            if "lora_" not in name:
                param.data = param.data.to(torch.bfloat16)
    bench["model"].train()
    return bench


def loss_check(bench: dict) -> bool:
    """Both losses in float32, dropout off, on identical inputs (seer's padding)."""
    bench["model"].eval()
    items = bench["batches"][0]
    with torch.no_grad():
        ref, ref_parts = loss_of("reference", bench, items, None)
        ours, our_parts = loss_of("ours", bench, items, None)
    bench["model"].train()
    ok = True
    for name, a, b in [("total", ref, ours)] + [(k, ref_parts[k], our_parts[k]) for k in PARTS]:
        a, b = float(a), float(b)
        rel = abs(a - b) / max(abs(a), abs(b), 1e-12)
        ok &= rel < 1e-3
        print(f"loss check {name:12s} reference={a:.6g} ours={b:.6g} rel.diff={rel:.2e}")
    return ok


def matmul_peak(device: str, n: int = 8192) -> float:
    """FLOP/s of the best of 20 bf16 n x n matmuls."""
    a, times = torch.randn(n, n, device=device, dtype=torch.bfloat16), []
    for _ in range(20):
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def tokens(variant: str, bench: dict, items: list[dict]) -> tuple[list[int], int]:
    """Real tokens of view 1, view 2, retain as ``variant`` pads (and truncates) them; padded."""
    if variant == "ours":
        batch = bench["collator"](items)
    else:
        batch = reference_batch(items, bench, tuple(bench["args"].ref_lengths))
    real = [int(batch[k]["attention_mask"].sum()) for k in KEYS]
    return real, sum(batch[k]["input_ids"].numel() for k in KEYS)


def step_flops(variant: str, bench: dict, items: list[dict]) -> float:
    """Model FLOPs of a step on real tokens: 2 * params per token forward, 2 more backward
    (input gradients only: the base is frozen), params = blocks passed (+ LM head if reached);
    attention scores and LoRA are not counted."""
    model, layer = bench["model"], bench["layer"]
    blocks = get_layers(model)
    per_block = sum(p.numel() for n, p in blocks[0].named_parameters() if "lora_" not in n)
    head = model.get_output_embeddings().weight.numel()
    full, cut = len(blocks) * per_block + head, (layer + 1) * per_block
    r1, r2, rr = tokens(variant, bench, items)[0]
    if variant == "reference":  # forward: 2 frozen + 4 adapted passes, all full; backward:
        # retain through all blocks (the stack), views 1 and 2 from the hook, view 1 from logits
        return 2 * (full * (2 * rr + 4 * r1 + r2) + (full - head) * rr + cut * (r1 + r2))
    return 2 * (cut * rr + full * r1) + 4 * (full * r1 + cut * (r2 + rr))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = setup(args, check=True)
    cuda = args.device.startswith("cuda")
    print(
        f"device={args.device} model={'random-llama8b' if args.random_llama8b else args.model} "
        f"dtype={args.dtype} batch={args.batch_size} pairs, layer={bench['layer']}, "
        f"gradient_checkpointing={args.gradient_checkpointing}, ref_lengths="
        f"{tuple(args.ref_lengths)}, timed steps: ours={args.steps} reference={args.ref_steps}"
        f" (after 1 warm-up each), torch threads={torch.get_num_threads()}"
    )
    n_steps = {"reference": args.ref_steps, "ours": args.steps}
    # CPU memory first, while this process holds only the model: children run one at a time.
    mem = {v: cpu_peak(args, v, n) for v, n in n_steps.items()} if not cuda else {}
    runs: dict[str, list] = {"reference": [], "ours": []}  # (wall, cpu, peak, items) per step
    for i, items in enumerate(bench["batches"]):
        for variant, n in n_steps.items():
            if i <= n:
                wall, cpu, peak = train_step(variant, bench, items)
                note = " warm-up" * (i == 0)
                print(f"step {i} {variant}: {wall:.2f} s (CPU time {cpu:.2f} s){note}", flush=True)
                if i:
                    runs[variant].append((wall, cpu, peak, items))
    flops_peak = matmul_peak(args.device) if cuda else None
    s_ex, tok_s, cpu_s = {}, {}, {}
    for v, rs in runs.items():
        wall = statistics.median(r[0] for r in rs)
        s_ex[v], cpu_s[v] = wall / args.batch_size, statistics.median(r[1] for r in rs)
        counts = [tokens(v, bench, r[3]) for r in rs]
        tok_s[v] = statistics.median(sum(c[0]) / r[0] for c, r in zip(counts, rs, strict=True))
        real_share = sum(sum(c[0]) for c in counts) / sum(c[1] for c in counts)
        if cuda:
            mem[v] = max(r[2] for r in rs)
        line = (
            f"{v}: {wall:.3f} s/step (median of {len(rs)}; CPU time {cpu_s[v]:.3f} s), "
            f"{s_ex[v]:.3f} s/example, {tok_s[v]:.1f} real tokens/s ({100 * real_share:.0f}%"
            f" of padded tokens are real), peak memory {mem[v] / 2**20:.0f} MiB"
        )
        if flops_peak:
            mfu = statistics.median(step_flops(v, bench, r[3]) / r[0] for r in rs) / flops_peak
            line += f", MFU {100 * mfu:.1f}% (bf16 matmul peak {flops_peak / 1e12:.0f} TFLOP/s)"
        print(line)
    how = "cuda.max_memory_allocated in a step minus allocated before it" if cuda else ""
    print(f"memory: {how or 'peak RSS growth of a fresh spawned process after setup'}")
    speedup, memory_ratio = s_ex["reference"] / s_ex["ours"], mem["ours"] / mem["reference"]
    print(
        f"ratios ours/reference: seconds per example {1 / speedup:.3f} (CPU time "
        f"{cpu_s['ours'] / cpu_s['reference']:.3f}), real tokens/s "
        f"{tok_s['ours'] / tok_s['reference']:.2f}, peak memory {memory_ratio:.3f}"
    )
    print(
        f"speedup={speedup:.2f} memory_ratio={memory_ratio:.3f} "
        f"loss_check={'pass' if bench['check'] else 'fail'}"
    )


if __name__ == "__main__":
    main()
