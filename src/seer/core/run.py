"""The run folder: what ``seer train`` writes and every other command reads.

    DIR/seer.json               format version, config, layer, positions, concepts,
                                base-model fingerprint, calibration, training summary
    DIR/adapter/                the PEFT adapter (loads with plain ``PeftModel.from_pretrained``)
    DIR/prototypes.safetensors  ``prototypes``: [K, D] mean normalized representation per concept;
                                ``center`` [P, H] (runs with --representation centered only):
                                subtracted from the states at the read positions before normalizing
    DIR/split/{train,test}.jsonl  the exact split, so evaluation never sees training rows
    DIR/retain.jsonl            the general text used by the retain loss

The folder is built under ``DIR.partial`` and renamed at the end, so a ``DIR`` that exists
is complete.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seer.core import strict_json
from seer.core.folders import check_target, partial_path, replace_folder
from seer.core.formatting import POSITIONS
from seer.core.tables import read_jsonl
from seer.errors import SeerError

__all__ = [
    "FORMAT_VERSION",
    "Run",
    "check_model_fit",
    "check_output",
    "check_run_files",
    "finalize",
    "last_checkpoint",
    "load_run_model",
    "load_trained",
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
        return self.meta["calibration"]  # checked by check_run_files

    def split(self, name: str) -> list[dict]:
        """The rows of ``split/NAME.jsonl``, checked: some rows, each of a run concept."""
        file = self.path / "split" / f"{name}.jsonl"
        rows = read_jsonl(file)
        fix = "the run folder is damaged: train the run again"
        if not rows:
            raise SeerError(f"{file} holds no rows; {fix}")
        known = set(self.concepts)
        for number, row in enumerate(rows, start=1):
            if row.get("concept") not in known:
                raise SeerError(
                    f"{file}, row {number}: concept {row.get('concept')!r} is not one of the "
                    f"run's {self.concepts}; {fix}"
                )
        return rows


def partial_dir(output: str | Path) -> Path:
    return partial_path(output)


def write_meta(
    folder: Path, meta: dict[str, Any], prototypes: torch.Tensor, center: torch.Tensor | None = None
) -> None:
    meta = {"format_version": FORMAT_VERSION, **meta}
    tensors = {"prototypes": prototypes.float().contiguous().cpu()}
    if center is not None:
        tensors["center"] = center.float().contiguous().cpu()
    save_file(tensors, str(folder / "prototypes.safetensors"))
    (folder / "seer.json").write_text(strict_json.dumps(meta, indent=2), encoding="utf-8")


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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SeerError(f"{meta_file} is corrupt ({exc}); train the run again") from exc
    if not isinstance(meta, dict):
        raise SeerError(
            f"{meta_file} is not a JSON object (it holds {type(meta).__name__!s}); it is "
            "corrupt: train the run again"
        )
    version = meta.get("format_version", 0)
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
    check_run_files(path, meta, tensors)
    return Run(
        path=path,
        meta=meta,
        prototypes=prototypes,
        concepts=list(meta["concepts"]),
        center=tensors.get("center"),
    )


def check_run_files(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """What a run folder's ``seer.json`` and ``prototypes.safetensors`` hold is what training
    writes: the fields every command relies on with their types, names and ranges, tensors
    of agreeing shapes with finite values. Raises a :class:`SeerError` naming the damaged
    file. (What needs the model, the layer and the width, is :func:`check_model_fit`.)"""
    meta_file, proto_file = path / "seer.json", path / "prototypes.safetensors"
    fix = "the run folder is damaged: train the run again"
    layer, concepts, positions = meta["layer"], meta["concepts"], meta["positions"]
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise SeerError(f"{meta_file}: 'layer' is {layer!r}, not a block number; {fix}")
    if not isinstance(concepts, list) or not all(isinstance(c, str) and c for c in concepts):
        raise SeerError(f"{meta_file}: 'concepts' is not a list of names; {fix}")
    twice = sorted({c for c in concepts if concepts.count(c) > 1})
    if twice:
        raise SeerError(f"{meta_file}: 'concepts' names {twice} more than once; {fix}")
    if len(concepts) < 2:
        raise SeerError(f"{meta_file}: 'concepts' lists {concepts}, not two or more; {fix}")
    if not isinstance(positions, list) or not positions:
        raise SeerError(f"{meta_file}: 'positions' is not a list of positions; {fix}")
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown or len(set(positions)) != len(positions):
        raise SeerError(
            f"{meta_file}: 'positions' is {positions}, not distinct names from {POSITIONS}; {fix}"
        )
    if not isinstance(meta["config"], dict):
        raise SeerError(f"{meta_file}: 'config' is not a JSON object; {fix}")
    _check_calibration(meta_file, meta.get("calibration"), fix)
    prototypes, center = tensors["prototypes"], tensors.get("center")
    if prototypes.ndim != 2 or prototypes.shape[0] != len(concepts):
        raise SeerError(
            f"{meta_file} lists {len(concepts)} concepts but prototypes.safetensors holds "
            f"{prototypes.shape[0] if prototypes.ndim else 0} prototypes; {fix}"
        )
    if prototypes.shape[1] == 0 or prototypes.shape[1] % len(positions):
        raise SeerError(
            f"{proto_file} holds prototypes {prototypes.shape[1]} wide, not a multiple of the "
            f"{len(positions)} position(s) of seer.json; {fix}"
        )
    if center is not None and (
        center.ndim != 2
        or center.shape[0] != len(positions)
        or center.numel() != prototypes.shape[1]
    ):
        raise SeerError(
            f"{proto_file} holds a center of shape {tuple(center.shape)}, not "
            f"[{len(positions)} positions, hidden size]; {fix}"
        )
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise SeerError(f"{proto_file}: '{name}' holds values that are not finite; {fix}")


def _check_calibration(meta_file: Path, calibration: Any, fix: str) -> None:
    """The fitted ``softmax(cos / temperature)`` and ``none`` threshold: a temperature that
    is a finite number > 0 (0 gives NaN probabilities, < 0 inverts them), a finite threshold."""
    if not isinstance(calibration, dict):
        raise SeerError(f"{meta_file} has no 'calibration' (temperature, threshold); {fix}")
    temperature, threshold = calibration.get("temperature"), calibration.get("threshold")
    if not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise SeerError(
            f"{meta_file}: the calibration temperature is {temperature!r}, not a number > 0; {fix}"
        )
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise SeerError(
            f"{meta_file}: the calibration threshold is {threshold!r}, not a number; {fix}"
        )


def check_model_fit(run: Run, model: torch.nn.Module) -> None:
    """The run fits ``model``: its layer exists there (a damaged seer.json can name any
    block) and its prototypes are as wide as that layer's states at the run's positions."""
    from seer.core.architecture import get_layers

    n_layers = len(get_layers(model, run.config.get("layers_path")))
    if not run.layer < n_layers:
        raise SeerError(
            f"{run.path / 'seer.json'} names layer {run.layer}, but its model has blocks "
            f"0..{n_layers - 1}; the run folder is damaged: train the run again"
        )
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None)
    width = run.prototypes.shape[1]
    if isinstance(hidden, int) and width != hidden * len(run.positions):
        raise SeerError(
            f"{run.path / 'prototypes.safetensors'} holds prototypes {width} wide, but the "
            f"model's states are {hidden} wide at each of the run's {len(run.positions)} "
            "position(s); the run folder is damaged: train the run again"
        )


def check_output(output: str | Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber a finished run unless asked to, and anything else always
    (the rule of :func:`seer.core.folders.check_target`); an interrupted run needs
    ``--resume`` or ``--overwrite``. Call it while holding the output's lock."""
    output = Path(output)
    partial = partial_dir(output)
    check_target(output, overwrite)
    if partial.exists() and not resume and not overwrite:
        raise SeerError(
            f"{partial} holds an interrupted run; continue it with --resume, "
            "or pass --overwrite to start again"
        )
    if resume and not partial.exists():
        logger.warning("--resume: no interrupted run at %s; starting a new run", partial)


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
    output = replace_folder(partial, output)
    shutil.rmtree(output / "checkpoints", ignore_errors=True)
    (output / "config.json").unlink(missing_ok=True)  # the config is in seer.json
    (output / "elapsed.json").unlink(missing_ok=True)  # the seconds are in seer.json
    return output


