"""``seer serve DIR``: serve a run folder (or a folder written by ``seer export``) over an
OpenAI-compatible HTTP API with a live page at ``/``. Needs the ``serve`` extra
(``pip install 'seer[serve]'``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seer.core.fields import option
from seer.errors import SeerError
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


def main(config: ServeConfig, *, progress: bool = True) -> int:
    """Load the run and serve it until Ctrl-C."""
    uvicorn, create_app = _import_serving()
    from seer.inference.explainer import Explainer  # deferred: torch and transformers

    if not Path(config.run).is_dir():
        raise SeerError(f"{config.run} is not a folder; pass a run folder written by seer train")
    monitor = config.default_monitor()
    explainer = Explainer.from_run(config.run)
    app = create_app(
        explainer,
        model_id=config.model_id or Path(config.run).resolve().name,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
        batch_wait=config.batch_wait_ms / 1e3,
        monitor=monitor,
        default_max_tokens=config.max_tokens,
    )
    logger.info("serving %s on http://%s:%d/", config.run, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
