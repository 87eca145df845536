"""The one-example-per-call prompt layouts: what a prefix cache can hold across one latent's calls,
and the worked examples that lengthen the prefix shared by every call of a run."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from helpers.planted import oracle, planted_record

from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Explanation
from autointerp.scorers import ClassifierSettings, DetectionScorer, FuzzingScorer
from autointerp.scorers.classify import CHARS_PER_TOKEN, worked_examples

LABEL = "month names such as March"


def _calls(scorer, label: str = LABEL, record=None) -> list[str]:
    """Each call's chat as one string (roles and contents), in the order sent."""
    record = record or planted_record(n_test=4, n_neg=4)
    judge = ScriptedJudge(oracle)
    asyncio.run(scorer(record, Explanation(record.latent, label, "test"), judge))
    return ["".join(f"<{m['role']}>{m['content']}" for m in c) for c in judge.calls]


@pytest.mark.parametrize("scorer_cls", [DetectionScorer, FuzzingScorer])
def test_question_first_leaves_only_the_excerpt_and_a_short_cue_after_the_shared_prefix(scorer_cls):
    calls = _calls(scorer_cls(ClassifierSettings(mode="logprobs", layout="question_first")))
    shared = os.path.commonprefix(calls)
    # everything constant within the latent is in the shared prefix: instructions, explanation, question
    assert LABEL in shared and "Question:" in shared and shared.rstrip().endswith("<excerpt>")
    for call in calls:
        tail = call[len(shared) :]
        excerpt, cue = tail.split("</excerpt>")
        assert "\n" not in excerpt.strip() and "Explanation" not in excerpt
        assert cue == "\nYes or No?"  # the whole part after the excerpt


@pytest.mark.parametrize("scorer_cls", [DetectionScorer, FuzzingScorer])
def test_question_last_still_asks_after_the_excerpt(scorer_cls):
    calls = _calls(scorer_cls(ClassifierSettings(mode="logprobs", layout="question_last")))
    shared = os.path.commonprefix(calls)
    assert LABEL in shared and "Answer Yes or No" not in shared
    assert all(call.split("</excerpt>")[1].rstrip().endswith("Answer Yes or No.") for call in calls)


@pytest.mark.parametrize("scorer_cls", [DetectionScorer, FuzzingScorer])
def test_worked_examples_lengthen_the_prefix_every_latent_shares(scorer_cls):
    settings = ClassifierSettings(mode="logprobs", layout="question_first", prefix_tokens=1024)
    record = planted_record(n_test=4, n_neg=4)
    judge = ScriptedJudge(oracle)
    scorer = scorer_cls(settings)
    right = asyncio.run(scorer(record, Explanation(record.latent, LABEL, "test"), judge))
    asyncio.run(scorer(record, Explanation(record.latent, "animal names like cat", "test"), judge))
    before = {json.dumps(c[:-1]) for c in judge.calls}  # all but the real question
    assert len(before) == 1  # the same for both labels: a cache holds it across latents
    turns = judge.calls[0][:-1]
    assert turns[0]["role"] == "system" and len(turns) >= 3
    assert [t["role"] for t in turns[1:]] == ["user", "assistant"] * ((len(turns) - 1) // 2)
    assert {t["content"] for t in turns[2::2]} == {"Yes", "No"}
    chars = sum(len(t["content"]) for t in turns)
    assert chars >= CHARS_PER_TOKEN * 1024
    # no more worked examples than it takes to reach the length
    assert chars - len(turns[-2]["content"]) - len(turns[-1]["content"]) < CHARS_PER_TOKEN * 1024
    assert right.metrics["auroc"] == 1.0 and right.n_failed == 0
    # without the setting, only the system prompt comes before the question
    plain = _calls(scorer_cls(ClassifierSettings(mode="logprobs", layout="question_first")))
    assert plain[0].count("<user>") == 1


def test_worked_examples_are_balanced_and_free_of_delimiter_tricks():
    for prompt_dir in ("detection", "fuzzing"):
        shots = worked_examples(prompt_dir)
        answers = [s["answer"] for s in shots]
        assert answers.count("Yes") == answers.count("No") and len(shots) >= 12
        assert not any("<excerpt>" in s["excerpt"] or "</excerpt>" in s["excerpt"] for s in shots)
        if prompt_dir == "fuzzing":
            assert all("<<" in s["excerpt"] and ">>" in s["excerpt"] for s in shots)
