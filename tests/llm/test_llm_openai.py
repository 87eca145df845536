"""The OpenAI-compatible judge: retries and failures against a fault-injecting server (fast), and a
real llama.cpp server running SmolLM2 (slow).

Decided here: a body cut off in transit is a transport fault and retried; a complete 200 reply that
is unusable (not JSON, no choices, no content, no logprobs when asked) is a `JudgeError` at once,
because the scorers re-ask and count those themselves.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
from email.utils import formatdate

import pytest
from helpers import llama_server as real_server
from helpers.fault_server import FaultServer
from helpers.llama_server import free_port

from autointerp.errors import ConfigError
from autointerp.llm.base import Judge, JudgeError
from autointerp.llm.openai_compat import OpenAIJudge, OpenAIJudgeError, parse_retry_after

llama_server = real_server.llama_server  # the fixture starting llama.cpp's real server, once per module

KEY_ENV = "AUTOINTERP_TEST_OPENAI_KEY"
SECRET = "sk-test-0123456789-SECRET-abcdef"
ASK = [{"role": "user", "content": "Is the sky blue? Answer Yes or No."}]


def fast_judge(url: str, **kwargs) -> OpenAIJudge:
    """A judge that retries at once. Its timeout is generous: a request timed out and retried would break
    the tests that count requests, and a busy machine took 1.4 s to get a fresh client's first one to the
    server; the tests of timeouts set their own."""
    settings = dict(
        api_key_env=KEY_ENV, timeout=30.0, max_attempts=4, backoff_initial=0.01, backoff_max=0.05, max_total_s=20.0
    )
    settings.update(kwargs)
    return OpenAIJudge("fault-model", url, **settings)


def ask(judge: OpenAIJudge, **kwargs):
    async def go():
        try:
            return await judge.chat(ASK, **kwargs)
        finally:
            await judge.aclose()

    return asyncio.run(go())


def chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


# ---------------------------------------------------------------- happy path against the fake server


def test_is_a_judge_and_maps_reply_usage_and_logprobs(server, key):
    server.set_behaviour(FaultServer.script([("ok", "Yes", {"Yes": -0.1, "No": -2.4, "Maybe": -5.0})]))
    judge = fast_judge(server.url)
    assert isinstance(judge, Judge) and judge.supports_logprobs
    reply = ask(judge, max_tokens=1, logprobs=2)
    assert reply.text == "Yes"
    assert reply.usage.calls == 1 and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens == 1
    first = reply.logprobs[0]
    assert first.token == "Yes" and first.logprob == pytest.approx(-0.1)
    assert first.top == {"Yes": pytest.approx(-0.1), "No": pytest.approx(-2.4)}
    _, request, headers = server.requests[0]
    assert request["logprobs"] is True and request["top_logprobs"] == 2 and request["max_tokens"] == 1
    assert request["model"] == "fault-model" and request["messages"] == ASK
    assert headers["authorization"] == f"Bearer {key}"  # the key is used, just never shown


def test_scorer_reads_yes_probability_from_served_logprobs(server):
    from autointerp.scorers.classify import yes_probability

    server.set_behaviour(lambda req, n: ("ok", "No", {"No": -0.2, "Yes": -1.7}))
    reply = ask(fast_judge(server.url), max_tokens=1, logprobs=20)
    p = yes_probability(reply)
    assert p is not None and 0.1 < p < 0.3


def test_no_logprobs_unless_asked_and_refused_when_unsupported(server):
    reply = ask(fast_judge(server.url))
    assert reply.logprobs is None and "logprobs" not in server.requests[0][1]
    with pytest.raises(ValueError, match="supports_logprobs=False"):
        ask(fast_judge(server.url, supports_logprobs=False), logprobs=5)


@pytest.mark.parametrize("mode", ["json_object", "json_schema", "none"])
def test_schema_modes(server, mode):
    schema = {"type": "object", "properties": {"answers": {"type": "array"}}, "required": ["answers"]}
    server.set_behaviour(lambda req, n: ("ok", '{"answers": [1, 0]}'))
    reply = ask(fast_judge(server.url, schema_mode=mode), schema=schema)
    assert json.loads(reply.text) == {"answers": [1, 0]}
    sent = server.requests[0][1].get("response_format")
    if mode == "json_object":
        assert sent == {"type": "json_object", "schema": schema}
    elif mode == "json_schema":
        assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema
    else:
        assert sent is None


def test_token_limit_field_and_extra_body(server):
    ask(fast_judge(server.url, token_limit_field="max_completion_tokens", extra_body={"top_k": 1}), max_tokens=7)
    request = server.requests[0][1]
    assert request["max_completion_tokens"] == 7 and "max_tokens" not in request and request["top_k"] == 1


def test_concurrency_is_bounded(server):
    changed, state = threading.Condition(), {"now": 0, "max": 0}

    def slow(req, n):
        # hold each request until a second one is in flight (so reaching the bound does not depend on
        # the second arriving within some time), then a little longer for a third to show up if the
        # bound were broken
        with changed:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            changed.notify_all()
            changed.wait_for(lambda: state["now"] >= 2, timeout=5)
        time.sleep(0.15)
        with changed:
            state["now"] -= 1
        return ("ok", f"answer {n}")

    server.set_behaviour(slow)
    judge = fast_judge(server.url, max_concurrency=2, timeout=30)  # a request may wait 5 s for its peer

    async def go():
        try:
            return await asyncio.gather(*(judge.chat(ASK) for _ in range(6)))
        finally:
            await judge.aclose()

    replies = asyncio.run(go())
    assert len(replies) == 6 and state["max"] == 2


def test_same_judge_across_event_loops(server):
    judge = fast_judge(server.url)
    assert asyncio.run(judge.chat(ASK)).text == "OK"
    assert asyncio.run(judge.chat(ASK)).text == "OK"  # a fresh loop gets a fresh client
    asyncio.run(judge.aclose())


# ---------------------------------------------------------------- retried faults


def test_5xx_then_success_is_retried(server):
    server.set_behaviour(FaultServer.script([("status", 500), ("status", 502)]))
    judge = fast_judge(server.url)
    assert ask(judge).text == "OK"
    assert len(server.requests) == 3 and judge.stats["retries"] == 2 and judge.stats["errors"] == 0


def test_429_honours_retry_after_seconds(server):
    server.set_behaviour(FaultServer.script([("status", 429, {"Retry-After": "1"}, "rate limited")]))
    judge = fast_judge(server.url)
    t0 = time.monotonic()
    assert ask(judge).text == "OK"
    elapsed = time.monotonic() - t0
    gap = server.times[1] - server.times[0]
    # the server's wait, not the 0.01 s backoff; the upper bounds only rule out a much longer wait, with
    # room for a machine busy with other work
    assert 1.0 <= gap < 10.0, gap
    assert elapsed < 20.0


def test_503_honours_retry_after_http_date(server):
    # HTTP dates have 1 s resolution: the server asks for "now + 2 s" as it answers (a date written
    # before the request would already be near on a machine slow to send it), so the wait is 1-2 s
    def unavailable_until(request, n):
        if n == 0:
            return ("status", 503, {"Retry-After": formatdate(time.time() + 2, usegmt=True)})
        return ("ok", "OK")

    server.set_behaviour(unavailable_until)
    assert ask(fast_judge(server.url)).text == "OK"
    gap = server.times[1] - server.times[0]
    assert 0.9 <= gap < 10.0, gap  # a few seconds more on a busy machine, never the hour of the next test


def test_retry_after_beyond_limit_gives_up_at_once(server):
    server.set_behaviour(lambda req, n: ("status", 429, {"Retry-After": "3600"}, "daily quota exceeded"))
    with pytest.raises(OpenAIJudgeError, match="3600 s, more than max_retry_after") as e:
        ask(fast_judge(server.url, max_retry_after=30))
    assert len(server.requests) == 1 and e.value.status == 429 and "daily quota" in str(e.value)


def test_hang_longer_than_timeout_is_retried(server):
    # the retry must answer within the same timeout: 2 s, where a busy machine answers in under 0.5 s
    server.set_behaviour(FaultServer.script([("hang", 60.0)]))  # ends when the server stops
    t0 = time.monotonic()
    assert ask(fast_judge(server.url, timeout=2.0)).text == "OK"
    elapsed = time.monotonic() - t0
    assert len(server.requests) == 2 and 2.0 <= elapsed < 30, elapsed  # the hang lasts 60 s: not waited out


def test_body_cut_off_in_transit_is_retried(server):
    server.set_behaviour(FaultServer.script([("truncate",)]))
    assert ask(fast_judge(server.url)).text == "OK"
    assert len(server.requests) == 2


def test_gives_up_after_max_attempts_with_reason(server):
    server.set_behaviour(lambda req, n: ("status", 503, {}, "model is overloaded"))
    judge = fast_judge(server.url, max_attempts=3)
    with pytest.raises(JudgeError) as e:
        ask(judge)
    msg = str(e.value)
    assert "3 attempt(s)" in msg and "HTTP 503" in msg and "model is overloaded" in msg
    assert e.value.status == 503 and e.value.attempts == 3
    assert len(server.requests) == 3 and judge.stats["errors"] == 1


def test_total_time_is_bounded(server):
    server.set_behaviour(lambda req, n: ("status", 500))
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match="HTTP 500"):
        ask(fast_judge(server.url, max_attempts=50, backoff_initial=0.2, backoff_max=0.2, max_total_s=1.0))
    # max_total_s bounds the requests (one each 0.2 s at most); the clock only rules out the 50 attempts'
    # worth of waiting
    assert time.monotonic() - t0 < 8.0 and len(server.requests) < 8


# ---------------------------------------------------------------- failures that are not retried


@pytest.mark.parametrize(
    "action, match",
    [
        (("garbage",), "unreadable reply"),
        (("json", {"choices": []}), "no choices"),
        (("json", {"foo": 1}), "no choices"),
        (
            ("json", {"choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}]}),
            "no message content",
        ),
    ],
)
def test_unusable_reply_is_judge_error_at_once(server, action, match):
    server.set_behaviour(lambda req, n: action)
    with pytest.raises(JudgeError, match=match):
        ask(fast_judge(server.url))
    assert len(server.requests) == 1


def test_missing_logprobs_is_judge_error(server):
    server.set_behaviour(
        lambda req, n: (
            "json",
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes"}, "finish_reason": "stop"}]},
        )
    )
    with pytest.raises(JudgeError, match="supports_logprobs=False"):
        ask(fast_judge(server.url), logprobs=5)


@pytest.mark.parametrize(
    "code, match",
    [(400, "HTTP 400: context too long"), (404, "HTTP 404: no such model"), (403, "HTTP 403"), (422, "HTTP 422")],
)
def test_client_errors_are_not_retried(server, code, match):
    server.set_behaviour(lambda req, n: ("status", code, {}, "context too long"))
    with pytest.raises(JudgeError, match=match) as e:
        ask(fast_judge(server.url))
    assert len(server.requests) == 1 and e.value.status == code


def test_401_names_the_variable_never_the_key(server, key):
    # the worst case: a server that echoes the key it was sent
    server.set_behaviour(lambda req, n: ("status", 401, {}, f"Incorrect API key provided: {key}"))
    judge = fast_judge(server.url)
    with pytest.raises(JudgeError) as e:
        ask(judge)
    assert len(server.requests) == 1
    assert f"check the API key in ${KEY_ENV}" in str(e.value)
    for exc in chain(e.value):
        assert key not in str(exc) and key not in repr(exc) and key not in str(exc.args)
    for shown in (repr(judge), str(judge), json.dumps(judge.describe()), pickle.dumps(judge).decode("latin-1")):
        assert key not in shown and KEY_ENV in shown
    assert key not in repr(vars(judge))  # closed: not even the private client is left


def test_401_with_variable_unset_says_so(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.set_behaviour(lambda req, n: ("status", 401))
    with pytest.raises(JudgeError, match=f"\\${KEY_ENV} is not set"):
        ask(fast_judge(server.url))


def test_key_never_in_errors_after_retries(server, key):
    server.set_behaviour(lambda req, n: ("status", 500, {}, f"upstream rejected token {key}"))
    judge = fast_judge(server.url, max_attempts=2)
    with pytest.raises(JudgeError) as e:
        ask(judge)
    for exc in chain(e.value):
        assert key not in str(exc) and key not in repr(exc)
    assert "***" in str(e.value)
    assert key not in repr(judge)


def test_client_made_after_pickling_reads_the_variable_again(server, key):
    judge = fast_judge(server.url)
    ask(judge)
    copy = pickle.loads(pickle.dumps(judge))
    assert copy._client is None and ask(copy).text == "OK"
    assert server.requests[-1][2]["authorization"] == f"Bearer {key}"


def test_constructor_rejects_a_key_where_the_variable_name_belongs():
    with pytest.raises(ConfigError, match="NAME of an environment variable") as e:
        OpenAIJudge("m", "http://127.0.0.1:1/v1", api_key_env="sk-live-abc.def")
    assert "sk-live" not in str(e.value)


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "2"}, now) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}, now) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({"retry-after": "-3"}, now) is None
    assert parse_retry_after({}, now) is None and parse_retry_after(None, now) is None


# ---------------------------------------------------------------- prompt logprobs (completions, echo)


def score_text(judge: OpenAIJudge, text: str, k: int = 2, **kw):
    async def go():
        try:
            return await judge.prompt_logprobs(text, top_logprobs=k, **kw)
        finally:
            await judge.aclose()

    return asyncio.run(go())


def test_prompt_logprobs_from_echoed_completion(server):
    text = "Description: months\nText: we met in May"
    tokens = score_text(fast_judge(server.url, supports_prompt_logprobs=True), text)
    _, request, _ = server.requests[0]
    assert request["echo"] is True and request["logprobs"] == 2 and request["max_tokens"] == 1
    assert request["prompt"] == text and request["temperature"] == 0
    assert "".join(t.token for t in tokens) == text  # the generated token is trimmed off
    assert all(text[t.offset :].startswith(t.token) for t in tokens)
    assert tokens[0].logprob is None and tokens[0].top == {}
    assert tokens[1].logprob == pytest.approx(-0.15) and tokens[1].top == {
        tokens[1].token: pytest.approx(-0.15),
        "ALT": pytest.approx(-1.15),
    }
    only = score_text(fast_judge(server.url, supports_prompt_logprobs=True), text, top_at=[tokens[2].offset])
    assert [bool(t.top) for t in only] == [i == 2 for i in range(len(only))]


def test_prompt_logprobs_drop_an_echoed_bos_token(server):
    text = "in May"
    body = {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "text": "<s>in May.",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": ["<s>", "in", " May", "."],
                    "text_offset": [0, 3, 5, 9],
                    "token_logprobs": [None, -1.0, -2.0, -0.5],
                    "top_logprobs": [None, {"in": -1.0}, {" May": -2.0}, {}],
                },
            }
        ],
    }
    server.set_behaviour(lambda req, n: ("json", body))
    tokens = score_text(fast_judge(server.url, supports_prompt_logprobs=True), text)
    assert [(t.token, t.offset, t.logprob) for t in tokens] == [("in", 0, -1.0), (" May", 2, -2.0)]


def test_prompt_logprobs_need_the_flag_and_name_the_backend(server):
    with pytest.raises(JudgeError, match="OpenAI-compatible.*supports_prompt_logprobs=True"):
        score_text(fast_judge(server.url), "some text")
    assert not fast_judge(server.url).supports_prompt_logprobs and server.requests == []


def test_a_server_that_cannot_echo_gives_a_clear_error(server):
    server.set_behaviour(lambda req, n: ("status", 400, {}, "echo is not supported"))
    with pytest.raises(JudgeError, match="echo is not supported.*prompt logprobs"):
        score_text(fast_judge(server.url, supports_prompt_logprobs=True), "some text")
    server.set_behaviour(
        lambda req, n: (
            "json",
            {
                "id": "c",
                "object": "text_completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": None}],
            },
        )
    )
    with pytest.raises(JudgeError, match="echoes no prompt logprobs"):
        score_text(fast_judge(server.url, supports_prompt_logprobs=True), "some text")


# ---------------------------------------------------------------- answers cut off at max_tokens


def test_an_answer_cut_at_max_tokens_is_marked_truncated(server):
    server.set_behaviour(FaultServer.script([("length", "[EXPLANATION]: Legal te"), ("ok", "Yes")]))
    judge = fast_judge(server.url)

    async def go():
        try:
            return await judge.chat(ASK, max_tokens=8), await judge.chat(ASK, max_tokens=8)
        finally:
            await judge.aclose()

    cut, whole = asyncio.run(go())
    assert (cut.text, cut.finish_reason, cut.truncated) == ("[EXPLANATION]: Legal te", "length", True)
    assert (whole.finish_reason, whole.truncated) == ("stop", False)
    assert len(server.requests) == 2  # a cut-off answer is a well-formed reply: not retried by the transport


def test_a_label_cut_off_by_the_server_is_reasked_never_accepted(server):
    """The issue's case: `[EXPLANATION]: Legal te` with finish_reason "length" once became the label."""
    from helpers.planted import planted_record

    from autointerp.explainers import ExplainerSettings, ExplanationFailed, explain

    def behaviour(request, n):
        if "response_format" not in request:
            return ("length", "The excerpts are about law.\n[EXPLANATION]: Legal te")
        return ("ok", '{"explanation": "legal terms in contracts"}')

    server.set_behaviour(behaviour)
    judge = fast_judge(server.url)
    out = asyncio.run(explain(planted_record(), judge, ExplainerSettings(style="excerpts")))
    assert out.text == "legal terms in contracts" and out.failures == 1
    assert len(server.requests) == 2

    server.set_behaviour(lambda request, n: ("length", '{"explanation": "legal te'))
    with pytest.raises(ExplanationFailed, match="answer cut off at max_tokens"):
        asyncio.run(explain(planted_record(), fast_judge(server.url), ExplainerSettings(style="excerpts")))


