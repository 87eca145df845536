"""Simulation and surprisal: the right explanation of a planted latent beats a wrong one, through prompt
logprobs and (simulation) through JSON answers; misaligned or unreadable answers are counted failures."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
from helpers.planted import oracle_text_scorer, planted_record, simulation_oracle

from autointerp.llm.base import CUT_OFF, JudgeError, PromptToken, Reply
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Explanation
from autointerp.scorers import SimulationScorer, SimulationSettings, SurprisalScorer
from autointerp.scorers.base import UnfitJudge
from autointerp.scorers.metrics import correlation
from autointerp.scorers.simulation import expected_level, parse_levels, simulation_text, true_levels
from autointerp.scorers.surprisal import example_loss, text_prefix

RIGHT = "names of months, such as March"
WRONG = "names of animals, such as cat"


def _score(scorer, record, text, judge):
    return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), judge))


def no_chat(messages):
    raise AssertionError("this scorer should not chat")


class SchemaJudge(ScriptedJudge):
    """Keeps the schema of every chat, to check what the scorer constrains."""

    def __init__(self, responder, **kw):
        super().__init__(responder, **kw)
        self.schemas: list = []

    async def chat(self, messages, **kw):
        self.schemas.append(kw.get("schema"))
        return await super().chat(messages, **kw)


# ---------------------------------------------------------------- simulation


class TopAtJudge(ScriptedJudge):
    """Keeps the offsets each prompt_logprobs call asked alternatives for."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.top_at: list = []

    async def prompt_logprobs(self, text, **kw):
        self.top_at.append(kw.get("top_at"))
        return await super().prompt_logprobs(text, **kw)


def test_simulation_all_at_once_right_beats_wrong():
    record = planted_record()
    judge = TopAtJudge(no_chat, text_scorer=oracle_text_scorer)
    right = _score(SimulationScorer(), record, RIGHT, judge)
    n = len(record.test) + len(record.negatives)
    assert len(judge.scored_texts) == n and judge.calls == []  # one teacher-forced text per example
    # alternatives are asked for at the slots only: one per token of the example
    assert [len(t) for t in judge.top_at[:2]] == [12, 12]
    assert all(judge.scored_texts[0][o - 1 : o + 2] in ("\t0\n", "\t0") for o in judge.top_at[0])
    wrong = _score(SimulationScorer(), record, WRONG, judge)
    assert right.n_failed == wrong.n_failed == 0 and right.n_examples == n
    # the oracle says 9 for every month while true strengths vary, so it is right but not perfect
    assert right.metrics["correlation"] > 0.8 and right.metrics["auroc"] == 1.0
    assert right.metrics["example_correlation"] > 0.99  # one firing token per example: ranked exactly
    assert wrong.metrics["correlation"] < 0.1 and wrong.metrics["auroc"] < 0.5
    assert right.usage.calls == n and right.usage.prompt_tokens > 0
    month = next(j for j in right.judgments if j.activating)
    # the expected level at the month's slot is 0.9 * 9: read from prompt logprobs, so nothing was generated
    assert month.prediction is True and month.probability is None and month.answer == ""
    assert month.detail.startswith("predicted ") and month.detail.split()[1:].count("8.1") == 1
    assert month.value is not None and month.value > 0.9 and len(month.detail.split()) == 1 + 12
    assert month.text.count("\t0") == 12 and "<start>" not in month.text


def test_simulation_json_right_beats_wrong_with_exact_length_schema():
    record = planted_record()
    judge = SchemaJudge(simulation_oracle, supports_logprobs=False)
    right = _score(SimulationScorer(), record, RIGHT, judge)  # auto: no prompt logprobs -> json
    wrong = _score(SimulationScorer(), record, WRONG, judge)
    assert right.n_failed == wrong.n_failed == 0
    assert right.metrics["correlation"] > 0.8 and right.metrics["auroc"] == 1.0
    assert wrong.metrics["correlation"] < 0.1
    items = judge.schemas[0]["properties"]["activations"]
    assert items["minItems"] == items["maxItems"] == 12
    assert len(judge.calls) == 2 * (len(record.test) + len(record.negatives))
    month = next(j for j in right.judgments if j.activating)  # the judge's own JSON, and the levels read from it
    assert month.answer.startswith('{"activations"') and month.probability is None
    assert month.detail == "predicted " + " ".join(f"{v:.1f}" for v in json.loads(month.answer)["activations"])


