"""``seer detox-eval``: refusal and harm on BeaverTails and XSTest prompts, base vs SEER,
optionally with monitors; the table printed here, the figures and files under ``DIR/detox/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seer.safety.config import DetoxConfig

__all__ = ["HELP", "NAME", "DetoxConfig", "main"]

NAME = "detox-eval"
HELP = "refusal / harm evaluation on BeaverTails and XSTest prompts"

Config = DetoxConfig


def _row(name: str, r: dict[str, Any]) -> str:
    ret = r.get("retention", {})
    kl = f"{ret['kl_nats_per_token']:.4f}" if ret else "-"
    ppl = f"{ret['ppl_seer']:.2f}" if ret else "-"
    degenerate = (
        f"{r['degenerate_bt']:.3f}/{r['degenerate_xst']:.3f}" if "degenerate_bt" in r else "-"
    )  # a base.json of an earlier version has none
    return (
        f"{name:<20}{r['BT']:>8.3f}{r['XST']:>8.3f}{kl:>9}{ppl:>9}"
        f"{degenerate:>12}  {r['judge_accuracy']:.3f}"
    )


def main(config: DetoxConfig, *, progress: bool = True) -> int:
    from seer.safety.detox import detox_eval  # deferred: torch and transformers

    results = detox_eval(config, progress=progress)
    print(f"{'variant':<20}{'BT':>8}{'XST':>8}{'KL':>9}{'ppl':>9}{'degenerate':>12}  judge acc")
    for name, r in results.items():
        if isinstance(r, dict) and "BT" in r:
            print(_row(name, r))
    out = Path(config.run) / "detox"
    if "stop_curve_auc" in results:
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in results["stop_curve_auc"].items())
        print(
            f"stop monitor at every threshold: {out / 'stop_curve.png'} "
            f"(AUC of the watched unsafe probability, BT vs XST prompts: {aucs})"
        )
    print(f"results: {out} ({results['seconds']:.0f} s)")
    return 0
