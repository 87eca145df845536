"""Intruder: with a judge that reads like a person, a coherent latent's intruders are found and a random mix
of windows' are not; the score ignores the label, its control is a random pick, and unreadable answers are
failures, never picks."""

from __future__ import annotations

import asyncio
import math
import re

import numpy as np
import pytest
from helpers.planted import ANIMALS, CATEGORIES, FILLER, MONTHS, planted_record
from helpers.report_fixtures import SAMPLING, write_word_tokenizer
from helpers.tiny_subjects import build_tiny_cache

from autointerp.cli import build_parser, config_from_args
from autointerp.config import ConfigError, RunConfig
from autointerp.llm.base import CUT_OFF, Message, Reply, TokenLogprob
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Example, Explanation, LatentRecord, Score
from autointerp.results import RunFiles, materialize
from autointerp.scorers import UnfitJudge
from autointerp.scorers.base import ScorerContext
from autointerp.scorers.intruder import IntruderScorer, IntruderSettings, named_number
from autointerp.scorers.registry import build_scorers, check_config, scorer_classes
from autointerp.stages.latent_stages import latent_stages


def _excerpts(messages: list[Message]) -> list[str]:
    return re.findall(r"Excerpt \d+:\n<excerpt>\n(.*?)\n</excerpt>", messages[-1]["content"], re.DOTALL)


def reader_pick(excerpts: list[str]) -> list[float]:
    """What a reader would answer: if one kind of word (months, animals) is in all excerpts but one (in
    their marked tokens, where they have marks), that one is the intruder, said with confidence; with no
    such kind, an unsure, even guess."""
    n = len(excerpts)
    read = [" ".join(re.findall(r"<<(.*?)>>", e)) or e for e in excerpts]
    for words in CATEGORIES.values():
        has = [any(re.search(rf"\b{w}\b", e) for w in words) for e in read]
        if sum(has) == n - 1:
            odd = has.index(False)
            return [0.85 if k == odd else 0.15 / (n - 1) for k in range(n)]
    return [1 / n] * n


def reader(messages: list[Message]) -> Reply:
    """The reader as a judge: the likeliest number as the answer, and every number's logprob."""
    probabilities = reader_pick(_excerpts(messages))
    top = {str(k + 1): math.log(p) for k, p in enumerate(probabilities)}
    top["The"] = math.log(1e-4)
    best = str(int(np.argmax(probabilities)) + 1)
    return Reply(text=best, logprobs=[TokenLogprob(token=best, logprob=top[best], top=top)])


def mixed_record(seed: int = 0, n_test: int = 20, n_neg: int = 20) -> LatentRecord:
    """A latent with no meaning: it "fires" on a random mix of windows, months, animals and filler alike."""
    rng = np.random.default_rng(seed)
    coherent = planted_record(n_test=n_test, n_neg=n_neg, seed=seed)

    def window(i: int, active: bool) -> Example:
        pool = [MONTHS, ANIMALS, FILLER][int(rng.integers(3))]
        words = list(rng.choice(FILLER, size=12))
        pos = int(rng.integers(1, 12))
        words[pos] = str(rng.choice(pool))
        tokens = [(" " if k else "") + w for k, w in enumerate(words)]
        acts = [2.0 if active and k == pos else 0.0 for k in range(12)]
        return Example(window=1000 + i, tokens=list(range(12)), str_tokens=tokens, activations=acts)

    coherent.test = [window(i, True) for i in range(n_test)]
    coherent.negatives = [window(100 + i, False) for i in range(n_neg)]
    return coherent


def _score(scorer: IntruderScorer, record: LatentRecord, judge: ScriptedJudge, label: str = "month names") -> Score:
    return asyncio.run(scorer(record, Explanation(record.latent, label, "test"), judge))


