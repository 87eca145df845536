"""Scorers with the real embedded judge (Qwen2.5-Coder-1.5B through llama.cpp) on a planted latent:
the right explanation must beat a wrong one by a wide margin, with every answer readable."""

from __future__ import annotations

import asyncio

import pytest
from helpers.planted import planted_record

from autointerp.records import Explanation
from autointerp.scorers import DetectionScorer, FuzzingScorer


@pytest.fixture(scope="module")
def qwen():
    from autointerp.llm.local import load_local_judge

    judge = load_local_judge("qwen2.5-coder-1.5b", n_ctx=2048)
    yield judge
    asyncio.run(judge.aclose())


@pytest.mark.slow
@pytest.mark.parametrize("scorer", [DetectionScorer(), FuzzingScorer()], ids=["detection", "fuzzing"])
def test_right_explanation_beats_wrong_with_a_real_judge(qwen, scorer):
    record = planted_record(n_test=10, n_neg=10, seed=1)

    def score(text):
        return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), qwen))

    right = score("names of calendar months, such as March or October")
    wrong = score("names of animals, such as cat or dog")
    assert right.n_failed == 0 and wrong.n_failed == 0
    assert right.metrics["auroc"] >= 0.7, right.metrics
    assert right.metrics["auroc"] > wrong.metrics["auroc"] + 0.3, (right.metrics, wrong.metrics)
    assert right.metrics["balanced_accuracy"] > wrong.metrics["balanced_accuracy"], (right.metrics, wrong.metrics)


@pytest.mark.slow
def test_simulation_and_surprisal_with_a_real_judge(qwen):
    """Both read prompt logprobs of the real judge: slots and example tokens are found by offsets."""
    from autointerp.scorers import SimulationScorer, SurprisalScorer

    record = planted_record(n_test=6, n_neg=6, seed=1)

    def score(scorer, text):
        return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), qwen))

    for scorer, metric, margin in ((SimulationScorer(), "correlation", 0.3), (SurprisalScorer(), "auroc", 0.3)):
        right = score(scorer, "names of calendar months, such as March or October")
        wrong = score(scorer, "names of animals, such as cat or dog")
        assert right.n_failed == 0 and wrong.n_failed == 0
        assert right.metrics[metric] > wrong.metrics[metric] + margin, (scorer.name, right.metrics, wrong.metrics)


@pytest.mark.slow
def test_the_phrase_check_keeps_a_right_phrase_and_drops_a_wrong_one_with_a_real_judge(qwen):
    """The names-style phrase check with the real judge: months are month names, and not animal names."""
    from autointerp.label_check import check_phrase
    from autointerp.records import Usage

    def check(phrase):
        tokens = ["March", "June"]
        return asyncio.run(check_phrase(qwen, phrase, tokens, min_p=0.8, min_share=1.0, usage=Usage()))

    right, wrong = check("month names"), check("animal names")
    assert right is not None and wrong is not None
    assert right.kept and not wrong.kept, (right, wrong)
    assert min(right.p_yes) > max(wrong.p_yes) + 0.3, (right.p_yes, wrong.p_yes)