def test_simulation_json_misalignment_is_a_recorded_failure_not_zeros():
    record = planted_record()
    calls = {"n": 0}

    def short_on_council(messages):
        calls["n"] += 1
        answer = simulation_oracle(messages)
        if "council" in messages[-1]["content"]:
            return json.dumps({"activations": json.loads(answer)["activations"][:-1]})  # one value short
        return answer

    score = _score(
        SimulationScorer(SimulationSettings(max_reasks=1)),
        record,
        RIGHT,
        ScriptedJudge(short_on_council, supports_logprobs=False),
    )
    bad = [j for j in score.judgments if "council" in j.text]
    assert bad and score.n_failed == len(bad)
    assert all(
        j.prediction is None and j.probability is None and "11 activations for 12 tokens" in j.error for j in bad
    )
    assert calls["n"] == len(score.judgments) + len(bad)  # each failure was re-asked once
    assert score.metrics["correlation"] > 0.8  # computed from the readable answers only


def test_simulation_json_cut_off_at_max_tokens_is_a_failure():
    record = planted_record(n_test=3, n_neg=3)
    # a whole list, then a remark the limit cut: a list followed by more may have been about to change
    judge = ScriptedJudge(
        lambda m: Reply(simulation_oracle(m) + "\nOn second thought, token 4", finish_reason="length"),
        supports_logprobs=False,
    )
    score = _score(SimulationScorer(SimulationSettings(max_reasks=1)), record, RIGHT, judge)
    assert score.n_failed == 6 and len(judge.calls) == 12 and score.metrics["correlation"] is None
    assert all(j.error == CUT_OFF and j.prediction is None for j in score.judgments)


def test_simulation_unreadable_slots_are_failures():
    record = planted_record(n_test=4, n_neg=4)

    def glued(text: str, k: int) -> list[PromptToken]:  # a tokenizer that joins the tab to the slot word
        return [PromptToken(m.group(), m.start(), -1.0, {"0": -0.1}) for m in re.finditer(r"\t?\S+|\s", text)]

    def no_digits(text: str, k: int) -> list[PromptToken]:
        return [PromptToken(t.token, t.offset, t.logprob, {"unknown": -0.01}) for t in oracle_text_scorer(text, k)]

    for scorer_fn, message in ((glued, "no judge token starts at the slot"), (no_digits, "no digit 0-9")):
        score = _score(SimulationScorer(), record, RIGHT, ScriptedJudge(no_chat, text_scorer=scorer_fn))
        assert score.n_failed == 8 and score.metrics["correlation"] is None
        assert all(message in j.error for j in score.judgments)


def test_simulation_judge_errors_are_failures():
    record = planted_record(n_test=3, n_neg=3)

    def broken(text, k):
        raise JudgeError("connection reset")

    score = _score(SimulationScorer(), record, RIGHT, ScriptedJudge(no_chat, text_scorer=broken))
    assert score.n_failed == 6 and all("connection reset" in j.error for j in score.judgments)


def test_simulation_logprobs_mode_needs_prompt_logprobs():
    with pytest.raises(UnfitJudge, match="prompt logprobs.*json"):
        _score(
            SimulationScorer(SimulationSettings(mode="logprobs")),
            planted_record(),
            RIGHT,
            ScriptedJudge(simulation_oracle),
        )


