"""Detection and fuzzing: the right explanation of a planted latent beats a wrong one, and judge
answers that cannot be read are counted as failures, never as answers."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from helpers.planted import MONTHS, oracle, planted_record, yes_no

from autointerp.llm.base import CUT_OFF, JudgeError, Reply
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Explanation
from autointerp.scorers import ClassifierSettings, DetectionScorer, FuzzingScorer
from autointerp.scorers.classify import parse_json_answers


def _score(scorer, record, text, judge):
    return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), judge))


@pytest.mark.parametrize(
    "scorer",
    [DetectionScorer(), FuzzingScorer(), FuzzingScorer(negatives="misplaced")],
    ids=["detection", "fuzzing", "fuzzing-misplaced"],
)
def test_right_explanation_beats_wrong_one(scorer):
    record = planted_record()
    judge = ScriptedJudge(oracle)
    right = _score(scorer, record, "month names such as March", judge)
    wrong = _score(scorer, record, "animal names like cat", judge)
    assert right.metrics["balanced_accuracy"] == 1.0 and right.metrics["auroc"] == 1.0
    assert wrong.metrics["balanced_accuracy"] <= 0.55
    assert right.n_failed == wrong.n_failed == 0
    misplaced = getattr(scorer, "negatives", "silent") == "misplaced"
    assert right.n_examples == len(record.test) + (len(record.test) if misplaced else len(record.negatives))


@pytest.mark.parametrize(
    "scorer", [DetectionScorer(), FuzzingScorer(negatives="misplaced")], ids=["detection", "fuzzing"]
)
def test_accuracy_per_activation_quantile_matches_the_judgments(scorer):
    """A judge that only sees the strong activations: the accuracy rises with the quantile."""
    record = planted_record(n_test=30)

    quantile = {e.text: e.quantile for e in record.test} | {e.text: -1 for e in record.negatives}

    def sees_strong_ones(messages):
        excerpt = re.search(r"<excerpt>\n(.*)\n</excerpt>", messages[-1]["content"], re.DOTALL).group(1)
        marked = re.findall(r"<<(.*?)>>", excerpt)  # fuzzing's wrong marks carry no month
        right_marks = all(any(m in span for m in MONTHS) for span in marked)
        return yes_no(0.9 if quantile[excerpt.replace("<<", "").replace(">>", "")] >= 5 and right_marks else 0.1)

    score = _score(scorer, record, "month names", ScriptedJudge(sees_strong_ones))
    quantiles = [score.metrics[f"quantile_accuracy_{q}"] for q in range(10)]
    assert quantiles == [0.0] * 5 + [1.0] * 5
    silent = [j for j in score.judgments if not j.activating]
    assert score.metrics["negative_accuracy"] == sum(not j.prediction for j in silent) / len(silent)
    for q in range(10):  # recomputed from the recorded judgments
        mine = [j for j in score.judgments if j.activating and j.quantile == q]
        assert score.metrics[f"quantile_accuracy_{q}"] == sum(bool(j.prediction) for j in mine) / len(mine)


def test_detection_shows_plain_text_and_fuzzing_marks_tokens():
    record = planted_record()
    det, fuzz = ScriptedJudge(oracle), ScriptedJudge(oracle)
    _score(DetectionScorer(), record, "month names", det)
    _score(FuzzingScorer(), record, "month names", fuzz)
    assert not any("<<" in c[-1]["content"] for c in det.calls)
    assert sum("<<" in c[-1]["content"] for c in fuzz.calls) == len(record.test) + len(record.negatives)


def test_every_prompt_of_a_latent_shares_its_prefix():
    record = planted_record()
    judge = ScriptedJudge(oracle)
    _score(DetectionScorer(), record, "month names", judge)
    prefixes = {(c[0]["content"], c[-1]["content"].split("<excerpt>")[0]) for c in judge.calls}
    assert len(prefixes) == 1


def test_unreadable_answers_are_failures_not_predictions():
    record = planted_record()
    calls = {"n": 0}

    def flaky(messages):
        calls["n"] += 1
        if "council" in messages[-1]["content"]:
            return "I cannot say."  # no logprobs, no Yes/No
        return oracle(messages)

    judge = ScriptedJudge(flaky)
    score = _score(DetectionScorer(ClassifierSettings(max_reasks=1)), record, "month names", judge)
    n_bad = sum("council" in j.text for j in score.judgments)
    assert n_bad > 0
    assert score.n_failed == n_bad
    failed = [j for j in score.judgments if j.prediction is None]
    assert len(failed) == n_bad and all(j.probability is None and j.error for j in failed)
    # the failures were re-asked once each, then given up
    assert calls["n"] == len(score.judgments) + n_bad
    # metrics come from the answered items only: still perfect, not dragged down by fake zeros
    assert score.metrics["balanced_accuracy"] == 1.0


def test_backend_errors_are_failures_too():
    record = planted_record(n_test=4, n_neg=4)

    def broken(messages):
        raise JudgeError("connection reset")

    score = _score(DetectionScorer(), record, "month names", ScriptedJudge(broken))
    assert score.n_failed == 8 and score.metrics["balanced_accuracy"] is None
    assert all("connection reset" in j.error for j in score.judgments)


def test_reask_recovers_a_bad_first_answer():
    record = planted_record(n_test=5, n_neg=5)
    seen: set[str] = set()

    def first_garbage(messages):
        key = messages[-1]["content"]
        if key not in seen:
            seen.add(key)
            return "hmm"
        return oracle(messages)

    scorer = DetectionScorer(ClassifierSettings(mode="auto", max_reasks=1))
    score = _score(scorer, record, "month", ScriptedJudge(first_garbage))
    assert score.n_failed == 0 and score.metrics["balanced_accuracy"] == 1.0


def test_text_mode_for_judges_without_logprobs():
    record = planted_record()
    judge = ScriptedJudge(lambda m: oracle(m).text, supports_logprobs=False)
    score = _score(DetectionScorer(), record, "month names", judge)
    assert score.metrics["balanced_accuracy"] == 1.0 and score.metrics["auroc"] is None


def test_json_mode_batches_and_isolates_a_bad_batch():
    record = planted_record(n_test=10, n_neg=10)
    batches = {"n": 0}

    def batch_oracle(messages):
        batches["n"] += 1
        user = messages[-1]["content"]
        explanation = re.search(r"Explanation of the feature: (.*)", user).group(1)
        excerpts = re.findall(r"<excerpt>(.*?)</excerpt>", user)
        if batches["n"] == 1:
            return "[1, 0"  # truncated JSON, every time it is asked
        answers = [
            int(
                oracle(
                    [
                        {
                            "role": "user",
                            "content": f"Explanation of the feature: {explanation}\n<excerpt>\n{e}\n</excerpt>",
                        }
                    ]
                ).text
                == "Yes"
            )
            for e in excerpts
        ]
        return json.dumps({"answers": answers})

    settings = ClassifierSettings(mode="json", batch_size=5, max_reasks=0)
    judge = ScriptedJudge(batch_oracle, supports_logprobs=False)
    score = _score(DetectionScorer(settings), record, "month names", judge)
    assert batches["n"] == 4
    assert score.n_failed == 5
    assert score.metrics["balanced_accuracy"] == 1.0


def test_text_mode_reads_a_first_word_the_limit_left_whole_and_no_other():
    record = planted_record()
    # a chatty judge that the few-token limit cuts: its first word ended before the cut, and counts
    chatty = ScriptedJudge(
        lambda m: Reply(oracle(m).text + ", because the excerpt", finish_reason="length"), supports_logprobs=False
    )
    score = _score(DetectionScorer(), record, "month names", chatty)
    assert score.n_failed == 0 and score.metrics["balanced_accuracy"] == 1.0
    # cut right after its first word, the answer may have gone on ("No" -> "Nothing here"): not read
    cut = ScriptedJudge(lambda m: Reply(oracle(m).text, finish_reason="length"), supports_logprobs=False)
    score = _score(DetectionScorer(ClassifierSettings(max_reasks=1)), record, "month names", cut)
    assert score.n_failed == score.n_examples and len(cut.calls) == 2 * score.n_examples  # each re-asked once
    assert {j.error for j in score.judgments} == {CUT_OFF}


def test_json_mode_refuses_a_list_the_limit_cut_off():
    # the judge was revising its list when max_tokens stopped it: the list that parses is not its answer
    judge = ScriptedJudge(
        lambda m: Reply("[1, 0, 1, 1, 0]\nWait, excerpt 3 is not about", finish_reason="length"),
        supports_logprobs=False,
    )
    settings = ClassifierSettings(mode="json", batch_size=5, max_reasks=1)
    score = _score(DetectionScorer(settings), planted_record(n_test=5, n_neg=5), "month names", judge)
    assert score.n_failed == 10 and len(judge.calls) == 4
    assert {j.error for j in score.judgments} == {CUT_OFF} and all(j.prediction is None for j in score.judgments)


def test_parse_json_answers():
    assert parse_json_answers('{"answers": [1, 0, 1]}', 3) == [True, False, True]
    assert parse_json_answers("```json\n[0, 1]\n```", 2) == [False, True]
    assert parse_json_answers('{"answers": [1, 0]}', 3) is None
    assert parse_json_answers('{"answers": [1, 2, 0]}', 3) is None
    assert parse_json_answers("yes", 1) is None


def test_logprobs_give_auroc_that_tracks_confidence():
    record = planted_record()

    def graded(messages):
        # a judge that is right but barely sure still ranks perfectly
        return yes_no(0.6 if oracle(messages).text == "Yes" else 0.45)

    score = _score(DetectionScorer(), record, "month names", ScriptedJudge(graded))
    assert score.metrics["auroc"] == 1.0 and score.metrics["balanced_accuracy"] == 1.0