@pytest.mark.parametrize("marks", [True, False], ids=["marked", "plain"])
def test_a_coherent_latent_scores_above_a_random_mix_and_above_chance(marks):
    scorer = IntruderScorer(IntruderSettings(n_questions=20, marks=marks))
    coherent = [_score(scorer, planted_record(seed=s), ScriptedJudge(reader)) for s in range(3)]
    mixed = [_score(scorer, mixed_record(seed=s), ScriptedJudge(reader)) for s in range(3)]
    chance = 1 / (scorer.settings.n_shown + 1)
    for score in coherent:
        assert score.metrics["accuracy"] == 1.0 and score.metrics["p_correct"] == pytest.approx(0.85)
        assert score.n_examples == 20 and score.n_failed == 0
    mean = {
        name: float(np.mean([s.metrics[m] for s in scores]))
        for name, scores in (("coherent", coherent), ("mixed", mixed))
        for m in ("accuracy",)
    }
    p_mixed = float(np.mean([s.metrics["p_correct"] for s in mixed]))
    assert mean["mixed"] < 0.5 and mean["coherent"] - mean["mixed"] > 0.5
    assert abs(p_mixed - chance) < 0.15


def test_each_question_shows_the_latents_excerpts_and_one_silent_one_and_the_label_plays_no_part():
    record = planted_record()
    scorer = IntruderScorer(IntruderSettings(n_shown=3, n_questions=6))
    judge = ScriptedJudge(reader)
    score = _score(scorer, record, judge)
    assert len(judge.calls) == 6
    own = {e.window for e in record.test}
    silent = {e.window for e in record.negatives}
    for question in range(6):
        rows = [j for j in score.judgments if j.value == question]
        assert len(rows) == 4 and sum(not j.activating for j in rows) == 1
        assert {j.window for j in rows if j.activating} <= own and {
            j.window for j in rows if not j.activating
        } <= silent
        picked = [j for j in rows if j.prediction is False]
        assert len(picked) == 1 and not picked[0].activating  # the reader found it
    for call in judge.calls:  # no label anywhere in what the judge reads
        assert "month" not in " ".join(m["content"] for m in call).lower()
    # each activating excerpt is used once before any is used twice
    shown = [j.window for j in score.judgments if j.activating]
    assert len(shown) == len(set(shown)) == 18
    again = _score(scorer, record, ScriptedJudge(reader), label="animal names")
    assert again.metrics == score.metrics and again.judgments == score.judgments


def test_every_excerpt_is_marked_and_the_intruder_as_much_as_the_others_on_random_tokens():
    record = planted_record()  # one month token marked per activating window
    questions = IntruderScorer(IntruderSettings(n_questions=8)).questions(record)
    for q in questions:
        marked = [re.findall(r"<<(.*?)>>", text) for text in q.texts]
        assert all(len(m) == 1 for m in marked)
        assert all(m[0] in MONTHS for k, m in enumerate(marked) if k != q.intruder)
        assert marked[q.intruder][0] not in MONTHS
    plain = IntruderScorer(IntruderSettings(n_questions=8, marks=False)).questions(record)
    assert not any("<<" in text for q in plain for text in q.texts)


def test_no_question_shows_an_excerpt_twice_when_excerpts_are_reused():
    record = planted_record(n_test=6)  # 10 questions of 4 need 40 excerpts: each is shown about 7 times
    questions = IntruderScorer(IntruderSettings(n_questions=10)).questions(record)
    assert len(questions) == 10
    for q in questions:
        windows = [e.window for e in q.excerpts]
        assert len(set(windows)) == len(windows) == 5
    counts = [sum(e.window == t.window for q in questions for e in q.excerpts) for t in record.test]
    assert max(counts) - min(counts) <= 1  # used evenly


def test_the_control_is_a_random_pick_that_asks_no_judge():
    record = planted_record()
    scorer = IntruderScorer(IntruderSettings(n_questions=50))
    judge = ScriptedJudge(reader)
    control = asyncio.run(scorer.control(record, Explanation(record.latent, "animal names", "test"), judge))
    assert judge.calls == [] and control.usage.calls == 0
    assert control.metrics["p_correct"] == pytest.approx(1 / 5)
    assert 0.05 <= control.metrics["accuracy"] <= 0.4  # 50 random picks among 5: about 0.2
    real = _score(scorer, record, judge)
    assert real.metrics["accuracy"] > control.metrics["accuracy"]
    again = asyncio.run(scorer.control(record, Explanation(record.latent, "x", "test"), judge))
    assert again.metrics == control.metrics  # seeded


