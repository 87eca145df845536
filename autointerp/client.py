"""A small Python client of `autointerp serve` (httpx): the same calls as the HTTP routes.

    from autointerp.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as c:
        job = c.score("demo", 17, "the word 'also'")         # queued at once
        job = c.wait(job["id"])                               # until done or failed
        print(job["result"]["scores"][0]["metrics"])

`AsyncClient` has the same methods as coroutines. Every POST carries an idempotency key (a fresh one
per call unless given), so a call retried after a dropped connection, a 5xx or a 429 (after its
Retry-After) returns the job the first attempt created instead of queueing a second one. When to retry
and how long to wait is the HTTP judges' policy too (retry_policy.py); the clients only send. `cancel(id)`
cancels a job (DELETE is idempotent, so it is retried the same way). `events(id)` follows a job's event
stream, and when the connection drops it reconnects with the id of the last event it had (`Last-Event-ID`),
so it neither misses the end nor repeats an event.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from autointerp.errors import AutointerpError
from autointerp.retry_policy import RETRY_AFTER_STATUS, RetryPolicy, parse_retry_after

FINISHED = ("done", "failed", "cancelled")
BACKOFF_INITIAL = 0.25  # the service answers in milliseconds: a first retry need not wait long
BACKOFF_MAX = 30.0


class ServeError(AutointerpError):
    """The service refused a request: HTTP `status`, its `message`, the `field` it blames, `retry_after`."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.field = field
        self.retry_after = retry_after


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, timeout: float | None) -> dict[str, Any]:
        """httpx's `request` arguments for this call (`timeout` None: the client's own)."""
        return {
            "method": self.method,
            "url": self.path,
            "params": self.params,
            "json": self.body,
            "headers": self.headers,
            "timeout": _timeout(timeout),
        }


def _error(response: httpx.Response) -> ServeError:
    try:
        data = response.json()
        message, field_ = str(data.get("error", response.text)), data.get("field")
    except (ValueError, AttributeError):
        message, field_ = response.text[:500] or response.reason_phrase, None
    return ServeError(response.status_code, message, field_, parse_retry_after(response.headers))


def _timeout(seconds: float | None) -> float | httpx._client.UseClientDefault:
    """A call's own timeout, or (None) the client's."""
    return httpx.USE_CLIENT_DEFAULT if seconds is None else seconds


class _EventParser:
    """Server-Sent Events, a line at a time: `feed` returns (event, data) when a blank line ends one."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []
        self.last_id: str | None = None  # the id of the last event (the stream's Last-Event-ID)

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            done = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return done
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self.event = value
            elif name == "id" and "\0" not in value:
                self.last_id = value
            elif name == "data":
                self.data.append(value)
        return None


def _at(hookpoint: str | None) -> dict[str, Any]:
    """The query naming a latent's hookpoint (needed in a run of several; None: the run's only one)."""
    return {} if hookpoint is None else {"hookpoint": hookpoint}


class _Calls:
    """The routes as `Call`s; the two clients only differ in how they send them."""

    def _health(self) -> Call:
        return Call("GET", "/health")

    def _runs(self) -> Call:
        return Call("GET", "/runs")

    def _run(self, run: str) -> Call:
        return Call("GET", f"/runs/{run}")

    def _latent(self, run: str, latent: int, hookpoint: str | None = None) -> Call:
        return Call("GET", f"/runs/{run}/latents/{int(latent)}", params=_at(hookpoint))

    def _score(
        self,
        run: str,
        latent: int,
        explanation: str,
        scorers: list[str] | None,
        judge: str | None,
        idempotency_key: str | None,
        hookpoint: str | None = None,
    ) -> Call:
        body: dict[str, Any] = {"explanation": explanation}
        if scorers is not None:
            body["scorers"] = list(scorers)
        if judge is not None:
            body["judge"] = judge
        key = idempotency_key or uuid.uuid4().hex
        path = f"/runs/{run}/latents/{int(latent)}/score"
        return Call("POST", path, params=_at(hookpoint), body=body, headers={"Idempotency-Key": key})

    def _explain(
        self, run: str, latent: int, explainer: str | None, idempotency_key: str | None, hookpoint: str | None = None
    ) -> Call:
        body = {"explainer": explainer} if explainer is not None else {}
        key = idempotency_key or uuid.uuid4().hex
        path = f"/runs/{run}/latents/{int(latent)}/explain"
        return Call("POST", path, params=_at(hookpoint), body=body, headers={"Idempotency-Key": key})

    def _job(self, job_id: str, wait: float) -> Call:
        return Call("GET", f"/jobs/{job_id}", params={"wait": wait} if wait else {})

    def _cancel(self, job_id: str) -> Call:
        return Call("DELETE", f"/jobs/{job_id}")

    def _events_headers(self, last_id: str | None) -> dict[str, str]:
        return {"Last-Event-ID": last_id} if last_id is not None else {}

    def _jobs(self, status: str | None, run: str | None, limit: int) -> Call:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if run:
            params["run"] = run
        return Call("GET", "/jobs", params=params)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _answer(response: httpx.Response) -> Any:
    """The response's JSON, or the `ServeError` it is."""
    if response.is_success:
        return response.json()
    raise _error(response)


