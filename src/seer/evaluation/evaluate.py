"""``seer evaluate``: base vs SEER on the run's held-out split, written to ``DIR/eval/``."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seer.core import strict_json
from seer.core.formatting import encode, pad_batch
from seer.core.represent import estimate_center, representations
from seer.core.run import load_trained
from seer.evaluation.metrics import (
    compute_prototypes,
    disentanglement,
    layer_sweep,
    ot_separation,
    probe_accuracy,
)
from seer.inference.generation import generate_replies
from seer.training.retain import general_text

__all__ = ["evaluate", "retention"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def retention(
    peft_model: Any, tokenizer: Any, texts: list[dict], batch_size: int = 8, max_length: int = 512
) -> dict:
    """Capability retention on general text: ``KL(base || seer)`` of next-token distributions
    (nats per real token) and the perplexity of each model on the responses."""
    device = next(peft_model.parameters()).device
    kl_sum, kl_n = 0.0, 0
    nll = {"base": 0.0, "seer": 0.0}
    nll_n = 0
    for start in range(0, len(texts), batch_size):
        enc = [
            encode(tokenizer, t["prompt"], t.get("response"), "full", max_length)
            for t in texts[start : start + batch_size]
        ]
        batch = pad_batch(enc, ("user_end",), tokenizer.pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with peft_model.disable_adapter():
            ref = F.log_softmax(
                peft_model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1
            )
        cur = F.log_softmax(peft_model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        real = mask.bool()
        kl_sum += (ref.exp() * (ref - cur)).sum(-1)[real].sum().item()
        kl_n += int(real.sum())
        # Perplexity of the response: positions from the end of the user turn to the last token.
        steps = torch.arange(ids.shape[1] - 1, device=device)[None, :]
        lengths = mask.sum(1, keepdim=True)
        resp = (steps >= batch["positions"].to(device)) & (steps < lengths - 1)
        target = ids[:, 1:]
        for name, logp in (("base", ref), ("seer", cur)):
            token_nll = -logp[:, :-1].gather(-1, target[..., None])[..., 0]
            nll[name] += token_nll[resp].sum().item()
        nll_n += int(resp.sum())
    return {
        "kl_nats_per_token": kl_sum / max(kl_n, 1),
        "ppl_base": float(np.exp(nll["base"] / max(nll_n, 1))),
        "ppl_seer": float(np.exp(nll["seer"] / max(nll_n, 1))),
        "n_texts": len(texts),
        "n_tokens": kl_n,
    }


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


def evaluate(
    run_dir: str | Path,
    *,
    sweep: bool = True,
    figures: bool = True,
    n_generations: int = 3,
    batch_size: int = 16,
    progress: bool = True,
    model: Any = None,
    tokenizer: Any = None,
) -> dict:
    """Evaluate a run; writes ``DIR/eval/metrics.json`` (and a report) and returns the metrics."""
    started = time.time()
    run, peft_model, tokenizer = load_trained(run_dir, model=model, tokenizer=tokenizer)
    cfg, layer, positions = run.config, run.layer, run.positions
    train_rows, test_rows = run.split("train"), run.split("test")
    y_train = [r["concept"] for r in train_rows]
    y_test = [r["concept"] for r in test_rows]
    layers = list(range(run.meta["n_layers"])) if sweep else [layer]
    kw = dict(
        positions=positions,
        batch_size=batch_size,
        max_length=cfg["max_length"],
        layers_path=cfg["layers_path"],
    )
    reps: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for name in ("base", "seer"):
        ctx = peft_model.disable_adapter() if name == "base" else contextlib.nullcontext()
        with ctx:
            # issue 19: a centered run's readout, the base model read around its own mean
            center = run.center
            if center is not None and name == "base":
                center = estimate_center(peft_model, tokenizer, train_rows, layer, **kw)
            reps[name] = {
                split: representations(
                    peft_model,
                    tokenizer,
                    rows,
                    layers,
                    progress=f"{name} {split}" if progress else False,
                    centers={layer: center},
                    **kw,
                )
                for split, rows in (("train", train_rows), ("test", test_rows))
            }
    seed = int(cfg["seed"])
    metrics: dict[str, Any] = {
        "base": _scores(
            reps["base"]["train"][layer], y_train, reps["base"]["test"][layer], y_test, None, seed
        ),
        "seer": _scores(
            reps["seer"]["train"][layer],
            y_train,
            reps["seer"]["test"][layer],
            y_test,
            (run.concepts, run.prototypes.numpy()),
            seed,
        ),
    }
    with peft_model.disable_adapter():
        general = general_text(
            peft_model, tokenizer, run.meta["base_fingerprint"], split="evaluation"
        )
    metrics["retention"] = retention(peft_model, tokenizer, general, max_length=cfg["max_length"])
    if sweep:
        metrics["layer_sweep"] = {
            name: layer_sweep(reps[name]["train"], y_train, reps[name]["test"], y_test)
            for name in tqdm(("base", "seer"), desc="layer sweep", disable=not progress)
        }
    generations = []
    if n_generations:
        prompts = [g["prompt"] for g in general[:n_generations]]
        with peft_model.disable_adapter():
            base_replies = generate_replies(peft_model, tokenizer, prompts, max_new_tokens=48)
        seer_replies = generate_replies(peft_model, tokenizer, prompts, max_new_tokens=48)
        generations = [
            {"prompt": p, "base": b, "seer": s}
            for p, b, s in zip(prompts, base_replies, seer_replies, strict=True)
        ]
    metrics["generations"] = generations
    metrics["run"] = {
        "path": str(run.path),
        "layer": layer,
        "positions": list(positions),
        "concepts": run.concepts,
        "n_train": len(train_rows),
        "n_test": len(test_rows),
        "seconds": round(time.time() - started, 1),
    }
    out_dir = run.path / "eval"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "metrics.json").write_text(strict_json.dumps(metrics, indent=2), encoding="utf-8")
    if figures:
        _write_report(out_dir, metrics, reps, y_test, layer)
    return metrics


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
    report.write_report(out_dir, metrics, figs, metrics.get("generations"))
