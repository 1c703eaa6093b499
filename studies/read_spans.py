"""Where to read a concept off the base model: the last token, the end of the user turn, or
the mean state over the user's message and the reply (``--positions mean``), at several
blocks, on one dataset's seeded split, with no training.

For each read span and block it prints the held-out accuracy of nearest-prototype reading
(seer's readout: cosine to each concept's mean normalized training state) and of an external
logistic-regression probe on the same states. The split is the one ``seer train`` makes with
the same ``--max-per-concept``, fractions and seed (prototypes and probe from the training
part only). One forward pass per batch serves every block and span.

    python studies/read_spans.py --data ../shared/data/beavertails_multiclass.csv \
        --concept-column value --max-per-concept 125
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from seer.core.data import load_concepts
from seer.core.formatting import POSITIONS
from seer.core.models import load_model
from seer.core.represent import representations
from seer.core.splits import split_three
from seer.evaluation.metrics import probe_accuracy
from seer.readout import compute_prototypes, cosines


def prototype_accuracy(train: np.ndarray, y_train: list, test: np.ndarray, y_test: list) -> float:
    names, prototypes = compute_prototypes(train, y_train)
    top = cosines(test, prototypes).argmax(axis=1)
    return float(np.mean([names[i] == y for i, y in zip(top, y_test, strict=True)]))


def data_arguments(p: argparse.ArgumentParser) -> None:
    """The concept data and its split, as ``seer train`` takes them (also studies/ceiling.py)."""
    p.add_argument("--data", required=True)
    p.add_argument("--concept-column", default="concept")
    p.add_argument("--response-column", default="response", help="'' for prompts only")
    p.add_argument("--max-per-concept", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def load_split(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, calibration and test rows: the split ``seer train`` makes with these options
    and the default fractions."""
    examples = load_concepts(
        args.data,
        args.concept_column,
        response_column=args.response_column or None,
        max_per_concept=args.max_per_concept,
        seed=args.seed,
    )
    return split_three(examples, 0.2, 0.2, args.seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data_arguments(p)
    p.add_argument("--blocks", type=int, nargs="+", default=[14, 20, 24, 27])
    p.add_argument("--model", default="embedded")
    args = p.parse_args(argv)
    train, _, test = load_split(args)
    model, tokenizer = load_model(args.model)
    started = time.time()
    states = {
        name: representations(model, tokenizer, rows, args.blocks, POSITIONS, progress=name)
        for name, rows in (("train", train), ("test", test))
    }
    labels = {"train": [r["concept"] for r in train], "test": [r["concept"] for r in test]}
    print(f"\n{len(train)} training and {len(test)} held-out texts, {time.time() - started:.0f} s")
    print("| read span | block | prototype accuracy | probe accuracy |\n|---|---|---|---|")
    hidden = model.config.hidden_size
    for k, span in enumerate(POSITIONS):
        for block in args.blocks:
            tr, te = (states[s][block][:, k * hidden : (k + 1) * hidden] for s in ("train", "test"))
            proto = prototype_accuracy(tr, labels["train"], te, labels["test"])
            probe = probe_accuracy(tr, labels["train"], te, labels["test"], seed=args.seed)
            print(f"| {span} | {block} | {proto:.3f} | {probe:.3f} |", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
