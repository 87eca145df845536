"""The names-style phrase check: a phrase the judge denies for most of its tokens is dropped, one it
affirms is kept, and nothing else about a label changes."""

from __future__ import annotations

import asyncio
import re

from helpers.planted import PHRASE_QUESTION, oracle_explainer, phrase_oracle, planted_record, yes_no

from autointerp.explainers import ExplainerSettings, explain
from autointerp.label_check import skipped_note
from autointerp.llm.base import Message, Reply
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import ExplanationRow


def naming(phrase: str):
    """An explainer that names every token list `phrase` and answers the check as the oracle does."""

    def respond(messages: list[Message]) -> str | Reply:
        if PHRASE_QUESTION.search(messages[-1]["content"]):
            return phrase_oracle(messages)
        return '{"feature": "' + phrase + '"}'

    return respond


def listed(text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)


def test_a_phrase_the_judge_denies_for_most_tokens_falls_back_to_the_token_list():
    record = planted_record()
    judge = ScriptedJudge(naming("animal names"))  # a wrong phrase for a latent of month names
    label = asyncio.run(explain(record, judge, ExplainerSettings(style="names")))
    assert label.text.startswith("the tokens ") and "animal" not in label.text
    check = label.phrase_check
    assert check is not None and check["phrase"] == "animal names" and not check["kept"]
    assert check["tokens"] == listed(label.text) and len(check["tokens"]) == ExplainerSettings().names_examples
    assert all(p < 0.5 for p in check["p_yes"]) and check["share"] == 0
    # one short call per listed token, after the naming call, each counted in the label's usage
    asked = [c for c in judge.calls if PHRASE_QUESTION.search(c[-1]["content"])]
    assert len(asked) == len(check["tokens"]) and label.usage.calls == 1 + len(asked)


def test_a_phrase_the_judge_affirms_is_kept_with_what_was_checked():
    label = asyncio.run(explain(planted_record(), ScriptedJudge(oracle_explainer), ExplainerSettings(style="names")))
    phrase, _ = label.text.split(", such as ")
    assert phrase == "month names"
    check = label.phrase_check
    assert check is not None and check["kept"] and check["share"] == 1 and all(p > 0.5 for p in check["p_yes"])


def test_the_share_of_instances_a_phrase_needs_is_a_setting():
    record = planted_record()
    first = {}

    def two_of_three(messages: list[Message]) -> str | Reply:
        user = messages[-1]["content"]
        if not PHRASE_QUESTION.search(user):
            return '{"feature": "month names"}'
        token = PHRASE_QUESTION.search(user).group(1)
        first.setdefault("token", token)
        return yes_no(0.1 if token == first["token"] else 0.9)  # the first token asked about is denied

    for share, kept in ((0.6, True), (1.0, False)):
        first.clear()
        settings = ExplainerSettings(style="names", phrase_check_share=share)
        label = asyncio.run(explain(record, ScriptedJudge(two_of_three), settings))
        assert label.phrase_check is not None and label.phrase_check["kept"] is kept
        assert label.text.startswith("month names, such as ") is kept


def test_labels_with_no_listed_token_and_other_styles_are_left_as_they_are():
    record = planted_record()
    judge = ScriptedJudge(oracle_explainer)
    # no token recurs in enough examples: the label is the phrase alone, with nothing to check it against
    alone = asyncio.run(explain(record, judge, ExplainerSettings(style="names", tokens_min_examples=1000)))
    assert alone.text == "month names" and alone.phrase_check is None and len(judge.calls) == 1
    judge = ScriptedJudge(oracle_explainer)
    excerpts = asyncio.run(explain(record, judge, ExplainerSettings(style="excerpts")))
    assert excerpts.text == "month names" and excerpts.phrase_check is None and len(judge.calls) == 1
    judge = ScriptedJudge(naming("animal names"))
    off = asyncio.run(explain(record, judge, ExplainerSettings(style="names", phrase_check=False)))
    assert off.text.startswith("animal names, such as ") and off.phrase_check is None and len(judge.calls) == 1


def test_a_judge_without_logprobs_skips_the_check_and_the_run_says_so_once():
    judge = ScriptedJudge(naming("animal names"), supports_logprobs=False)
    settings = ExplainerSettings(style="names")
    label = asyncio.run(explain(planted_record(), judge, settings))
    assert label.text.startswith("animal names, such as ") and label.phrase_check is None and len(judge.calls) == 1
    note = skipped_note(settings, judge)
    assert note is not None and "no logprobs" in note
    assert skipped_note(settings, ScriptedJudge(naming("x"))) is None  # a judge with logprobs: nothing to say
    assert skipped_note(ExplainerSettings(style="names", phrase_check=False), judge) is None


def test_an_explanation_row_keeps_the_check_and_an_old_row_still_loads():
    check = {"phrase": "p", "tokens": ["a"], "p_yes": [0.2], "min_p": 0.8, "min_share": 1, "kept": False, "share": 0}
    row = ExplanationRow(latent=3, hookpoint="h", status="ok", explanation='the token "a"', phrase_check=check)
    assert ExplanationRow.from_json(row.to_json()).phrase_check == check
    old = {k: v for k, v in row.to_json().items() if k != "phrase_check"}
    assert ExplanationRow.from_json(old).phrase_check is None
