"""The base of the judges that stand in front of other judges: the ordering gate, the response cache, the
spread over several servers.

Such a judge is what its backends are: the same model, the same capabilities; it only changes how a call
reaches them (after a gate, from a cache, to the least busy server). So the model, the `supports_*`
flags, the reachability check and closing are written once here, and a wrapper overrides `_forward`,
the one step every call goes through, or a call it answers itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar, cast

from autointerp.llm.base import Judge, Message, PromptToken, Reply, TextScorer, can_score_text, supports_grammar

T = TypeVar("T")


class ForwardingJudge:
    """A `Judge` whose calls go to the judges behind it (`judges`: one, or several serving one model)."""

    def __init__(self, judges: Sequence[Judge]):
        if not judges:
            raise ValueError(f"{type(self).__name__} needs at least one judge behind it")
        self.judges = list(judges)

    @property
    def inner(self) -> Judge:
        """The judge behind this one (the first, where there are several)."""
        return self.judges[0]

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def supports_logprobs(self) -> bool:
        return all(j.supports_logprobs for j in self.judges)

    @property
    def supports_prompt_logprobs(self) -> bool:
        return all(can_score_text(j) for j in self.judges)

    @property
    def supports_grammar(self) -> bool:
        return all(supports_grammar(j) for j in self.judges)

    async def _forward(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """`call(judge)` on the judge that answers this request; wrappers gate, count or choose here."""
        return await call(self.inner)

    async def chat(self, messages: list[Message], **kwargs: Any) -> Reply:
        return await self._forward(lambda j: j.chat(messages, **kwargs))

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        return await self._forward(
            lambda j: cast(TextScorer, j).prompt_logprobs(text, top_logprobs=top_logprobs, top_at=top_at)
        )

    async def check(self) -> None:
        """Every judge behind this one answers (each backend's own check, never answered from a cache)."""
        checks = [getattr(j, "check", None) for j in self.judges]
        await asyncio.gather(*(c() for c in checks if c is not None))

    async def aclose(self) -> None:
        await asyncio.gather(*(j.aclose() for j in self.judges))