# ---------------------------------------------------------------- timeouts and the check before a run


def test_a_timed_out_request_is_retried_only_after_as_long_again(server):
    server.set_behaviour(FaultServer.script([("ok", "warm"), ("hang", 60.0)]))  # the hang ends when the server stops
    judge = fast_judge(server.url, timeout=2.0)  # not less: the retry must be answered within it too

    async def go():
        try:
            await judge.chat(ASK)  # the client is made and connected, so the timed request goes out at once
            return await judge.chat(ASK)
        finally:
            await judge.aclose()

    assert asyncio.run(go()).text == "OK"
    _, first, second = server.times
    # 2 s waiting for the answer, then at least 2 s more for the server to finish the abandoned request;
    # an immediate retry would come ~2.05 s after the first. The server notes a request only once it has
    # read it, which a busy machine can delay (by under 0.5 s on a warm client): 1 s of slack for that.
    assert second - first >= 3.0, second - first


def test_the_default_timeout_suits_a_busy_local_server():
    judge = OpenAIJudge("m", "http://127.0.0.1:9/v1")
    assert judge.timeout >= 300 and judge.max_total_s >= 3 * judge.timeout
    assert OpenAIJudge("m", timeout=5, max_total_s=20).max_total_s == 20


def check(judge: OpenAIJudge) -> None:
    async def go():
        try:
            await judge.check()
        finally:
            await judge.aclose()

    asyncio.run(go())


