"""The persistent response cache (`CachedJudge`) and token/cost accounting."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autointerp.errors import AutointerpError
from autointerp.llm.accounting import Price, PriceTable, PriceTableError, cost, describe
from autointerp.llm.base import Judge, JudgeError, PromptToken, Reply, TokenLogprob
from autointerp.llm.cache import CachedJudge, ResponseCacheError, cache_key, prompt_logprobs_key
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Usage

REPO = Path(__file__).resolve().parents[2]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": text}]


def echo(messages) -> str:
    return "echo: " + messages[-1]["content"]


class SlowJudge(ScriptedJudge):
    """A scripted judge that yields to the event loop before answering, so requests really overlap."""

    def __init__(self, responder, delay: float = 0.01, **kw):
        super().__init__(responder, **kw)
        self.delay = delay
        self.closed = False

    async def chat(self, messages, **kw) -> Reply:
        await asyncio.sleep(self.delay)
        return await super().chat(messages, **kw)

    async def aclose(self) -> None:
        self.closed = True


def cached(tmp_path: Path, inner=None, namespace: str = "scripted:test") -> CachedJudge:
    return CachedJudge(inner or ScriptedJudge(echo), tmp_path / "responses.sqlite", namespace=namespace)


def test_second_identical_request_is_a_hit(tmp_path):
    inner = ScriptedJudge(echo)
    judge = cached(tmp_path, inner)

    async def go():
        first = await judge.chat(msgs("hello"), max_tokens=8)
        second = await judge.chat(msgs("hello"), max_tokens=8)
        await judge.aclose()
        return first, second

    first, second = asyncio.run(go())
    assert len(inner.calls) == 1
    assert first.text == second.text == "echo: hello"
    assert first.usage.calls == 1 and first.usage.prompt_tokens > 0
    assert second.usage == Usage(prompt_tokens=0, completion_tokens=0, calls=0)
    assert (judge.hits, judge.misses, judge.bypassed) == (1, 1, 0)
    assert judge.saved_prompt_tokens == first.usage.prompt_tokens
    assert judge.saved_completion_tokens == first.usage.completion_tokens
    assert judge.saved.calls == 1
    assert "1 hits, 1 misses" in judge.summary()


def test_judge_protocol_is_kept(tmp_path):
    inner = SlowJudge(echo, model="some-model", supports_logprobs=False)
    judge = cached(tmp_path, inner)
    assert isinstance(judge, Judge)
    assert judge.model == "some-model" and judge.supports_logprobs is False
    asyncio.run(judge.aclose())
    assert inner.closed
    with pytest.raises(ResponseCacheError, match="closed"):
        asyncio.run(judge.chat(msgs("after close")))


def test_sampled_requests_are_never_cached(tmp_path):
    inner = ScriptedJudge(echo)
    judge = cached(tmp_path, inner)

    async def go():
        for _ in range(3):
            await judge.chat(msgs("sample me"), temperature=0.7)
        await judge.chat(msgs("sample me"), temperature=0.0)  # the deterministic one is not answered by a sample
        await judge.chat(msgs("sample me"), temperature=0.7)

    asyncio.run(go())
    assert len(inner.calls) == 5
    assert (judge.hits, judge.misses, judge.bypassed) == (0, 1, 4)
    assert judge.stored() == 1


@pytest.mark.parametrize(
    "change",
    [
        {"messages": msgs("hello!")},
        {"messages": [{"role": "user", "content": "hello"}]},
        {"max_tokens": 9},
        {"logprobs": 5},
        {"schema": {"type": "object"}},
        {"namespace": "other-backend:other-model"},
    ],
)
def test_anything_that_decides_the_answer_is_in_the_key(tmp_path, change):
    inner = ScriptedJudge(echo)
    base = {"messages": msgs("hello"), "max_tokens": 8, "logprobs": 0, "schema": None}

    async def go():
        a = CachedJudge(inner, tmp_path / "c.sqlite", namespace="scripted:test")
        await a.chat(**base)
        b = CachedJudge(inner, tmp_path / "c.sqlite", namespace=change.get("namespace", "scripted:test"))
        request = {**base, **{k: v for k, v in change.items() if k != "namespace"}}
        await b.chat(**request)
        await b.chat(**request)  # and the changed request is itself cached
        return b

    b = asyncio.run(go())
    assert len(inner.calls) == 2
    assert (b.hits, b.misses) == (1, 1)


def test_key_is_canonical():
    a = cache_key(
        "ns", [{"role": "user", "content": "x"}], max_tokens=4, temperature=0, logprobs=0, schema={"b": 1, "a": [1, 2]}
    )
    b = cache_key(
        "ns",
        [{"content": "x", "role": "user"}],
        max_tokens=4,
        temperature=0.0,
        logprobs=0,
        schema={"a": [1, 2], "b": 1},
    )
    assert a == b and len(a) == 64
    assert a != cache_key(
        "ns", [{"role": "user", "content": "x"}], max_tokens=4, temperature=0, logprobs=0, schema=None
    )


def test_logprobs_survive_the_round_trip_exactly(tmp_path):
    top = {"Yes": math.log(0.7), "No": math.log(0.3), " yes": -1e-300, "\udcff": -math.inf, "é✓": -0.1 - 0.2}
    tokens = [
        TokenLogprob(token="Yes", logprob=top["Yes"], top=top),
        TokenLogprob(token="\n", logprob=-2.5e-17, top={}),
    ]
    inner = ScriptedJudge(lambda m: Reply(text="Yes\n", logprobs=tokens))
    judge = cached(tmp_path, inner)

    async def go():
        first = await judge.chat(msgs("q"), max_tokens=2, logprobs=5)
        fresh = cached(tmp_path, ScriptedJudge(echo))
        second = await fresh.chat(msgs("q"), max_tokens=2, logprobs=5)
        return first, second, fresh

    first, second, fresh = asyncio.run(go())
    assert fresh.hits == 1
    assert second.text == first.text
    assert second.logprobs == first.logprobs == tokens
    assert list(second.logprobs[0].top) == list(top)  # order of the alternatives too
    assert second.logprobs is not first.logprobs


def test_a_cut_off_answer_stays_cut_off_when_read_back_and_old_rows_still_read(tmp_path):
    inner = ScriptedJudge(lambda m: Reply(text="[EXPLANATION]: Legal te", finish_reason="length"))

    async def go():
        first = await cached(tmp_path, inner).chat(msgs("cut"), max_tokens=8)
        fresh = cached(tmp_path, ScriptedJudge(echo))
        return first, await fresh.chat(msgs("cut"), max_tokens=8), fresh

    first, again, fresh = asyncio.run(go())
    assert fresh.hits == 1 and first.truncated
    assert (again.text, again.finish_reason, again.truncated) == ("[EXPLANATION]: Legal te", "length", True)

    # a row stored before replies kept their finish reason: read, with the reason unknown (None)
    key = cache_key("scripted:test", msgs("old"), max_tokens=8, temperature=0.0, logprobs=0, schema=None)
    old = '{"text":"from an older version","logprobs":null,"usage":{"prompt_tokens":3,"completion_tokens":4,"calls":1}}'
    with sqlite3.connect(tmp_path / "responses.sqlite") as con:
        con.execute("INSERT INTO replies (key, reply) VALUES (?, ?)", (key, old))
    judge = cached(tmp_path, ScriptedJudge(echo))
    reply = asyncio.run(judge.chat(msgs("old"), max_tokens=8))
    assert judge.hits == 1 and reply.text == "from an older version"
    assert reply.finish_reason is None and not reply.truncated


def test_a_fresh_judge_on_the_same_file_hits(tmp_path):
    async def go():
        a = cached(tmp_path)
        await a.chat(msgs("persist"))
        await a.aclose()
        inner = ScriptedJudge(lambda m: "different")
        b = cached(tmp_path, inner)
        reply = await b.chat(msgs("persist"))
        await b.aclose()
        return reply, inner, b

    reply, inner, b = asyncio.run(go())
    assert reply.text == "echo: persist" and not inner.calls and b.hits == 1


def test_a_reply_written_by_another_process_is_read(tmp_path):
    path = tmp_path / "responses.sqlite"
    script = textwrap.dedent(f"""
        import asyncio
        from autointerp.llm.cache import CachedJudge
        from autointerp.llm.scripted import ScriptedJudge

        async def main():
            judge = CachedJudge(ScriptedJudge(lambda m: "from the subprocess"), {str(path)!r}, namespace="ns")
            await judge.chat([{{"role": "user", "content": "across processes"}}], max_tokens=7)
            assert judge.misses == 1
            # no aclose: a process that ends without closing must lose nothing

        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)
    inner = ScriptedJudge(echo)
    judge = CachedJudge(inner, path, namespace="ns")
    reply = asyncio.run(judge.chat([{"role": "user", "content": "across processes"}], max_tokens=7))
    assert reply.text == "from the subprocess" and not inner.calls and judge.hits == 1


