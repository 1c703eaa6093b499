"""Pieces of gradient caching (Gao et al., 2021) that do not need the trainer: splitting a
batch into length-ordered micro-batches, and the random state that makes a micro-batch's two
passes draw the same LoRA dropout."""

from __future__ import annotations

import torch

__all__ = ["PARTS", "batch_lengths", "micro_batches", "rng_state", "set_rng_state"]

PARTS = ("view1", "view2", "retain")


def micro_batches(inputs: dict, size: int) -> list[dict]:
    """Rows of a batch in micro-batches of ``size``, each part cut to its longest real text.

    Rows are first ordered by length (view 1 + view 2 + retain), so that each micro-batch
    holds texts of similar length and pads little; the contrastive losses do not depend on
    the order of the pairs. Batches are right-padded, so the cut columns are padding only.
    """
    lengths = sum(inputs[k]["attention_mask"].sum(dim=1) for k in PARTS if k in inputs)
    order = torch.argsort(lengths, stable=True)
    chunks = []
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        chunk: dict = {"concepts": inputs["concepts"][rows]}
        for key in PARTS:
            if key in inputs:
                part = inputs[key]
                mask = part["attention_mask"][rows]
                length = int(mask.sum(dim=1).max())
                chunk[key] = {
                    "input_ids": part["input_ids"][rows, :length],
                    "attention_mask": mask[:, :length],
                    "positions": part["positions"][rows],
                    "starts": part["starts"][rows],
                }
        chunks.append(chunk)
    return chunks


def batch_lengths(inputs: dict) -> list[tuple[int, int, int]]:
    """Real text lengths (view 1, view 2, retain; 0 without retain texts) of a collated batch's
    rows, as the memory plan counts them."""
    rows = len(inputs["concepts"])
    columns = [
        [int(n) for n in inputs[k]["attention_mask"].sum(dim=1)] if k in inputs else [0] * rows
        for k in PARTS
    ]
    return [(columns[0][i], columns[1][i], columns[2][i]) for i in range(rows)]


def rng_state() -> tuple:
    return (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    )


def set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
