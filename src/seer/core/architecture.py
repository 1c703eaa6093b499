"""What differs between model architectures, in one place (as steering-vectors'
``layer_matching`` does): where the decoder blocks are, what the linear layers LoRA adapts are
called and which classes they are, the names of the config fields seer reads, which forward
arguments a model class takes, and its logit soft-cap. Every other module asks here instead of
testing a model family; a new architecture is supported by an entry in this module.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from seer.errors import SeerError

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "FINGERPRINT_KEYS",
    "LAYER_PATHS",
    "accepts",
    "base_model",
    "cache_kwarg",
    "config_value",
    "eager_attention",
    "get_layers",
    "linear_names",
    "logit_softcap",
]

#: Attribute paths, tried in order, at which Hugging Face causal LMs keep their blocks.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi-3, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava)
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "layers",  # a bare decoder
)

#: The LoRA targets by default: the attention and MLP projections of Llama-style blocks
#: (Llama, Mistral, Qwen2, Gemma, SmolLM). A model that has only some of them gets those.
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

#: Classes of the linear layers LoRA can adapt (``Conv1D``: GPT-2's linear layers).
_LINEAR = (nn.Linear, Conv1D)

#: Config fields that name one quantity differently across architectures, first match wins.
_CONFIG_NAMES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "intermediate_size": ("intermediate_size", "n_inner"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
}

#: The config fields a model's fingerprint hashes (both namings of each).
FINGERPRINT_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "n_embd",
    "n_layer",
)


def base_model(model: nn.Module) -> nn.Module:
    """Strip PEFT and DDP wrappers down to the Hugging Face model."""
    current: Any = model  # the wrappers' attributes are looked up by name
    while True:
        if hasattr(current, "get_base_model"):  # peft.PeftModel
            current = current.get_base_model()
        elif isinstance(current, nn.parallel.DistributedDataParallel) or (
            hasattr(current, "module") and isinstance(current.module, nn.Module)
        ):
            current = current.module
        else:
            return current


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    obj: object = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def get_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """Return the list of decoder blocks of ``model`` (PEFT/DDP wrappers are looked through).

    ``layers_path`` overrides the search, e.g. ``"model.layers"``.
    """
    base = base_model(model)
    paths = (layers_path,) if layers_path else LAYER_PATHS
    for path in paths:
        found = _resolve(base, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    if layers_path:
        raise SeerError(
            f"--layers-path {layers_path!r} does not name a non-empty list of blocks on "
            f"{type(base).__name__}; print(model) to see its structure (e.g. model.layers)"
        )
    raise SeerError(
        f"could not find the decoder layers of {type(base).__name__} "
        f"(tried {', '.join(LAYER_PATHS)}). "
        "Pass layers_path='<dotted.path.to.ModuleList>' (--layers-path on the CLI)."
    )


def linear_names(model: nn.Module) -> set[str]:
    """The last name part of every linear layer LoRA can adapt (``q_proj``, ``c_attn``, ...)."""
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, _LINEAR)
    }


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """The config field ``name`` under whichever of its names the architecture uses
    (``hidden_size`` is GPT-2's ``n_embd``); ``default`` when it has none (or it is unset)."""
    for key in _CONFIG_NAMES.get(name, (name,)):
        value = getattr(config, key, None)
        if value:
            return value
    return default


def eager_attention(config: Any) -> bool:
    """Whether the model runs eager attention (memory quadratic in the text length)."""
    return (getattr(config, "_attn_implementation", "eager") or "eager") == "eager"


def logit_softcap(config: Any) -> float | None:
    """The final logits' soft-cap ``tanh(x / cap) * cap`` (Gemma 2), or ``None``."""
    return getattr(config, "final_logit_softcapping", None)


_FORWARD_ARGUMENTS: dict[type[nn.Module], frozenset[str]] = {}  # per model class


def accepts(model: nn.Module, argument: str) -> bool:
    """Whether the (PEFT-unwrapped) model's ``forward`` takes ``argument`` (``logits_to_keep``,
    ``cache``, ...); read once per model class."""
    model_class = type(base_model(model))
    if model_class not in _FORWARD_ARGUMENTS:
        parameters = inspect.signature(model_class.forward).parameters
        _FORWARD_ARGUMENTS[model_class] = frozenset(parameters)
    return argument in _FORWARD_ARGUMENTS[model_class]


def cache_kwarg(model: nn.Module) -> str:
    """The forward argument taking a KV cache: ``cache`` in newer transformers, else
    ``past_key_values``."""
    return "cache" if accepts(model, "cache") else "past_key_values"
