"""The run folder: what ``seer train`` writes and every other command reads.

    DIR/seer.json               format version, config, layer, positions, concepts,
                                base-model fingerprint, calibration, training summary
    DIR/adapter/                the PEFT adapter (loads with plain ``PeftModel.from_pretrained``)
    DIR/prototypes.safetensors  ``prototypes``: [K, D] mean normalised representation per concept;
                                ``center`` [P, H] (runs with --representation centered only):
                                subtracted from the states at the read positions before normalising
    DIR/split/{train,test}.jsonl  the exact split, so evaluation never sees training rows
    DIR/retain.jsonl            the general text used by the retain loss

The folder is built under ``DIR.partial`` and renamed at the end, so a ``DIR`` that exists
is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seer.core.data import read_jsonl
from seer.errors import SeerError

__all__ = [
    "FORMAT_VERSION",
    "Run",
    "check_output",
    "finalize",
    "last_checkpoint",
    "partial_dir",
    "read_run",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_REQUIRED = ("config", "layer", "positions", "concepts", "base_model", "base_fingerprint")


@dataclass
class Run:
    """A trained run folder, read (no model loaded)."""

    path: Path
    meta: dict[str, Any]
    prototypes: torch.Tensor
    concepts: list[str] = field(default_factory=list)
    center: torch.Tensor | None = None  # [P, H]; None: the raw representation

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def positions(self) -> tuple[str, ...]:
        return tuple(self.meta["positions"])

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def calibration(self) -> dict[str, float]:
        return self.meta.get("calibration", {"temperature": 0.05, "threshold": -1.0})

    def split(self, name: str) -> list[dict]:
        return read_jsonl(self.path / "split" / f"{name}.jsonl")


def partial_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial")


def write_meta(
    folder: Path, meta: dict[str, Any], prototypes: torch.Tensor, center: torch.Tensor | None = None
) -> None:
    meta = {"format_version": FORMAT_VERSION, **meta}
    tensors = {"prototypes": prototypes.float().contiguous().cpu()}
    if center is not None:
        tensors["center"] = center.float().contiguous().cpu()
    save_file(tensors, str(folder / "prototypes.safetensors"))
    (folder / "seer.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def read_run(path: str | Path) -> Run:
    path = Path(path)
    meta_file = path / "seer.json"
    if not meta_file.is_file():
        hint = ""
        if partial_dir(path).exists():
            hint = " (an interrupted run: finish it with `seer train ... --resume`)"
        raise SeerError(f"{path} is not a seer run folder: {meta_file} is missing{hint}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SeerError(f"{meta_file} is corrupt ({exc}); train the run again") from exc
    version = meta.get("format_version", 0) if isinstance(meta, dict) else 0
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SeerError(
            f"{path} was written by a newer seer (run format {version}; this seer reads up to "
            f"{FORMAT_VERSION}); upgrade seer: pip install -U seer"
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise SeerError(f"{meta_file} lacks {missing}; it is incomplete: train the run again")
    try:
        tensors = load_file(str(path / "prototypes.safetensors"))
        prototypes = tensors["prototypes"]
    except (OSError, KeyError, SafetensorError) as exc:
        raise SeerError(
            f"{path / 'prototypes.safetensors'} is missing or corrupt; train the run again"
        ) from exc
    return Run(
        path=path,
        meta=meta,
        prototypes=prototypes,
        concepts=list(meta["concepts"]),
        center=tensors.get("center"),
    )


def check_output(output: str | Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber a finished run unless asked to, and anything else always."""
    output = Path(output)
    partial = partial_dir(output)
    if output.exists() and not overwrite:
        raise SeerError(f"{output} already exists; choose another --output or pass --overwrite")
    if output.exists() and not (output / "seer.json").is_file() and any(_entries(output)):
        raise SeerError(
            f"{output} exists and is not a seer run folder; --overwrite replaces only run folders: "
            "choose another --output"
        )
    if partial.exists() and not resume and not overwrite:
        raise SeerError(
            f"{partial} holds an interrupted run; continue it with --resume, "
            "or pass --overwrite to start again"
        )
    if resume and not partial.exists():
        logger.warning("--resume: no interrupted run at %s; starting a new run", partial)


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else [folder]


def last_checkpoint(output: str | Path) -> Path | None:
    """The newest complete Trainer checkpoint of an interrupted run. The Trainer writes
    ``trainer_state.json`` last, so a folder without it was cut short by a kill."""
    folder = partial_dir(output) / "checkpoints"
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    complete = [p for p in complete if p.name.split("-")[-1].isdigit()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def finalize(partial: Path, output: str | Path) -> Path:
    """Atomically move the finished ``partial`` folder to ``output`` (replacing an old run).

    The checkpoints are removed only after the move: a kill at any moment leaves either a
    resumable ``DIR.partial`` or a complete ``DIR``.
    """
    output = Path(output)
    if output.exists():
        old = output.with_name(output.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
        os.replace(partial, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, output)
    shutil.rmtree(output / "checkpoints", ignore_errors=True)
    (output / "config.json").unlink(missing_ok=True)  # the config is in seer.json
    return output


def load_trained(
    path: str | Path, *, model: Any = None, tokenizer: Any = None, device: str | None = None
):
    """Load a run folder: ``(run, peft_model, tokenizer)``, checking the base model's fingerprint.

    ``model``/``tokenizer`` may be given (the run's base model, already loaded) to skip loading.
    """
    from peft import PeftModel

    from seer.core.models import fingerprint, load_model

    run = read_run(path)
    if model is None or tokenizer is None:
        model, tokenizer = load_model(run.meta["base_model"], device=device)
    found = fingerprint(model)
    if found != run.meta["base_fingerprint"]:
        raise SeerError(
            f"{run.path} was trained on {run.meta['base_model']!r} (fingerprint "
            f"{run.meta['base_fingerprint']}), but the base model given has fingerprint {found}: "
            "its adapter fits only its own base model; load that one (same weights and revision)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not (run.path / "adapter" / "adapter_config.json").is_file():
        raise SeerError(f"{run.path / 'adapter'} is missing or incomplete; train the run again")
    peft_model = PeftModel.from_pretrained(model, str(run.path / "adapter"))
    peft_model.eval()
    return run, peft_model, tokenizer
