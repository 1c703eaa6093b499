"""``seer serve DIR``: serve a run folder (or a folder written by ``seer export``) over an
OpenAI-compatible HTTP API with a live page at ``/``. Needs the ``serve`` extra
(``pip install 'seer[serve]'``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from seer.errors import SeerError

__all__ = ["ServeConfig", "add_arguments", "main"]

logger = logging.getLogger(__name__)


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ServeConfig:
    # --- what and where --------------------------------------------------------------------
    run: str = _f(MISSING, "run folder written by seer train (or a folder from seer export)")
    host: str = _f("127.0.0.1", "address to bind; the default serves this machine only")
    port: int = _f(8000, "TCP port")
    model_id: str | None = _f(None, "the model's id in the API (default: DIR's folder name)")
    # --- batching --------------------------------------------------------------------------
    max_batch_size: int = _f(8, "most rows generating together (one forward pass per step)")
    max_queue: int = _f(32, "most requests waiting for a row; more get 429 at once")
    max_tokens: int = _f(128, "reply length when a request gives no max_tokens")
    # --- the default monitor (a request's own {"seer": {"monitor": ...}} replaces it) ------
    monitor: str | None = _f(
        None, "watch --concept in every request: stop, steer or watch (default: no monitor)"
    )
    concept: str | None = _f(None, "the concept the default monitor watches, e.g. unsafe")
    threshold: float = _f(0.5, "probability that triggers the default monitor")
    towards: str | None = _f(None, "steer: the concept to move towards, e.g. safe")
    steer_scale: float = _f(0.5, "steer: multiple of the prompt's mean hidden-state norm")
    watch_tokens: int | None = _f(
        None, "watch only the prompt's end and this many generated tokens (0: before replying)"
    )
    reply_end: bool = _f(False, "decide once, on the finished reply's final explanation")
    refusal: str | None = _f(None, "stop: the reply given instead (default: a short refusal)")

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SeerError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_batch_size < 1:
            raise SeerError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        if self.max_queue < 0:
            raise SeerError(f"--max-queue must be 0 or more, got {self.max_queue}")
        if self.monitor is not None and self.monitor not in ("stop", "steer", "watch"):
            raise SeerError(f"--monitor must be stop, steer or watch, got {self.monitor!r}")
        if self.monitor is not None and not self.concept:
            raise SeerError("--monitor needs --concept, the concept to watch (e.g. unsafe)")

    def default_monitor(self) -> Any:
        """The server-wide :class:`Monitor` (``None`` without ``--monitor``)."""
        if self.monitor is None:
            return None
        from seer.inference.monitor import Monitor

        extra: dict[str, Any] = {"refusal": self.refusal} if self.refusal else {}
        return Monitor(
            str(self.concept),
            threshold=self.threshold,
            mode=self.monitor,
            towards=self.towards,
            scale=self.steer_scale,
            watch_tokens=self.watch_tokens,
            reply_end=self.reply_end,
            **extra,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ServeConfig fields as arguments (``run`` positional)."""
    types = {"int": int, "int | None": int, "float": float, "str": str, "str | None": str}
    for f in fields(ServeConfig):
        if f.default is MISSING:
            parser.add_argument(f.name, help=f.metadata["help"])
            continue
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"help": f"{f.metadata['help']} (default: {f.default})"}
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", **kw)
        elif f.name == "monitor":
            parser.add_argument(flag, choices=["stop", "steer", "watch"], **kw)
        else:
            parser.add_argument(flag, type=types[str(f.type)], default=f.default, **kw)


def _import_serving() -> tuple[Any, Any]:
    try:
        import uvicorn

        from seer.inference.serve.app import create_app
    except ImportError as exc:
        raise SeerError(
            f"seer serve needs FastAPI and uvicorn ({exc}): pip install 'seer[serve]'"
        ) from exc
    return uvicorn, create_app


def main(args: argparse.Namespace | ServeConfig) -> int:
    """Load the run and serve it until Ctrl-C."""
    config = (
        args
        if isinstance(args, ServeConfig)
        else ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    )
    uvicorn, create_app = _import_serving()
    from seer.inference.explainer import Explainer

    if not Path(config.run).is_dir():
        raise SeerError(f"{config.run} is not a folder; pass a run folder written by seer train")
    monitor = config.default_monitor()
    explainer = Explainer.from_run(config.run)
    app = create_app(
        explainer,
        model_id=config.model_id or Path(config.run).resolve().name,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
        monitor=monitor,
        default_max_tokens=config.max_tokens,
    )
    logger.info("serving %s on http://%s:%d/", config.run, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