def test_simulation_text_keeps_corpus_text_on_its_line():
    text, block, slots = simulation_text("months", ["a\nb", "\tx", "<end>", " May"])
    assert text.endswith(block) and block.count("\n") == 3
    assert block.splitlines()[0] == "a↵b\t0" and block.splitlines()[2] == "‹end›\t0"
    assert all(text[s] == "0" and text[s - 1] == "\t" for s in slots)
    assert "{{" not in text and "Feature: months" in text


def test_expected_level_parse_and_scale():
    tok = PromptToken("unknown", 0, -1.0, {" 4": math.log(0.3), "8": math.log(0.1), "unknown": math.log(0.6)})
    assert expected_level(tok) == pytest.approx((4 * 0.3 + 8 * 0.1) / 0.4)
    assert expected_level(PromptToken("x", 0, -1.0, {"x": -0.1})) is None
    assert parse_levels('{"activations": [0, 9, 3.5]}', 3) == ([0.0, 9.0, 3.5], "")
    assert parse_levels("```json\n[1, 2]\n```", 2)[0] == [1.0, 2.0]
    assert parse_levels('{"activations": [0, 10]}', 2)[0] is None  # off the 0-9 scale
    assert parse_levels('{"activations": [true, 0]}', 2)[0] is None
    assert parse_levels("zero", 1) == (None, "not a JSON list of activations")
    record = planted_record()
    assert true_levels(record.test[0], 4.0) == [9.0 / 4 if a else 0.0 for a in record.test[0].activations]


def test_correlation_metric():
    assert correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert correlation([1, 1, 1], [1, 2, 3]) is None and correlation([1], [2]) is None
    with pytest.raises(ValueError):
        correlation([1, 2], [1])


# ---------------------------------------------------------------- surprisal


def test_surprisal_right_beats_wrong():
    record = planted_record()
    judge = ScriptedJudge(no_chat, text_scorer=oracle_text_scorer)
    right = _score(SurprisalScorer(), record, RIGHT, judge)
    n = len(record.test) + len(record.negatives)
    assert len(judge.scored_texts) == 2 * n and judge.calls == []
    wrong = _score(SurprisalScorer(), record, WRONG, judge)
    assert right.n_failed == wrong.n_failed == 0
    assert right.metrics["auroc"] == 1.0 and wrong.metrics["auroc"] < 0.5
    assert right.metrics["reduction_activating"] > 0 and right.metrics["reduction_silent"] == 0
    assert wrong.metrics["reduction_silent"] > wrong.metrics["reduction_activating"]
    pos = next(j for j in right.judgments if j.activating)
    n_tokens = len(oracle_text_scorer(pos.text, 0))  # the month costs 1 nat instead of 6; the rest the same
    assert pos.value == pytest.approx(5 / n_tokens, abs=1e-6) and pos.prediction is True and pos.probability is None
    assert pos.answer == "" and "with the explanation" in pos.detail  # teacher forcing: the judge wrote nothing


def test_surprisal_sends_explanation_texts_first_and_neutral_ones_after():
    record = planted_record(n_test=3, n_neg=3)
    judge = ScriptedJudge(no_chat, text_scorer=oracle_text_scorer)
    _score(SurprisalScorer(), record, RIGHT, judge)
    described, neutral = judge.scored_texts[:6], judge.scored_texts[6:]
    assert all(t.startswith(text_prefix(RIGHT)) for t in described)
    assert all(t.startswith(text_prefix("ordinary text on any topic")) for t in neutral)
    assert [t[len(text_prefix(RIGHT)) :] for t in described] == [
        e.text.lstrip() for e in record.test + record.negatives
    ]


def test_surprisal_counts_only_the_example_tokens():
    tokens = [
        PromptToken("Text:", 0, None),
        PromptToken("\n", 5, -9.0),
        PromptToken("May", 6, -1.0),
        PromptToken(" rain", 9, -3.0),
    ]
    assert example_loss(tokens, 6).value == pytest.approx(2.0)
    assert example_loss(tokens, 20).value is None


