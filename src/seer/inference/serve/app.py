"""The HTTP API: OpenAI's chat completions (streamed and not) with the model's
self-explanation beside every token, ``/v1/models``, ``/health`` and the live page at ``/``.

    app = create_app(Explainer.from_run("runs/bt"), model_id="bt")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from seer.core.formatting import prompt_ids
from seer.core.models import context_length
from seer.inference.engine import Engine
from seer.inference.explainer import MAX_NEW_TOKENS, Explainer
from seer.inference.monitor import Monitor
from seer.inference.serve import responses as R
from seer.inference.serve.errors import ApiError, error_body
from seer.inference.serve.requests import ChatRequest, Limits, parse_chat_request
from seer.inference.serve.worker import BatchWorker, Job, QueueFull

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


class EventStream(StreamingResponse):
    """Server-sent events that call ``on_close`` however the stream ends: finished, failed,
    or the client disconnected (noticed at once from the ASGI receive channel, not at the
    next failed write)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()


class Service:
    """What the routes share: the explainer's limits, the worker, the default monitor."""

    def __init__(
        self,
        explainer: Explainer,
        *,
        model_id: str,
        max_batch_size: int,
        max_queue: int,
        batch_wait: float,
        monitor: Monitor | None,
        default_max_tokens: int,
    ) -> None:
        if monitor is not None:
            explainer.check_monitor(monitor)
        self.explainer, self.model_id, self.monitor = explainer, model_id, monitor
        self.concepts = list(explainer.concepts)
        self.worker = BatchWorker(
            Engine(explainer),
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            batch_wait=batch_wait,
        )
        self.tokenizer = copy.deepcopy(explainer.tokenizer)  # the worker thread uses the original
        self.limits = Limits(
            model_id=model_id,
            concepts=tuple(self.concepts),
            context=context_length(explainer.model),
            max_tokens=MAX_NEW_TOKENS,
            default_max_tokens=default_max_tokens,
        )

    def health(self) -> dict[str, Any]:
        w = self.worker
        return {"status": "ok", "model": self.model_id, "joins": w.joins, **w.snapshot()}

    def model(self, name: str) -> dict[str, Any]:
        if name != self.model_id:
            raise ApiError(
                f"the model {name!r} is not served here; use {self.model_id!r}",
                status=404,
                param="model",
                code="model_not_found",
            )
        return self.model_card()

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "seer",
            "seer": {
                "concepts": self.concepts,
                "monitor": None if self.monitor is None else R.monitor_fields(self.monitor),
                "max_batch_size": self.worker.max_batch_size,
                "batch_wait_ms": self.worker.batch_wait * 1e3,
            },
        }

    def submit(self, raw: bytes) -> tuple[ChatRequest, Job]:
        """Validate a request and queue it (:class:`ApiError` 4xx, or 429 when full)."""
        req = parse_chat_request(
            raw,
            self.limits,
            count_tokens=lambda text: len(prompt_ids(self.tokenizer, text)),
            check_monitor=self.explainer.check_monitor,
            default_monitor=self.monitor,
        )
        job = Job(req.prompt, req.max_tokens, req.monitor, asyncio.get_running_loop())
        try:
            self.worker.submit(job)
        except QueueFull:
            w = self.worker
            raise ApiError(
                f"the server is full ({w.max_batch_size} generating, {w.max_queue} waiting): "
                "retry in a moment",
                status=429,
                type="rate_limit_error",
                code="queue_full",
            ) from None
        return req, job

    async def chat(self, request: Request) -> Response:
        req, job = self.submit(await request.body())
        ctx = R.Context(self.model_id)
        if req.stream:
            events = _stream(job, req, ctx, self.concepts)
            return EventStream(events, lambda: self.worker.cancel(job))
        try:
            result = await _result(job, request)
        finally:
            self.worker.cancel(job)
        if result is None:
            return Response(status_code=499)  # the client left; nobody reads this
        return JSONResponse(R.completion(ctx, req.prompt_tokens, req.monitor, result))


def create_app(
    explainer: Explainer,
    *,
    model_id: str = "seer",
    max_batch_size: int = 8,
    max_queue: int = 32,
    batch_wait: float = 0.15,
    monitor: Monitor | None = None,
    default_max_tokens: int = 128,
) -> FastAPI:
    """The app serving ``explainer``; ``monitor`` watches every request that does not bring
    its own (``{"seer": {"monitor": null}}`` turns it off for one request). A request that
    arrives while nothing is generating waits up to ``batch_wait`` seconds for others to
    start a batch with (see :class:`BatchWorker`)."""
    service = Service(
        explainer,
        model_id=model_id,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        batch_wait=batch_wait,
        monitor=monitor,
        default_max_tokens=default_max_tokens,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.worker.start()
        yield
        service.worker.stop()

    app = FastAPI(title="seer serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.mount("/static", StaticFiles(packages=[("seer.inference.serve", "static")]), "static")
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _server_error)
    app.add_api_route("/", _page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/health", lambda: service.health(), methods=["GET"])
    app.add_api_route(
        "/v1/models", lambda: {"object": "list", "data": [service.model_card()]}, methods=["GET"]
    )
    app.add_api_route("/v1/models/{name}", service.model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", service.chat, methods=["POST"])
    return app


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)


async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
    """A fault of the server (a bug): an OpenAI error body for the client; the traceback
    goes to the server's log."""
    body = error_body(
        f"the server failed on this request ({type(exc).__name__}); see the server's log",
        type="server_error",
        code="internal_error",
    )
    return JSONResponse(body, status_code=500)


async def _page() -> HTMLResponse:
    html = resources.files("seer.inference.serve").joinpath("static/index.html")
    return HTMLResponse(html.read_text(encoding="utf-8"))


async def _result(job: Job, request: Request) -> Any:
    """The finished row's result, ``None`` if the client disconnected first (noticed at once
    from the ASGI receive channel, as for streams)."""
    left = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            item = asyncio.ensure_future(job.events.get())
            await asyncio.wait({item, left}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                return None
            if isinstance(item.result(), ApiError):
                raise item.result()
            if item.result()[-1].result is not None:
                return item.result()[-1].result
    finally:
        left.cancel()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(
    job: Job, req: ChatRequest, ctx: R.Context, concepts: list[str]
) -> AsyncIterator[str]:
    while True:
        item = await job.events.get()
        if isinstance(item, ApiError):
            yield R.sse(item.body())
            return
        for event in item:
            yield R.sse(R.delta_chunk(ctx, event, concepts))
            if event.result is not None:
                yield R.sse(R.final_chunk(ctx, req.monitor, event.result))
                if req.include_usage:
                    yield R.sse(R.usage_chunk(ctx, req.prompt_tokens, event.result))
                yield R.sse("[DONE]")
                return
