"""How much of a run's training schedule is padding, as drawn and grouped by length.

Rebuilds the schedule of a finished run folder from what it stores (its training split,
its retain texts and its config: batch size, epochs, seed, objective, formats, max length),
tokenised as training tokenises it, and prints the share of the padded tokens that are real
and the padded tokens in all (view 1 + view 2 + retain, each part of a batch padded to its own
longest text), for the schedule as `build_pairs` draws it and after `group_by_length`
(`seer train --group-by-length`, an option). Nothing is trained; no model is loaded, only
its tokenizer.

    python studies/padding.py runs/bt6 runs/math7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _padded(lengths: list[tuple[int, int, int]], batch_size: int) -> tuple[int, int]:
    """(real, padded) tokens over the schedule's batches."""
    real = padded = 0
    for start in range(0, len(lengths) - batch_size + 1, batch_size):
        batch = lengths[start : start + batch_size]
        for part in range(3):
            real += sum(row[part] for row in batch)
            padded += batch_size * max(row[part] for row in batch)
    return real, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from seer.core.models import resolve_model_path
    from seer.core.tables import read_jsonl
    from seer.training.build import schedule
    from seer.training.config import TrainConfig
    from seer.training.pairs import LENGTH_WINDOW, PairDataset, group_by_length

    for run in args.runs:
        meta = json.loads((run / "seer.json").read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(meta["config"])
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.model))
        rows = read_jsonl(run / "split" / "train.jsonl")
        retain = read_jsonl(run / "retain.jsonl")
        pairs = schedule(config, rows, len(retain))
        dataset = PairDataset(rows, retain, pairs, tokenizer, config.max_length)
        drawn = dataset.lengths()
        dataset.pairs = group_by_length(
            pairs, drawn, batch_size=config.batch_size, window=LENGTH_WINDOW, seed=config.seed
        )
        grouped = dataset.lengths()
        (r0, p0), (r1, p1) = _padded(drawn, config.batch_size), _padded(grouped, config.batch_size)
        assert r0 == r1, "grouping must keep the schedule's texts"
        print(f"{run}: {len(pairs) // config.batch_size} steps of {config.batch_size} pairs")
        print(f"  as drawn:          {r0 / p0:.3f} of {p0} padded tokens real")
        print(f"  grouped by length: {r1 / p1:.3f} of {p1} padded tokens real")
        print(f"  padded tokens, as drawn / grouped: {p0 / p1:.3f}")


if __name__ == "__main__":
    main()