def load_trained(
    path: str | Path,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | None = None,
) -> tuple[Run, Any, Any]:
    """Load a run folder: ``(run, peft_model, tokenizer)``, checking the base model's fingerprint.

    ``model``/``tokenizer`` may be given (the run's base model, already loaded) to skip loading.
    """
    from peft import PeftModel

    from seer.core.models import ensure_pad_token, fingerprint, load_model  # deferred: transformers

    run = read_run(path)
    _check_adapter(run.path / "adapter")
    if model is None or tokenizer is None:
        model, tokenizer = load_model(run.meta["base_model"], device=device)
    found = fingerprint(model)
    if found != run.meta["base_fingerprint"]:
        raise SeerError(
            f"{run.path} was trained on {run.meta['base_model']!r} (fingerprint "
            f"{run.meta['base_fingerprint']}), but the base model given has fingerprint {found}: "
            "its adapter fits only its own base model; load that one (same weights and revision)"
        )
    check_model_fit(run, model)
    ensure_pad_token(tokenizer)
    try:
        peft_model = PeftModel.from_pretrained(model, str(run.path / "adapter"))
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SeerError(
            f"{run.path / 'adapter'} could not be loaded ({first}); its weights are truncated "
            "or corrupt: train the run again"
        ) from exc
    _check_adapter_values(run.path / "adapter", peft_model)
    peft_model.eval()
    return run, peft_model, tokenizer


def _check_adapter(folder: Path) -> None:
    if not folder.is_dir():
        raise SeerError(
            f"{folder} is missing: this run folder has no trained adapter (and no merged model, "
            "which `seer export` writes); train the run again"
        )
    weights = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
    if not (folder / "adapter_config.json").is_file() or not any(w.is_file() for w in weights):
        raise SeerError(
            f"{folder} is incomplete (it needs adapter_config.json and "
            "adapter_model.safetensors); train the run again"
        )


def _check_adapter_values(folder: Path, peft_model: Any) -> None:
    """Every LoRA weight is finite (random bytes in the weights file load as NaN or inf)."""
    for name, param in peft_model.named_parameters():
        if "lora_" in name and not bool(torch.isfinite(param).all()):
            raise SeerError(
                f"{folder / 'adapter_model.safetensors'} holds values that are not finite "
                f"({name.removeprefix('base_model.model.')}); the run folder is damaged: train "
                "the run again"
            )


def load_run_model(
    path: str | Path,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | None = None,
) -> tuple[Run, Any, Any]:
    """A run folder (base model + adapter) or an export (a merged model folder):
    ``(run, model, tokenizer)``."""
    path = Path(path)
    if (path / "adapter").exists() or not (path / "config.json").is_file():
        return load_trained(path, model=model, tokenizer=tokenizer, device=device)
    from seer.core.models import load_model

    run = read_run(path)
    if model is None or tokenizer is None:
        model, tokenizer = load_model(str(path), device=device)
    check_model_fit(run, model)
    return run, model, tokenizer
