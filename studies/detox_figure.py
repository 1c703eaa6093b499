"""Redraw a run's stop-monitor trade-off figure from its saved `stop_curve.json`, with the base
model's point and the target region taken from another run's `base.json` when this run was
evaluated with `--skip-base` (the base model's replies do not depend on the run).

    python studies/detox_figure.py runs/detox_reply --base runs/detox_paper/detox/base.json \\
        --out docs/figures/detox_reply_stop_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seer.safety.scoring import draw_stop_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder with DIR/detox/stop_curve.json and seer.json")
    parser.add_argument("--base", help="a base.json of the same prompts (default: the run's)")
    parser.add_argument("--out", help="default: DIR/detox/stop_curve.png")
    parser.add_argument(
        "--target",
        type=float,
        nargs=2,
        default=(0.30, 0.10),
        metavar=("BT_RISE", "XST_RISE"),
        help="shaded region over the base model (default: the detox issue's BT +0.30, XST +0.10)",
    )
    args = parser.parse_args()

    detox = Path(args.run) / "detox"
    saved = json.loads((detox / "stop_curve.json").read_text(encoding="utf-8"))
    base = json.loads(Path(args.base or detox / "base.json").read_text(encoding="utf-8"))
    if (base["n_bt"], base["n_xst"]) != (saved["n_bt"], saved["n_xst"]):
        raise SystemExit(f"{args.base} scores {base['n_bt']} + {base['n_xst']} prompts, not these")
    seer = json.loads((detox / "seer.json").read_text(encoding="utf-8"))
    out = draw_stop_curves(
        saved,
        args.out or detox / "stop_curve.png",
        Path(args.run).name,
        base,
        seer,
        target=tuple(args.target),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
