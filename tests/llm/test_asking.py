"""The one ask-with-re-asks loop: what is re-asked, with which request, and what is counted."""

from __future__ import annotations

import asyncio

import pytest

from autointerp.llm.asking import Request, ask, score_text
from autointerp.llm.base import JudgeError, PromptToken, Reply
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Usage


class Recording(ScriptedJudge):
    """Answers from a list, one per call, and keeps each call's request settings."""

    def __init__(self, answers, **kw):
        self.answers = list(answers)
        self.requests: list[dict] = []
        super().__init__(lambda m: None, **kw)

        def respond(messages):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        self.responder = respond

    async def chat(self, messages, *, max_tokens=256, temperature=0.0, logprobs=0, schema=None):
        self.requests.append({"max_tokens": max_tokens, "temperature": temperature, "schema": schema})
        return await super().chat(messages, max_tokens=max_tokens, temperature=temperature, schema=schema)


def _number(reply: Reply) -> tuple[int | None, str]:
    assert isinstance(reply, Reply)  # the whole reply, not only its text
    text = reply.text.strip()
    return (int(text), "") if text.isdigit() else (None, f"{text!r} is not a number")


def _request(attempt: int) -> Request:
    return Request([{"role": "user", "content": "a number?"}], max_tokens=3, temperature=0.1 * attempt)


def test_an_unreadable_answer_is_reasked_with_that_attempts_request_and_counted():
    judge = Recording(["many", "7"])
    usage = Usage()
    asked = asyncio.run(ask(judge, _request, _number, attempts=3, usage=usage))
    assert (asked.value, asked.error, asked.failures, asked.answer) == (7, "", 1, "7")
    assert [r["temperature"] for r in judge.requests] == [0.0, 0.1]  # stopped once read
    assert usage.calls == 2 and usage.prompt_tokens > 0  # every answer's tokens are counted


def test_after_the_last_attempt_the_failure_says_why():
    judge = Recording(["many", "lots", "few"])
    asked = asyncio.run(ask(judge, _request, _number, attempts=3, usage=Usage()))
    assert asked.value is None and asked.failures == 3 and asked.answer == "few"
    assert asked.error == "'few' is not a number"


def test_a_judge_error_uses_up_an_attempt_or_is_raised():
    judge = Recording([JudgeError("server said 500"), "5"])
    asked = asyncio.run(ask(judge, _request, _number, attempts=2, usage=Usage()))
    assert asked.value == 5 and asked.failures == 0
    judge = Recording(["x", JudgeError("server said 500")])
    asked = asyncio.run(ask(judge, _request, _number, attempts=2, usage=Usage()))
    assert asked.value is None and asked.error == "judge error: server said 500" and asked.answer == "x"
    judge = Recording([JudgeError("server said 500"), "5"])
    with pytest.raises(JudgeError):
        asyncio.run(ask(judge, _request, _number, attempts=2, usage=Usage(), catch_judge_errors=False))


def test_a_request_can_say_how_its_own_answer_is_read():
    def request(attempt: int) -> Request:
        if attempt == 0:
            return _request(0)
        return Request([], schema={"type": "object"}, parse=lambda r: (len(r.text), ""))

    judge = Recording(["many", "many"])
    asked = asyncio.run(ask(judge, request, _number, attempts=2, usage=Usage()))
    assert asked.value == 4 and judge.requests[1]["schema"] == {"type": "object"}


def test_teacher_forced_text_is_not_rescored_when_unreadable_but_is_after_a_judge_error():
    calls = {"n": 0}

    def scorer(text, top):
        calls["n"] += 1
        if calls["n"] == 1:
            raise JudgeError("timeout")
        return [PromptToken("a", 0, None), PromptToken("b", 1, -1.0)]

    judge = ScriptedJudge(lambda m: "", text_scorer=scorer)
    usage = Usage()
    asked = asyncio.run(score_text(judge, "ab", lambda tokens: (None, "no slot"), attempts=3, usage=usage))
    assert calls["n"] == 2 and asked.value is None and asked.error == "no slot" and asked.failures == 1
    assert usage.calls == 1 and usage.prompt_tokens == 2  # the failed call spent nothing the judge reported