def test_concurrent_requests_get_their_own_answers_and_pay_once(tmp_path):
    inner = SlowJudge(echo)
    judge = cached(tmp_path, inner)
    prompts = [f"prompt {i % 10}" for i in range(50)]  # 10 distinct, each asked 5 times at once

    async def go():
        first = await asyncio.gather(*(judge.chat(msgs(p)) for p in prompts))
        second = await asyncio.gather(*(judge.chat(msgs(p)) for p in prompts))
        return first, second

    first, second = asyncio.run(go())
    assert [r.text for r in first] == [r.text for r in second] == [f"echo: {p}" for p in prompts]
    assert len(inner.calls) == 10  # identical requests in flight are coalesced
    assert judge.misses == 10 and judge.hits == 90 and judge.hits + judge.misses + judge.bypassed == 100
    paid = sum(r.usage.prompt_tokens for r in first)
    assert sum(r.usage.prompt_tokens for r in second) == 0
    assert judge.saved_prompt_tokens == 9 * paid  # each of the 10 paid replies was answered 9 more times
    assert sum(r.usage.calls for r in first + second) == 10
    assert judge.stored() == 10


class GatedJudge(ScriptedJudge):
    """Answers only once `gate` is open: lets a test hold a request in flight as long as it likes."""

    def __init__(self, responder):
        super().__init__(responder)
        self.gate = asyncio.Event()
        self.started = 0

    async def chat(self, messages, **kw) -> Reply:
        self.started += 1
        await self.gate.wait()
        return await super().chat(messages, **kw)


