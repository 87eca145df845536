"""Best-of-n: the best label on the validation split wins, and the test split is never looked at."""

from __future__ import annotations

import asyncio

import pytest
from helpers.planted import oracle, planted_record

from autointerp.explainers import ExplainerSettings, ExplanationFailed
from autointerp.llm.scripted import ScriptedJudge
from autointerp.scorers import DetectionScorer
from autointerp.selection import best_of_n


class SamplingExplainer(ScriptedJudge):
    """Answers the deterministic call with a wrong label and samples with the right one."""

    def __init__(self, greedy: str, sample: str):
        super().__init__(lambda m: "")
        self.greedy, self.sample = greedy, sample
        self.temperatures: list[float] = []

    async def chat(self, messages, **kw):
        self.temperatures.append(kw.get("temperature", 0.0))
        self.responder = lambda m: f"[EXPLANATION]: {self.greedy if kw.get('temperature', 0.0) == 0 else self.sample}"
        return await super().chat(messages, **kw)


def test_the_better_sampled_label_wins_on_validation_only():
    record = planted_record(n_val=10)
    explainer = SamplingExplainer("animal names", "month names")
    judge = ScriptedJudge(oracle)
    chosen, candidates = asyncio.run(
        best_of_n(record, explainer, judge, DetectionScorer(), ExplainerSettings(style="excerpts", best_of=3))
    )
    assert chosen.text == "month names"
    assert sorted(explainer.temperatures) == [0.0, 0.7, 0.7]
    by_text = {c.text: c.score for c in candidates}
    assert by_text["month names"] > by_text["animal names"]
    seen = {m[-1]["content"] for m in judge.calls}
    test_texts = {e.text for e in record.test + record.negatives}
    assert not any(any(t in s for t in test_texts) for s in seen)  # only validation excerpts were judged
    assert chosen.usage.calls == 3 + len(judge.calls)


def test_the_deterministic_label_is_kept_when_it_is_best():
    record = planted_record(n_val=10)
    chosen, candidates = asyncio.run(
        best_of_n(
            record,
            SamplingExplainer("month names", "animal names"),
            ScriptedJudge(oracle),
            DetectionScorer(),
            ExplainerSettings(style="excerpts", best_of=2),
        )
    )
    assert chosen.text == "month names" and len(candidates) == 2


def test_identical_samples_cost_no_rating_calls():
    judge = ScriptedJudge(oracle)
    explainer = SamplingExplainer("month names", "month names")
    chosen, candidates = asyncio.run(
        best_of_n(
            planted_record(n_val=10),
            explainer,
            judge,
            DetectionScorer(),
            ExplainerSettings(style="excerpts", best_of=4),
        )
    )
    assert chosen.text == "month names" and len(candidates) == 1 and not judge.calls


def test_no_validation_examples_is_a_clear_failure():
    with pytest.raises(ExplanationFailed, match="validation"):
        asyncio.run(
            best_of_n(
                planted_record(n_val=0),
                SamplingExplainer("a", "b"),
                ScriptedJudge(oracle),
                DetectionScorer(),
                ExplainerSettings(style="excerpts", best_of=2),
            )
        )


def test_the_pipeline_records_candidates_and_validation_windows(tmp_path, tiny_cache):
    from helpers.planted import yes_no
    from helpers.tiny_subjects import decode_ids

    from autointerp.config import RunConfig
    from autointerp.pipeline import LatentWorker, RunSummary, process_latents, select_latents
    from autointerp.results import RunFiles
    from autointerp.sampling import Sampler, SamplingSettings

    config = RunConfig(
        sampling=SamplingSettings(
            n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, n_validation=6, min_examples=10
        ),
        explain=ExplainerSettings(style="excerpts", best_of=2),
        max_latents=2,
    )
    files = RunFiles(tmp_path / "run")
    files.prepare()
    latents, _ = select_latents(tiny_cache, config)
    worker = LatentWorker(
        files,
        config,
        Sampler(tiny_cache, decode_ids, config.sampling),
        SamplingExplainer("tokens t1", "tokens t2"),
        ScriptedJudge(lambda m: yes_no(0.6)),
        [DetectionScorer()],
        {"explain", "score"},
        RunSummary(),
        chooser=DetectionScorer(),
    )
    asyncio.run(process_latents(latents, worker, progress=False))
    for row in files.explanations_by_latent().values():
        assert row.status == "ok", row.error
        assert row.chosen_by == "detection" and row.candidates is not None and len(row.candidates) == 2
        assert row.validation_windows and not set(row.validation_windows) & set(row.train_windows or [])
