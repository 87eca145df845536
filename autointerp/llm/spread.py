"""One judge over several servers of the same model: each request goes to the least busy of them.

`--judge-url` may list several OpenAI-compatible servers (several vLLM or llama.cpp servers, one per
GPU or machine). They serve one model, so which one answers a request changes nothing but the time it
takes: a request goes to the server with the fewest requests in flight from this judge, ties taken in
turn, so a slow or busy server gets less of the work without being left out. Every server must be
reachable before a run starts (`check`), so a typo in one URL fails at once and names it.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from autointerp.llm.base import Judge
from autointerp.llm.forwarding import ForwardingJudge

T = TypeVar("T")


def split_urls(text: str | None) -> list[str | None]:
    """The servers a `--judge-url` names: one URL, or several separated by commas (None: the default one)."""
    if not text:
        return [None]
    urls = [u.strip() for u in text.split(",") if u.strip()]
    return list(dict.fromkeys(urls)) or [None]


class SpreadJudge(ForwardingJudge):
    """A `Judge` that sends each request to the least busy of several judges of one model."""

    def __init__(self, judges: Sequence[Judge]):
        if not judges:
            raise ValueError("SpreadJudge needs at least one judge")
        models = {j.model for j in judges}
        if len(models) > 1:
            raise ValueError(f"the judges of one SpreadJudge must serve one model, not {sorted(models)}")
        super().__init__(judges)
        self.busy = [0] * len(self.judges)
        self.sent = [0] * len(self.judges)  # requests sent to each, for the summary and the tests
        self._turn = itertools.count()

    def _pick(self) -> int:
        least = min(self.busy)
        idle = [i for i, n in enumerate(self.busy) if n == least]
        return idle[next(self._turn) % len(idle)]

    async def _forward(self, call: Callable[[Any], Awaitable[T]]) -> T:
        i = self._pick()
        self.busy[i] += 1
        self.sent[i] += 1
        try:
            return await call(self.judges[i])
        finally:
            self.busy[i] -= 1

    def describe(self) -> dict[str, Any]:
        parts = [j.describe() if hasattr(j, "describe") else {"model": j.model} for j in self.judges]
        return {"backend": "spread", "model": self.model, "judges": parts}

    def summary(self) -> str:
        return "requests per server: " + ", ".join(map(str, self.sent))
