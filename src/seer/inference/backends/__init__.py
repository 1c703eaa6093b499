"""The engine's backends: what runs the forward passes of a batch. The engine
(:mod:`seer.inference.engine`) owns the rows, the readout, the monitors and the events; a
backend owns the model and its KV cache, runs one step (a decode pass for the running rows
and a prefill for new ones) and hands each row's target-layer states to the rows
(:meth:`Row.take_prompt`, :meth:`Row.take_token`, :func:`~seer.inference.rows.read_newest`),
steering a row's state where its monitor asks to.

- ``hf``: Hugging Face ``transformers`` with seer's own left-padded KV cache (the default).
- ``vllm``: an in-process vLLM engine (``pip install 'seer[vllm]'``), every vLLM internal
  behind :mod:`seer.inference.backends.vllm_adapter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from seer.inference.events import RowEvent
    from seer.inference.loaded import LoadedRun
    from seer.inference.rows import Row

__all__ = ["BACKENDS", "Backend", "Passes", "load_backend"]

BACKENDS = ("hf", "vllm")


class Passes(Protocol):
    """One live batch's passes."""

    @property
    def rows(self) -> list[Row]:
        """The rows in the batch (added to the backend, not yet ended)."""
        ...

    def step(self, new: list[Row]) -> list[RowEvent]:
        """One decode pass for the running rows and a prefill for ``new``: every row's event."""
        ...

    def cancel(self) -> list[RowEvent]:
        """The final events of the running rows marked ``cancelled``, which leave the batch."""
        ...


class Backend(Protocol):
    """A loaded run's model, ready to step batches."""

    name: str
    loaded: LoadedRun
    joins: bool  # whether rows may join a batch that is generating

    def passes(self) -> Passes:
        """The passes of a new, empty batch."""
        ...


def load_backend(name: str, loaded: LoadedRun, **options: Any) -> Backend:
    """The backend ``name`` (``hf`` or ``vllm``) for ``loaded``."""
    from seer.errors import SeerError

    if name == "hf":
        from seer.inference.backends.hf import HFBackend

        return HFBackend(loaded, **options)
    if name == "vllm":
        from seer.inference.backends.vllm import VllmBackend

        return VllmBackend(loaded, **options)
    raise SeerError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