def test_check_lists_the_models_and_asks_nothing_more_when_the_model_is_there(server):
    check(OpenAIJudge("fault", server.url, api_key_env=KEY_ENV))  # the fault server lists "fault"
    assert server.requests == []


def test_check_asks_one_token_when_the_model_is_not_listed(server):
    check(fast_judge(server.url))  # "fault-model": llama.cpp's server answers any name, so ask
    (request,) = [r for _, r, _ in server.requests]
    assert request["max_tokens"] == 1 and request["model"] == "fault-model"
    server.set_behaviour(lambda req, n: ("status", 404, {}, "The model `fault-model` does not exist"))
    with pytest.raises(JudgeError, match="does not exist"):
        check(fast_judge(server.url))
    server.set_behaviour(lambda req, n: ("garbage",))
    check(fast_judge(server.url))  # an answer it cannot use still shows the server is there


def test_check_of_an_unreachable_server_fails_fast_and_names_the_url():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(JudgeError) as e:
        check(fast_judge(f"http://127.0.0.1:{port}/v1"))
    assert time.monotonic() - t0 < 15
    assert f"127.0.0.1:{port}/v1" in str(e.value) and "cannot reach" in str(e.value)


# ---------------------------------------------------------------- a real llama.cpp server (slow)


def real_judge(url: str, **kwargs) -> OpenAIJudge:
    return OpenAIJudge("smollm2", url, api_key_env=KEY_ENV, timeout=60.0, **kwargs)


