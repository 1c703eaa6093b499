"""A training-health check: say early, with the numbers, when a run is learning nothing.

Two failures look like success in a loss curve that merely goes on: the contrastive loss
sitting at its chance value (every candidate equally similar to the anchor, ``log`` of their
number), and one loss part carrying almost all of the gradient (a retain term in the wrong
units can pin the model where it is). :class:`HealthCallback` reads the loss parts that
``SeerTrainer`` logs and warns once for each, after ``check_at`` of the steps that follow the
warm-up, saying what to change. The trainer measures each weighted part's gradient at the
steps of :func:`probe_steps` with :func:`gradient_shares`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["HealthCallback", "chance_loss", "gradient_shares", "probe_steps"]

logger = logging.getLogger(__name__)


def chance_loss(objective: str, pairs: int) -> float:
    """The contrastive loss when every candidate is as similar to the anchor as any other, for
    a (global) batch of ``pairs`` pairs: supcon contrasts each of ``2 * pairs`` items with the
    ``2 * pairs - 1`` others, the paper's InfoNCE each view 1 with ``pairs`` views 2."""
    candidates = pairs if objective == "paper" else 2 * pairs - 1
    return math.log(max(candidates, 1))


def gradient_shares(
    weighted_parts: dict[str, torch.Tensor], params: Sequence[torch.Tensor]
) -> dict[str, float]:
    """Each weighted loss part's share of the summed gradient norms over ``params``: ``{name:
    |grad part| / sum_k |grad part_k|}``. Leaves the parts' graphs in place for the real
    backward pass (one extra backward per part: call it on a few steps only)."""
    norms = {}
    for name, part in weighted_parts.items():
        if not part.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
        squares = [g.float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    total = sum(norms.values())
    return {name: (n / total if total > 0 else 0.0) for name, n in norms.items()}


def check_step(max_steps: int, check_at: float, warmup: int = 0) -> int:
    """The number of completed steps after which the check runs: ``check_at`` of the steps
    after the ``warmup`` (whose steps run at a fraction of the rate), at least one of them,
    and never past the last step."""
    after = max(1, math.ceil(check_at * max(max_steps - warmup, 0)))
    return min(max_steps, warmup + after) if max_steps > 0 else after


def probe_steps(max_steps: int, check_at: float, warmup: int = 0) -> frozenset[int]:
    """The 0-based steps whose gradients are measured: the one that completes
    :func:`check_step` (none when the check is off)."""
    if check_at <= 0:
        return frozenset()
    return frozenset({check_step(max_steps, check_at, warmup) - 1})


class HealthCallback(TrainerCallback):
    """Warn (once each) when, after ``check_at`` of the steps that follow the warm-up, the
    contrastive loss is within ``tolerance`` (a share of it) of its chance value or, having
    started above chance, has not fallen by ``min_fall`` (a share) from its first logged
    value, or one loss part carries more than ``dominance`` of the gradient.
    Warnings are logged and kept in :attr:`warnings`.

    (``dominance``: on SmolLM2 the retain l2 carried up to 95.7% of the gradient at the check
    on runs that learned, and 99.3% on one whose contrastive loss stayed at chance;
    docs/results.md.)

    (``tolerance``: on SmolLM2 the runs whose contrastive loss had not left chance sat within
    2.1% of it at the check, runs that learned 4.8% or more below it; docs/results.md.)

    (``min_gap``: a centered run whose first logged value lay above chance, whose loss has
    fallen by ``min_fall`` since, and whose same-concept cosine exceeds the different-concept
    one by this much is separating even at chance: SmolLM2's `sflr1` run, issue 41, logged
    2.707 at the check with cosines 0.057 / -0.085 and learned; runs stuck at chance showed
    gaps of 0.01.)

    (A centered representation starts well above chance, since centered states of one batch
    have negative cosines on average, and falls towards a floor set by the number of
    positives, ``log`` of it, which can lie above chance too: "below chance" alone would
    misjudge it. A loss that comes back to chance, e.g. every representation collapsing onto
    one direction, is caught by the first test.)"""

    def __init__(
        self,
        chance: float,
        check_at: float = 0.3,
        tolerance: float = 0.03,
        min_fall: float = 0.05,
        dominance: float = 0.98,
        min_gap: float = 0.05,
    ) -> None:
        self.chance, self.check_at, self.min_gap = chance, check_at, min_gap
        self.tolerance, self.min_fall, self.dominance = tolerance, min_fall, dominance
        self.warnings: list[str] = []
        self._checked_chance = self._checked_shares = False
        self._first: float | None = None

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning("training health: %s", message)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        if not logs or self.check_at <= 0 or state.max_steps <= 0:
            return
        if self._first is None and "contrastive" in logs:
            self._first = float(logs["contrastive"])
        warmup = args.get_warmup_steps(state.max_steps)
        if state.global_step < check_step(state.max_steps, self.check_at, warmup):
            return
        where = f"after {state.global_step} of {state.max_steps} steps"
        if not self._checked_chance and "contrastive" in logs:
            self._checked_chance = True
            self._check_chance(float(logs["contrastive"]), logs, where)
        shares = {
            k[len("grad_share_") :]: v for k, v in logs.items() if k.startswith("grad_share_")
        }
        if not self._checked_shares and shares:
            self._checked_shares = True
            self._check_shares(shares, where)

    def _check_chance(self, value: float, logs: dict, where: str) -> None:
        at_chance = abs(value - self.chance) <= self.tolerance * self.chance
        first = self._first if self._first is not None else value
        gap = logs.get("same_concept_cos", 0.0) - logs.get("diff_concept_cos", 0.0)
        if at_chance and first > self.chance * (1 + self.tolerance) and gap >= self.min_gap:
            # a centered loss on its way down from far above chance, passing through it while
            # the concepts separate (a collapse at chance leaves the two cosines alike)
            at_chance = value >= first * (1 - self.min_fall)
        # The fall is measured from the first logged value only where that lies above chance
        # (a centered run): a first value below chance is the mean of a logging interval that
        # has already learned, and measured from it a run that learns can look stuck.
        stuck = first > self.chance and value >= first * (1 - self.min_fall)
        if not (at_chance or stuck):
            return
        if at_chance:
            state = "still at its chance value"
        elif value >= first:
            state = f"has not fallen from its first value {first:.3f}; chance is"
        else:
            state = (
                f"has fallen only {1 - value / first:.1%} from its first value {first:.3f} "
                f"(less than {self.min_fall:.0%}); chance is"
            )
        cosines = ""
        if "same_concept_cos" in logs and "diff_concept_cos" in logs:
            cosines = (
                f"; same-concept cosine {logs['same_concept_cos']:.3f}, different-concept "
                f"{logs['diff_concept_cos']:.3f}"
            )
        self._warn(
            f"{where} the contrastive loss is {value:.3f}, {state} "
            f"{self.chance:.3f} (log of the number of candidates){cosines}: the concepts are not "
            "separating. If both cosines are near 1, one shared direction dominates every "
            "representation: use --representation centered; otherwise raise --learning-rate, "
            "lower --retain-l2-weight / --kl-weight, or read a deeper --layer"
        )

    def _check_shares(self, shares: dict[str, float], where: str) -> None:
        name, share = max(shares.items(), key=lambda kv: kv[1])
        if share <= self.dominance:
            return
        listed = ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
        if name == "contrastive":
            advice = (
                "the retain terms barely act, so the model may drift: raise --kl-weight or "
                "--retain-l2-weight, or lower --learning-rate"
            )
        else:
            flag = {"retain_l2": "--retain-l2-weight (or use --retain-l2-form relative)"}.get(
                name, "--kl-weight"
            )
            advice = f"the contrastive loss can hardly move the model: lower {flag}"
        self._warn(f"{where} {name} carries {share:.1%} of the gradient ({listed}): {advice}")
