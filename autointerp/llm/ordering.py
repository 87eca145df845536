"""Sending judge prompts in an order that keeps shared prompt prefixes together.

With several latents in flight, their prompts arrive at the judge interleaved: latent 3's detection
excerpts, latent 4's explainer prompt, latent 3's again... Every prompt of one latent's scorer starts
with the same system prompt and explanation, so a server's prefix cache (vLLM, llama.cpp's slots,
SGLang's radix tree, OpenAI's prompt caching) and the in-process llama.cpp KV cache only pay for that
prefix once if those prompts are evaluated together. Arrival order breaks that up.

`OrderedJudge` puts a bounded gate in front of a judge: at most `slots` requests in flight, and when
more are waiting, the one with the smallest *priority key* goes next. The key is carried implicitly
by a context variable that the pipeline sets per latent (its position in the run) and per stage
(explainer, then each scorer in turn), so the judge protocol is unchanged and scorers need not know.
Among equal keys the order is first come, first served. Keys compare as tuples; a request with no
key (`()`) sorts before all others, which is right for one-off calls made outside the pipeline.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from autointerp.llm.base import Judge
from autointerp.llm.forwarding import ForwardingJudge

T = TypeVar("T")

_PRIORITY: ContextVar[tuple[int, ...]] = ContextVar("autointerp_judge_priority", default=())


@contextmanager
def judge_priority(*key: int) -> Iterator[None]:
    """Extend the priority key of every judge request made inside this block (and tasks it starts)."""
    token = _PRIORITY.set(_PRIORITY.get() + tuple(key))
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def current_priority() -> tuple[int, ...]:
    return _PRIORITY.get()


class PriorityGate:
    """A semaphore that wakes waiters by smallest key (then arrival), not by arrival alone."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"a gate needs at least 1 slot, not {slots}")
        self.slots = slots
        self._busy = 0
        self._waiting: list[tuple[tuple[int, ...], int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiting if not f.done())

    async def acquire(self, key: tuple[int, ...]) -> None:
        if self._busy < self.slots and not self.waiting:
            self._busy += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (key, next(self._seq), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot moves to this waiter; _busy is unchanged
                return
        self._busy -= 1


class OrderedJudge(ForwardingJudge):
    """A judge behind a `PriorityGate`; everything else (model, flags, summary) is the inner judge's."""

    def __init__(self, inner: Judge, slots: int):
        super().__init__([inner])
        self.gate = PriorityGate(slots)
        self.served: list[tuple[int, ...]] | None = None  # set to [] to record the keys in serving order

    def __getattr__(self, name: str) -> Any:  # summary(), describe(), ... of the wrapped backend
        if name in ("judges", "inner"):  # not set yet (or being unpickled): no inner judge to ask
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def _forward(self, call: Callable[[Any], Awaitable[T]]) -> T:
        key = current_priority()
        await self.gate.acquire(key)
        try:
            if self.served is not None:
                self.served.append(key)
            return await call(self.inner)
        finally:
            self.gate.release()
