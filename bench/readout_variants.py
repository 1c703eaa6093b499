"""How much of a trained run's accuracy is the readout's: nearest-prototype accuracy on the
held-out split with the raw states (seer's readout for ``--representation raw``), the states
centred on the training split's mean, and centred and scaled to unit variance per dimension
(a fixed whitening), for the trained model and for its base model at the same block.

Each variant's statistics and prototypes come from the run's training split only; no label
of the test split is used. A variant that wins here only at the readout says little about
training with it (``--representation centered`` also centres the training loss).

    python bench/readout_variants.py runs/study/deep3-bt6-s0 runs/study/deep-math7-s0
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np

from seer.core.represent import representations
from seer.core.tables import read_jsonl
from seer.evaluation.metrics import compute_prototypes, cosine_scores
from seer.inference.explainer import Explainer


def accuracy(train: np.ndarray, y_train: list[str], test: np.ndarray, y_test: list[str]) -> float:
    names, prototypes = compute_prototypes(train, y_train)
    top = cosine_scores(test, prototypes).argmax(axis=1)
    return float(np.mean([names[i] == y for i, y in zip(top, y_test, strict=True)]))


def variants(train: np.ndarray, y_train: list[str], test: np.ndarray, y_test: list[str]) -> dict:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return {
        "raw": accuracy(train, y_train, test, y_test),
        "centred": accuracy(train - mean, y_train, test - mean, y_test),
        "whitened": accuracy((train - mean) / std, y_train, (test - mean) / std, y_test),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (with split/train.jsonl, test.jsonl)")
    args = p.parse_args(argv)
    print("| run | block | model | raw | centred | whitened |\n|---|---|---|---|---|---|")
    for path in map(Path, args.runs):
        explainer = Explainer.from_run(path)
        model, layer = explainer.model, explainer.layer
        split = {s: read_jsonl(path / "split" / f"{s}.jsonl") for s in ("train", "test")}
        rows = {s: [r for r in split[s] if r.get("concept") is not None] for s in split}
        labels = {s: [str(r["concept"]) for r in rows[s]] for s in rows}
        positions = tuple(json.loads((path / "seer.json").read_text())["positions"])
        for name in ("base", "seer"):
            off = model.disable_adapter() if name == "base" else contextlib.nullcontext()
            with off:
                states = {
                    s: representations(
                        model, explainer.tokenizer, rows[s], [layer], positions, raw=True
                    )[layer]
                    for s in rows
                }
            found = variants(states["train"], labels["train"], states["test"], labels["test"])
            cells = " | ".join(f"{found[k]:.3f}" for k in ("raw", "centred", "whitened"))
            print(f"| {path.name} | {layer} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
