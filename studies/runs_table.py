"""Print a markdown table of base vs SEER from `seer evaluate` outputs.

python studies/runs_table.py runs/bt_supcon runs/bt_paper
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("prototype_accuracy", "probe_accuracy", "silhouette", "ot_ratio", "kl", "ppl")


def row(name: str, m: dict, retention: dict | None, seconds: float | None) -> str:
    kl = f"{retention['kl_nats_per_token']:.4f}" if retention else "0"
    ppl = f"{retention['ppl_seer']:.2f}" if retention else "-"
    cells = [
        f"{m['prototype_accuracy']:.3f}",
        f"{m['probe_accuracy']:.3f}",
        f"{m['silhouette']:.3f}",
        f"{m['ot']['mean_ratio']:.3f}",
        kl,
        ppl,
        f"{seconds:.0f}" if seconds else "-",
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(paths: list[str]) -> None:
    head = ("model", "prototype acc", "probe acc", "silhouette", "OT ratio", "KL (nats/tok)")
    head += ("perplexity", "train s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for i, path in enumerate(paths):
        run = Path(path)
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        meta = json.loads((run / "seer.json").read_text())
        if i == 0:
            base_ret = {"kl_nats_per_token": 0.0, "ppl_seer": metrics["retention"]["ppl_base"]}
            print(row("base", metrics["base"], base_ret, None))
        cfg = meta["config"]
        name = f"SEER ({cfg['objective']}, lr {meta['learning_rate']:g}, layer {meta['layer']})"
        print(row(name, metrics["seer"], metrics["retention"], meta["train"]["seconds"]))


if __name__ == "__main__":
    main(sys.argv[1:])
