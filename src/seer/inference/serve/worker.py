"""The batching worker: one thread owns the engine and drives ``Engine.batch()``.

Requests wait in a bounded queue. At every step boundary the waiting ones join the running
batch (up to ``max_batch_size`` rows) when the engine can add rows to a running batch, else
they start the next batch once the running one has finished. Waiting requests enter once they
fill the free rows or the first of them has waited ``batch_wait`` seconds, so that requests
sent close together are prefilled in one pass, not one pass each; an idle worker sleeps
until then, a generating batch goes on stepping. A cancelled request (its
client left) ends its row at the next step, which frees its slot. Events go back to each
request's asyncio queue on the server's event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from seer.errors import SeerError
from seer.inference.serve.errors import ApiError

__all__ = ["BatchWorker", "Job", "QueueFull"]

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every batch slot and queue place is taken."""


@dataclass(eq=False)
class Job:
    """One request: what to generate and where its events go. The worker puts lists of
    ``RowEvent`` on ``events``, ending with one whose last item has a ``finish_reason``,
    or an :class:`ApiError` when the request failed."""

    prompt: str
    max_new_tokens: int
    monitor: Any
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    done: bool = False
    row: int | None = None
    arrived: float = field(default_factory=time.monotonic)

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled = True


@dataclass
class Stats:
    running: int = 0
    waiting: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    steps: int = 0
    joined: int = 0  # rows added to a batch that was already generating
    prefills: int = 0  # times rows entered a batch (each a prefill pass for all of them)


class BatchWorker:
    def __init__(
        self, engine: Any, *, max_batch_size: int, max_queue: int, batch_wait: float = 0.0
    ) -> None:
        self.engine, self.max_batch_size, self.max_queue = engine, max_batch_size, max_queue
        self.batch_wait = batch_wait
        # whether rows may join a running batch; off if the engine refuses
        self.joins = bool(getattr(engine, "joins", True))
        self.stats = Stats()
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}
        self._batch: Any = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="seer-batch-worker", daemon=True)

    # --- called from the event loop ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker thread at its next step (a no-op unless it runs); rows still
        generating are dropped."""
        if not self._thread.is_alive():
            return
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raise :class:`QueueFull` at once when there is no room."""
        with self._cond:
            if len(self._waiting) + len(self._running) >= self.max_batch_size + self.max_queue:
                raise QueueFull
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client left: drop the job if it waits, end its row at the next step if it runs."""
        with self._cond:
            if job.done or job.cancelled:
                return
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                job.done = True
                self.stats.cancelled += 1
            self._cond.notify()

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            self.stats.running, self.stats.waiting = len(self._running), len(self._waiting)
            return dict(vars(self.stats))

    # --- the worker thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._running:
                    self._cond.wait()
                if not self._running:
                    self._gather()
                if self._stop:
                    return
                if not self._waiting and not self._running:
                    continue  # the only waiting request was cancelled while it waited
                cancelled = [j for j in self._running.values() if j.cancelled and not j.done]
                joining = bool(self._running)  # rows added now join a batch that is generating
                admitted = self._admit()
            try:
                for job in cancelled:
                    self._batch.cancel(job.row)
                    job.done = True
                for job in admitted:
                    self._add(job, joining)
                self.stats.prefills += bool(admitted)
                if self._batch is not None and self._running:
                    self._step()
            except Exception as exc:  # a bug or an out-of-memory: fail the batch, keep serving
                logger.exception("the batch failed; its requests get an error")
                self._fail_batch(exc)

    def _left(self) -> float:
        """Under the lock, someone waiting: seconds until the waiting jobs enter the batch (0
        or less: now). They enter once they fill its free rows, or once the first of them has
        waited ``batch_wait``: requests that arrive close together enter together, in one
        prefill pass, rather than one pass each."""
        if len(self._waiting) >= self.max_batch_size - len(self._running):
            return 0.0
        return self._waiting[0].arrived + self.batch_wait - time.monotonic()

    def _gather(self) -> None:
        """Under the lock, nothing generating: wait until the waiting jobs are due."""
        while not self._stop and self._waiting and (left := self._left()) > 0:
            self._cond.wait(left)

    def _admit(self) -> list[Job]:
        """Under the lock: the waiting jobs that enter the batch now (a fresh batch when the
        running one is empty). A generating batch goes on stepping while they are not due."""
        if self._batch is None or not self._running:
            self._batch = self.engine.batch()
            self.stats.batches += 1
        elif not self.joins or not self._waiting or self._left() > 0:
            return []
        room = self.max_batch_size - len(self._running)
        return [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]

    def _add(self, job: Job, joining: bool) -> None:
        try:
            row = self._batch.add(
                job.prompt, max_new_tokens=job.max_new_tokens, monitor=job.monitor
            )
        except SeerError as exc:  # the engine refused this request: the client's fault
            job.done = True
            self.stats.failed += 1
            job.put(ApiError(str(exc)))
            return
        except RuntimeError:
            if not joining:
                raise
            # The engine cannot join a running batch: this job (and later ones) wait for the
            # next batch.
            logger.info("the engine does not add rows to a running batch; batching per batch")
            with self._cond:
                self.joins = False
                self._waiting.appendleft(job)
            return
        job.row = row
        with self._cond:
            self._running[row] = job
            self.stats.joined += joining

    def _step(self) -> None:
        events = self._batch.step()
        self.stats.steps += 1
        per_row: dict[int, list[Any]] = {}
        for event in events:
            per_row.setdefault(event.row, []).append(event)
        for row, evs in per_row.items():
            job = self._running.get(row)
            if job is None:
                continue
            reason = evs[-1].finish_reason
            if reason is not None:  # the books first: a client that has its answer sees them
                with self._cond:
                    del self._running[row]
                    job.done = True
                    if reason == "cancelled" or job.cancelled:
                        self.stats.cancelled += 1
                    elif reason == "error":
                        self.stats.failed += 1
                    else:
                        self.stats.completed += 1
            if job.cancelled:
                continue
            if reason == "error":  # this row alone failed: its request gets the error
                if evs[:-1]:
                    job.put(evs[:-1])
                job.put(_row_error(evs[-1].result.error))
            else:
                job.put(evs)
        if self._batch.active == 0 and self._running:  # rows the engine ended without an event
            with self._cond:
                for job in self._running.values():
                    job.done = True
                    job.put(
                        ApiError(
                            "the engine ended this row without a result",
                            status=500,
                            type="server_error",
                            code="internal_error",
                        )
                    )
                self._running.clear()

    def _fail_batch(self, exc: Exception) -> None:
        with self._cond:
            jobs = list(self._running.values())
            self._running.clear()
            self._batch = None
        for job in jobs:
            job.done = True
            self.stats.failed += 1
            job.put(
                ApiError(
                    f"generation failed on the server: {exc}",
                    status=500,
                    type="server_error",
                    code="internal_error",
                )
            )


def _row_error(exc: Exception | None) -> ApiError:
    """The error of a request whose row failed while the others in its batch went on: its
    own monitor's values (400), or a fault on the server (500, logged)."""
    if isinstance(exc, SeerError):
        return ApiError(str(exc), param="seer.monitor", code="invalid_value")
    logger.error("one request's row failed; the others go on", exc_info=exc)
    return ApiError(
        f"generation of this request failed on the server: {exc}",
        status=500,
        type="server_error",
        code="internal_error",
    )
