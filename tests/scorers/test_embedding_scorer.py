"""The embedding scorer: explanation as a retrieval query, cosine to each held-out excerpt, AUROC.

The fast tests use a bag-of-words embedder; the slow one checks, with the real all-MiniLM-L6-v2,
that the right explanation of the planted month latent beats wrong ones.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers.fake_embedder import fake_embedder
from helpers.planted import ANIMALS, MONTHS, planted_record

from autointerp.prompting import load_prompt
from autointerp.records import Explanation
from autointerp.scorers import EmbeddingScorer, scorer_class, scorer_metrics


def _score(scorer, record, text, judge=None):
    return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), judge))


def test_right_explanation_beats_wrong_one_with_word_overlap():
    record = planted_record()
    scorer = EmbeddingScorer(fake_embedder())
    right = _score(scorer, record, "month names: " + " ".join(MONTHS))
    wrong = _score(scorer, record, "animal names: " + " ".join(ANIMALS))
    assert right.metrics["auroc"] > 0.65 > 0.1 > wrong.metrics["auroc"]
    assert right.metrics["similarity_gap"] > 0 > wrong.metrics["similarity_gap"]
    assert right.metrics["r_precision"] > wrong.metrics["r_precision"]


def test_score_shape_judgments_and_no_judge_needed():
    record = planted_record()
    emb = fake_embedder()
    scorer = EmbeddingScorer(emb)
    score = _score(scorer, record, "month names", judge=None)
    assert set(score.metrics) == set(EmbeddingScorer.metrics) and scorer_metrics("embedding")[0] == "auroc"
    assert scorer_class("embedding") is EmbeddingScorer and not EmbeddingScorer.needs_judge
    scorer.check_judge(None)  # refuses no judge: it asks none
    assert score.n_examples == len(record.test) + len(record.negatives) and score.n_failed == 0
    assert score.usage.calls == 0 and scorer.judge_model(None) == emb.name
    js = score.judgments
    assert [j.window for j in js] == [e.window for e in record.test + record.negatives]
    assert sum(j.activating for j in js) == len(record.test)
    assert sum(j.prediction for j in js) == len(record.test)  # the top-R rule
    sims = [j.value for j in js]
    assert all(-1.0 <= s <= 1.0 for s in sims)
    top = sorted(range(len(js)), key=lambda i: -sims[i])[: len(record.test)]
    assert {i for i, j in enumerate(js) if j.prediction} == set(top)
    assert all(j.probability is None and j.text for j in js)


def test_query_comes_from_the_prompt_file_and_examples_are_embedded_once():
    record = planted_record()
    texts: list[list[str]] = []
    emb = fake_embedder()
    inner = emb._load

    def spy():
        encode = inner()
        return lambda batch: texts.append(list(batch)) or encode(batch)

    emb._load = spy
    scorer = EmbeddingScorer(emb)
    _score(scorer, record, "month names")
    template = load_prompt("embedding/query.md")
    assert texts[0][0] == template.replace("{{explanation}}", "month names")
    assert texts[0][0].startswith("Retrieve sentences that could be related to the explanation: ")
    _score(scorer, record, "animal names")
    assert texts[-1] == [template.replace("{{explanation}}", "animal names")]  # only the new query


@pytest.mark.slow
def test_real_minilm_ranks_the_right_explanation_first():
    record = planted_record()
    scorer = EmbeddingScorer()  # the bundled all-MiniLM-L6-v2, loaded offline
    right = _score(scorer, record, "month names such as January or March")
    wrongs = [_score(scorer, record, text) for text in ("animal names like cat and dog", "punctuation and commas")]
    assert scorer.judge_model(None) == "sentence-transformers/all-MiniLM-L6-v2"
    assert right.metrics["auroc"] >= 0.8, right.metrics
    for wrong in wrongs:
        assert right.metrics["auroc"] > wrong.metrics["auroc"] + 0.3, (right.metrics, wrong.metrics)
        assert right.metrics["similarity_gap"] > wrong.metrics["similarity_gap"]
