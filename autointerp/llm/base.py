"""The one protocol all judge backends speak.

Callers (explainers, scorers) only ever see `Judge.chat`; they never learn which backend answers,
which is what lets a scorer tested against a scripted judge run unchanged against llama.cpp,
an OpenAI-compatible server or vLLM.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard, runtime_checkable

from autointerp.errors import AutointerpError
from autointerp.records import Usage

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


class JudgeError(AutointerpError):
    """A backend failed to produce any answer (as opposed to producing an unusable one)."""


@dataclass
class TokenLogprob:
    """One generated token, its logprob, and the top alternatives at that position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class PromptToken:
    """One token of a text the judge read (not generated): its logprob given everything before it.

    `offset` is the character offset where the token starts in the text, which is how callers map
    tokens back to the spans they care about (an explanation, a continuation, a digit slot).
    The first token has no context, so its `logprob` is None (unless the backend puts a
    beginning-of-sequence token before the text, as models that expect one do: then it has one).
    `top` holds up to `top_logprobs` alternatives at this position, best first (only at the offsets
    in `top_at`, when the caller gave them).
    """

    token: str
    offset: int
    logprob: float | None
    top: dict[str, float] = field(default_factory=dict)


CUT_OFF = "answer cut off at max_tokens"  # the reason recorded for an answer the token limit ended


@dataclass
class Reply:
    """A judge's answer. `finish_reason` is the backend's word for why generation ended ("stop": the
    model ended it; "length": the `max_tokens` limit did); None when the backend did not say."""

    text: str
    logprobs: list[TokenLogprob] | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        """The token limit ended the answer: whatever the model meant to say after it is missing, so
        text that is parsed whole (a label, JSON) cannot be trusted. A one-token answer read from its
        logprobs always ends at its limit of 1 and is not cut off in this sense: callers that read
        logprobs do not ask."""
        return self.finish_reason == "length"

    def uncut_text(self) -> str:
        """The text without the word the limit may have cut in two ("Yes, becau" -> "Yes, "), for
        readers of an answer's first word; all of it when the model ended the answer itself."""
        return re.sub(r"\w+\Z", "", self.text) if self.truncated else self.text


@runtime_checkable
class Judge(Protocol):
    """An LLM that answers chat prompts.

    `model` names it for provenance (written into results); `supports_logprobs` tells scorers
    whether they may ask for `logprobs` (top-k alternatives per generated token). `schema` asks
    for JSON output matching a JSON schema, where the backend can constrain its output.
    """

    @property
    def model(self) -> str: ...

    @property
    def supports_logprobs(self) -> bool: ...

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> Reply: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class TextScorer(Protocol):
    """The optional capability of reading a raw text and giving every token's logprob (teacher forcing).

    Surprisal, intervention and simulation scoring need it. Backends that can (llama.cpp in process,
    vLLM, completion servers that echo prompt logprobs) set `supports_prompt_logprobs = True`;
    callers check that flag and say clearly when a backend cannot. The text is scored as is,
    without a chat template. `top_at`, when given, names the character offsets whose alternatives
    the caller reads (a scorer's slots): other tokens come back with an empty `top`, which keeps
    cached answers small (20 alternatives on every token of a 300-token text is ~150 KB of JSON).
    """

    supports_prompt_logprobs: bool

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]: ...


def supports_grammar(judge: object) -> bool:
    """Whether `judge.chat` takes `grammar=`: a GBNF grammar the whole reply must match (llama.cpp's
    format). It is an optional capability, so backends without it keep the plain `chat` signature;
    the logprobs such a judge returns are the model's own, read before the grammar masks any token."""
    return bool(getattr(judge, "supports_grammar", False))


def can_score_text(judge: object) -> TypeGuard[TextScorer]:
    return bool(getattr(judge, "supports_prompt_logprobs", False))


async def check_judge_ready(judge: object) -> None:
    """Run the backend's cheap reachability check, where it has one (HTTP judges: `check()`); a judge
    loaded in process (llama.cpp, vLLM) was checked by loading it. Raises `JudgeError` with the reason."""
    check = getattr(judge, "check", None)
    if check is not None:
        await check()