def test_a_cancelled_request_does_not_strand_its_duplicates(tmp_path):
    inner = GatedJudge(echo)
    judge = cached(tmp_path, inner)

    async def go():
        leader = asyncio.create_task(judge.chat(msgs("x")))
        follower = asyncio.create_task(judge.chat(msgs("x")))
        for _ in range(3):
            await asyncio.sleep(0)
        assert inner.started == 1  # the follower waits on the leader's request
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        for _ in range(3):
            await asyncio.sleep(0)
        assert inner.started == 2  # the follower asked for itself
        inner.gate.set()
        return await follower

    assert asyncio.run(go()).text == "echo: x"
    assert judge.stored() == 1 and len(inner.calls) == 1


def test_a_cancelled_duplicate_does_not_cancel_the_request_it_waits_on(tmp_path):
    inner = GatedJudge(echo)
    judge = cached(tmp_path, inner)

    async def go():
        leader = asyncio.create_task(judge.chat(msgs("x")))
        follower = asyncio.create_task(judge.chat(msgs("x")))
        await asyncio.sleep(0)
        follower.cancel()
        inner.gate.set()
        reply = await leader
        with pytest.raises(asyncio.CancelledError):
            await follower
        return reply

    assert asyncio.run(go()).text == "echo: x"
    assert judge.stored() == 1 and inner.started == 1


def test_exceptions_are_not_cached(tmp_path):
    failures = {"left": 1}

    def flaky(messages):
        if failures["left"]:
            failures["left"] -= 1
            raise JudgeError("server said 503")
        return echo(messages)

    inner = SlowJudge(flaky)
    judge = cached(tmp_path, inner)

    async def go():
        with pytest.raises(JudgeError, match="503"):
            await judge.chat(msgs("q"))
        assert judge.stored() == 0
        return await judge.chat(msgs("q"))

    assert asyncio.run(go()).text == "echo: q"
    assert len(inner.calls) == 2 and judge.misses == 2 and judge.hits == 0


