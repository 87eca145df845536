"""A judge whose answers are computed by a Python function: for tests and benchmarks.

Its usage counts 4 characters as a token; with `prefix_cache=True` it also counts as cached the
prefix a prompt shares with the previous one (as llama.cpp's KV cache and a provider's prefix cache
do), so prompt layouts can be compared without a model. That count depends on the order calls
arrive in, so it is off unless asked for: tests that compare usage across runs stay deterministic.

It lets a test decide exactly what the "LLM" says (including garbage, or an answer cut off at the
token limit: a `Reply` with `finish_reason="length"`) so that the code around the judge (parsing,
failure counting, metrics, resume) is tested without any model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from autointerp.llm.base import Message, PromptToken, Reply
from autointerp.records import Usage

Responder = Callable[[list[Message]], "str | Reply"]
TextScorerFn = Callable[[str, int], list[PromptToken]]  # (text, top_logprobs) -> tokens of the text


class ScriptedJudge:
    """Answers every prompt with `responder(messages)`; counts calls and keeps the prompts."""

    def __init__(
        self,
        responder: Responder,
        *,
        model: str = "scripted",
        supports_logprobs: bool = True,
        text_scorer: TextScorerFn | None = None,
        prefix_cache: bool = False,
    ):
        self.responder = responder
        self.model = model
        self.supports_logprobs = supports_logprobs
        self.text_scorer = text_scorer
        self.supports_prompt_logprobs = text_scorer is not None
        self.calls: list[list[Message]] = []
        self.prefix_cache = prefix_cache
        self._last_prompt = ""
        self.scored_texts: list[str] = []

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> Reply:
        self.calls.append(messages)
        out = self.responder(messages)
        reply = out if isinstance(out, Reply) else Reply(text=out)
        if not logprobs:
            reply = replace(reply, logprobs=None)
        prompt = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        common = len(os.path.commonprefix([prompt, self._last_prompt])) if self.prefix_cache else 0
        self._last_prompt = prompt
        prompt_chars = sum(len(m["content"]) for m in messages)
        reply.usage = Usage(
            prompt_tokens=prompt_chars // 4,
            completion_tokens=len(reply.text) // 4,
            calls=1,
            cached_prompt_tokens=min(common // 4, prompt_chars // 4),
        )
        return reply

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        if self.text_scorer is None:
            raise NotImplementedError(f"judge {self.model} was given no text_scorer")
        self.scored_texts.append(text)
        tokens = self.text_scorer(text, top_logprobs)
        if top_at is not None:
            wanted = set(top_at)
            tokens = [t if t.offset in wanted else replace(t, top={}) for t in tokens]
        return tokens

    async def aclose(self) -> None:
        return None