@pytest.mark.slow
def test_real_server_plain_chat(llama_server):
    reply = ask(real_judge(llama_server), max_tokens=12)
    assert reply.text.strip() and reply.logprobs is None
    assert reply.usage.calls == 1 and reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 12


@pytest.mark.slow
def test_real_server_top_logprobs(llama_server):
    from autointerp.scorers.classify import yes_probability

    reply = ask(real_judge(llama_server), max_tokens=1, logprobs=5)
    assert len(reply.logprobs) == 1
    first = reply.logprobs[0]
    assert len(first.top) >= 4 and first.token in first.top
    assert all(v <= 0 for v in first.top.values())
    assert max(first.top.values()) == pytest.approx(first.top[first.token])  # greedy: the best is chosen
    assert yes_probability(reply) is not None  # "Yes" or "No" among the alternatives


@pytest.mark.slow
def test_real_server_schema_constrained_json(llama_server):
    from autointerp.scorers.classify import answers_schema

    judge = real_judge(llama_server)

    async def go():
        try:
            return await judge.chat(
                [{"role": "user", "content": "Answer three yes/no questions as JSON."}],
                max_tokens=40,
                schema=answers_schema(3),
            )
        finally:
            await judge.aclose()

    answers = json.loads(asyncio.run(go()).text)["answers"]
    assert len(answers) == 3 and set(answers) <= {0, 1}