def _policy(retries: int) -> RetryPolicy:
    # a Retry-After of the queue's (up to minutes) is waited at most BACKOFF_MAX before asking again
    return RetryPolicy(
        max_attempts=retries + 1,
        backoff_initial=BACKOFF_INITIAL,
        backoff_max=BACKOFF_MAX,
        max_retry_after=BACKOFF_MAX,
        cap_retry_after=True,
    )


def _pause(failure: Exception, attempt: int, policy: RetryPolicy, started: float) -> float:
    """How long both clients wait before sending a call again after `failure` (its `attempt`-th, from 0,
    the first sent at `started` on the monotonic clock), or the failure raised when the retry policy
    (retry_policy.py, the judges' too) says not to send it again. A dropped connection, a 429 and the 5xx
    a proxy or an overloaded server answers are worth another try: GETs and DELETEs are safe to send
    twice, and POSTs carry their idempotency key."""
    error = failure if isinstance(failure, ServeError) else None
    if error is not None and not policy.retried(error.status):
        raise failure
    asked = error.retry_after if error is not None and error.status in RETRY_AFTER_STATUS else None
    wait = policy.next_wait(attempt, time.monotonic() - started, asked)
    if wait is None:
        raise failure
    return wait


class Client(_Calls):
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        self.retries = retries
        self.retry_policy = _policy(retries)
        self.http = httpx.Client(base_url=url, headers=_headers(api_key), timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call, timeout: float | None = None) -> Any:
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return _answer(self.http.request(**call.request(timeout)))
            except (ServeError, httpx.TransportError) as failure:
                time.sleep(_pause(failure, attempt, self.retry_policy, started))

    def health(self) -> dict[str, Any]:
        return self._send(self._health())

    def runs(self) -> list[dict[str, Any]]:
        return self._send(self._runs())["runs"]

    def run(self, run: str) -> dict[str, Any]:
        return self._send(self._run(run))

    def latent(self, run: str, latent: int, *, hookpoint: str | None = None) -> dict[str, Any]:
        return self._send(self._latent(run, latent, hookpoint))

    def score(
        self,
        run: str,
        latent: int,
        explanation: str,
        *,
        scorers: list[str] | None = None,
        judge: str | None = None,
        idempotency_key: str | None = None,
        hookpoint: str | None = None,
    ) -> dict[str, Any]:
        """Queue a score job; returns the job (its `id`, `status` "queued")."""
        return self._send(self._score(run, latent, explanation, scorers, judge, idempotency_key, hookpoint))

    def explain(
        self,
        run: str,
        latent: int,
        *,
        explainer: str | None = None,
        idempotency_key: str | None = None,
        hookpoint: str | None = None,
    ) -> dict[str, Any]:
        """Queue an explain job; returns the job."""
        return self._send(self._explain(run, latent, explainer, idempotency_key, hookpoint))

    def job(self, job_id: str, *, wait: float = 0) -> dict[str, Any]:
        """The job now, or (wait > 0) once finished or after `wait` seconds."""
        return self._send(self._job(job_id, wait), timeout=wait + 30 if wait else None)

    def jobs(self, *, status: str | None = None, run: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self._send(self._jobs(status, run, limit))["jobs"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; returns it: `cancelled` when it was queued, still `running` when it was running (it
        stops once its work in flight is written; `wait` for it), as it was when it had finished."""
        return self._send(self._cancel(job_id))

    def wait(self, job_id: str, timeout: float | None = None, *, poll: float = 30.0) -> dict[str, Any]:
        """The job once it has finished (done or failed); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            job = self.job(job_id, wait=max(0.0, left))
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The job after each change, from its Server-Sent Events stream, until it has finished; a dropped
        stream is resumed (up to `retries` times in a row) after the last event it gave. `last_event_id`
        starts after that event."""
        parser, dropped = _EventParser(), 0
        parser.last_id = last_event_id
        while True:
            try:
                with self.http.stream(
                    "GET",
                    f"/jobs/{job_id}/events",
                    headers=self._events_headers(parser.last_id),
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise _error(response)
                    for line in response.iter_lines():
                        got = parser.feed(line)
                        if got is not None:
                            dropped = 0
                            yield json.loads(got[1])
                            if got[0] == "done":
                                return
                    return  # the server ended the stream: the job has finished (or is gone)
            except httpx.TransportError as failure:
                time.sleep(_pause(failure, dropped, self.retry_policy, time.monotonic()))
                dropped += 1

    def report(self, run: str, path: str = "") -> str:
        """A page of the run's HTML report ("" = index.html)."""
        response = self.http.get(f"/runs/{run}/report/{path}")
        if not response.is_success:
            raise _error(response)
        return response.text


class AsyncClient(_Calls):
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ):
        self.retries = retries
        self.retry_policy = _policy(retries)
        self.http = httpx.AsyncClient(
            base_url=url,
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call, timeout: float | None = None) -> Any:
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return _answer(await self.http.request(**call.request(timeout)))
            except (ServeError, httpx.TransportError) as failure:
                await asyncio.sleep(_pause(failure, attempt, self.retry_policy, started))

    async def health(self) -> dict[str, Any]:
        return await self._send(self._health())

    async def runs(self) -> list[dict[str, Any]]:
        return (await self._send(self._runs()))["runs"]

    async def run(self, run: str) -> dict[str, Any]:
        return await self._send(self._run(run))

    async def latent(self, run: str, latent: int, *, hookpoint: str | None = None) -> dict[str, Any]:
        return await self._send(self._latent(run, latent, hookpoint))

    async def score(
        self,
        run: str,
        latent: int,
        explanation: str,
        *,
        scorers: list[str] | None = None,
        judge: str | None = None,
        idempotency_key: str | None = None,
        hookpoint: str | None = None,
    ) -> dict[str, Any]:
        return await self._send(self._score(run, latent, explanation, scorers, judge, idempotency_key, hookpoint))

    async def explain(
        self,
        run: str,
        latent: int,
        *,
        explainer: str | None = None,
        idempotency_key: str | None = None,
        hookpoint: str | None = None,
    ) -> dict[str, Any]:
        return await self._send(self._explain(run, latent, explainer, idempotency_key, hookpoint))

    async def job(self, job_id: str, *, wait: float = 0) -> dict[str, Any]:
        return await self._send(self._job(job_id, wait), timeout=wait + 30 if wait else None)

    async def jobs(
        self, *, status: str | None = None, run: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return (await self._send(self._jobs(status, run, limit)))["jobs"]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._send(self._cancel(job_id))

    async def wait(self, job_id: str, timeout: float | None = None, *, poll: float = 30.0) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            job = await self.job(job_id, wait=max(0.0, left))
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")

    async def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        parser, dropped = _EventParser(), 0
        parser.last_id = last_event_id
        while True:
            try:
                async with self.http.stream(
                    "GET",
                    f"/jobs/{job_id}/events",
                    headers=self._events_headers(parser.last_id),
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise _error(response)
                    async for line in response.aiter_lines():
                        got = parser.feed(line)
                        if got is not None:
                            dropped = 0
                            yield json.loads(got[1])
                            if got[0] == "done":
                                return
                    return
            except httpx.TransportError as failure:
                await asyncio.sleep(_pause(failure, dropped, self.retry_policy, time.monotonic()))
                dropped += 1
