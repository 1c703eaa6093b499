"""``seer evaluate``: base vs SEER on the run's held-out split, written to ``DIR/eval/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seer.core.fields import option
from seer.errors import SeerError

__all__ = ["HELP", "NAME", "EvaluateConfig", "main"]

NAME = "evaluate"
HELP = "base vs SEER on the run's held-out split; writes DIR/eval/"


@dataclass
class EvaluateConfig:
    run: str = option(help="run folder written by seer train")
    sweep: bool = option(True, "also read every layer, not only the target one (slower)")
    figures: bool = option(True, "write the figures and DIR/eval/report.md")
    generations: int = option(3, "greedy samples of base and SEER shown side by side")

    def __post_init__(self) -> None:
        if self.generations < 0:
            raise SeerError(f"--generations must be 0 or more, got {self.generations}")


Config = EvaluateConfig


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _row(name: str, base: Any, seer: Any) -> str:
    return f"{name:<22}{_fmt(base):>10}{_fmt(seer):>10}"


def main(config: EvaluateConfig, *, progress: bool = True) -> int:
    from seer.evaluation.evaluate import evaluate  # deferred: torch and transformers
    from seer.evaluation.report import REPORT_METRICS, lookup

    metrics = evaluate(
        config.run,
        sweep=config.sweep,
        figures=config.figures,
        n_generations=config.generations,
        progress=progress,
    )
    base, seer = metrics["base"], metrics["seer"]
    print(f"{'held-out metric':<22}{'base':>10}{'SEER':>10}")
    for key in REPORT_METRICS:  # the report's table, in the same order
        print(_row(key, lookup(base, key), lookup(seer, key)))
    r = metrics["retention"]
    print(
        f"general text: KL(base||SEER) = {r['kl_nats_per_token']:.4f} nats/token, "
        f"perplexity {r['ppl_base']:.2f} -> {r['ppl_seer']:.2f}"
    )
    out = Path(config.run) / "eval"
    print(f"metrics: {out / 'metrics.json'}")
    if config.figures:
        print(f"report:  {out / 'report.md'}")
    return 0
