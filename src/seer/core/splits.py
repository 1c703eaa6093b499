"""Seeded, stratified splits of concept examples (train / test, or train / calibration / test)
and the per-concept cap: the one grouping by concept that the split, the caps and the pair
schedule share."""

from __future__ import annotations

import random
from collections.abc import Sequence

from seer.errors import SeerError

__all__ = ["cap_per_concept", "group_by_concept", "split_examples", "split_three"]

Example = dict  # {"prompt": str | None, "response": str | None, "concept": str}


def cap_per_concept(examples: list[Example], per_concept: int, seed: int) -> list[Example]:
    if per_concept < 2:
        raise SeerError(f"--max-per-concept must be at least 2, got {per_concept}")
    rng = random.Random(seed)
    kept = []
    for indices in group_by_concept([ex["concept"] for ex in examples]).values():
        items = [examples[i] for i in indices]
        kept.extend(rng.sample(items, min(per_concept, len(items))))
    return kept


def split_examples(
    examples: Sequence[Example], test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded split, stratified by concept: every concept keeps >= 2 training examples
    and >= 1 test example, otherwise a SeerError names it."""
    if not 0 < test_fraction < 1:
        raise SeerError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    rng = random.Random(seed)
    train, test = [], []
    for concept, indices in group_by_concept([ex["concept"] for ex in examples]).items():
        items = [examples[i] for i in indices]
        rng.shuffle(items)
        n_test = max(1, round(len(items) * test_fraction))
        if len(items) - n_test < 2:
            raise SeerError(
                f"concept {concept!r} has {len(items)} example(s), too few to hold out {n_test} "
                f"for testing and keep 2 to train on; it needs at least "
                f"{_needed(test_fraction)}: add examples or drop the concept"
            )
        test.extend(items[:n_test])
        train.extend(items[n_test:])
    return train, test


def split_three(
    examples: Sequence[Example], test_fraction: float, calibration_fraction: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """A seeded split into train / calibration / test, stratified by concept.

    The test rows are exactly those of ``split_examples(examples, test_fraction, seed)`` (same
    shuffle), so figures stay comparable with two-way runs; the calibration rows are taken from
    what would have been training rows. Every concept keeps >= 2 training, >= 1 calibration and
    >= 1 test example, otherwise a SeerError names it.
    """
    if not 0 < calibration_fraction < 1 or not 0 < test_fraction < 1:
        raise SeerError(
            "--test-fraction and --calibration-fraction must each be between 0 and 1 "
            f"(exclusive), got {test_fraction} and {calibration_fraction}"
        )
    if test_fraction + calibration_fraction >= 1:
        raise SeerError(
            f"--test-fraction {test_fraction} + --calibration-fraction {calibration_fraction} "
            "leave nothing to train on; keep their sum below 1 (e.g. 0.2 + 0.2)"
        )
    rng = random.Random(seed)
    train, calibration, test = [], [], []
    for concept, indices in group_by_concept([ex["concept"] for ex in examples]).items():
        items = [examples[i] for i in indices]
        rng.shuffle(items)
        n_test = max(1, round(len(items) * test_fraction))
        n_cal = max(1, round(len(items) * calibration_fraction))
        if len(items) - n_test - n_cal < 2:
            raise SeerError(
                f"concept {concept!r} has {len(items)} example(s), too few to hold out {n_test} "
                f"for testing and {n_cal} for calibration and keep 2 to train on; it needs at "
                f"least {n_test + n_cal + 2}: add examples, drop the concept, or lower the "
                "fractions"
            )
        test.extend(items[:n_test])
        calibration.extend(items[n_test : n_test + n_cal])
        train.extend(items[n_test + n_cal :])
    return train, calibration, test


def group_by_concept(concepts: Sequence[str]) -> dict[str, list[int]]:
    """The positions of each concept's items in ``concepts``, in order, under the concepts
    sorted by name (the one grouping the data split, the caps and the pair schedule use)."""
    groups: dict[str, list[int]] = {}
    for i, concept in enumerate(concepts):
        groups.setdefault(concept, []).append(i)
    return {concept: groups[concept] for concept in sorted(groups)}


def _needed(test_fraction: float) -> int:
    """The fewest examples a concept needs: 2 to train on after holding out a test share."""
    n = 3
    while n - max(1, round(n * test_fraction)) < 2 and n < 10_000:
        n += 1
    return n