@pytest.mark.slow
def test_real_server_rejects_json_schema_type(llama_server):
    # pins a quirk of llama.cpp's server: it answers HTTP 500 to response_format type json_schema, which is
    # why the judge sends json_object by default
    judge = real_judge(llama_server, schema_mode="json_schema", max_attempts=2, backoff_initial=0.01)
    with pytest.raises(JudgeError, match="HTTP 500"):
        ask(judge, max_tokens=8, schema={"type": "object"})


def _reference_tokens(text: str, k: int):
    """The in-process judge's prompt logprobs for `text` (itself checked against logits_all in test_llm_local)."""
    from autointerp.llm.local import load_local_judge

    judge = load_local_judge("smollm2", n_ctx=512)
    try:
        return asyncio.run(judge.prompt_logprobs(text, top_logprobs=k))
    finally:
        asyncio.run(judge.aclose())


ECHO_TEXT = "The meeting is in March, after the rain."


@pytest.mark.slow
def test_real_server_echoes_the_text_tokens_and_offsets(llama_server):
    tokens = score_text(real_judge(llama_server, supports_prompt_logprobs=True), ECHO_TEXT, k=3)
    reference = _reference_tokens(ECHO_TEXT, 3)
    assert [(t.token, t.offset) for t in tokens] == [(t.token, t.offset) for t in reference]
    assert tokens[0].logprob is None and all(t.logprob is not None for t in tokens[1:])


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="llama-cpp-python 0.3.36's server scores each echoed token with the logits "
    "at that token (the next one's distribution) when the model adds no BOS",
)
def test_real_server_prompt_logprobs_match_the_reference(llama_server):
    tokens = score_text(real_judge(llama_server, supports_prompt_logprobs=True), ECHO_TEXT, k=3)
    reference = _reference_tokens(ECHO_TEXT, 3)
    for got, want in zip(tokens[1:], reference[1:], strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-2)


def test_a_grammar_goes_in_the_field_the_server_reads_and_only_there(server):
    judge = fast_judge(server.url, grammar_field="grammar", extra_body={"top_k": 1})
    assert judge.supports_grammar
    ask(judge, grammar='root ::= "Yes" | "No"')
    request = server.requests[0][1]
    assert request["grammar"] == 'root ::= "Yes" | "No"' and request["top_k"] == 1
    plain = fast_judge(server.url)
    assert not plain.supports_grammar
    with pytest.raises(ValueError, match="grammar_field"):
        ask(plain, grammar='root ::= "Yes"')
