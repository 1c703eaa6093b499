"""The pair schedule of a SEER run, its dataset and its collator.

:func:`build_pairs` draws the whole schedule up front (seeded, resumable); :class:`PairDataset`
tokenises its items on first use; :class:`PairCollator` right-pads each part of a batch to its
own longest text, and :func:`group_by_length` gathers similar lengths into a batch.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from seer.core.formatting import Encoded, Mode, encode, pad_batch
from seer.errors import SeerError

__all__ = [
    "LENGTH_WINDOW",
    "MODES",
    "PairCollator",
    "PairDataset",
    "MAX_PAIRS",
    "build_pairs",
    "group_by_length",
    "schedule_length",
]

MODES = ("full", "prompt", "response")
#: The longest schedule drawn (pairs): the whole schedule is held in memory, about 0.5 KB a
#: pair, and a million pairs is weeks of training on one GPU.
MAX_PAIRS = 1_000_000
#: Batches per run within which :func:`group_by_length` sorts (``seer train --group-by-length``,
#: off by default: it cost held-out accuracy on BeaverTails-6, docs/results.md):
#: long enough to gather similar lengths, short enough that the schedule's order of concepts
#: and retain texts over an epoch stays as drawn.
LENGTH_WINDOW = 16


def build_pairs(
    concepts: Sequence[str],
    has_response: Sequence[bool],
    *,
    epochs: float,
    batch_size: int,
    balanced: bool,
    format_probs: Sequence[float],
    n_retain: int,
    seed: int,
) -> list[dict]:
    """The whole training schedule, drawn up front so that it is seeded and resumable.

    Each example is view 1 once per epoch; its view 2 is another example of the same concept.
    ``balanced`` orders each epoch round-robin over concepts (in a random concept order each
    round), so that every batch holds as equal a mix of concepts as the data allows.
    """
    total = schedule_length(epochs, len(concepts), batch_size)
    rng = random.Random(seed)
    by_concept: dict[str, list[int]] = defaultdict(list)
    for i, concept in enumerate(concepts):
        by_concept[concept].append(i)
    names = sorted(by_concept)
    concept_id = {name: k for k, name in enumerate(names)}
    order: list[int] = []
    for _ in range(math.ceil(epochs)):
        if balanced:
            queues = {c: rng.sample(ix, len(ix)) for c, ix in by_concept.items()}
            while any(queues.values()):
                for c in rng.sample(names, len(names)):
                    if queues[c]:
                        order.append(queues[c].pop())
        else:
            order.extend(rng.sample(range(len(concepts)), len(concepts)))
    order = (order * (1 + total // max(1, len(order))))[:total]

    def mode(i: int) -> str:
        return rng.choices(MODES, weights=format_probs)[0] if has_response[i] else "prompt"

    pairs: list[dict[str, Any]] = []
    for step, i in enumerate(order):
        others = [j for j in by_concept[concepts[i]] if j != i]
        pairs.append(
            {
                "view1": i,
                "view2": rng.choice(others),
                "mode1": mode(i),
                "mode2": None,  # drawn below, after view2 is known
                "concept": concept_id[concepts[i]],
                "retain": step % n_retain if n_retain else -1,
            }
        )
        pairs[-1]["mode2"] = mode(pairs[-1]["view2"])
    return pairs


def schedule_length(epochs: float, n_examples: int, batch_size: int) -> int:
    """The pairs of a schedule of ``epochs`` over ``n_examples`` (whole batches); a SeerError
    above :data:`MAX_PAIRS`, before anything is drawn."""
    total = max(batch_size, int(round(epochs * n_examples)) // batch_size * batch_size)
    if total > MAX_PAIRS:
        raise SeerError(
            f"--epochs {epochs:g} over {n_examples} training examples makes {total:,} pairs, "
            f"more than the {MAX_PAIRS:,} seer schedules; lower --epochs"
        )
    return total


def group_by_length(
    pairs: list[dict],
    lengths: Sequence[tuple[int, int, int]],
    *,
    batch_size: int,
    window: int,
    seed: int,
) -> list[dict]:
    """The schedule reordered so that the texts sharing a batch have similar lengths, since each
    part of a batch is padded to its longest text; ``lengths[i]``: pair ``i``'s view 1, view 2
    and retain text lengths.

    Within each run of ``window`` batches, each concept's pairs are ranked by the length of
    their view 1 and the run's pairs are dealt into batches by that rank's quantile (the first
    batch gets the shortest of every concept), so a batch keeps its mix of concepts; the run's
    retain texts are dealt likewise, by their own length. The batches' order within the run is
    then shuffled (seeded). The schedule keeps the same pairs, positives and retain texts; only
    which of them share a batch changes.
    """
    rng = random.Random(f"{seed}-length")
    span = batch_size * window
    out: list[dict] = []
    for start in range(0, len(pairs), span):
        ids = range(start, min(start + span, len(pairs)))
        by_concept: dict[int, list[int]] = defaultdict(list)
        for i in ids:
            by_concept[pairs[i]["concept"]].append(i)
        ranked = []
        for concept, members in by_concept.items():
            members.sort(key=lambda i: lengths[i][0])
            ranked += [((r + 0.5) / len(members), concept, i) for r, i in enumerate(members)]
        order = [i for *_, i in sorted(ranked)]
        retain = [j for _, j in sorted((lengths[i][2], pairs[i]["retain"]) for i in ids)]
        batches = [
            [
                {**pairs[i], "retain": j}
                for i, j in zip(order[b : b + batch_size], retain[b : b + batch_size], strict=True)
            ]
            for b in range(0, len(order), batch_size)
        ]
        rng.shuffle(batches)
        out += [pair for batch in batches for pair in batch]
    return out


class PairDataset(Dataset):
    """Items of the schedule from :func:`build_pairs`, tokenised on first use."""

    def __init__(
        self,
        examples: Sequence[dict],
        retain: Sequence[dict],
        pairs: list[dict],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> None:
        self.examples, self.retain, self.pairs = examples, retain, pairs
        self.tokenizer, self.max_length = tokenizer, max_length
        self._cache: dict[tuple[str, int, str], Encoded] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _encode(self, kind: str, index: int, mode: Mode) -> Encoded:
        key = (kind, index, mode)
        if key not in self._cache:
            ex = (self.examples if kind == "concept" else self.retain)[index]
            self._cache[key] = encode(
                self.tokenizer, ex.get("prompt"), ex.get("response"), mode, self.max_length
            )
        return self._cache[key]

    def lengths(self) -> list[tuple[int, int, int]]:
        """Every pair's view 1, view 2 and retain text lengths in tokens (0: no retain text)."""
        out = []
        for i in range(len(self)):
            item = self[i]
            retain = item["retain"]
            out.append(
                (
                    len(item["view1"].input_ids),
                    len(item["view2"].input_ids),
                    len(retain.input_ids) if retain is not None else 0,
                )
            )
        return out

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        return {
            "view1": self._encode("concept", p["view1"], p["mode1"]),
            "view2": self._encode("concept", p["view2"], p["mode2"]),
            "concept": p["concept"],
            "retain": self._encode("retain", p["retain"], "full") if p["retain"] >= 0 else None,
        }


class PairCollator:
    def __init__(
        self, pad_token_id: int, positions: tuple[str, ...], pad_to_multiple_of: int | None = None
    ):
        self.pad_token_id, self.positions, self.multiple = (
            pad_token_id,
            positions,
            pad_to_multiple_of,
        )

    def __call__(self, items: list[dict]) -> dict:
        def pad(encoded: list[Encoded]) -> dict[str, torch.Tensor]:
            return pad_batch(encoded, self.positions, self.pad_token_id, self.multiple)

        batch = {
            "view1": pad([it["view1"] for it in items]),
            "view2": pad([it["view2"] for it in items]),
            "concepts": torch.tensor([it["concept"] for it in items], dtype=torch.long),
        }
        if items[0]["retain"] is not None:
            batch["retain"] = pad([it["retain"] for it in items])
        return batch