def test_text_answers_are_read_and_unreadable_ones_are_failures():
    record = planted_record()
    settings = IntruderSettings(n_questions=5, max_reasks=1)

    def in_words(messages):
        probabilities = reader_pick(_excerpts(messages))
        return f"Excerpt {int(np.argmax(probabilities)) + 1}"

    score = _score(IntruderScorer(settings), record, ScriptedJudge(in_words, supports_logprobs=False))
    assert score.metrics["accuracy"] == 1.0 and score.metrics["p_correct"] is None and score.n_failed == 0
    answers = iter(["I think", "7", "2", "2", "2", "2", "2"])  # the first question fails twice (7 of 5 is no excerpt)
    judge = ScriptedJudge(lambda m: next(answers), supports_logprobs=False)
    score = _score(IntruderScorer(settings), record, judge)
    assert score.n_failed == 1 and score.n_examples == 5
    failed = [j for j in score.judgments if j.prediction is None]
    assert len(failed) == 5 and all("names no excerpt" in j.error for j in failed)
    cut = ScriptedJudge(lambda m: Reply(text="Excer", finish_reason="length"), supports_logprobs=False)
    score = _score(IntruderScorer(IntruderSettings(n_questions=2, max_reasks=0)), record, cut)
    assert score.n_failed == 2 and {j.error for j in score.judgments} == {CUT_OFF}
    assert [named_number(t, 5) for t in ("3", " #2.", "Excerpt 5", "6", "none")] == [3, 2, 5, None, None]


def test_a_record_too_small_for_a_question_scores_nothing_and_logprobs_mode_needs_logprobs():
    record = planted_record(n_test=2)
    score = _score(IntruderScorer(), record, ScriptedJudge(reader))
    assert score.n_examples == 0 and score.metrics == {"accuracy": None, "p_correct": None}
    with pytest.raises(UnfitJudge, match="gives no logprobs"):
        IntruderScorer(IntruderSettings(mode="logprobs")).check_judge(ScriptedJudge(reader, supports_logprobs=False))


def test_the_intruder_is_one_registered_file_with_its_own_options():
    assert "intruder" in scorer_classes() and not scorer_classes()["intruder"].can_pick_best_of
    args = build_parser().parse_args(
        ["score", "--out", "x", "--scorers", "intruder", "--intruder-shown", "3", "--intruder-mode", "text"]
        + ["--intruder-plain"]
    )
    config, explicit = config_from_args(args)
    assert {"scoring.intruder.n_shown", "scoring.intruder.mode", "scoring.intruder.marks"} <= explicit
    check_config(config)
    (scorer,) = build_scorers(["intruder"], config, ScorerContext())
    assert isinstance(scorer, IntruderScorer) and (scorer.settings.n_shown, scorer.settings.mode) == (3, "text")
    assert scorer.settings.marks is False
    with pytest.raises(ConfigError, match="--intruder-shown must be at most 8"):
        check_config(RunConfig(scoring={"intruder": {"n_shown": 9}}))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--out", "x", "--intruder-mode", "json"])


def test_a_run_scores_the_intruder_and_its_random_pick_control(tmp_path, tiny_llama):
    """Through the run: the control pass asks the scorer for its chance level, and the judge is asked only
    by the real pass."""
    folder = tmp_path / "run"
    build_tiny_cache(folder, tiny_llama)
    config = RunConfig(
        model=str(write_word_tokenizer(folder / "subject")),
        sampling=SAMPLING,
        max_latents=3,
        scorers=["intruder"],
        judge="judge",
        explainer="explainer",
        scoring={"intruder": {"n_shown": 2, "n_questions": 3}},
        response_cache=False,
    )
    files = RunFiles(folder)
    files.prepare()
    judge = ScriptedJudge(reader, model="judge")
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: words", model="explainer")
    summary = asyncio.run(
        latent_stages(
            files, config, {"explain", "score"}, progress=False, judges={"judge": judge, "explainer": explainer}
        )
    )
    assert summary.scored == 3 and summary.controlled == 3 and summary.failed == 0
    table = materialize(files, {}, config.scorers)
    scored = table[table["intruder_n"] > 0]  # a latent silent in no held-out window gets no question
    assert len(scored) >= 2 and set(table["intruder_n"]) <= {0, 3}
    assert len(judge.calls) == int(table["intruder_n"].sum())  # the controls ask nobody
    assert scored["intruder_accuracy"].notna().all() and scored["intruder_control_accuracy"].notna().all()
    assert list(scored["intruder_control_p_correct"]) == pytest.approx([1 / 3] * len(scored))