def test_concurrent_duplicates_of_a_failing_request_share_its_failure(tmp_path):
    def broken(messages):
        raise JudgeError("down")

    inner = SlowJudge(broken)
    judge = cached(tmp_path, inner)

    async def go():
        return await asyncio.gather(*(judge.chat(msgs("q")) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, JudgeError) for r in results)
    assert len(inner.calls) == 1 and judge.misses == 5 and judge.stored() == 0


def test_a_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "responses.sqlite"
    path.write_bytes(b"definitely not sqlite " * 200)
    with pytest.raises(ResponseCacheError, match="corrupt") as e:
        CachedJudge(ScriptedJudge(echo), path, namespace="ns")
    assert str(path) in str(e.value) and "delete it" in str(e.value) and "--no-cache" in str(e.value)


def test_corruption_found_mid_run_gives_the_same_error(tmp_path):
    path = tmp_path / "responses.sqlite"

    async def fill():
        judge = CachedJudge(ScriptedJudge(lambda m: "x" * 300), path, namespace="ns")
        for i in range(100):
            await judge.chat(msgs(f"q{i}"))
        await judge.aclose()

    asyncio.run(fill())
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # keep the header page, garble the table
    path.write_bytes(bytes(data))
    judge = CachedJudge(ScriptedJudge(echo), path, namespace="ns")
    with pytest.raises(ResponseCacheError, match="corrupt") as e:
        asyncio.run(judge.chat(msgs("q5")))
    assert str(path) in str(e.value) and "--no-cache" in str(e.value)


def test_a_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(ResponseCacheError, match="not an autointerp response cache"):
        CachedJudge(ScriptedJudge(echo), path, namespace="ns")


# -- accounting -----------------------------------------------------------------------------------------


def test_price_table_from_json_and_toml(tmp_path):
    (tmp_path / "p.json").write_text('{"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}')
    (tmp_path / "p.toml").write_text(
        '["gpt-4o-mini"]\nprompt = 0.15\ncompletion = 0.6\n\n[local]\nprompt = 0\ncompletion = 0\n'
    )
    from_json = PriceTable.load(tmp_path / "p.json")
    from_toml = PriceTable.load(tmp_path / "p.toml")
    assert from_json.get("gpt-4o-mini") == from_toml.get("gpt-4o-mini") == Price(0.15, 0.6)
    assert "local" in from_toml and "local" not in from_json


def test_cost():
    prices = PriceTable.from_mapping({"m": {"prompt": 2.0, "completion": 8.0}})
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=250_000, calls=3)
    assert cost(usage, "m", prices) == pytest.approx(4.0)
    assert cost(Usage(), "m", prices) == 0.0
    assert "$4.0000" in describe(usage, "m", prices)


def test_cached_prompt_tokens_cost_their_own_price_or_the_prompt_price():
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=0, calls=3, cached_prompt_tokens=600_000)
    discounted = PriceTable.from_mapping({"m": {"prompt": 2.0, "completion": 8.0, "cached_prompt": 0.5}})
    assert cost(usage, "m", discounted) == pytest.approx(0.4 * 2.0 + 0.6 * 0.5)
    plain = PriceTable.from_mapping({"m": {"prompt": 2.0, "completion": 8.0}})
    assert cost(usage, "m", plain) == pytest.approx(2.0)
    assert "(600,000 cached)" in describe(usage, "m", plain)


