"""Read (or steer) the outputs of a model's decoder layers with hooks (the layers are found by
:func:`seer.core.architecture.get_layers`).

Every hook lives inside a context manager that removes it in ``finally``, so no hook
survives an exception. Layer indices are 0-based block indices: layer ``L`` is the output
of ``model.model.layers[L]`` (for Llama-style models), i.e. ``hidden_states[L + 1]`` of
``output_hidden_states=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from seer.core.architecture import base_model as _unwrap
from seer.core.architecture import get_layers

__all__ = [
    "StopForward",
    "add_to_layer",
    "capture_final_states",
    "capture_layers",
    "run_until",
]


def _hidden(output: object) -> torch.Tensor:
    """The hidden-state tensor of a block's output (a tensor, or a tuple whose first item is)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder-layer output of type {type(output).__name__}")


def _replace_hidden(output: object, hidden: torch.Tensor) -> object:
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])  # type: ignore[index]


def _check_indices(layers: nn.ModuleList, indices: Iterable[int]) -> list[int]:
    out = sorted(set(indices))
    for i in out:
        if not 0 <= i < len(layers):
            raise ValueError(
                f"layer {i} is out of range: this model has layers 0..{len(layers) - 1}"
            )
    return out


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed layer has run."""


@contextlib.contextmanager
def capture_layers(
    model: nn.Module,
    layers: Iterable[int],
    *,
    stop_after: bool = False,
    layers_path: str | None = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the outputs of the given blocks into the yielded dict during forward passes.

    With ``stop_after=True`` the forward pass is cut short (``StopForward``) right after
    the highest requested block: use :func:`run_until` to call the model in that case.
    Outputs keep their autograd graph. Each new forward pass overwrites the entries.
    """
    blocks = get_layers(model, layers_path)
    wanted = _check_indices(blocks, layers)
    last = wanted[-1] if wanted else -1
    store: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(index: int) -> Callable:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            store[index] = _hidden(output)
            if stop_after and index == last:
                raise StopForward

        return hook

    try:
        for i in wanted:
            handles.append(blocks[i].register_forward_hook(make_hook(i)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_final_states(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input of the LM head (the final hidden states, after the final norm) as
    ``store["final"]`` and cut the pass there (``StopForward``): no logits are computed.

    The pass goes through the whole (possibly wrapped) model, so that a wrapper's hooks on the
    root module run (FSDP's begin and end a pass there); call it with :func:`run_until`.
    """
    head = _unwrap(model).get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(_unwrap(model)).__name__} has no output embeddings (LM head)")
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple) -> None:
        store["final"] = args[0]
        raise StopForward

    handle = head.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def run_until(model: nn.Module, **inputs: Any) -> object | None:
    """Call ``model(**inputs)``; return ``None`` if a hook stopped it early (``StopForward``)."""
    try:
        return model(**inputs)
    except StopForward:
        return None


@contextlib.contextmanager
def add_to_layer(
    model: nn.Module,
    layer: int,
    vector: torch.Tensor | Callable[[torch.Tensor], torch.Tensor | None],
    *,
    layers_path: str | None = None,
) -> Iterator[None]:
    """Add ``vector`` to the output of block ``layer`` at every position while active.

    ``vector`` may be a callable that receives the block's hidden states ``[B, T, H]`` and
    returns the tensor to add (broadcastable), or ``None`` to leave them unchanged; this is
    how a monitor switches steering on mid-generation.
    """
    blocks = get_layers(model, layers_path)
    _check_indices(blocks, [layer])

    def hook(_module: nn.Module, _args: object, output: object) -> object:
        hidden = _hidden(output)
        delta = vector(hidden) if callable(vector) else vector
        if delta is None:
            return output
        return _replace_hidden(output, hidden + delta.to(hidden.dtype))

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
