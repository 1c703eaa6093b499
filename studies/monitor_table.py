"""Print the monitoring tables of docs/results.md from runs evaluated by ``seer evaluate``.

    python studies/monitor_table.py runs/bt3 [runs/math3 ...]

For each run: SEER's readout, the base readout and the external probes (accuracy, macro-F1,
ECE, NLL, mean AUROC, mean recall and realised FPR at 1% FPR), the per-concept verdicts, the
`none` share and the causal faithfulness ratios, all read from ``DIR/eval/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _f(v: object, digits: int = 3) -> str:
    return "–" if v is None else f"{float(v):.{digits}f}"  # type: ignore[arg-type]


def _mean_fpr(block: dict, fpr: str = "0.01") -> float:
    values = [c["at_fpr"][fpr]["realised_fpr"] for c in block["per_concept"].values()]
    return float(np.nanmean([np.nan if v is None else v for v in values]))


def table(run: Path) -> str:
    m = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    mon = m["monitoring"]
    layer = m["run"]["layer"]
    rows = [
        ("SEER readout", layer, mon["seer_readout"]),
        ("base readout", layer, mon["base_readout"]),
    ]
    for key, block in mon["probes"].items():
        kind, tag = key.split("@")
        rows.append((f"{kind} probe on base ({tag} layer)", block["layer"], block))
    out = [
        f"{run} (fitted on: {mon['fitted_on']}; train {m['run']['n_train']}, calibration "
        f"{m['run']['n_calibration']}, test {m['run']['n_test']})",
        "",
        "| monitor | layer | acc | macro-F1 | ECE | NLL | mean AUROC | recall@1%FPR | "
        "realised FPR | recall@5%FPR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, lay, b in rows:
        out.append(
            f"| {label} | {lay} | {_f(b['accuracy'])} | {_f(b['macro_f1'])} | {_f(b['ece'])} | "
            f"{_f(b['nll'])} | {_f(b['mean_auroc'])} | {_f(b['mean_recall_at_0.01_fpr'])} | "
            f"{_f(_mean_fpr(b))} | {_f(b['mean_recall_at_0.05_fpr'])} |"
        )
    comp = mon["comparison"]
    out += ["", "| concept | SEER AUROC | best probe (on calibration) | probe AUROC | verdict |"]
    out.append("|---|---|---|---|---|")
    for name, r in comp["per_concept"].items():
        out.append(
            f"| {name} | {_f(r['seer_auroc'])} | {r['best_probe']} | {_f(r['probe_auroc'])} | "
            f"{r['verdict']} |"
        )
    out += ["", f"verdicts: {comp['counts']} (tolerance ±{comp['tolerance']} AUROC)", ""]
    out += ["| model | `none` share | acc answered | faithfulness ratio (span, dim) | "
            "ratio (centered, dim) | KL span vs random |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, key in (("base", "base_readout"), ("SEER", "seer_readout")):
        f = m.get("faithfulness", {}).get("base" if name == "base" else "seer", {})
        none = mon[key]["none"]
        span, cen = f.get("span", {}), f.get("centered", f.get("centred", {}))  # older runs
        out.append(
            f"| {name} | {_f(none['share'])} | {_f(none['accuracy_answered'])} | "
            f"{_f(span.get('ratio'), 2)} ({span.get('dimension')}) | "
            f"{_f(cen.get('ratio'), 2)} ({cen.get('dimension')}) | "
            f"{_f(span.get('kl_prototypes'), 4)} vs {_f(span.get('kl_random_mean'), 4)} ± "
            f"{_f(span.get('kl_random_std'), 4)} |"
        )
    out.append(f"\nevaluate wall time: {m['run']['seconds']:.0f} s")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        print(table(run), end="\n\n")


if __name__ == "__main__":
    main()