def test_stage_costs_per_1000_latents_from_a_results_table():
    import pandas as pd

    from autointerp.llm.accounting import describe_costs, stage_costs

    table = pd.DataFrame(
        {
            "explainer_model": ["e", "e", None],
            "explainer_prompt_tokens": [1000, 3000, None],  # the third latent's label needed no LLM
            "explainer_cached_prompt_tokens": [0, 1000, None],
            "explainer_completion_tokens": [10, 30, None],
            "detection_judge_model": ["j", "j", "j"],
            "detection_prompt_tokens": [300, 300, 600],
            "detection_cached_prompt_tokens": [100, 100, 400],
            "detection_completion_tokens": [3, 3, 3],
            "detection_control_prompt_tokens": [300, 300, 300],
            "detection_control_cached_prompt_tokens": [0, 0, 0],
            "detection_control_completion_tokens": [3, 3, 3],
        }
    )
    prices = PriceTable.from_mapping(
        {"e": {"prompt": 1.0, "completion": 2.0}, "j": {"prompt": 10.0, "completion": 10.0, "cached_prompt": 1.0}}
    )
    costs = {c.stage: c for c in stage_costs(table, prices)}
    assert set(costs) == {"explainer", "detection", "detection_control"}
    e, d = costs["explainer"], costs["detection"]
    assert (e.model, e.latents, d.model, d.latents) == ("e", 2, "j", 3)
    assert (
        e.per_1000(e.usage.computed_prompt_tokens) == 1_500_000 and e.per_1000(e.usage.cached_prompt_tokens) == 500_000
    )
    assert e.usd_per_1000 == pytest.approx((1.5, 0.5, 0.04))
    # detection: 600 uncached, 600 cached, 9 completion tokens over 3 latents
    assert d.usd_per_1000 == pytest.approx((200_000 * 10 / 1e6, 200_000 * 1 / 1e6, 3_000 * 10 / 1e6))
    lines = describe_costs(list(costs.values()), prices)
    assert any(
        line.startswith("  detection (j, 3 latents): 200,000 uncached + 200,000 cached prompt") for line in lines
    )
    total = sum(sum(c.usd_per_1000) for c in costs.values())
    assert lines[-1] == f"  all stages: ${total:.4f} per 1,000 latents"
    assert "no price table given" in describe_costs(stage_costs(table, None), None)[1]


