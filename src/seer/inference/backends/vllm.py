"""The vLLM backend: seer's engine stepping an in-process vLLM engine (through
:mod:`~seer.inference.backends.vllm_adapter`), with the same rows, readout, monitors and events
as the Hugging Face backend.

Every row is one vLLM request (greedy, by token ids). At the hooked block, every forward pass
hands over each request's states: a row's whole prompt at its prefill (possibly in chunks), one
state per decode step; the rows read in the pass are read together (:func:`read_newest`), their
monitors look, and a steering monitor's vector is added to that row's tokens in the same pass.
vLLM samples the next token from that pass; the engine ends rows (EOS, length, a stop monitor, a
cancel) and aborts their requests.

The final explanation is read where training reads it, as the Hugging Face backend reads it: a
row's last token and the chat template's closing tokens after its cache. Here that is one more
request, ``prompt + reply + closing tokens`` with one token to sample, sharing the row's KV
blocks through vLLM's prefix cache (same cache salt, so no other request's blocks): only the
tail after the row's last full block is computed (blocks of ``vllm_adapter.BLOCK_SIZE``
tokens), and the hook keeps the states from the last generated token on. Recomputed positions
of a partial block are steered as they were while generating. Its event comes one
step after the row's last token (in the next pass, beside the running rows' decode).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seer.core.models import cache_dir
from seer.errors import SeerError
from seer.inference.backends.vllm_adapter import Pass, VllmEngine, check_vllm
from seer.inference.decoding import Greedy
from seer.inference.events import RowEvent
from seer.inference.loaded import LoadedRun
from seer.inference.rows import (
    Closing,
    Row,
    advance,
    closing,
    final_events,
    final_states,
    read_newest,
)
from seer.readout import Reading

__all__ = ["DTYPES", "VllmBackend", "model_folder"]

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")
_NOT_WEIGHTS = ("prototypes.safetensors", "seer.json")


def _stamp(files: list[Path]) -> str:
    parts = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(files)]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def model_folder(path: str | Path) -> Path:
    """A plain Hugging Face model folder vLLM loads for the run or export folder ``path``:
    a run's LoRA adapter merged into its base model (``seer export``, once, cached under
    ``$SEER_CACHE/vllm``), without seer's own files (vLLM would read
    ``prototypes.safetensors`` as weights)."""
    path = Path(path).resolve()
    if (path / "adapter").exists():
        key = _stamp([f for f in (path / "adapter").iterdir() if f.is_file()])
        source = cache_dir() / "vllm" / key / "export"
        if not (source / "config.json").is_file():
            from seer.inference.export import export

            logger.info("merging %s's adapter for vLLM into %s (once)", path, source)
            export(path, source, overwrite=True)
    else:
        if not (path / "config.json").is_file():
            raise SeerError(f"{path} is neither a run folder nor a seer export folder")
        source, key = path, _stamp([f for f in path.glob("*.safetensors")])
    folder = cache_dir() / "vllm" / key / "model"
    if not (folder / "config.json").exists():
        partial = folder.with_name(f"model.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file() and f.name not in _NOT_WEIGHTS:
                (partial / f.name).symlink_to(f)
        try:
            partial.rename(folder)
        except OSError:  # another process made it first
            shutil.rmtree(partial, ignore_errors=True)
    return folder


@dataclass
class _Generating:
    """A row's generation request: the prompt's states while its prefill comes in chunks."""

    row: Row
    chunks: list[torch.Tensor] = field(default_factory=list)

    def take(self, positions: torch.Tensor, states: torch.Tensor) -> bool:
        """This pass's states of the row; ``True`` when it read the row's newest position."""
        row, last = self.row, int(positions[-1])
        if row.span_sum is None:  # the prompt, in one or more chunks
            self.chunks.append(states.detach().float().clone())
            if last != len(row.ids) - 1:
                return False
            row.take_prompt(torch.cat(self.chunks)[-len(row.ids) :])
            self.chunks = []
            return True
        if last != len(row.ids) + len(row.tokens) - 1:
            return False
        row.take_token(states[-1].float().clone())
        return True


@dataclass
class _Closing:
    """A finished row's final-read request: its states from ``close.cached`` on (from 0,
    read alone, where the reply re-tokenises differently)."""

    row: Row
    reason: str
    close: Closing
    chunks: list[torch.Tensor] = field(default_factory=list)
    done: bool = False

    @property
    def first(self) -> int:
        return self.close.cached if self.close.through else 0

    def take(self, positions: torch.Tensor, states: torch.Tensor) -> torch.Tensor | None:
        """Keep this pass's states; the steering of the recomputed positions (``None``)."""
        keep = positions >= self.first
        self.chunks.append(states[keep].detach().float().clone())
        self.done = int(positions[-1]) == len(self.close.target) - 1
        row, fired = self.row, self.row.state.fired_at
        if not self.close.through or row.steering is None or fired is None:
            return None
        start = 0 if fired == 0 else len(row.ids) + fired - 1
        steered = (positions >= start) & (positions < self.close.cached)
        if not bool(steered.any()):
            return None
        return steered[:, None].to(states.dtype) * row.steering.to(states.device, states.dtype)

    def states(self) -> tuple[torch.Tensor, ...]:
        return final_states(self.row, self.close, torch.cat(self.chunks))


