"""Asking a judge until its answer can be read: the one loop every stage that parses answers uses.

A judge's answer that cannot be read is re-asked a bounded number of times (each attempt may change
the request: a higher temperature, a JSON schema, a re-ask prompt) and then reported as a failure
with its reason, never guessed at. The explainer, the Yes/No and A/B questions of detection, fuzzing
and intervention_choice, simulation's JSON answers (`ask`) and the teacher-forced texts of
simulation, surprisal and intervention (`score_text`) all go through `ask_until_read`, so how an
answer is judged readable (including whether a cut-off answer counts) is decided in one place per
kind of answer: its parser, which receives the whole `Reply`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from autointerp.llm.base import Judge, JudgeError, Message, PromptToken, Reply, supports_grammar
from autointerp.records import Usage

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Request:
    """One attempt's chat request (see `Judge.chat`); `parse`, when given, reads its answer instead of
    `ask`'s parser (a re-ask that constrains the answer to JSON reads it as JSON)."""

    messages: list[Message]
    max_tokens: int = 256
    temperature: float = 0.0
    logprobs: int = 0
    schema: dict[str, Any] | None = None
    parse: Callable[[Reply], tuple[Any, str]] | None = None
    grammar: str | None = None  # a GBNF grammar, sent only to judges with `supports_grammar`


@dataclass
class Asked(Generic[T]):
    """The outcome of asking: the parsed value, or None and the reason of the last failed attempt."""

    value: T | None
    answer: str = ""  # the text of the last answer received ("" when none came, or none was generated)
    error: str = ""  # why `value` is None ("" when it is not)
    failures: int = 0  # answers received that could not be read


async def ask_until_read(
    send: Callable[[int], Awaitable[R]],
    parse: Callable[[R], tuple[T | None, str]],
    *,
    attempts: int,
    usage: Usage,
    usage_of: Callable[[R], Usage],
    text_of: Callable[[R], str] = lambda _: "",
    reask_unreadable: bool = True,
    catch_judge_errors: bool = True,
) -> Asked[T]:
    """Send attempt 0, 1, ... (at most `attempts`) until `parse` reads an answer; `parse` gives the
    value, or None and why the answer cannot be read.

    Every answer's usage is added to `usage`. A `JudgeError` (no answer at all) uses up an attempt and
    is the failure reason if it was the last, unless `catch_judge_errors` is False (the explainer lets
    it fail the latent). With `reask_unreadable` False an unreadable answer is final: for requests
    whose answer cannot change when asked again (teacher forcing is deterministic).
    """
    out: Asked[T] = Asked(None)
    for attempt in range(max(1, attempts)):
        try:
            reply = await send(attempt)
        except JudgeError as e:
            if not catch_judge_errors:
                raise
            out.error = f"judge error: {e}"
            continue
        usage.add(usage_of(reply))
        out.answer = text_of(reply)
        value, why = parse(reply)
        if value is not None:
            out.value, out.error = value, ""
            return out
        out.failures += 1
        out.error = why
        if not reask_unreadable:
            break
    return out


async def ask(
    judge: Judge,
    request: Callable[[int], Request],
    parse: Callable[[Reply], tuple[T | None, str]],
    *,
    attempts: int,
    usage: Usage,
    catch_judge_errors: bool = True,
) -> Asked[T]:
    """Chat with `judge`, re-asking unreadable answers: `request(i)` is the request of attempt i."""
    sent: list[Request] = []

    async def send(attempt: int) -> Reply:
        r = request(attempt)
        sent.append(r)
        # only a judge that takes a grammar is given one: every other backend keeps the plain protocol
        extra = {"grammar": r.grammar} if r.grammar is not None and supports_grammar(judge) else {}
        return await judge.chat(
            r.messages,
            max_tokens=r.max_tokens,
            temperature=r.temperature,
            logprobs=r.logprobs,
            schema=r.schema,
            **extra,
        )

    def read(reply: Reply) -> tuple[T | None, str]:
        own = sent[-1].parse
        return own(reply) if own is not None else parse(reply)

    return await ask_until_read(
        send,
        read,
        attempts=attempts,
        usage=usage,
        usage_of=lambda reply: reply.usage,
        text_of=lambda reply: reply.text,
        catch_judge_errors=catch_judge_errors,
    )


async def score_text(
    judge: Any,
    text: str,
    parse: Callable[[list[PromptToken]], tuple[T | None, str]],
    *,
    attempts: int = 1,
    usage: Usage,
    top_logprobs: int = 0,
    top_at: list[int] | None = None,
) -> Asked[T]:
    """Teacher-force `text` through a judge with prompt logprobs and read the tokens with `parse`.

    Only a judge error is retried: the same text gives the same logprobs, so an unreadable result is final.
    """

    async def send(attempt: int) -> list[PromptToken]:
        if top_at is None and not top_logprobs:
            return await judge.prompt_logprobs(text)
        return await judge.prompt_logprobs(text, top_logprobs=top_logprobs, top_at=top_at)

    return await ask_until_read(
        send,
        parse,
        attempts=attempts,
        usage=usage,
        usage_of=lambda tokens: Usage(prompt_tokens=len(tokens), calls=1),
        reask_unreadable=False,
    )
