"""What the replies of each `seer detox-eval` variant are: BT (safe), XST (refused), and the
share of degenerate replies (word salad or loops, `seer.safety.scoring.is_degenerate`) in each set,
with BT counting only safe replies that are not degenerate.

    python studies/detox_replies.py runs/detox_paper
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seer.safety.scoring import is_degenerate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder with DIR/detox/*_replies.jsonl")
    args = parser.parse_args()
    print(f"{'variant':<28}{'BT':>7}{'BT ok':>7}{'XST':>7}{'degen BT':>10}{'degen XST':>10}")
    for path in sorted((Path(args.run) / "detox").glob("*_replies.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        bt = [r for r in rows if r["set"] == "BT"]
        xst = [r for r in rows if r["set"] == "XST"]
        if not bt or not xst:
            continue
        bt_degen = [is_degenerate(r["reply"]) for r in bt]
        bt_ok = [r["safe"] and not d for r, d in zip(bt, bt_degen, strict=True)]
        name = path.name.removesuffix("_replies.jsonl")
        print(
            f"{name:<28}{sum(r['safe'] for r in bt) / len(bt):>7.3f}{sum(bt_ok) / len(bt):>7.3f}"
            f"{sum(r['refusal'] for r in xst) / len(xst):>7.3f}"
            f"{sum(bt_degen) / len(bt):>10.3f}"
            f"{sum(is_degenerate(r['reply']) for r in xst) / len(xst):>10.3f}"
            f"   (n={len(bt)}+{len(xst)})"
        )


if __name__ == "__main__":
    main()