class VllmBackend:
    """Batches on an in-process vLLM engine over the run's merged model (``dtype``:
    ``float32``, or ``bfloat16`` where the hardware has it; ``max_num_seqs``: most requests
    vLLM runs at once, rows and final reads together)."""

    name = "vllm"
    joins = True

    def __init__(
        self, loaded: LoadedRun, *, dtype: str = "float32", max_num_seqs: int = 64
    ) -> None:
        check_vllm()
        if dtype not in DTYPES:
            raise SeerError(f"the vLLM backend's dtype is one of {DTYPES}, got {dtype!r}")
        self.loaded = loaded
        greedy = Greedy(loaded.model)
        if greedy.suppress:
            raise SeerError(
                "this model's generation config suppresses tokens, which the vLLM backend does "
                "not honour: serve it with --backend hf"
            )
        self.eos = greedy.eos
        self.readers: dict[str, _Generating | _Closing] = {}
        self.read: list[tuple[str, Row]] = []
        self.reading: Reading | None = None
        self._ids = itertools.count()
        self.engine = VllmEngine(
            str(model_folder(loaded.run.path)),
            layer=loaded.layer,
            on_pass=self._on_pass,
            layers_path=loaded.layers_path,
            dtype=dtype,
            max_num_seqs=max_num_seqs,
        )

    def passes(self) -> VllmPasses:
        """A new batch; one batch is live at a time: requests a failed batch left in vLLM
        are aborted."""
        self.engine.abort(list(self.readers))
        self.readers.clear()
        return VllmPasses(self)

    def request_id(self) -> str:
        return f"seer{next(self._ids)}"

    def _on_pass(self, seen: Pass) -> list[torch.Tensor | None] | None:
        """At the hooked block: take every request's states, read the rows read in this pass
        together (their monitors look), and return each request's steering."""
        deltas: list[torch.Tensor | None] = []
        read: list[tuple[str, Row]] = []
        for rid, positions, states in zip(seen.ids, seen.positions, seen.states, strict=True):
            reader = self.readers.get(rid)
            if isinstance(reader, _Closing):
                deltas.append(reader.take(positions, states))
                continue
            deltas.append(None)
            if reader is not None and reader.take(positions, states):
                read.append((rid, reader.row))
        self.read = read
        self.reading = read_newest([row for _, row in read]) if read else None
        for k, (rid, states) in enumerate(zip(seen.ids, seen.states, strict=True)):
            reader = self.readers.get(rid)
            if not isinstance(reader, _Generating) or reader.row.error is not None:
                continue  # a row whose own work failed is not steered
            if reader.row.steering is not None:
                deltas[k] = reader.row.steering.expand(len(states), -1)
        return deltas


class VllmPasses:
    """One live batch on the backend's vLLM engine: its generating rows (by request id) and
    the rows whose final read is on its way."""

    def __init__(self, backend: VllmBackend) -> None:
        self.backend = backend
        self.generating: dict[str, Row] = {}
        self.closing: dict[str, Row] = {}

    @property
    def rows(self) -> list[Row]:
        return list(self.generating.values()) + list(self.closing.values())

    def step(self, new: list[Row]) -> list[RowEvent]:
        b = self.backend
        for row in new:
            rid = b.request_id()
            b.engine.add(rid, row.ids, row.max_new_tokens, salt=rid)
            b.readers[rid], self.generating[rid] = _Generating(row), row
        b.read, b.reading = [], None
        sampled = b.engine.step()
        events: list[RowEvent] = []
        if b.read and b.reading is not None:
            rows = [row for _, row in b.read]
            tokens = [sampled[rid][len(row.tokens)] for rid, row in b.read]
            events, keep, ending = advance(rows, b.reading, tokens, b.eos)
            kept = set(keep)
            ended = [rid for i, (rid, _) in enumerate(b.read) if i not in kept]
            b.engine.abort(
                [r for r in ended if len(sampled[r]) < self.generating[r].max_new_tokens]
            )
            for rid in ended:
                del self.generating[rid], b.readers[rid]
            for i, row, reason in ending:
                self._close(b.read[i][0], row, reason)
        return events + self._finished()

    def cancel(self) -> list[RowEvent]:
        """Cancelled rows leave the engine now; their final events come at the next step."""
        cancelled = [rid for rid, row in self.generating.items() if row.cancelled]
        self.backend.engine.abort(cancelled)
        for rid in cancelled:
            row = self.generating.pop(rid)
            del self.backend.readers[rid]
            self._close(rid, row, "cancelled")
        return []

    def _close(self, rid: str, row: Row, reason: str) -> None:
        """Start ``row``'s final read (see the module's docstring)."""
        b, close = self.backend, closing(row)
        cid = b.request_id()
        b.engine.add(cid, close.target, 1, salt=rid if close.through else cid)
        b.readers[cid], self.closing[cid] = _Closing(row, reason, close), row

    def _finished(self) -> list[RowEvent]:
        """The last events of the rows whose final read has come in."""
        done = []
        for cid in list(self.closing):
            reader = self.backend.readers[cid]
            assert isinstance(reader, _Closing)
            if reader.done:
                done.append(reader)
                del self.closing[cid], self.backend.readers[cid]
        return final_events([(r.row, r.reason, r.close) for r in done], [r.states() for r in done])
