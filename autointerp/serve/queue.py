"""The workers that run queued jobs, and what clients wait on: a job's end, or each change of its progress.

`workers` jobs run at once, as tasks on the server's event loop; the judges' own gates (one request at a
time for llama.cpp) decide how much of that turns into parallel judge work. Each job's judge requests
carry the job's sequence number as their priority, so a busy judge finishes older jobs first and serves
one job's prompts (which share a prefix) together. The queue is bounded by `max_queue` jobs queued or
running: beyond that, `submit` raises `QueueFull` with the seconds after which a retry is likely to fit,
estimated from how long recent jobs took.

A client follows a job as a stream of events, each with an id `ATTEMPT.N` (the job's attempt, and the
count of its changes in this server process; `ATTEMPT.end` once it has finished), so a client that lost
the stream reconnects with the last id it saw and is sent only what came after: the job as it is now,
if it changed since. The ids survive a restart of the server: a job resumed after one starts a new attempt.

Cancelling a queued job finishes it as `cancelled` before it starts; a running job is asked to stop
(`cancelled()` turns true), and stops at the next boundary of its work (a scorer's row written whole,
or none), so no row is ever half written. A server stopped before a running job saw its request marks
it cancelled rather than running it again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from autointerp.llm.ordering import judge_priority
from autointerp.serve.jobs import FINISHED, Job, JobStore

log = logging.getLogger("autointerp.serve")

Progress = Callable[[dict[str, Any]], None]
Outcome = tuple[str, dict[str, Any] | None, str | None]  # status, result, error
Cancelled = Callable[[], bool]  # whether the job was asked to stop
Execute = Callable[[Job, Progress, Cancelled], Awaitable[Outcome]]
EventId = tuple[int, float]  # (attempt, change), inf for the last event of a finished job


def parse_event_id(text: str | None) -> EventId | None:
    """A Last-Event-ID as the stream gave it; None for none, or one this server did not make."""
    attempt, _, change = (text or "").partition(".")
    try:
        return int(attempt), math.inf if change == "end" else int(change)
    except ValueError:
        return None


class QueueFull(RuntimeError):
    def __init__(self, retry_after: int, limit: int):
        super().__init__(f"the job queue is full ({limit} jobs queued or running); retry after {retry_after} s")
        self.retry_after = retry_after


class JobQueue:
    def __init__(self, store: JobStore, execute: Execute, *, workers: int, max_queue: int):
        self.store = store
        self.execute = execute
        self.workers = workers
        self.max_queue = max_queue
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._progress: dict[str, dict[str, Any]] = {}
        self._changed: dict[str, asyncio.Event] = {}  # set at each change of a job (followers of its events)
        self._ended: dict[str, asyncio.Event] = {}  # set when a job has finished (long-polls)
        self._changes: dict[str, int] = {}  # changes of each unfinished job in this process (event ids)
        self._cancelling: set[str] = set()  # running jobs asked to stop
        self._active = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._seconds = 1.0  # moving average of a job's run time, for Retry-After

    @property
    def active(self) -> int:
        return self._active

    async def start(self) -> int:
        """Queue again what a previous server left queued or running; start the workers. Returns how many."""
        resumed = self.store.resume()
        for job in resumed:
            self._queue.put_nowait(job.id)
        self._active = self.store.count_active()
        self._tasks = [asyncio.create_task(self._work(), name=f"serve-worker-{i}") for i in range(self.workers)]
        return len(resumed)

    async def stop(self) -> None:
        """Stop the workers; a job cut off here stays 'running' in the table and is resumed at the next start,
        unless it had been cancelled (then it ends cancelled: its rows are whole, as after any stop)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for job_id in sorted(self._cancelling):
            self.store.finish(job_id, "cancelled", None, "cancelled while running (the server stopped meanwhile)")
        self._cancelling.clear()

    def submit(
        self, kind: str, run: str, latent: int, request: dict[str, Any], client: str, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        """(job, created): the earlier job of this idempotency key, or a new queued one."""
        if idempotency_key is not None:
            earlier = self.store.replay(kind, run, latent, request, client, idempotency_key)
            if earlier is not None:
                return earlier, False
        if self._active >= self.max_queue:
            raise QueueFull(self.retry_after(), self.max_queue)
        job = self.store.add(kind, run, latent, request, client, idempotency_key)
        self._active += 1
        self._queue.put_nowait(job.id)
        return job, True

    def retry_after(self) -> int:
        ahead = max(1, self._active - self.workers + 1)
        return min(600, max(1, math.ceil(self._seconds * ahead / self.workers)))

    def progress(self, job_id: str) -> dict[str, Any] | None:
        return self._progress.get(job_id)

    def cancel(self, job_id: str, client: str) -> Job | None:
        """Cancel the client's job (None: it has no such job): a queued one now, a running one as soon as its
        work in flight is done (it is answered still running). A finished job is left as it is, so cancelling
        twice is cancelling once."""
        job = self.get(job_id, client)
        if job is None or job.status in FINISHED:
            return job
        if job.status == "queued" and self.store.cancel_queued(job_id):
            self._active -= 1
            self._ended_now(job_id)
        elif job_id not in self._cancelling:
            self._cancelling.add(job_id)
            self._notify(job_id)
        return self.get(job_id, client)

    def cancelling(self, job_id: str) -> bool:
        return job_id in self._cancelling

    def event_id(self, job: Job) -> str:
        """The id of the event that shows the job as it is now (see the module docstring)."""
        if job.status in FINISHED:
            return f"{job.attempts}.end"
        return f"{job.attempts}.{self._changes.get(job.id, 0)}"

    def get(self, job_id: str, client: str) -> Job | None:
        """The job, if it is this client's (another client's jobs do not exist for it)."""
        job = self.store.get(job_id)
        return job if job is not None and job.client == client else None

    async def wait(self, job_id: str, client: str, timeout: float) -> Job | None:
        """The job once it has finished, or as it is when `timeout` seconds have passed (woken by its end
        only, not by each step of its progress)."""
        job = self.get(job_id, client)
        if job is None or job.status in FINISHED:
            return job
        event = self._ended.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return self.get(job_id, client)

    async def follow(
        self, job_id: str, client: str, heartbeat: float = 15.0, after: EventId | None = None
    ) -> AsyncIterator[tuple[Job, str] | None]:
        """The job and its event id at once and after each change until it has finished; None after
        `heartbeat` seconds of quiet. `after`: only what came after the event of that id."""
        last: Any = None
        while True:
            job = self.get(job_id, client)
            if job is None:
                return
            state = (job.status, repr(self._progress.get(job_id)), job_id in self._cancelling)
            event_id = self.event_id(job)
            mine = parse_event_id(event_id)
            seen = after is not None and mine is not None and mine <= after
            if state != last and not seen:
                yield job, event_id
            last = state
            if job.status in FINISHED:
                return
            event = self._changed.setdefault(job_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), heartbeat)
            except asyncio.TimeoutError:
                yield None

    def _notify(self, job_id: str) -> None:
        self._changes[job_id] = self._changes.get(job_id, 0) + 1
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    def _set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._progress[job_id] = progress
        self._notify(job_id)

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            job = self.store.claim(job_id)
            if job is None:
                continue
            self._notify(job_id)
            start = time.monotonic()
            try:
                with judge_priority(job.seq):
                    status, result, error = await self.execute(
                        job, functools.partial(self._set_progress, job_id), functools.partial(self.cancelling, job_id)
                    )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one job's crash must not stop the worker
                log.exception("job %s crashed", job_id)
                status, result, error = "failed", None, f"internal error: {type(e).__name__}: {e}"
            self.store.finish(job_id, status, result, error)
            self._cancelling.discard(job_id)
            self._active -= 1
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - start)
            self._ended_now(job_id)

    def _ended_now(self, job_id: str) -> None:
        """Tell whoever follows or waits on the job that it has finished."""
        self._progress.pop(job_id, None)
        self._notify(job_id)
        self._changes.pop(job_id, None)
        ended = self._ended.pop(job_id, None)
        if ended is not None:
            ended.set()