def test_surprisal_needs_prompt_logprobs_and_says_so():
    with pytest.raises(UnfitJudge, match="surprisal scorer needs a judge that gives prompt logprobs"):
        _score(SurprisalScorer(), planted_record(), RIGHT, ScriptedJudge(no_chat, model="chat-only"))


def test_surprisal_judge_errors_are_failures():
    record = planted_record(n_test=4, n_neg=4)

    def flaky(text, k):
        if "council" in text:
            raise JudgeError("server went away")
        return oracle_text_scorer(text, k)

    score = _score(SurprisalScorer(), record, RIGHT, ScriptedJudge(no_chat, text_scorer=flaky))
    bad = [j for j in score.judgments if "council" in j.text]
    assert bad and score.n_failed == len(bad)
    assert all(j.value is None and j.prediction is None and "server went away" in j.error for j in bad)


# ---------------------------------------------------------------- wiring


def test_pipeline_writes_their_columns_and_judgments(tmp_path, tiny_cache):
    import pandas as pd
    from helpers.tiny_subjects import decode_ids

    from autointerp.config import RunConfig
    from autointerp.pipeline import LatentWorker, RunSummary, process_latents, select_latents
    from autointerp.results import RunFiles, materialize
    from autointerp.sampling import Sampler, SamplingSettings
    from autointerp.stages.open_run import make_scorers

    config = RunConfig(
        scorers=["simulation", "surprisal"],
        max_latents=2,
        sampling=SamplingSettings(n_train=8, n_test=4, n_negatives=4, n_train_negatives=2, min_examples=10),
    )
    files = RunFiles(tmp_path / "run")
    files.prepare()
    latents, _ = select_latents(tiny_cache, config)
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 to t9")
    judge = ScriptedJudge(no_chat, text_scorer=oracle_text_scorer)
    worker = LatentWorker(
        files,
        config,
        Sampler(tiny_cache, decode_ids, config.sampling),
        explainer,
        judge,
        make_scorers(config),
        {"explain", "score"},
        RunSummary(),
    )
    summary = asyncio.run(process_latents(latents, worker, progress=False))
    assert summary.failed == 0 and summary.scored == 2
    table = materialize(files, {"model": "tiny"}, config.scorers)
    for column in (
        "simulation_correlation",
        "simulation_example_correlation",
        "simulation_auroc",
        "surprisal_auroc",
        "surprisal_reduction_activating",
        "surprisal_reduction_silent",
        "simulation_n",
        "surprisal_n_failed",
    ):
        assert column in table
    assert (table["simulation_n"] == table["surprisal_n"]).all() and (table["surprisal_n_failed"] == 0).all()
    judgments = pd.read_parquet(files.judgments)
    assert len(judgments) == 2 * table["simulation_n"].sum() and "value" in judgments
    assert judgments[judgments["scorer"] == "surprisal"]["value"].notna().all()


def test_a_judge_without_prompt_logprobs_is_refused_before_any_latent():
    from autointerp.config import RunConfig
    from autointerp.stages.open_run import make_scorers

    scorers = make_scorers(RunConfig(scorers=["detection", "surprisal", "simulation"]))
    assert [s.name for s in scorers] == ["detection", "surprisal", "simulation"]
    with pytest.raises(UnfitJudge, match="surprisal scorer needs a judge that gives prompt logprobs.*--prompt-"):
        scorers[1].check_judge(ScriptedJudge(no_chat, model="chat-only"))
    scorers[1].check_judge(ScriptedJudge(no_chat, text_scorer=oracle_text_scorer))
    scorers[2].check_judge(ScriptedJudge(no_chat))  # simulation falls back to JSON answers
    with pytest.raises(UnfitJudge, match="prompt logprobs"):
        SimulationScorer(SimulationSettings(mode="logprobs")).check_judge(ScriptedJudge(no_chat))
