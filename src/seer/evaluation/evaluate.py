"""``seer evaluate``: base vs SEER on the run's test split, written to ``DIR/eval/``."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seer.core import strict_json
from seer.core.folders import hold_lock
from seer.core.represent import estimate_center, representations
from seer.core.run import Run, load_trained
from seer.errors import SeerError
from seer.evaluation.detection_report import monitoring_figures
from seer.evaluation.faithfulness import faithfulness
from seer.evaluation.metrics import (
    disentanglement,
    layer_sweep,
    ot_separation,
    probe_accuracy,
)
from seer.evaluation.retention import generations, retention
from seer.evaluation.versus_probes import (
    base_calibration,
    best_layer,
    compare,
    external_probes,
    readout_metrics,
)
from seer.inference.general import general_text
from seer.readout import Readout, compute_prototypes

__all__ = ["evaluate", "retention"]

logger = logging.getLogger(__name__)


def _scores(
    train_x: np.ndarray,
    y_train: list[str],
    test_x: np.ndarray,
    y_test: list[str],
    prototypes: tuple[list[str], np.ndarray] | None,
    seed: int,
) -> dict:
    names, protos = prototypes if prototypes is not None else compute_prototypes(train_x, y_train)
    out: dict[str, Any] = disentanglement(test_x, y_test, names, protos)
    out["probe_accuracy"] = probe_accuracy(train_x, y_train, test_x, y_test, seed=seed)
    out["ot"] = ot_separation(test_x, y_test, seed=seed)
    return out


def run_splits(run: Run) -> tuple[dict[str, list[dict]], bool]:
    """The run's ``train`` / ``calibration`` / ``test`` rows, and whether it has a calibration
    split. A run trained before the three-way split has none: its test rows stand in (the
    figures are then fitted and reported on the same rows, and labelled so)."""
    has_calibration = (run.path / "split" / "calibration.jsonl").is_file()
    rows = {"train": run.split("train"), "test": run.split("test")}
    rows["calibration"] = run.split("calibration") if has_calibration else rows["test"]
    if not has_calibration:
        logger.warning(
            "%s has no calibration split (trained before seer had one): temperatures, "
            "thresholds and the best layer are fitted on the test rows they are reported on",
            run.path,
        )
    return rows, has_calibration


def _representations(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: dict[str, list[dict]],
    layers: list[int],
    progress: bool,
    run: Run,
    **kw: Any,
) -> dict:
    reps: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    layer = run.layer
    for name in ("base", "seer"):
        ctx = peft_model.disable_adapter() if name == "base" else contextlib.nullcontext()
        with ctx:
            # a centered run's readout: the base model is read around its own mean
            center = run.center
            if center is not None and name == "base":
                center = estimate_center(peft_model, tokenizer, rows["train"], layer, **kw)
            reps[name] = {
                split: representations(
                    peft_model,
                    tokenizer,
                    part,
                    layers,
                    progress=f"{name} {split}" if progress else False,
                    centers={layer: center},
                    **kw,
                )
                for split, part in rows.items()
                if part is not rows["test"] or split == "test"
            }
        reps[name].setdefault("calibration", reps[name]["test"])
    return reps


def _monitoring(
    run: Run,
    reps: dict,
    rows: dict[str, list[dict]],
    layer: int,
    best: int | None,
    fitted_on: str,
    seed: int,
) -> dict:
    """Readout metrics for base and SEER, the external probes, and their comparison."""
    labels = {s: [r["concept"] for r in part] for s, part in rows.items()}
    names = run.concepts
    index = {n: i for i, n in enumerate(names)}
    targets = {s: np.array([index[c] for c in ys]) for s, ys in labels.items()}
    at = {s: reps["seer"][s][layer] for s in rows}
    base_at = {s: reps["base"][s][layer] for s in rows}
    base_readout, base_protos = base_calibration(base_at, labels, fitted_on)
    if base_readout.concepts != names:
        raise SeerError(f"{run.path}: the training split lacks some of the concepts {names}")
    layers = {"run": layer} if best is None else {"run": layer, "best": best}
    probes = external_probes(reps["base"], targets, names, layers, seed)
    seer = readout_metrics(at, targets, Readout.from_run(run))
    return {
        "fitted_on": fitted_on,
        "base_readout": readout_metrics(base_at, targets, base_readout),
        "seer_readout": seer,
        "probes": probes,
        "comparison": compare(seer, probes, names),
        "base_prototypes": base_protos,
    }


def _cluster_scores(run: Run, reps: dict, y: dict[str, list[str]], seed: int) -> dict:
    """Prototype accuracy, disentanglement, probe accuracy and OT separation at the run's
    layer: base (its own prototypes from train) and SEER (the run's prototypes)."""
    layer = run.layer
    protos = {"base": None, "seer": (run.concepts, run.prototypes.numpy())}
    return {
        name: _scores(
            reps[name]["train"][layer],
            y["train"],
            reps[name]["test"][layer],
            y["test"],
            protos[name],
            seed,
        )  # fmt: skip
        for name in ("base", "seer")
    }


def _run_summary(run: Run, rows: dict[str, list[dict]], has_calibration: bool) -> dict:
    return {
        "path": str(run.path),
        "layer": run.layer,
        "positions": list(run.positions),
        "concepts": run.concepts,
        "n_train": len(rows["train"]),
        "n_calibration": len(rows["calibration"]) if has_calibration else 0,
        "n_test": len(rows["test"]),
        "calibration_split": has_calibration,
        "fitted_on": "calibration" if has_calibration else "test (no calibration split)",
    }


def evaluate(
    run_dir: str | Path,
    *,
    sweep: bool = True,
    figures: bool = True,
    n_generations: int = 3,
    batch_size: int = 16,
    progress: bool = True,
    faithfulness_texts: int = 64,
    faithfulness_draws: int = 4,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict:
    """Evaluate a run; writes ``DIR/eval/metrics.json`` (and a report) and returns the metrics.

    Every figure is measured on the test split; everything fitted (prototypes and probes on
    train; temperatures, thresholds, the best layer on calibration) sees no test row, except
    for runs without a calibration split (``metrics["run"]["calibration_split"]`` is false).
    """
    started = time.time()
    run, peft_model, tokenizer = load_trained(run_dir, model=model, tokenizer=tokenizer)
    with hold_lock(run.path / "eval"):  # two evaluations of one run: the second refuses
        cfg, layer = run.config, run.layer
        rows, has_calibration = run_splits(run)
        summary = _run_summary(run, rows, has_calibration)
        y = {s: [r["concept"] for r in part] for s, part in rows.items()}
        kw = dict(positions=run.positions, batch_size=batch_size, max_length=cfg["max_length"])
        layers = list(range(run.meta["n_layers"])) if sweep else [layer]
        reps = _representations(
            peft_model, tokenizer, rows, layers, progress, run, layers_path=cfg["layers_path"], **kw
        )
        seed = int(cfg["seed"])
        metrics: dict[str, Any] = _cluster_scores(run, reps, y, seed)
        best = None
        if sweep:
            best, by_layer = best_layer(
                reps["base"]["train"], y["train"], reps["base"]["calibration"], y["calibration"]
            )
            metrics["base_best_layer"] = {"layer": best, "calibration_accuracy": by_layer}
        monitoring = _monitoring(run, reps, rows, layer, best, summary["fitted_on"], seed)
        base_protos = monitoring.pop("base_prototypes")
        metrics["monitoring"] = monitoring
        metrics["faithfulness"] = _faithfulness(
            peft_model, tokenizer, run, rows["test"], base_protos, faithfulness_texts,
            faithfulness_draws, progress, cfg,
        )  # fmt: skip
        with peft_model.disable_adapter():
            general = general_text(
                peft_model, tokenizer, run.meta["base_fingerprint"], split="evaluation"
            )
        metrics["retention"] = retention(
            peft_model, tokenizer, general, max_length=cfg["max_length"]
        )
        if sweep:
            metrics["layer_sweep"] = {
                name: layer_sweep(reps[name]["train"], y["train"], reps[name]["test"], y["test"])
                for name in tqdm(("base", "seer"), desc="layer sweep", disable=not progress)
            }
        metrics["generations"] = generations(peft_model, tokenizer, general, n_generations)
        metrics["run"] = summary | {"seconds": round(time.time() - started, 1)}
        out_dir = run.path / "eval"
        out_dir.mkdir(exist_ok=True)
        (out_dir / "metrics.json").write_text(
            strict_json.dumps(metrics, indent=2), encoding="utf-8"
        )
        if figures:
            _write_report(out_dir, metrics, reps, y["test"], layer)
        return metrics


def _faithfulness(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    run: Run,
    test_rows: list[dict],
    base_protos: np.ndarray,
    n_texts: int,
    n_draws: int,
    progress: bool,
    cfg: dict,
) -> dict:
    """Projection KL on a seeded subset of ``n_texts`` test rows, base and SEER."""
    if n_texts <= 0 or n_draws <= 0:
        return {}
    rng = np.random.default_rng(int(cfg["seed"]))
    pick = sorted(rng.choice(len(test_rows), min(n_texts, len(test_rows)), replace=False))
    subset = [test_rows[i] for i in pick]
    kw = dict(
        n_draws=n_draws,
        seed=int(cfg["seed"]),
        max_length=cfg["max_length"],
        layers_path=cfg["layers_path"],
    )
    with peft_model.disable_adapter():
        base = faithfulness(
            peft_model, tokenizer, subset, run.layer, base_protos,
            progress="faithfulness base" if progress else False, **kw,
        )  # fmt: skip
    seer = faithfulness(
        peft_model, tokenizer, subset, run.layer, run.prototypes.numpy(),
        progress="faithfulness seer" if progress else False, **kw,
    )  # fmt: skip
    return {"base": base, "seer": seer}


def _write_report(out_dir: Path, metrics: dict, reps: dict, y_test: list[str], layer: int) -> None:
    from seer.evaluation import report  # deferred: matplotlib and t-SNE, only with figures

    figs = {"t-SNE of held-out representations, base vs SEER": "tsne.png"}
    report.tsne_figure(
        reps["base"]["test"][layer], reps["seer"]["test"][layer], y_test, out_dir / "tsne.png"
    )
    if "layer_sweep" in metrics:
        report.layer_sweep_figure(
            metrics["layer_sweep"], out_dir / "layer_sweep.png", target_layer=layer
        )
        figs["Concept separation across layers"] = "layer_sweep.png"
    for name in ("base", "seer"):
        m = metrics[name]
        report.confusion_figure(
            m["confusion"],
            m["labels"],
            out_dir / f"confusion_{name}.png",
            f"{name}: nearest prototype",
        )
        figs[f"Confusion matrix ({name})"] = f"confusion_{name}.png"
    figs.update(monitoring_figures(metrics, out_dir))
    report.write_report(out_dir, metrics, figs, metrics.get("generations"))
