"""The Hugging Face backend: one left-padded batch over seer's KV cache (rows join by
padding, leave by slicing), the read hook at the target layer on every pass, and each finished
row's final read through its own slice of the cache."""

from __future__ import annotations

from typing import Any

import torch

from seer.core.layers import add_to_layer, capture_layers, run_until
from seer.inference.cache import KV, new_cache
from seer.inference.decoding import Greedy, cache_kwarg, forward, left_pad
from seer.inference.events import RowEvent
from seer.inference.loaded import LoadedRun
from seer.inference.rows import Row, advance, closing, final_events, final_states, read_newest
from seer.readout import Reading

__all__ = ["HFBackend", "HFPasses"]


class HFBackend:
    """Batches on the loaded run's own Hugging Face model."""

    name = "hf"
    joins = True

    def __init__(self, loaded: LoadedRun) -> None:
        self.loaded = loaded

    def passes(self) -> HFPasses:
        return HFPasses(self.loaded)


class HFPasses:
    """The running rows (in cache order), their KV cache, and the passes over them."""

    def __init__(self, loaded: LoadedRun) -> None:
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.greedy = Greedy(self.model)
        self.rows: list[Row] = []
        self.kv: KV | None = None
        self._forward: list[Row] = []
        self._reading: Reading | None = None
        self._prefill = False

    def step(self, new: list[Row]) -> list[RowEvent]:
        events = self.decode()
        if new:
            events += self.prefill(new)
        return events

    def _hook(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """At the target layer: read the newest position of every row, let its monitor look,
        and return the steering to add (``None``: none of the rows is steered)."""
        rows = self._forward
        for i, row in enumerate(rows):
            if self._prefill:
                row.take_prompt(hidden[i, -len(row.ids) :])
            else:
                row.take_token(hidden[i, -1])
        self._reading = read_newest(rows)
        if all(r.steering is None or r.error is not None for r in rows):
            return None
        delta = hidden.new_zeros(len(rows), 1, hidden.shape[-1], dtype=torch.float32)
        for i, row in enumerate(rows):
            if row.steering is not None and row.error is None:  # a failed row is not steered
                delta[i, 0] = row.steering
        return delta

    def _pass(self, rows: list[Row], prefill: bool, **inputs: Any) -> Reading:
        self._forward, self._prefill = rows, prefill
        loaded = self.loaded
        with add_to_layer(self.model, loaded.layer, self._hook, layers_path=loaded.layers_path):
            out = forward(self.model, **inputs)
        self._next = self.greedy(out.logits)
        assert self._reading is not None
        return self._reading

    def prefill(self, rows: list[Row]) -> list[RowEvent]:
        device = self.loaded.device
        batch = left_pad([r.ids for r in rows], self.tokenizer.pad_token_id)
        mask = batch["attention_mask"].to(device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = new_cache()
        reading = self._pass(
            rows,
            True,
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
        )
        kv = KV(cache, mask)
        events, keep = self._advance(rows, reading, kv)
        kept = kv.keep(keep)
        self.kv = kept if self.kv is None or not self.rows else self.kv.join(kept)
        self.rows += [rows[i] for i in keep]
        return events

    def decode(self) -> list[RowEvent]:
        if not self.rows or self.kv is None:
            return []
        device, kv = self.loaded.device, self.kv
        pending = torch.tensor([[r.tokens[-1]] for r in self.rows], device=device)
        positions = torch.tensor(
            [[len(r.ids) + len(r.tokens) - 1] for r in self.rows], device=device
        )
        reading = self._pass(
            self.rows,
            False,
            input_ids=pending,
            attention_mask=kv.grow(),
            position_ids=positions,
            cache=kv.cache,
        )
        events, keep = self._advance(self.rows, reading, kv)
        self.kv, self.rows = kv.keep(keep), [self.rows[i] for i in keep]
        return events

    def cancel(self) -> list[RowEvent]:
        """Final reads of the running rows cancelled since the last step."""
        if self.kv is None or not any(r.cancelled for r in self.rows):
            return []
        events = self._finals(
            [(i, r, "cancelled") for i, r in enumerate(self.rows) if r.cancelled], self.kv
        )
        keep = [i for i, r in enumerate(self.rows) if not r.cancelled]
        self.kv, self.rows = self.kv.keep(keep), [self.rows[i] for i in keep]
        return events

    def _advance(
        self, rows: list[Row], reading: Reading, kv: KV
    ) -> tuple[list[RowEvent], list[int]]:
        """After a pass: each row's event, its next token, and the rows that go on (the rows
        that end here get their final read together, after all the rows' events)."""
        events, keep, ending = advance(rows, reading, self._next, self.greedy.eos)
        return events + self._finals(ending, kv), keep

    def _read(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The target layer's states ``[B, T, H]`` for ``inputs`` (no later layer runs)."""
        loaded = self.loaded
        with capture_layers(
            self.model, [loaded.layer], stop_after=True, layers_path=loaded.layers_path
        ) as h:
            run_until(self.model, **inputs)
            return h[loaded.layer].detach()

    def _read_after(self, kv: KV, suffixes: list[list[int]]) -> torch.Tensor:
        """The target layer's states ``[R, T, H]`` for each row's ``suffix`` read after its
        cached tokens, all rows in one pass (suffixes right-padded: causal attention keeps
        the padding out of every real token's view). The pass extends ``kv``'s cache."""
        device, n = self.loaded.device, max(len(s) for s in suffixes)
        ids = torch.full((kv.rows, n), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        new = torch.zeros((kv.rows, n), dtype=torch.long)
        for j, suffix in enumerate(suffixes):
            ids[j, : len(suffix)] = torch.tensor(suffix)
            new[j, : len(suffix)] = 1
        cached = kv.mask.sum(-1, keepdim=True)
        inputs: dict[str, Any] = {
            "input_ids": ids.to(device),
            "attention_mask": torch.cat([kv.mask, new.to(device)], dim=1),
            "position_ids": cached + torch.arange(n, device=device)[None],
            cache_kwarg(self.model): kv.cache,
            "use_cache": True,
        }
        return self._read(inputs)

    def _finals(self, ending: list[tuple[int, Row, str]], kv: KV) -> list[RowEvent]:
        """The last events of the rows that end now, given as (index in ``kv``, row, finish
        reason): each row's last token read with the chat template's closing tokens through
        its cache, all such rows in one pass (a full pass of its own for a row whose reply
        re-tokenises differently)."""
        if not ending:
            return []
        closes = [closing(row) for _, row, _ in ending]
        states: dict[int, tuple[torch.Tensor, ...]] = {}
        through = [k for k, c in enumerate(closes) if c.through]
        for k, close in enumerate(closes):
            if not close.through:
                device, n = self.loaded.device, len(close.target)
                alone = {
                    "input_ids": torch.tensor([close.target], device=device),
                    "attention_mask": torch.ones(1, n, dtype=torch.long, device=device),
                    "position_ids": torch.arange(n, device=device)[None],
                    "use_cache": False,
                }
                states[k] = final_states(ending[k][1], close, self._read(alone)[0])
        if through:
            cache = kv.keep([ending[k][0] for k in through])
            hidden = self._read_after(cache, [closes[k].suffix for k in through])
            for j, k in enumerate(through):
                read = hidden[j, : len(closes[k].suffix)]
                states[k] = final_states(ending[k][1], closes[k], read)
        rows = [(row, reason, closes[k]) for k, (_, row, reason) in enumerate(ending)]
        return final_events(rows, [states[k] for k in range(len(ending))])
