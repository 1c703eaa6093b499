"""The units of a model's hidden states, and how much of its representation every text shares.

What seer's readout defaults must not depend on, measured on one model and data set: per decoder
block, the mean and median hidden-state norm over real tokens and the first token's norm
("massive activations"); and at the target block, the mean cosine between the read
representations of different texts, raw and centered (minus their mean), which is what a
cosine-based contrastive loss and cosine prototypes see.

    python studies/hidden_scale.py --model embedded \\
        --data ../shared/data/beavertails_multiclass.csv --concept-column value --texts 16
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from seer.core.architecture import get_layers
from seer.core.data import load_concepts
from seer.core.formatting import encode, pad_batch
from seer.core.layers import capture_layers, run_until
from seer.core.models import load_model
from seer.training.build import default_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--data", required=True)
    parser.add_argument("--concept-column", default="concept")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--layer", type=int, default=None, help="default: seer's default block")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = load_concepts(args.data, args.concept_column, "prompt", "response", seed=0)
    rows = rows[:: max(1, len(rows) // args.texts)][: args.texts]
    n_layers = len(get_layers(model))
    layer = default_layer(n_layers) if args.layer is None else args.layer
    enc = [encode(tokenizer, r["prompt"], r.get("response"), "full", args.max_length) for r in rows]
    batch = pad_batch(enc, ("last",), tokenizer.pad_token_id)
    blocks = list(range(layer + 1))
    with torch.no_grad(), capture_layers(model, blocks, stop_after=True) as hidden:
        run_until(
            model,
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
        )
    mask = batch["attention_mask"].bool()
    print(f"{len(rows)} texts, blocks 0..{layer} of {n_layers}")
    print(f"{'block':>5} {'mean norm':>10} {'median':>8} {'first token':>12}")
    for b in blocks:
        norms = hidden[b].float().norm(dim=-1)
        real = norms[mask]
        print(f"{b:>5} {real.mean():>10.1f} {real.median():>8.1f} {norms[:, 0].mean():>12.1f}")
    z = hidden[layer].float()[torch.arange(len(rows)), batch["positions"][:, 0]]
    off = ~torch.eye(len(rows), dtype=torch.bool)
    for name, v in (("raw", z), ("centered", z - z.mean(0))):
        v = F.normalize(v, dim=-1)
        print(f"mean cosine between texts at block {layer}, {name}: {(v @ v.T)[off].mean():.3f}")


if __name__ == "__main__":
    main()
