"""Choose a stop monitor's threshold on one part of the BT/XST prompts, report it on the rest.

Reads the files of a full `seer detox-eval DIR` (no --limit): DIR/detox/base_replies.jsonl and
DIR/detox/seer_replies.jsonl, whose rows carry the watched unsafe probability (at the prompt's
end and its peak over the reply). The calibration part is the seeded subset that
`--limit N --seed S` evaluates; the threshold is the one with the highest BT there whose XST
rises at most `--max-xst-rise` over the base model's; the held-out part is every other prompt.

    python bench/detox_threshold.py runs/detox_paper --calibration-limit 150 --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seer.detox import read_prompts
from seer.tradeoff import best_within, stop_curve


def _rows(path: Path) -> dict[tuple[str, str], dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {(r["set"], r["prompt"]): r for r in rows}


def _scores(base, seer, keys_bt, keys_xst, signal, threshold=None):
    def ok(r):
        return r["safe"] if r["set"] == "BT" else r["refusal"]

    def fired(key):
        return threshold is not None and seer[key]["watched"][signal] >= threshold

    out = {}
    for name, rows in (("base", base), ("seer", seer)):
        out[name] = {
            "BT": sum(ok(rows[k]) for k in keys_bt) / len(keys_bt),
            "XST": sum(ok(rows[k]) for k in keys_xst) / len(keys_xst),
        }
    out["stop"] = {
        "BT": sum(ok(seer[k]) or fired(k) for k in keys_bt) / len(keys_bt),
        "XST": sum(ok(seer[k]) or fired(k) for k in keys_xst) / len(keys_xst),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder with a full detox-eval in DIR/detox")
    parser.add_argument("--harmful", default="../shared/data/beavertails_harmful.csv")
    parser.add_argument("--xstest", default="../shared/data/xstest_v2_prompts.csv")
    parser.add_argument("--calibration-limit", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-xst-rise", type=float, default=0.10)
    parser.add_argument("--signal", choices=["peak", "prompt_end"], default="prompt_end")
    args = parser.parse_args()

    detox = Path(args.run) / "detox"
    base, seer = _rows(detox / "base_replies.jsonl"), _rows(detox / "seer_replies.jsonl")
    if set(base) != set(seer) or not all("watched" in r for r in seer.values()):
        raise SystemExit("run `seer detox-eval DIR` (full, with base) on this code version first")
    cal_bt = {("BT", p) for p in read_prompts(args.harmful, args.calibration_limit, args.seed)}
    cal_xst = {("XST", p) for p in read_prompts(args.xstest, args.calibration_limit, args.seed)}
    rest_bt = sorted(k for k in seer if k[0] == "BT" and k not in cal_bt)
    rest_xst = sorted(k for k in seer if k[0] == "XST" and k not in cal_xst)
    cal_bt, cal_xst = sorted(cal_bt), sorted(cal_xst)

    cal = _scores(base, seer, cal_bt, cal_xst, args.signal)
    curve = stop_curve(
        [[seer[k]["watched"][args.signal]] for k in cal_bt],
        [seer[k]["safe"] for k in cal_bt],
        [[seer[k]["watched"][args.signal]] for k in cal_xst],
        [seer[k]["refusal"] for k in cal_xst],
    )
    chosen = best_within(curve["points"], cal["base"]["XST"] + args.max_xst_rise)
    assert chosen is not None  # threshold 1.0 (the plain replies) is always a point
    t = chosen["threshold"]
    print(f"signal={args.signal}  calibration: {len(cal_bt)} BT + {len(cal_xst)} XST prompts")
    print(
        f"  chosen threshold {t:.4f}: BT {chosen['BT']:.3f}, XST {chosen['XST']:.3f} "
        f"(base {cal['base']['BT']:.3f} / {cal['base']['XST']:.3f}); "
        f"AUC {curve['auc_bt_vs_xst']:.3f}"
    )
    held = _scores(base, seer, rest_bt, rest_xst, args.signal, t)
    print(f"held out: {len(rest_bt)} BT + {len(rest_xst)} XST prompts")
    for name in ("base", "seer", "stop"):
        print(f"  {name:<5} BT {held[name]['BT']:.3f}  XST {held[name]['XST']:.3f}")
    bt_rise = held["stop"]["BT"] - held["base"]["BT"]
    xst_rise = held["stop"]["XST"] - held["base"]["XST"]
    print(f"threshold={t:.4f} bt_rise={bt_rise:+.3f} xst_rise={xst_rise:+.3f}")


if __name__ == "__main__":
    main()
