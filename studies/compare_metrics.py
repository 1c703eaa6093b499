"""Compare two `metrics.json` files value by value (e.g. one run evaluated by two versions).

    python studies/compare_metrics.py runs/old16/eval_old/metrics.json runs/old16/eval/metrics.json

Flattens both (every number, string and list item by its path), then prints how many of the
first file's values the second holds, how many are equal to the last digit, the largest
relative difference of the others, and every value that differs by more than 1e-9 relative
(`run/seconds`, the wall time, is reported apart).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in flatten(item, f"{path}/{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in flatten(item, f"{path}[{i}]").items()
        }
    return {path: value}


def main(old_path: str, new_path: str) -> None:
    with open(old_path, encoding="utf-8") as f:
        old = flatten(json.load(f))
    with open(new_path, encoding="utf-8") as f:
        new = flatten(json.load(f))
    seconds = (old.pop("/run/seconds", None), new.pop("/run/seconds", None))
    missing = sorted(set(old) - set(new))
    shared = [k for k in old if k in new]
    equal = [k for k in shared if old[k] == new[k]]
    rel = {
        k: abs(old[k] - new[k]) / max(abs(old[k]), 1e-12)
        for k in shared
        if old[k] != new[k] and all(isinstance(x, int | float) for x in (old[k], new[k]))
    }
    other = [k for k in shared if old[k] != new[k] and k not in rel]
    print(
        f"old values: {len(old)}, new values: {len(new)}, old values missing in new: {len(missing)}"
    )
    print(
        f"equal to the last digit: {len(equal)}; numbers that differ: {len(rel)}, "
        f"largest relative difference {max(rel.values(), default=0.0):.2g}; "
        f"other differences: {len(other)}"
    )
    print(f"wall time (run/seconds): old {seconds[0]}, new {seconds[1]}")
    for k in missing[:20] + other[:20] + [k for k, r in rel.items() if r > 1e-9][:20]:
        print(f"  {k}: {old.get(k)!r} -> {new.get(k)!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
