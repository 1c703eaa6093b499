"""What a 6-way (or K-way) concept classifier of the same size reaches on the same split: a
reference for SEER's held-out self-explanation accuracy, not a SEER method.

The model gets the adapter `seer train` gives it (LoRA of the same rank on the same modules of
blocks 0..layer, from ``TrainConfig``'s defaults) and a cosine classifier on the target
block's representation (``logits = cos(z, w_k) / 0.1`` with learned ``w_k``: seer's readout
with prototypes learned by cross-entropy), trained on the training split alone with plain
cross-entropy (no retain loss: the model may drift as far as it likes) for ``--epochs``,
in batches of ``--batch-size`` texts, AdamW at seer's default learning rate. After each epoch
it prints the accuracy on the calibration and the held-out split (the split ``seer train``
makes with the same seed and fractions); the held-out figure at the epoch with the best
calibration accuracy is the one to quote.

    python studies/ceiling.py --data ../shared/data/beavertails_multiclass.csv \
        --concept-column value --max-per-concept 125 --positions mean --epochs 3
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from read_spans import data_arguments, load_split  # studies/, beside this script

from seer.core.architecture import get_layers
from seer.core.formatting import encode, pad_batch
from seer.core.layers import capture_layers, run_until
from seer.core.models import load_model
from seer.core.represent import pick_positions
from seer.training.build import add_lora, default_layer, learning_rate, lora_targets
from seer.training.config import TrainConfig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data_arguments(p)
    p.add_argument("--positions", nargs="+", default=["last"])
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    config = TrainConfig(positions=tuple(args.positions), seed=args.seed)
    parts = load_split(args)
    split = dict(zip(("train", "calibration", "test"), parts, strict=True))
    concepts = sorted({ex["concept"] for rows in parts for ex in rows})
    model, tokenizer = load_model("embedded")
    layer = default_layer(len(get_layers(model))) if args.layer is None else args.layer
    lr = learning_rate(config, model)
    model = add_lora(config, model, lora_targets(model, config.target_modules), layer)
    head = torch.nn.Parameter(torch.randn(len(concepts), model.config.hidden_size) * 0.02)
    params = [q for q in model.parameters() if q.requires_grad] + [head]
    optimizer = torch.optim.AdamW(params, lr=lr)
    encoded = {
        name: [(encode(tokenizer, r["prompt"], r["response"]), concepts.index(r["concept"]))
               for r in rows]
        for name, rows in split.items()
    }  # fmt: skip

    def logits(batch: list) -> torch.Tensor:
        padded = pad_batch([e for e, _ in batch], config.positions, tokenizer.pad_token_id)
        with capture_layers(model, [layer], stop_after=True) as hidden:
            run_until(model, input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        states = pick_positions(hidden[layer], padded["positions"], padded["starts"])
        z = F.normalize(states, dim=-1).mean(1)  # several positions: the mean of their cosines
        return F.normalize(z, dim=-1) @ F.normalize(head, dim=-1).T / 0.1

    @torch.no_grad()
    def accuracy(name: str) -> float:
        model.eval()
        rows, hits = encoded[name], 0
        for i in range(0, len(rows), 16):
            batch = rows[i : i + 16]
            hits += int((logits(batch).argmax(-1) == torch.tensor([y for _, y in batch])).sum())
        return hits / len(rows)

    rng, started = random.Random(args.seed), time.time()
    print(f"block {layer}, positions {args.positions}, lr {lr}, {len(encoded['train'])} texts")
    print("| epoch | train loss | calibration accuracy | held-out accuracy | s |")
    print("|---|---|---|---|---|")
    for epoch in range(1, args.epochs + 1):
        model.train()
        order, losses = list(encoded["train"]), []
        rng.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = F.cross_entropy(logits(batch), torch.tensor([y for _, y in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        cal, test = accuracy("calibration"), accuracy("test")
        mean_loss = sum(losses) / len(losses)
        seconds = time.time() - started
        print(f"| {epoch} | {mean_loss:.3f} | {cal:.3f} | {test:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
