"""``seer serve DIR``: serve a run folder (or a folder written by ``seer export``) over an
OpenAI-compatible HTTP API with a live page at ``/``. Needs the ``serve`` extra
(``pip install 'seer[serve]'``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seer.core.fields import option
from seer.errors import SeerError
from seer.inference.backends import BACKENDS
from seer.inference.monitor_options import MonitorOptions

if TYPE_CHECKING:
    from seer.inference.monitor import Monitor

__all__ = ["HELP", "NAME", "ServeConfig", "main"]

logger = logging.getLogger(__name__)

NAME = "serve"
HELP = "serve a run over an OpenAI-compatible HTTP API, with a live page"


@dataclass
class ServeConfig:
    # --- what and where --------------------------------------------------------------------
    run: str = option(help="run folder written by seer train (or a folder from seer export)")
    host: str = option("127.0.0.1", "address to bind; the default serves this machine only")
    port: int = option(8000, "TCP port")
    model_id: str | None = option(None, "the model's id in the API; not given: DIR's folder name")
    # --- batching --------------------------------------------------------------------------
    max_batch_size: int = option(8, "most rows generating together (one forward pass per step)")
    max_queue: int = option(32, "most requests waiting for a row; more get 429 at once")
    batch_wait_ms: float = option(
        150.0,
        "how long a waiting request may wait for others to enter the batch with it, in one "
        "prefill pass (0: at the next step; a full batch does not wait)",
    )
    max_tokens: int = option(128, "reply length when a request gives no max_tokens")
    drain_timeout: float = option(
        30.0,
        "on Ctrl-C or SIGTERM, seconds the running requests get to finish before they are "
        "cut off (a second Ctrl-C stops at once)",
    )
    # --- the engine's backend --------------------------------------------------------------
    backend: str = option(
        "hf",
        "what runs the model: hf (Hugging Face transformers, seer's own batching) or vllm (an "
        "in-process vLLM engine; pip install 'seer[vllm]')",
    )
    vllm_dtype: str = option(
        "float32",
        "the vLLM backend's weights and activations: float32 (the readout as trained) or "
        "bfloat16 (faster where the CPU or GPU has it; see docs/vllm.md for its agreement)",
    )
    # --- the default monitor (a request's own {"seer": {"monitor": ...}} replaces it) ------
    monitor: MonitorOptions = option(
        MonitorOptions,
        "the default monitor of every request (one mode, one threshold; a request's own "
        '{"seer": {"monitor": ...}} replaces it)',
    )

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SeerError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_batch_size < 1:
            raise SeerError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        if self.max_queue < 0:
            raise SeerError(f"--max-queue must be 0 or more, got {self.max_queue}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise SeerError(
                f"--batch-wait-ms must be between 0 and 10000, got {self.batch_wait_ms}"
            )
        from seer.inference.explainer import MAX_NEW_TOKENS  # deferred: torch

        if not 1 <= self.max_tokens <= MAX_NEW_TOKENS:
            raise SeerError(
                f"--max-tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_tokens}"
            )
        if not (self.drain_timeout >= 0 and math.isfinite(self.drain_timeout)):
            raise SeerError(
                f"--drain-timeout must be a number of seconds, 0 or more, got {self.drain_timeout}"
            )
        if self.backend not in BACKENDS:
            raise SeerError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.vllm_dtype not in ("float32", "bfloat16"):
            raise SeerError(f"--vllm-dtype must be float32 or bfloat16, got {self.vllm_dtype!r}")
        self.monitor.check_single("seer serve")

    def default_monitor(self) -> Monitor | None:
        """The server-wide :class:`Monitor` (``None`` without ``--monitor``)."""
        return self.monitor.single()


Config = ServeConfig


def _import_serving() -> tuple[Any, Any]:
    try:
        import uvicorn

        from seer.inference.serve.app import create_app
    except ImportError as exc:
        raise SeerError(
            f"seer serve needs FastAPI and uvicorn ({exc}): pip install 'seer[serve]'"
        ) from exc
    return uvicorn, create_app


def check_address(host: str, port: int) -> None:
    """Raise :class:`SeerError` unless this process may listen on ``host:port`` (checked
    before the model loads, so that a port in use fails at once and in one line)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fix = "stop the program using it (another seer serve?) or pass another --port"
            raise SeerError(f"port {port} on {host} is in use: {fix}") from None
        if exc.errno == errno.EACCES:
            fix = "ports below 1024 need root: pass --port 1024 or above"
            raise SeerError(f"not allowed to listen on port {port}: {fix}") from None
        reason = exc.strerror or str(exc)
        raise SeerError(
            f"cannot listen on {host}:{port} ({reason}): pass --host with an address of this "
            "machine (127.0.0.1: this machine only; 0.0.0.0: every interface)"
        ) from None


class _CutOff(logging.Filter):
    """Drops uvicorn's tracebacks of what a stop cancels, no fault: a request cut off at the
    drain limit (uvicorn's own line before it says how many) and, after a second Ctrl-C, the
    app's shutdown (the worker is stopped by :func:`main` instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        text = record.msg if isinstance(record.msg, str) else ""
        return not (text.startswith("Traceback") and text.rstrip().endswith("CancelledError"))


def main(config: ServeConfig, *, progress: bool = True) -> int:
    """Load the run and serve it until Ctrl-C (or SIGTERM): requests still running then get
    ``--drain-timeout`` seconds to finish."""
    uvicorn, create_app = _import_serving()
    from seer.inference.engine import Engine  # deferred: torch and transformers
    from seer.inference.loaded import LoadedRun

    if not Path(config.run).is_dir():
        raise SeerError(f"{config.run} is not a folder; pass a run folder written by seer train")
    check_address(config.host, config.port)
    monitor = config.default_monitor()
    if config.backend == "vllm":
        from seer.inference.backends.vllm_adapter import check_vllm

        check_vllm()  # before the model loads: a missing vLLM says so at once
    loaded = LoadedRun.from_run(config.run)
    if config.backend == "vllm":
        from seer.inference.backends.vllm import VllmBackend

        engine = Engine(loaded, VllmBackend(loaded, dtype=config.vllm_dtype))
    else:
        engine = Engine(loaded)
    app = create_app(
        engine,
        model_id=config.model_id or Path(config.run).resolve().name,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
        batch_wait=config.batch_wait_ms / 1e3,
        monitor=monitor,
        default_max_tokens=config.max_tokens,
    )
    logger.info("serving %s on http://%s:%d/", config.run, config.host, config.port)
    logging.getLogger("uvicorn.error").addFilter(_CutOff())
    try:
        uvicorn.run(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            timeout_graceful_shutdown=config.drain_timeout,
        )
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C back once it has shut down
        raise KeyboardInterrupt("the server stopped; run the same command to serve again") from None
    finally:  # also after a second Ctrl-C, which skips the app's shutdown: no thread outlives
        app.state.service.worker.stop()  # the interpreter in the middle of a forward pass
    return 0