def test_unknown_model_has_no_cost_and_says_so(tmp_path):
    (tmp_path / "p.json").write_text('{"m": {"prompt": 1, "completion": 1}}')
    prices = PriceTable.load(tmp_path / "p.json")
    usage = Usage(prompt_tokens=10, completion_tokens=2, calls=1)
    assert cost(usage, "other", prices) is None
    assert cost(usage, "m", None) is None
    line = describe(usage, "other", prices)
    assert "no price for model 'other'" in line and "p.json" in line and "$" not in line
    assert "no price table" in describe(usage, "m", None)


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("p.json", "{not json", "cannot be parsed"),
        ("p.toml", "[m\nprompt = 1", "cannot be parsed"),
        ("p.json", '{"m": {"prompt": 1}}', "needs the keys"),
        ("p.json", '{"m": {"prompt": 1, "completion": 1, "cache": 0.5}}', "may have 'cached_prompt'"),
        ("p.json", '{"m": {"prompt": -1, "completion": 1}}', ">= 0"),
        ("p.json", '{"m": {"prompt": "1", "completion": 1}}', ">= 0"),
        ("p.json", "[1, 2]", "mapping"),
        ("p.yaml", "m: 1", ".json or .toml"),
    ],
)
def test_bad_price_files_are_refused(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(PriceTableError, match=match):
        PriceTable.load(tmp_path / name)
    assert issubclass(PriceTableError, AutointerpError)


def test_missing_price_file(tmp_path):
    with pytest.raises(PriceTableError, match="price file not found"):
        PriceTable.load(tmp_path / "nope.json")


# ---------------------------------------------------------------- prompt logprobs


def word_scorer(text: str, k: int) -> list[PromptToken]:
    """Tokens at word starts; logprob -len(word)/10; top: the word and "x"."""
    import re

    out = []
    for i, m in enumerate(re.finditer(r"\s*\S+", text)):
        lp = None if i == 0 else -len(m.group()) / 10
        out.append(PromptToken(m.group(), m.start(), lp, {} if lp is None else {m.group(): lp, "x": -9.0}))
    return out


def test_prompt_logprobs_are_cached_and_keyed_apart_from_chat(tmp_path):
    inner = ScriptedJudge(echo, text_scorer=word_scorer)
    judge = cached(tmp_path, inner)
    assert judge.supports_prompt_logprobs and not cached(tmp_path / "b", ScriptedJudge(echo)).supports_prompt_logprobs

    async def go():
        a = await judge.prompt_logprobs("one two three", top_logprobs=2)
        b = await judge.prompt_logprobs("one two three", top_logprobs=2)
        c = await judge.prompt_logprobs("one two three", top_logprobs=5)  # another request
        fresh = cached(tmp_path, ScriptedJudge(echo, text_scorer=word_scorer))
        d = await fresh.prompt_logprobs("one two three", top_logprobs=2)
        await fresh.aclose()
        await judge.aclose()
        return a, b, c, d, fresh

    a, b, c, d, fresh = asyncio.run(go())
    assert a == b == c == d == word_scorer("one two three", 2)
    assert inner.scored_texts == ["one two three", "one two three"]
    assert (judge.hits, judge.misses) == (1, 2) and (fresh.hits, fresh.misses) == (1, 0)
    assert judge.saved.prompt_tokens == 3 and judge.saved.calls == 1
    assert prompt_logprobs_key("ns", "hi", top_logprobs=2) != prompt_logprobs_key(
        "ns", "hi", top_logprobs=2, top_at=[0]
    )
    assert prompt_logprobs_key("ns", "hi", top_logprobs=2, top_at=[3, 0]) == prompt_logprobs_key(
        "ns", "hi", top_logprobs=2, top_at=(0, 3, 3)
    )
    assert prompt_logprobs_key("ns", "hi", top_logprobs=2) != cache_key(
        "ns", msgs("hi"), max_tokens=0, temperature=0.0, logprobs=2, schema=None
    )


def test_prompt_logprobs_from_a_judge_that_cannot_is_a_clear_error(tmp_path):
    judge = cached(tmp_path, ScriptedJudge(echo, model="plain"))
    with pytest.raises(JudgeError, match="plain.*cannot give prompt logprobs"):
        asyncio.run(judge.prompt_logprobs("text"))


def test_prompt_logprobs_top_at_keeps_alternatives_only_there(tmp_path):
    judge = cached(tmp_path, ScriptedJudge(echo, text_scorer=word_scorer))

    async def go():
        try:
            return (
                await judge.prompt_logprobs("one two three", top_logprobs=2, top_at=[3]),
                await judge.prompt_logprobs("one two three", top_logprobs=2, top_at=[3]),
            )
        finally:
            await judge.aclose()

    first, again = asyncio.run(go())
    assert first == again and [bool(t.top) for t in first] == [False, True, False]
    assert [t.logprob for t in first] == [t.logprob for t in word_scorer("one two three", 2)]


def test_a_grammar_reaches_the_inner_judge_and_is_in_the_key(tmp_path):
    class GrammarEcho(ScriptedJudge):
        supports_grammar = True

        def __init__(self):
            super().__init__(echo)
            self.grammars: list[str | None] = []

        async def chat(self, messages, *, grammar=None, **kw):
            self.grammars.append(grammar)
            return await super().chat(messages, **kw)

    inner = GrammarEcho()
    judge = cached(tmp_path, inner)
    assert judge.supports_grammar and not cached(tmp_path, ScriptedJudge(echo)).supports_grammar

    async def go():
        await judge.chat(msgs("hi"), max_tokens=8)
        await judge.chat(msgs("hi"), max_tokens=8, grammar='root ::= "Yes"')
        await judge.chat(msgs("hi"), max_tokens=8, grammar='root ::= "Yes"')
        await judge.chat(msgs("hi"), max_tokens=8, grammar='root ::= "No"')

    asyncio.run(go())
    assert inner.grammars == [None, 'root ::= "Yes"', 'root ::= "No"']
    assert (judge.hits, judge.misses) == (1, 3)
    # a request without a grammar keeps the key it had before grammars existed
    plain = cache_key("ns", msgs("hi"), max_tokens=8, temperature=0, logprobs=0, schema=None)
    assert plain == cache_key("ns", msgs("hi"), max_tokens=8, temperature=0, logprobs=0, schema=None, grammar=None)
