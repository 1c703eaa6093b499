"""What a model's read states look like, block by block: their norm, the largest coordinate,
the cosines of same- and different-concept texts (raw and centered on their mean), and how
well nearest-prototype reading separates the concepts (leave-one-out), on BeaverTails-6.

    python studies/hidden_structure.py gemma3-270m 14     # --model value, target block
    python studies/hidden_structure.py embedded 24

Read at the last real token of each text (prompt + response, ``max_length`` 256), 12 texts
per concept (seed 0), with the base model; one forward pass per text. docs/models.md.
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seer.core.formatting import encode
from seer.core.models import load_model


def _texts(path: Path, per_concept: int) -> list[dict]:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    random.Random(0).shuffle(rows)
    picked: dict[str, list[dict]] = {}
    for row in rows:
        group = picked.setdefault(row["value"], [])
        if len(group) < per_concept:
            group.append(row)
    return [r for group in picked.values() for r in group]


def _scores(z: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """Mean same- and different-concept cosine, and leave-one-out prototype accuracy."""
    z = F.normalize(z, dim=-1)
    cos = z @ z.T
    same = labels[:, None] == labels[None]
    off = ~torch.eye(len(z), dtype=torch.bool)
    hits = 0
    for i in range(len(z)):
        keep = torch.arange(len(z)) != i
        protos = torch.stack(
            [F.normalize(z[keep & (labels == k)].mean(0), dim=0) for k in labels.unique()]
        )
        hits += int(labels.unique()[(protos @ z[i]).argmax()] == labels[i])
    return cos[same & off].mean().item(), cos[~same].mean().item(), hits / len(z)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a --model value: embedded, gemma3-270m or a folder")
    parser.add_argument("block", type=int, help="the block whose first-token norm is shown")
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/beavertails_multiclass.csv")
    )
    parser.add_argument("--per-concept", type=int, default=12)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, device="cpu")
    rows = _texts(args.data, args.per_concept)
    concepts = sorted({r["value"] for r in rows})
    started = time.time()
    states, first = [], []
    for row in rows:
        e = encode(tokenizer, row["prompt"], row["response"], "full", 256)
        hidden = model(torch.tensor([e.input_ids]), output_hidden_states=True).hidden_states
        states.append(torch.stack([h[0, e.last] for h in hidden[1:]]))
        first.append(hidden[args.block + 1][0, 0].norm().item())
    s = torch.stack(states).float()  # [texts, blocks, H]
    labels = torch.tensor([concepts.index(r["value"]) for r in rows])
    print(
        f"{args.model}: {len(rows)} texts, {time.time() - started:.0f} s; first-token norm at "
        f"block {args.block}: {sum(first) / len(first):,.0f}"
    )
    print(
        "| block | mean norm | largest coordinate (mean abs) | raw cos same / diff "
        "| centered cos same / diff | LOO prototype accuracy raw / centered |"
    )
    print("|---|---|---|---|---|---|")
    for b in range(s.shape[1]):
        z = s[:, b]
        raw, centered = _scores(z, labels), _scores(z - z.mean(0), labels)
        top = z.abs().mean(0).max(0)
        print(
            f"| {b} | {z.norm(dim=-1).mean():,.0f} | {top.values:,.0f} (dim {int(top.indices)}) "
            f"| {raw[0]:.3f} / {raw[1]:.3f} | {centered[0]:.3f} / {centered[1]:.3f} "
            f"| {raw[2]:.3f} / {centered[2]:.3f} |"
        )


if __name__ == "__main__":
    main()
