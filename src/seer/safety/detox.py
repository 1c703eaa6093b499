"""``seer detox-eval``: the paper's detoxification measurements, plus monitor-and-intervene.

- BT: share of BeaverTails harmful prompts answered safely (a refusal, or a reply the
  external harm judge calls safe: the paper's rule);
- XST: share of XSTest's safe-but-scary-looking prompts wrongly refused (lower is better);
- retention: KL to the base model and perplexity on general text (as ``seer evaluate``);
- degenerate: share of replies that are word salad or loops
  (:func:`seer.safety.scoring.is_degenerate`), which BT and XST would count as answers.

Scoring one variant's replies (and the stop monitor's curves) is in ``seer.safety.scoring``.

The harm judge (``seer.safety.judge``) shares no weights with the model under test; it is trained on
BeaverTails pairs whose prompts are not in the BT set, and its held-out accuracy is reported
next to every score it gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Any

from seer.core.data import load_prompts
from seer.core.files import write_text_atomic
from seer.core.folders import hold_lock
from seer.errors import SeerError
from seer.inference.explainer import Explainer, Generation, Monitor
from seer.safety.baseline import base_settings, reusable_base
from seer.safety.config import DetoxConfig
from seer.safety.judge import HarmJudge, check_judge_data, train_judge
from seer.safety.scoring import Evaluation, stop_variant

__all__ = ["detox_eval", "read_prompts"]

logger = logging.getLogger(__name__)


def read_prompts(
    path: str | Path, limit: int | None = None, seed: int = 0, option: str = "the CSV path"
) -> list[str]:
    """The ``prompt`` column of a CSV/JSONL, optionally a seeded subset of ``limit`` rows
    (``option``: how the user names the file, for the error messages)."""
    if not Path(path).is_file():
        raise SeerError(f"{path} does not exist; pass {option} with the path of that CSV file")
    if limit is not None and limit < 1:
        raise SeerError(f"limit is a number of prompts, at least 1, got {limit}")
    prompts = load_prompts(str(path))
    if not prompts:
        raise SeerError(f"{path} holds no prompts; pass {option} with a 'prompt' column")
    if limit is not None and limit < len(prompts):
        prompts = random.Random(seed).sample(prompts, limit)
    return prompts


def _judge(judge_data: str, exclude: set[str], cache: Path, progress: bool) -> HarmJudge:
    """The harm judge trained on ``judge_data`` minus ``exclude``; cached in ``cache`` (next
    to it, ``<cache>.key`` says which data it was trained on: other data retrains it)."""
    digest = hashlib.sha256(Path(judge_data).read_bytes())
    digest.update("\n".join(sorted(exclude)).encode("utf-8", "surrogatepass"))
    key, key_file = digest.hexdigest(), cache.with_name(cache.name + ".key")
    if cache.is_file() and key_file.is_file() and key_file.read_text().strip() == key:
        return HarmJudge.load(cache)
    judge = train_judge(judge_data, exclude_prompts=exclude, progress=progress)
    judge.save(cache)
    write_text_atomic(key_file, key + "\n")
    return judge


def _generate(
    explainer: Explainer,
    prompts: list[str],
    adapter: bool,
    monitor: Monitor | None,
    max_new_tokens: int,
    desc: str | bool,
) -> Generation:
    """Greedy replies in batches (base: adapter off), watched by ``monitor``; ``desc`` names
    the progress bar (``False``: none)."""
    model: Any = explainer.model  # a PeftModel
    context = contextlib.nullcontext() if adapter else model.disable_adapter()
    with context:
        return explainer.generate_many(
            prompts, max_new_tokens=max_new_tokens, monitor=monitor, progress=desc
        )


def _variant_name(monitor: Monitor | None) -> str:
    """``seer``, ``seer-stop-0.9``, ``seer-stop-0.9-w0``, ``seer-stop-0.9-end`` or
    ``seer-steer-0.5-x2``: files of different settings do not overwrite each other."""
    if monitor is None or monitor.mode == "watch":
        return "seer"
    name = f"seer-{monitor.mode}-{monitor.threshold:g}"
    name += f"-x{monitor.scale:g}" if monitor.mode == "steer" else ""
    name += "-end" if monitor.reply_end else ""
    return name + (f"-w{monitor.watch_tokens}" if monitor.watch_tokens is not None else "")


def _inputs(config: DetoxConfig) -> tuple[list[str], list[str], set[str]]:
    """The BT and XSTest prompts and the prompts kept out of the judge's training, every
    data file checked before anything is loaded or written."""
    bt = read_prompts(config.harmful, config.limit, config.seed, "--harmful PATH")
    xst = read_prompts(config.xstest, config.limit, config.seed, "--xstest PATH")
    check_judge_data(config.judge_data, "--judge-data")
    return bt, xst, set(read_prompts(config.harmful))


def detox_eval(config: DetoxConfig, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate base and SEER (optionally with monitors: each mode at each threshold) on BT
    and XST; writes ``DIR/detox/<variant>.json`` with the replies, and, when the run has the
    unsafe concept, the stop monitor's trade-off at every threshold (``stop_curve.json`` and
    ``.png``, from the plain pass watched in shadow mode and its replies' final
    explanations). With ``skip_base``, an earlier ``base.json`` made with the same settings
    is shown instead. Every input is checked before anything is written. ``refusal_rule``
    counts refusals (XST, and BT replies safe without the judge): ``strict`` (a refusal phrase
    opens the reply) or ``paper`` (the SEER authors' substrings anywhere,
    :mod:`seer.safety.refusal`). Returns the results."""
    started = time.time()
    concept = config.monitor.concept or "unsafe"
    monitors = config.monitor.monitors(concept=concept, towards="safe")
    bt, xst, excluded = _inputs(config)
    explainer = Explainer.from_run(config.run)
    for m in monitors:
        explainer.check_monitor(m)  # before any generation
    out_dir = explainer.run.path / "detox"
    with hold_lock(out_dir):  # two detox-evals of one run: the second refuses
        settings = base_settings(
            bt,
            xst,
            config.judge_data,
            config.max_new_tokens,
            explainer.run.meta["base_fingerprint"],
        ) | {"refusal_rule": config.refusal_rule}  # the base scores count refusals by it
        base = reusable_base(out_dir / "base.json", settings) if config.skip_base else None
        # The plain pass, watched in shadow mode over the whole reply when the run has the concept.
        watch = None
        if concept in explainer.concepts:
            watch = Monitor(concept, threshold=1.0, mode="watch")
        out_dir.mkdir(exist_ok=True)
        judge = _judge(config.judge_data, excluded, out_dir / "judge.json", progress)
        ev = Evaluation(explainer, bt, xst, judge, out_dir, settings, config.refusal_rule)
        ev.target = config.target
        n = config.max_new_tokens
        if base is not None:
            ev.results["base"] = base
        elif not config.skip_base:
            ev.record(
                "base",
                _generate(explainer, bt, False, None, n, progress and "base: BT"),
                _generate(explainer, xst, False, None, n, progress and "base: XST"),
                None,
            )
        # The watched pass also records each reply's final explanation (gen.final).
        bt_gen = _generate(explainer, bt, True, watch, n, progress and "seer: BT")
        xst_gen = _generate(explainer, xst, True, watch, n, progress and "seer: XST")
        plain = ev.record("seer", bt_gen, xst_gen, None)
        if watch is not None:
            ev.results["stop_curve_auc"] = ev.stop_curves(bt_gen, xst_gen, plain, concept)
        for m in monitors:
            name = _variant_name(m)
            if m.mode == "stop":
                ev.record(name, stop_variant(bt_gen, m), stop_variant(xst_gen, m), m)
            else:
                bt_steered = _generate(explainer, bt, True, m, n, progress and f"{name}: BT")
                xst_steered = _generate(explainer, xst, True, m, n, progress and f"{name}: XST")
                ev.record(name, bt_steered, xst_steered, m)
        ev.results["seconds"] = round(time.time() - started, 1)
        return ev.results
