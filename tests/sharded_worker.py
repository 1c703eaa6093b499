"""One process of a multi-process test run (tests/test_sharded.py), started by a launcher
(`accelerate launch` with an FSDP config, or `torchrun` as two machines).

    python sharded_worker.py step FOLDER [--tied] [--micro N]   # this process's first-step losses
    python sharded_worker.py train FOLDER NAME [--resume] [--slow]   # a whole run
    python sharded_worker.py cut FOLDER [--tied]   # which base weights a cut pass leaves whole
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from conftest import make_tokenizer, tiny_llama  # noqa: E402

from seer.core.architecture import get_layers  # noqa: E402
from seer.core.data import load_concepts  # noqa: E402
from seer.core.layers import capture_layers, run_until  # noqa: E402
from seer.training.build import build_trainer  # noqa: E402
from seer.training.config import TrainConfig  # noqa: E402
from seer.training.retain import load_retain  # noqa: E402
from seer.training.sharding import is_sharded  # noqa: E402
from seer.training.train import close_process_group, train  # noqa: E402
from seer.training.trainer import SeerTrainer  # noqa: E402

PAIRS = 4  # pairs per process and step


def settings(folder: Path, **kw) -> dict:
    values = dict(
        model="tiny",
        data=str(folder / "c.jsonl"),
        retain_data=str(folder / "r.jsonl"),
        epochs=2,
        batch_size=PAIRS,
        layer=1,
        test_fraction=0.34,
        lora_dropout=0.0,
        logging_steps=1,
    )
    return values | kw


def lora_b(model: torch.nn.Module) -> None:
    """Non-zero LoRA B (the same on every process): the adapter changes what the model
    computes, so a reference pass made with the adapter on would give l2 = KL = 0."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def step_trainer(
    folder: Path, name: str, tied: bool = False, micro: int | None = None
) -> SeerTrainer:
    """The trainer of a tiny run on ``folder``'s data, writing ``folder / name``, before its
    first step, with a non-zero LoRA B (:func:`lora_b`); ``tied``: the LM head shares the
    embedding matrix (as SmolLM2's and Gemma's do); ``micro``: ``--micro-batch-size``."""
    tok = make_tokenizer()
    cfg = TrainConfig(output=str(folder / name), **settings(folder, micro_batch_size=micro))
    rows = load_concepts(cfg.data, "concept", "prompt", "response")
    model = tiny_llama(len(tok))
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    trainer = build_trainer(
        cfg,
        model,
        tok,
        rows,
        load_retain(cfg.retain_data),
        output_dir=str(folder / name),
        progress=False,
    )
    lora_b(trainer.model)
    return trainer


def first_step(folder: Path, tied: bool, micro: int | None) -> dict:
    """Loss parts of one step on rows ``PAIRS * rank ...`` of the schedule."""
    trainer = step_trainer(folder, "step", tied=tied, micro=micro)
    rank = torch.distributed.get_rank()
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[PAIRS * rank + i] for i in range(PAIRS)])
    trainer.training_step(trainer.model, batch)
    parts = {
        k: v[0] for k, v in trainer._metrics.items() if k in ("contrastive", "retain_l2", "kl")
    }
    return {"rank": rank, "sharded": is_sharded(trainer.model), **parts}


def cut_pass(folder: Path, tied: bool) -> dict:
    """The base weights held whole (not a DTensor shard) at the cut of a pass cut after block 1
    (the representation pass of a step), and after that pass has ended."""
    model = step_trainer(folder, "cut", tied=tied).model

    def whole() -> list[str]:
        frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
        return sorted(n for n, p in frozen if not hasattr(p, "to_local"))

    seen: dict[str, list[str]] = {}

    def at_cut(*_: object) -> None:
        seen["cut"] = whole()

    # registered before capture_layers' hook, which ends the pass
    probe = get_layers(model)[1].register_forward_hook(at_cut)
    with torch.no_grad(), capture_layers(model, [1], stop_after=True):
        run_until(model, input_ids=torch.tensor([[1, 2, 3, 4]]))
    probe.remove()
    return {"rank": torch.distributed.get_rank(), "at_cut": seen["cut"], "after": whole()}


def whole_run(folder: Path, name: str, resume: bool, slow: bool) -> dict:
    if slow:  # slow enough to be killed after its first checkpoint; results unchanged
        step = SeerTrainer.training_step

        def slow_step(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            time.sleep(4.0)
            return out

        SeerTrainer.training_step = slow_step
    tok = make_tokenizer()
    model = tiny_llama(len(tok))
    cfg = TrainConfig(
        output=str(folder / name),
        checkpoint_every=1,
        gradient_checkpointing=True,
        resume=resume,
        **settings(folder, epochs=4),
    )
    train(cfg, model=model, tokenizer=tok, progress=False)
    # each process's part of the base weights against a fresh copy of them (no collective:
    # FSDP2 shards dim 0 in equal chunks, rank r holding chunk r)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    base = dict(tiny_llama(len(tok)).named_parameters())
    worst, shards = 0.0, 0
    for fqn, param in model.named_parameters():
        if "lora_" in fqn:
            continue
        mine, whole = param.detach(), base[fqn.replace(".base_layer", "")].detach()
        if hasattr(mine, "to_local"):  # a DTensor: this process's shard
            mine, whole, shards = mine.to_local(), torch.chunk(whole, world)[rank], shards + 1
        worst = max(worst, (mine - whole).abs().max().item())
    return {"rank": rank, "base_change": worst, "shards": shards}


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "step":
        micro = int(sys.argv[sys.argv.index("--micro") + 1]) if "--micro" in sys.argv else None
        out = first_step(folder, "--tied" in sys.argv, micro)
    elif mode == "cut":
        out = cut_pass(folder, "--tied" in sys.argv)
    else:
        out = whole_run(folder, sys.argv[3], "--resume" in sys.argv, "--slow" in sys.argv)
    # One write of the whole line (under PIPE_BUF, so atomic): the processes share one pipe,
    # and print's separate writes of the text and its newline could interleave.
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(out) + "\n").encode())
    # both processes done before either tears its process group down (which a script must do:
    # left to Python's shutdown, a gloo group can abort a finished process; test_distributed.py)
    torch.distributed.barrier()
    close_process_group()
