"""SEER on top of ``transformers.Trainer``: ``compute_loss``, and gradient caching.

One training step, for B pairs (view1_i, view2_i) of the same concept and B retain texts:

1. frozen model (adapter disabled, no grad): retain texts up to the target layer (every
   adapted layer's output kept for the l2 term), view 1 through the whole model (reference
   final hidden states for the KL term; skipped when ``kl_weight == 0``);
2. adapted model: view 1 through the whole model, one pass giving both the contrastive
   representation (hook at the target layer) and the final hidden states for the KL (cut at
   the target layer when ``kl_weight == 0``); then view 2 and the retain texts together, cut
   at the target layer;
3. the KL through the LM head in chunks of tokens (``losses.chunked_next_token_kl``): no
   ``[tokens, vocab]`` tensor is ever whole.

With ``micro_batch_size`` below the batch, the step is done by gradient caching
(:meth:`SeerTrainer._cached_step`). Padding is to each batch's longest text.

The passes return the raw states at the read positions; :meth:`SeerTrainer._contrastive` makes
them representations, for ``--representation centered`` around the mean state of the whole
contrastive batch (every micro-batch of it; :mod:`seer.core.normalize`).
"""

# One Trainer subclass, kept whole (about 380 lines) so a step reads top to bottom.
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer

from seer.core import losses, normalize
from seer.core.architecture import logit_softcap
from seer.core.layers import capture_final_states, capture_layers, run_until
from seer.core.memory import set_checkpointing
from seer.core.represent import normalize_states, pick_positions
from seer.errors import SeerError
from seer.training import sharding
from seer.training.config import TrainConfig
from seer.training.gradcache import batch_lengths, micro_batches, rng_state, set_rng_state
from seer.training.health import HealthCallback, gradient_shares
from seer.training.pairs import PairCollator, PairDataset, build_pairs

__all__ = [
    "PairCollator",
    "PairDataset",
    "SeerTrainer",
    "build_pairs",
    "gather_with_grad",
    "micro_batches",
]


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


def _states(hidden: torch.Tensor, part: dict[str, torch.Tensor]) -> torch.Tensor:
    """The states ``[B, P, H]`` of a batch part's read spans."""
    return pick_positions(hidden, part["positions"], part.get("starts"))


