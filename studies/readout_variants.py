"""How much of a trained run's accuracy is the readout's: held-out accuracy of several
readouts of the same states, for the trained model and for its base model at the same block.

Prototype readouts (seer's: cosine to each concept's mean normalized training state) of:
``raw`` states (seer's readout for ``--representation raw``), states ``centered`` on the
training split's mean, ``whitened`` (centered and scaled to unit variance per dimension, a
fixed diagonal whitening), and ``zca`` (centered and whitened by the full covariance,
Ledoit-Wolf shrinkage). Two external classifiers of the same states for comparison: ``lda``
(linear discriminant analysis, shrinkage chosen by Ledoit-Wolf) and ``probe`` (logistic
regression on standardised states, C=0.1).

Each variant's statistics, prototypes and classifiers come from the run's training split
only; no label of the test split is used. A variant that wins here only at the readout says
little about training with it (``--representation centered`` also centers the training loss).
``--states DIR`` keeps each run's states (``DIR/<run>[-base].npz``) so that a second call
reads them instead of running the model again.

    python studies/readout_variants.py runs/study/deep3-bt6-s0 runs/study/deep-math7-s0
    python studies/readout_variants.py runs/study/defaults24-*-s? --models seer --states runs/states
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from seer.core.represent import representations
from seer.core.tables import read_jsonl
from seer.inference.explainer import Explainer
from seer.readout import compute_prototypes, cosines

VARIANTS = ("raw", "centered", "whitened", "zca", "lda", "probe")


def accuracy(train: np.ndarray, y_train: list[str], test: np.ndarray, y_test: list[str]) -> float:
    names, prototypes = compute_prototypes(train, y_train)
    top = cosines(test, prototypes).argmax(axis=1)
    return float(np.mean([names[i] == y for i, y in zip(top, y_test, strict=True)]))


def zca(train: np.ndarray) -> np.ndarray:
    """The whitening matrix ``C^-1/2`` of ``train``'s Ledoit-Wolf covariance."""
    values, vectors = np.linalg.eigh(LedoitWolf().fit(train).covariance_)
    return (vectors / np.sqrt(values.clip(1e-12))) @ vectors.T


def variants(train: np.ndarray, y_train: list[str], test: np.ndarray, y_test: list[str]) -> dict:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    w = zca(train)
    scaler = StandardScaler().fit(train)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(train, y_train)
    probe = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(train), y_train)
    return {
        "raw": accuracy(train, y_train, test, y_test),
        "centered": accuracy(train - mean, y_train, test - mean, y_test),
        "whitened": accuracy((train - mean) / std, y_train, (test - mean) / std, y_test),
        "zca": accuracy((train - mean) @ w, y_train, (test - mean) @ w, y_test),
        "lda": float(lda.score(test, y_test)),
        "probe": float(probe.score(scaler.transform(test), y_test)),
    }


def read_states(path: Path, name: str, cache: Path | None) -> dict[str, np.ndarray]:
    """``train``/``test`` states of run ``path`` (``name``: ``seer`` or ``base``) and their
    concepts (``train_y``/``test_y``), from ``cache`` when it holds them."""
    kept = cache / f"{path.name}{'' if name == 'seer' else '-base'}.npz" if cache else None
    if kept is not None and kept.is_file():
        with np.load(kept) as found:
            return {k: found[k] for k in ("train", "train_y", "test", "test_y")}
    explainer = Explainer.from_run(path)
    model, layer = explainer.model, explainer.layer
    positions = tuple(json.loads((path / "seer.json").read_text())["positions"])
    states: dict[str, np.ndarray] = {}
    off = model.disable_adapter() if name == "base" else contextlib.nullcontext()
    with off:
        for split in ("train", "test"):
            rows = read_jsonl(path / "split" / f"{split}.jsonl")
            rows = [r for r in rows if r.get("concept") is not None]
            states[split] = representations(
                model, explainer.tokenizer, rows, [layer], positions, raw=True
            )[layer]
            states[f"{split}_y"] = np.array([str(r["concept"]) for r in rows])
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        np.savez(kept, **states)
    return states


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (with split/train.jsonl, test.jsonl)")
    p.add_argument("--models", nargs="+", choices=("base", "seer"), default=["base", "seer"])
    p.add_argument("--states", type=Path, help="folder keeping each run's states (npz)")
    args = p.parse_args(argv)
    print(f"| run | block | model | {' | '.join(VARIANTS)} |")
    print(f"|---|---|---|{'---|' * len(VARIANTS)}")
    found_all: dict[str, list[dict]] = {}
    for path in map(Path, args.runs):
        layer = json.loads((path / "seer.json").read_text())["layer"]
        for name in args.models:
            s = read_states(path, name, args.states)
            found = variants(s["train"], list(s["train_y"]), s["test"], list(s["test_y"]))
            found_all.setdefault(name, []).append(found)
            cells = " | ".join(f"{found[k]:.3f}" for k in VARIANTS)
            print(f"| {path.name} | {layer} | {name} | {cells} |", flush=True)
    for name, rows in found_all.items():
        if len(rows) > 1:
            means = " | ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in VARIANTS)
            print(f"| mean of {len(rows)} | | {name} | {means} |")


if __name__ == "__main__":
    main()
