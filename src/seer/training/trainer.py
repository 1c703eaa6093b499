"""SEER on top of ``transformers.Trainer``: a pair dataset, its collator, and ``compute_loss``.

One training step, for B pairs (view1_i, view2_i) of the same concept and B retain texts:

1. frozen model (adapter disabled, no grad): retain texts up to the target layer (every
   adapted layer's output kept for the l2 term), view 1 through the whole model (reference
   next-token distributions for the KL term; skipped when ``kl_weight == 0``);
2. adapted model: view 1 through the whole model, one pass giving both the contrastive
   representation (hook at the target layer) and the KL logits (cut at the target layer
   when ``kl_weight == 0``); then view 2 and the retain texts together, cut at the target
   layer.

Padding is to each batch's longest text, never to a fixed length.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, SequentialSampler
from transformers import PreTrainedTokenizerBase, Trainer

from seer.core import losses, normalise
from seer.core.formatting import Encoded, encode, pad_batch
from seer.core.layers import capture_layers, run_until
from seer.core.represent import gather_positions, pick_positions
from seer.errors import SeerError
from seer.training.config import TrainConfig
from seer.training.health import gradient_shares

__all__ = ["PairCollator", "PairDataset", "SeerTrainer", "build_pairs", "gather_with_grad"]

MODES = ("full", "prompt", "response")


def build_pairs(
    concepts: Sequence[str],
    has_response: Sequence[bool],
    *,
    epochs: float,
    batch_size: int,
    balanced: bool,
    format_probs: Sequence[float],
    n_retain: int,
    seed: int,
) -> list[dict]:
    """The whole training schedule, drawn up front so that it is seeded and resumable.

    Each example is view 1 once per epoch; its view 2 is another example of the same concept.
    ``balanced`` orders each epoch round-robin over concepts (in a random concept order each
    round), so that every batch holds as equal a mix of concepts as the data allows.
    """
    rng = random.Random(seed)
    by_concept: dict[str, list[int]] = defaultdict(list)
    for i, concept in enumerate(concepts):
        by_concept[concept].append(i)
    names = sorted(by_concept)
    concept_id = {name: k for k, name in enumerate(names)}
    order: list[int] = []
    for _ in range(math.ceil(epochs)):
        if balanced:
            queues = {c: rng.sample(ix, len(ix)) for c, ix in by_concept.items()}
            while any(queues.values()):
                for c in rng.sample(names, len(names)):
                    if queues[c]:
                        order.append(queues[c].pop())
        else:
            order.extend(rng.sample(range(len(concepts)), len(concepts)))
    total = max(batch_size, int(round(epochs * len(concepts))) // batch_size * batch_size)
    order = (order * (1 + total // max(1, len(order))))[:total]

    def mode(i: int) -> str:
        return rng.choices(MODES, weights=format_probs)[0] if has_response[i] else "prompt"

    pairs = []
    for step, i in enumerate(order):
        others = [j for j in by_concept[concepts[i]] if j != i]
        pairs.append(
            {
                "view1": i,
                "view2": rng.choice(others),
                "mode1": mode(i),
                "mode2": None,  # drawn below, after view2 is known
                "concept": concept_id[concepts[i]],
                "retain": step % n_retain if n_retain else -1,
            }
        )
        pairs[-1]["mode2"] = mode(pairs[-1]["view2"])
    return pairs


class PairDataset(Dataset):
    """Items of the schedule from :func:`build_pairs`, tokenised on first use."""

    def __init__(
        self,
        examples: Sequence[dict],
        retain: Sequence[dict],
        pairs: list[dict],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> None:
        self.examples, self.retain, self.pairs = examples, retain, pairs
        self.tokenizer, self.max_length = tokenizer, max_length
        self._cache: dict[tuple[str, int, str], Encoded] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _encode(self, kind: str, index: int, mode: str) -> Encoded:
        key = (kind, index, mode)
        if key not in self._cache:
            ex = (self.examples if kind == "concept" else self.retain)[index]
            self._cache[key] = encode(
                self.tokenizer, ex.get("prompt"), ex.get("response"), mode, self.max_length
            )
        return self._cache[key]

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        return {
            "view1": self._encode("concept", p["view1"], p["mode1"]),
            "view2": self._encode("concept", p["view2"], p["mode2"]),
            "concept": p["concept"],
            "retain": self._encode("retain", p["retain"], "full") if p["retain"] >= 0 else None,
        }


class PairCollator:
    def __init__(
        self, pad_token_id: int, positions: tuple[str, ...], pad_to_multiple_of: int | None = None
    ):
        self.pad_token_id, self.positions, self.multiple = (
            pad_token_id,
            positions,
            pad_to_multiple_of,
        )

    def __call__(self, items: list[dict]) -> dict:
        def pad(encoded: list[Encoded]) -> dict[str, torch.Tensor]:
            return pad_batch(encoded, self.positions, self.pad_token_id, self.multiple)

        batch = {
            "view1": pad([it["view1"] for it in items]),
            "view2": pad([it["view2"] for it in items]),
            "concepts": torch.tensor([it["concept"] for it in items], dtype=torch.long),
        }
        if items[0]["retain"] is not None:
            batch["retain"] = pad([it["retain"] for it in items])
        return batch


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process; gradients flow back to each process's part.

    Uses ``torch.distributed.nn.all_gather`` whose backward sums the gradients that every
    process computed for each part, so each process's loss sees the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def _concat(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int
) -> dict[str, torch.Tensor]:
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    return {
        "input_ids": torch.cat([widen(a["input_ids"], pad_id), widen(b["input_ids"], pad_id)]),
        "attention_mask": torch.cat([widen(a["attention_mask"], 0), widen(b["attention_mask"], 0)]),
    }


class SeerTrainer(Trainer):
    """``Trainer`` with SEER's loss. Overrides only ``compute_loss``, ``log`` and the sampler."""

    def __init__(
        self,
        *args,
        seer_config: TrainConfig,
        layer: int,
        gradient_probe_steps: frozenset[int] = frozenset(),
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seer_config, self.layer = seer_config, layer
        # issue 19: the 0-based steps at which each loss part's share of the gradient is
        # measured for the health check.
        self.gradient_probe_steps = gradient_probe_steps
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler:
        # The schedule is already shuffled (and concept-balanced) by build_pairs.
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def _forward(
        self, model: nn.Module, batch: dict[str, torch.Tensor], layers: list[int], full: bool
    ):
        """Run ``model`` (a PeftModel) on a batch; record ``layers``. With ``full`` also return
        next-token logits at the real tokens only ``[n_real, V]`` (the LM head never sees
        padding); otherwise stop after the deepest recorded layer."""
        cfg = self.seer_config
        hf = model.get_base_model()
        decoder = hf.get_decoder() if full else hf
        with capture_layers(
            model, layers, stop_after=not full, layers_path=cfg.layers_path
        ) as hidden:
            out = run_until(
                decoder,
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
        if not full:
            return dict(hidden), None
        logits = hf.get_output_embeddings()(out.last_hidden_state[batch["attention_mask"].bool()])
        cap = getattr(hf.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return dict(hidden), logits

    def training_step(self, model, inputs, num_items_in_batch=None):
        # compute_loss runs several partial passes on the unwrapped model, which DDP's reducer
        # cannot follow, so gradients are averaged across processes here instead.
        loss = super().training_step(model, inputs, num_items_in_batch)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for param in model.parameters():
                if param.requires_grad and param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= world
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg, layer = self.seer_config, self.layer
        v1, v2, retain = inputs["view1"], inputs["view2"], inputs.get("retain")
        use_kl, use_l2 = cfg.kl_weight > 0, cfg.retain_l2_weight > 0 and retain is not None
        adapted_layers = list(range(layer + 1))
        peft_model = self.accelerator.unwrap_model(model)
        ref_hidden, ref_logits = {}, None
        with torch.no_grad(), peft_model.disable_adapter():
            if use_l2:
                ref_hidden, _ = self._forward(peft_model, retain, adapted_layers, full=False)
            if use_kl:
                _, ref_logits = self._forward(peft_model, v1, [layer], full=True)
        h1, logits = self._forward(peft_model, v1, [layer], full=use_kl)
        rest = _concat(v2, retain, self.processing_class.pad_token_id) if use_l2 else v2
        h_rest, _ = self._forward(
            peft_model, rest, adapted_layers if use_l2 else [layer], full=False
        )
        n = v2["input_ids"].shape[0]
        # issue 19: 'centered' subtracts the batch's mean state before normalising.
        center = None
        if cfg.representation == "centered":
            center = normalise.batch_center(
                [
                    pick_positions(h1[layer], v1["positions"]),
                    pick_positions(h_rest[layer][:n], v2["positions"]),
                ]
            )
        z1 = gather_positions(h1[layer], v1["positions"], center)
        z2 = gather_positions(h_rest[layer][:n], v2["positions"], center)
        labels = inputs["concepts"]
        if cfg.gather_across_processes:
            z1, z2, labels = gather_with_grad(z1), gather_with_grad(z2), gather_with_grad(labels)
        if cfg.objective == "paper":
            contrastive = losses.info_nce(z1, z2, cfg.temperature)
        else:
            contrastive = losses.supcon(
                torch.cat([z1, z2]), torch.cat([labels, labels]), cfg.temperature
            )
        parts = {"contrastive": contrastive}
        loss = cfg.contrastive_weight * contrastive
        if use_l2:
            mine = [h_rest[i][n:, : retain["input_ids"].shape[1]] for i in adapted_layers]
            l2 = losses.retain_l2 if cfg.retain_l2_form == "raw" else normalise.relative_retain_l2
            parts["retain_l2"] = l2(
                mine, [ref_hidden[i] for i in adapted_layers], retain["attention_mask"]
            )
            loss = loss + cfg.retain_l2_weight * parts["retain_l2"]
        if use_kl:
            parts["kl"] = losses.next_token_kl(ref_logits, logits)
            loss = loss + cfg.kl_weight * parts["kl"]
        for name, value in parts.items():
            if not torch.isfinite(value):
                raise SeerError(
                    f"the {name} loss is {value.item()} at step {self.state.global_step + 1}; "
                    "training stopped. Lower --learning-rate or check the data; the last "
                    "checkpoint is kept."
                )
            self._metrics[name].append(value.item())
        if self.state.global_step in self.gradient_probe_steps and model.training:
            weights = {"contrastive": cfg.contrastive_weight, "retain_l2": cfg.retain_l2_weight}
            weighted = {k: weights.get(k, cfg.kl_weight) * v for k, v in parts.items()}
            params = [p for p in model.parameters() if p.requires_grad]
            for name, share in gradient_shares(weighted, params).items():
                self._metrics[f"grad_share_{name}"].append(share)
        same, diff = losses.concept_cosines(torch.cat([z1, z2]), torch.cat([labels, labels]))
        self._metrics["same_concept_cos"].append(same)
        self._metrics["diff_concept_cos"].append(diff)
        return (loss, {"z1": z1, "z2": z2}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            for name, values in self._metrics.items():
                finite = [v for v in values if not math.isnan(v)]
                logs[name] = round(sum(finite) / len(finite), 4) if finite else float("nan")
            self._metrics.clear()
        super().log(logs, start_time)
