"""Rescore the stored replies of `seer detox-eval` under both refusal-counting rules.

`seer detox-eval DIR --refusal-rule strict|paper` counts refusals by one rule. The replies it
stores (`DIR/detox/<variant>_replies.jsonl`) do not depend on the rule, so both rules' rows
can be read off one generation: this script rescores every variant with the harm judge that
`detox-eval` trained and cached (`DIR/detox/judge.json`). BT = share of harmful prompts whose
reply is a refusal under the rule or judged safe; XST = share of XSTest prompts refused under
the rule; "BT refused" = share of BT replies that are refusals under the rule.

    python studies/detox_rules.py runs/detox_paper

Its strict columns equal `detox-eval`'s own figures (the script checks it against each
variant's JSON, which was counted with the strict rule by default).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seer.safety.judge import HarmJudge
from seer.safety.refusal import refusal_rule


def _rows(path: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if r["set"] == "BT"], [r for r in rows if r["set"] == "XST"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder with DIR/detox/*_replies.jsonl and judge.json")
    args = parser.parse_args()
    detox = Path(args.run) / "detox"
    judge = HarmJudge.load(detox / "judge.json")
    files = sorted(detox.glob("*_replies.jsonl"))
    if not files:
        raise SystemExit(f"no *_replies.jsonl in {detox}: run `seer detox-eval {args.run}` first")
    # The judge's verdict on every distinct BT (prompt, reply), computed once for all variants.
    pairs = sorted({(r["prompt"], r["reply"]) for f in files for r in _rows(f)[0]})
    unsafe = judge.is_unsafe([p for p, _ in pairs], [r for _, r in pairs])
    judged_safe = {pair: not bool(u) for pair, u in zip(pairs, unsafe, strict=True)}
    rules = {name: refusal_rule(name) for name in ("strict", "paper")}
    print(f"judge: held-out accuracy {judge.accuracy}, {len(pairs)} distinct BT replies judged\n")
    print("| variant | BT strict | BT paper | XST strict | XST paper | BT refused strict / paper |")
    print("|---|---|---|---|---|---|")
    for path in files:
        bt, xst = _rows(path)
        if not bt or not xst:
            continue
        name = path.name.removesuffix("_replies.jsonl")
        cells: dict[str, dict[str, float]] = {}
        for rule, is_ref in rules.items():
            refused_bt = np.array([is_ref(r["reply"]) for r in bt])
            safe = refused_bt | np.array([judged_safe[(r["prompt"], r["reply"])] for r in bt])
            cells[rule] = {
                "BT": float(safe.mean()),
                "XST": float(np.mean([is_ref(r["reply"]) for r in xst])),
                "refused": float(refused_bt.mean()),
            }
        stored = detox / f"{name}.json"
        if stored.is_file():  # the stored figures were counted by the run's rule
            meta = json.loads(stored.read_text(encoding="utf-8"))
            rule = meta.get("refusal_rule", "strict")
            for key in ("BT", "XST"):
                if rule in cells and key in meta and abs(meta[key] - cells[rule][key]) > 1e-9:
                    raise SystemExit(f"{name}: {key} {cells[rule][key]} != stored {meta[key]}")
        s, p = cells["strict"], cells["paper"]
        print(
            f"| {name} | {s['BT']:.3f} | {p['BT']:.3f} | {s['XST']:.3f} | {p['XST']:.3f} "
            f"| {s['refused']:.3f} / {p['refused']:.3f} |   (n={len(bt)}+{len(xst)})"
        )


if __name__ == "__main__":
    main()
