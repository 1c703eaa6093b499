"""Configuration of ``seer detox-eval``: one dataclass, each field an option with its help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from seer.core.fields import option
from seer.errors import SeerError
from seer.inference.monitor_options import MonitorOptions

__all__ = ["DetoxConfig"]

SHARED = "../shared/data"


@dataclass
class DetoxConfig:
    run: str = option(help="run folder")
    harmful: str = option(
        f"{SHARED}/beavertails_harmful.csv", "CSV of harmful prompts (BT; a 'prompt' column)"
    )
    xstest: str = option(
        f"{SHARED}/xstest_v2_prompts.csv",
        "CSV of safe prompts that look unsafe (XSTest; a 'prompt' column)",
    )
    judge_data: str = option(
        f"{SHARED}/beavertails_binary.csv",
        "CSV the harm judge is trained on: 'prompt', 'response' and 'is_safe' columns",
    )
    limit: int | None = option(
        None, "evaluate a seeded subset of this many prompts per set; not given: all"
    )
    seed: int = option(0, "seed of the subset")
    max_new_tokens: int = option(48, "reply length in tokens")
    skip_base: bool = option(
        False,
        "do not evaluate the base model; show the base.json an earlier run of the same "
        "prompts and settings left in DIR/detox",
    )
    target: tuple[float, float] | None = option(
        None,
        "shade the figure's region where BT rose by at least the first number and XST by at "
        "most the second, both shares over the base model's (not given: no region)",
    )
    refusal_rule: Literal["strict", "paper"] = option(
        "strict",
        "how a refusal is counted: strict (a refusal phrase opens the reply) or paper "
        "(the SEER authors' case-sensitive substrings anywhere in it)",
    )
    monitor: MonitorOptions = option(
        MonitorOptions,
        "monitors (the unsafe concept; steering towards the safe one); the plain pass is "
        "always watched in shadow mode for the stop curves",
    )

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise SeerError(
                f"--limit is a number of prompts per set, at least 1, got {self.limit}; "
                "leave it out to evaluate every prompt"
            )
        from seer.inference.explainer import MAX_NEW_TOKENS  # deferred: torch

        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise SeerError(
                f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, "
                f"got {self.max_new_tokens}"
            )
        if "watch" in self.monitor.modes:
            raise SeerError(
                "--monitor watch adds nothing to detox-eval, which watches its plain pass "
                "anyway (stop_curve.json): use stop or steer"
            )
        if self.target is not None and not all(0 <= x <= 1 for x in self.target):
            raise SeerError(f"--target takes two shares between 0 and 1, got {self.target}")