class SeerTrainer(Trainer):
    """``Trainer`` with SEER's loss. Overrides ``compute_loss``, ``training_step`` (gradient
    caching, the DDP gradient average), ``log`` and the sampler."""

    health: HealthCallback  # set by build_trainer: the training-health check

    def __init__(
        self,
        *args: Any,
        seer_config: TrainConfig,
        layer: int,
        gradient_probe_steps: frozenset[int] = frozenset(),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seer_config, self.layer = seer_config, layer
        # The 0-based steps at which each loss part's share of the gradient is
        # measured for the health check (steps done at once, not by gradient caching).
        self.gradient_probe_steps = gradient_probe_steps
        self.memory_note = ""  # set by build_trainer: the step's estimated peak, for OOM errors
        # set by build_trainer when the memory plan checkpoints some steps: a batch's text
        # lengths -> whether its step runs with activation checkpointing
        self.checkpoint_when: Callable[[Sequence[tuple[int, int, int]]], bool] | None = None
        self.model_accepts_loss_kwargs = False  # compute_loss does not use num_items_in_batch
        # set by Trainer.train() for each update; also a step run outside it (the benches)
        self.current_gradient_accumulation_steps = self.args.gradient_accumulation_steps
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def autocast_smart_context_manager(
        self, cache_enabled: bool | None = True
    ) -> contextlib.AbstractContextManager:
        """Mixed precision (``--bf16`` / ``--fp16``) for the step's passes: they run on the
        unwrapped model, which accelerate's autocast patch of ``model.forward`` never sees,
        so the autocast context is opened here (Trainer's own returns a null context)."""
        return self.accelerator.autocast()

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler:
        # The schedule is already shuffled (and concept-balanced) by build_pairs.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return SequentialSampler(cast(Sized, dataset))  # a PairDataset, which has a length

    def _forward(
        self, model: Any, batch: dict[str, torch.Tensor], layers: list[int], full: bool
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Run ``model`` (a PeftModel) on a batch; record ``layers``. With ``full`` also return
        the final hidden states (the LM head's input; the head itself never runs) at the real
        tokens only ``[n_real, H]``, for the chunked KL; otherwise stop after the deepest
        recorded layer. The pass enters through ``model`` itself, so that under FSDP the root's
        hooks run (and end the pass, even a cut one), and a cut pass gathers the embedding and
        the blocks up to the target only (:mod:`seer.training.sharding`)."""
        cfg = self.seer_config
        empty: dict[str, torch.Tensor] = {}
        finals: contextlib.AbstractContextManager[dict[str, torch.Tensor]] = (
            capture_final_states(model) if full else contextlib.nullcontext(empty)
        )
        with (
            capture_layers(
                model, layers, stop_after=not full, layers_path=cfg.layers_path
            ) as hidden,
            finals as final,
        ):
            run_until(
                model,
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
        if not full:
            return dict(hidden), None
        return dict(hidden), final["final"][batch["attention_mask"].bool()]

    def _kl(self, model: Any, final: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        hf = model.get_base_model()
        head = hf.get_output_embeddings()
        sharding.gather(head)  # under FSDP: the weight whole until the backward has ended
        cap = logit_softcap(hf.config)
        return losses.chunked_next_token_kl(final, reference, head.weight, head.bias, cap)

    def _representations(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """``s1, s2`` of a batch (states ``[B, P, H]`` at the read positions): the adapted
        passes of :meth:`_terms`, cut at the target layer (the first stage of gradient caching)."""
        layer, v1, v2 = self.layer, batch["view1"], batch["view2"]
        h1, _ = self._forward(model, v1, [layer], full=False)
        h2, _ = self._forward(model, v2, [layer], full=False)
        return _states(h1[layer], v1), _states(h2[layer], v2)

    def _terms(
        self,
        model: Any,
        batch: dict[str, Any],
        *,
        counts: tuple[int, int] | None = None,
        rng: tuple | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The passes of one batch: ``s1, s2`` (the states at the read positions, see
        :meth:`_representations`), the weighted retain loss and its parts.

        ``counts`` (real retain tokens, real view-1 tokens of the whole batch) marks a micro-batch
        of gradient caching: its parts are scaled by its share of the batch's tokens, so that
        they sum to the whole batch's, view 2 and the retain texts get separate passes, and
        ``rng`` restores the random state of :meth:`_representations` (same LoRA dropout).
        """
        cfg, layer = self.seer_config, self.layer
        v1, v2, use_kl = batch["view1"], batch["view2"], cfg.kl_weight > 0
        # the retain texts where the l2 term uses them, else None (no l2 term)
        retain = batch.get("retain") if cfg.retain_l2_weight > 0 else None
        adapted = list(range(layer + 1))
        ref_hidden: dict[int, torch.Tensor] = {}
        ref_final: Any = None
        with torch.no_grad(), model.disable_adapter():
            if retain is not None:
                ref_hidden, _ = self._forward(model, retain, adapted, full=False)
            if use_kl:
                _, ref_final = self._forward(model, v1, [layer], full=True)
        if rng is not None:
            set_rng_state(rng)
        h1, final = self._forward(model, v1, [layer], full=use_kl)
        pad_id = getattr(self.processing_class, "pad_token_id", 0)
        n = v2["input_ids"].shape[0]
        if retain is not None and counts is None:  # view 2 and the retain texts in one pass
            rest, _ = self._forward(model, _concat(v2, retain, pad_id), adapted, False)
            h2 = rest[layer][:n]
            mine = [rest[i][n:, : retain["input_ids"].shape[1]] for i in adapted]
        else:
            h2 = self._forward(model, v2, [layer], full=False)[0][layer]
            if retain is not None:
                h_retain, _ = self._forward(model, retain, adapted, full=False)
                mine = [h_retain[i] for i in adapted]
        s1, s2 = _states(h1[layer], v1), _states(h2, v2)
        parts: dict[str, torch.Tensor] = {}
        retain_loss = s1.new_zeros(())
        if retain is not None:
            share = 1.0 if counts is None else int(retain["attention_mask"].sum()) / counts[0]
            refs = [ref_hidden[i] for i in adapted]
            l2 = losses.retain_l2 if cfg.retain_l2_form == "raw" else normalize.relative_retain_l2
            parts["retain_l2"] = share * l2(mine, refs, retain["attention_mask"])
            retain_loss = retain_loss + cfg.retain_l2_weight * parts["retain_l2"]
        if use_kl:
            assert final is not None  # the pass above was full
            share = 1.0 if counts is None else final.shape[0] / counts[1]
            parts["kl"] = share * self._kl(model, final, ref_final)
            retain_loss = retain_loss + cfg.kl_weight * parts["kl"]
        return s1, s2, retain_loss, parts

    def _contrastive(self, s1: torch.Tensor, s2: torch.Tensor, concepts: torch.Tensor) -> tuple:
        """The contrastive loss over the batch of every process, from the states ``[B, P, H]``
        at the read positions; also returns what it saw (the representations ``z1, z2``).

        ``--representation centered`` subtracts the mean state of the whole contrastive batch
        (both views, every micro-batch and, when gathered, every process), with its gradient."""
        cfg = self.seer_config
        if cfg.gather_across_processes:
            s1, s2, concepts = (
                gather_with_grad(s1),
                gather_with_grad(s2),
                gather_with_grad(concepts),
            )
        center = normalize.batch_center([s1, s2]) if cfg.representation == "centered" else None
        z1, z2 = normalize_states(s1, center), normalize_states(s2, center)
        if cfg.objective == "paper":
            return losses.info_nce(z1, z2, cfg.temperature), z1, z2, concepts
        both = torch.cat([concepts, concepts])
        return losses.supcon(torch.cat([z1, z2]), both, cfg.temperature), z1, z2, concepts

    def _record(
        self,
        parts: dict[str, torch.Tensor],
        z1: torch.Tensor,
        z2: torch.Tensor,
        concepts: torch.Tensor,
    ) -> None:
        for name, value in parts.items():
            if not torch.isfinite(value):
                raise SeerError(
                    f"the {name} loss is {value.item()} at step {self.state.global_step + 1}; "
                    "training stopped. Lower --learning-rate (or the loss weights), or check "
                    f"the data; {self._checkpoint_note()}"
                )
            self._metrics[name].append(value.item())
        both = torch.cat([concepts, concepts])
        same, diff = losses.concept_cosines(torch.cat([z1, z2]).detach(), both)
        self._metrics["same_concept_cos"].append(same)
        self._metrics["diff_concept_cos"].append(diff)

    def _checkpoint_note(self) -> str:
        """What a stopped run leaves to resume from: its last checkpoint, if it saved one."""
        folder = Path(str(self.args.output_dir))
        saved = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        if not saved:
            return "no checkpoint was saved before it"
        last = max(saved, key=lambda p: int(p.name.split("-")[-1]))
        return f"its last checkpoint ({last.name}) is kept"

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        micro = self.seer_config.micro_batch_size
        if self.checkpoint_when is not None:
            set_checkpointing(model, self.checkpoint_when(batch_lengths(inputs)))
        try:
            if micro and micro < len(inputs["concepts"]):
                loss = self._cached_step(model, inputs)
            else:
                loss = super().training_step(model, inputs, num_items_in_batch)
        except torch.cuda.OutOfMemoryError as exc:
            raise SeerError(
                f"the device ran out of memory in a training step; {self.memory_note}"
            ) from exc
        # compute_loss runs several partial passes on the unwrapped model, which DDP's reducer
        # cannot follow, so gradients are averaged across processes here instead (also under
        # seer's FSDP, whose LoRA weights are whole on every process); DeepSpeed's engine
        # reduces them in its backward.
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed and not self.is_deepspeed_enabled:
            world = dist.get_world_size()
            for param in model.parameters():
                if param.requires_grad and param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= world
        return loss

    def _cached_step(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """Gradient caching (Gao et al., 2021): a contrastive batch larger than memory allows.

        1. every micro-batch's states ``s1, s2`` at the read positions without grad (its random
           state kept);
        2. the contrastive loss over all of them (a centered representation around the whole
           batch's mean), and its gradient with respect to each ``s``;
        3. each micro-batch again with grad, back-propagating ``s . grad_s`` plus its retain
           terms (per-token means, weighted by the micro-batch's share of the batch's tokens).
        The parameter gradients equal those of the whole batch done at once.
        """
        cfg = self.seer_config
        model.train()
        inputs = self._prepare_inputs(inputs)
        peft_model = self.accelerator.unwrap_model(model)
        chunks = micro_batches(inputs, cfg.micro_batch_size or len(inputs["concepts"]))
        states, reps = [], []
        with torch.no_grad(), self.compute_loss_context_manager():
            for chunk in chunks:
                states.append(rng_state())
                reps.append(self._representations(peft_model, chunk))
        s1 = torch.cat([r[0] for r in reps]).requires_grad_(True)
        s2 = torch.cat([r[1] for r in reps]).requires_grad_(True)
        with self.compute_loss_context_manager():
            labels = torch.cat([chunk["concepts"] for chunk in chunks])  # the rows' new order
            contrastive, g1, g2, concepts = self._contrastive(s1, s2, labels)
        grad1, grad2 = torch.autograd.grad(cfg.contrastive_weight * contrastive, [s1, s2])
        counts = (
            int(inputs["retain"]["attention_mask"].sum()) if "retain" in inputs else 0,
            int(inputs["view1"]["attention_mask"].sum()),
        )
        scale = 1.0 / self.current_gradient_accumulation_steps
        totals: dict[str, torch.Tensor] = {}
        start = 0
        for chunk, state in zip(chunks, states, strict=True):
            rows = slice(start, start + len(chunk["concepts"]))
            start = rows.stop
            with self.compute_loss_context_manager():
                c1, c2, retain_loss, parts = self._terms(
                    peft_model, chunk, counts=counts, rng=state
                )
                surrogate = (c1 * grad1[rows]).sum() + (c2 * grad2[rows]).sum() + retain_loss
            self.accelerator.backward(scale * surrogate)
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value.detach()
        weights = {"retain_l2": cfg.retain_l2_weight, "kl": cfg.kl_weight}
        loss = cfg.contrastive_weight * contrastive.detach()
        for name, value in totals.items():
            loss = loss + weights[name] * value
        self._record(
            {"contrastive": contrastive.detach(), **totals}, g1.detach(), g2.detach(), concepts
        )
        return scale * loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        peft_model = self.accelerator.unwrap_model(model)
        s1, s2, retain_loss, parts = self._terms(peft_model, inputs)
        contrastive, z1, z2, concepts = self._contrastive(s1, s2, inputs["concepts"])
        loss = self.seer_config.contrastive_weight * contrastive + retain_loss
        self._record({"contrastive": contrastive, **parts}, z1, z2, concepts)
        if self.state.global_step in self.gradient_probe_steps and model.training:
            self._probe_gradients({"contrastive": contrastive, **parts}, model)
        return (loss, {"z1": z1, "z2": z2}) if return_outputs else loss

    def _probe_gradients(self, parts: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Each weighted loss part's share of the gradient, for the health check."""
        cfg = self.seer_config
        weights = {"contrastive": cfg.contrastive_weight, "retain_l2": cfg.retain_l2_weight}
        weighted = {k: weights.get(k, cfg.kl_weight) * v for k, v in parts.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        for name, share in gradient_shares(weighted, params).items():
            self._metrics[f"grad_share_{name}"].append(share)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            for name, values in self._metrics.items():
                finite = [v for v in values if not math.isnan(v)]
                logs[name] = round(sum(finite) / len(finite), 4) if finite else float("nan")
            self._metrics.clear()
        super().log(logs, start_time)
