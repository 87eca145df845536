"""The intervention scorers on a planted output latent: steering it makes the model write month names.

The tiny Llama's head is changed so that one direction of its last residual stream promotes ten
"month" tokens, and that direction is made the decoder row of one SAE latent. An oracle judge that
can read (it finds explanation words in texts) must then rank "month names" above "animal names".
"""

from __future__ import annotations

import asyncio
import math
import re

import numpy as np
import pytest
import torch
from helpers.planted import ANIMALS, MONTHS, _category
from helpers.tiny_subjects import build_tiny_cache, decode_ids, make_tiny_llama

from autointerp.llm.base import CUT_OFF, JudgeError, PromptToken, Reply, TokenLogprob
from autointerp.llm.scripted import ScriptedJudge
from autointerp.prompting import clean_token
from autointerp.records import Explanation
from autointerp.sampling import Sampler, SamplingSettings
from autointerp.scorers import InterventionChoiceScorer, InterventionScorer, InterventionSettings, scorer_metrics
from autointerp.scorers.base import UnfitJudge
from autointerp.scorers.intervention import (
    InterventionRunner,
    SteeringSubject,
    held_out_windows,
    span_logprob,
    surprisal_text,
)
from autointerp.scorers.registry import check_config
from autointerp.subjects.attach import open_dictionary

MONTH_IDS = list(range(10, 10 + len(MONTHS)))
ANIMAL_IDS = list(range(30, 30 + len(ANIMALS)))
RIGHT, WRONG = "month names such as March", "animal names like cat"
SAMPLING = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)


class WordTokenizer:
    """Token ids as words: months and animals where planted, id 0 a special (document break) token."""

    all_special_ids = [0]

    def decode(self, ids):
        words = {**dict(zip(MONTH_IDS, MONTHS, strict=True)), **dict(zip(ANIMAL_IDS, ANIMALS, strict=True))}
        return "".join(" " + words.get(i, f"t{i}") for i in ids)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    model = make_tiny_llama()
    folder = tmp_path_factory.mktemp("planted")
    # a direction the clean model's last hidden states point away from, made to promote the month tokens
    with torch.no_grad():
        h = model.model(torch.randint(0, 96, (16, 24), generator=torch.Generator().manual_seed(1))).last_hidden_state
        u = -h.reshape(-1, h.shape[-1]).mean(0)
        u /= u.norm()
        model.lm_head.weight[MONTH_IDS] += u
    cache = build_tiny_cache(folder, model)
    encoder, hp = open_dictionary(model, str(folder / "sae"), None)
    fire = cache.state.fire_windows
    latent = int(np.flatnonzero((fire >= 20) & (fire < 300))[0])
    encoder.W_dec[latent] = u  # encoding (and so the cache) does not use W_dec
    record = Sampler(cache, decode_ids, SAMPLING).record(latent)
    subject = SteeringSubject(model=model, tokenizer=WordTokenizer(), encoder=encoder, hookpoint=hp)
    return subject, cache, record


def _runner(planted, **settings) -> InterventionRunner:
    subject, cache, _ = planted
    return InterventionRunner(subject, cache, InterventionSettings(prompt_tokens=6, **settings))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def oracle_text_scorer(text: str, top_logprobs: int = 0) -> list[PromptToken]:
    """Word tokens with char offsets; each explanation token is as likely as the passage is full of
    words of the explanation's category."""
    passage = re.search(r"<passage>\n(.*)\n</passage>", text, re.DOTALL).group(1)
    explanation = next(e for e in (RIGHT, WRONG) if e in text)
    start = text.index(explanation)
    words = _words(passage)
    frac = sum(w in _category(explanation) for w in words) / max(1, len(words))
    tokens = []
    for m in re.finditer(r"\s*\S+", text):
        inside = m.end() > start
        logprob = math.log(0.02 + 0.9 * frac) if inside else -3.0
        tokens.append(PromptToken(token=m.group(), offset=m.start(), logprob=logprob if tokens else None))
    return tokens


def oracle_chooser(messages) -> Reply:
    """Picks the continuation with more words of the explanation's category (B on a tie), with logprobs."""
    user = messages[-1]["content"]
    category = _category(re.search(r"Explanation of the feature: (.*)", user).group(1))
    a, b = re.findall(r"<continuation>\n(.*?)\n</continuation>", user, re.DOTALL)
    count_a, count_b = (sum(w in category for w in _words(t)) for t in (a, b))
    p_a = 0.9 if count_a > count_b else 0.1 if count_b > count_a else 0.5
    top = {"A": math.log(p_a), "B": math.log(1 - p_a)}
    tok = "A" if p_a > 0.5 else "B"
    return Reply(text=tok, logprobs=[TokenLogprob(token=tok, logprob=top[tok], top=top)])


def _score(scorer, record, text, judge):
    return asyncio.run(scorer(record, Explanation(record.latent, text, "test"), judge))


def test_steering_the_planted_latent_writes_months(planted):
    _, _, record = planted
    iv = _runner(planted).run_sync(record)
    assert iv.kl_reached and abs(iv.kl - 0.5) <= 0.05
    months = [sum(w in MONTHS for w in _words(t)) for c in iv.continuations for t in (c.clean, c.steered)]
    assert sum(months[1::2]) >= 2 * sum(months[0::2]) + 4  # steered continuations hold far more months
    assert len(iv.continuations) == 8 and iv.changed > 0.5


def test_right_explanation_beats_wrong_one_by_surprisal(planted):
    _, _, record = planted
    scorer = InterventionScorer(_runner(planted))
    judge = ScriptedJudge(lambda m: "unused", text_scorer=oracle_text_scorer)
    right = _score(scorer, record, RIGHT, judge)
    wrong = _score(scorer, record, WRONG, judge)
    assert right.metrics["surprisal_difference"] > 0.5
    assert right.metrics["surprisal_difference"] > wrong.metrics["surprisal_difference"] + 0.5
    assert right.metrics["win_rate"] > 0.7 and right.n_failed == 0
    assert right.metrics["kl"] == pytest.approx(0.5, abs=0.05) and right.metrics["strength"] > 0
    assert list(right.metrics) == list(InterventionScorer.metrics) == list(scorer_metrics("intervention"))
    # per prompt: the prompt and both continuations, and the difference in nats
    j = right.judgments[0]
    assert j.text.count("\n[clean]") == 1 and j.text.count("\n[steered]") == 1 and j.value is not None
    # two texts scored per changed prompt, none for an unchanged one
    assert len(judge.scored_texts) == 2 * 2 * sum(x.detail.startswith("log p") for x in right.judgments)
    assert all(x.answer == "" and x.probability is None for x in right.judgments)  # the judge generated nothing


def test_right_explanation_beats_wrong_one_by_choice(planted):
    _, _, record = planted
    scorer = InterventionChoiceScorer(_runner(planted))
    judge = ScriptedJudge(oracle_chooser)
    right = _score(scorer, record, RIGHT, judge)
    wrong = _score(scorer, record, WRONG, judge)
    assert right.metrics["accuracy"] >= 0.8 and right.metrics["p_correct"] >= 0.75
    assert right.metrics["accuracy"] > wrong.metrics["accuracy"] + 0.2
    assert right.n_failed == 0
    # the steered continuation is shown first about as often as second, and the judge saw both, delimited
    firsts = [j.activating for j in right.judgments]
    assert 0 < sum(firsts) < len(firsts)
    assert all(c[-1]["content"].count("<continuation>") == 2 for c in judge.calls)


def test_an_output_latent_that_detection_misses(planted):
    """The paper's point: the planted latent fires on no particular input (its encoder is random), so
    detection cannot confirm "month names", while intervention sees what it does to the output."""
    from helpers.planted import oracle

    from autointerp.scorers import DetectionScorer

    _, cache, record = planted
    words = WordTokenizer()
    as_words = Sampler(cache, lambda ids: [words.decode([i]) for i in ids], SAMPLING).record(record.latent.index)
    detection = _score(DetectionScorer(), as_words, RIGHT, ScriptedJudge(oracle))
    intervention = _score(
        InterventionScorer(_runner(planted)), record, RIGHT, ScriptedJudge(lambda m: "", text_scorer=oracle_text_scorer)
    )
    assert detection.metrics["balanced_accuracy"] < 0.75
    assert intervention.metrics["surprisal_difference"] > 0.5 and intervention.metrics["win_rate"] > 0.7


def test_both_scorers_share_one_steering_run(planted, monkeypatch):
    _, _, record = planted
    runner = _runner(planted)
    calls = []
    compute = runner._compute
    monkeypatch.setattr(runner, "_compute", lambda r: calls.append(r) or compute(r))
    _score(InterventionScorer(runner), record, RIGHT, ScriptedJudge(lambda m: "", text_scorer=oracle_text_scorer))
    _score(InterventionChoiceScorer(runner), record, RIGHT, ScriptedJudge(oracle_chooser))
    assert len(calls) == 1


def test_a_judge_that_cannot_score_text_is_refused(planted):
    _, _, record = planted
    judge = ScriptedJudge(oracle_chooser)  # chat only, no prompt logprobs
    with pytest.raises(UnfitJudge, match="prompt logprobs.*intervention_choice"):
        _score(InterventionScorer(_runner(planted)), record, RIGHT, judge)
    InterventionChoiceScorer(_runner(planted)).check_judge(judge)  # the choice variant only needs chat


def test_the_run_refuses_such_a_judge_before_any_latent(planted, tmp_path, monkeypatch):
    from autointerp.config import RunConfig
    from autointerp.results import RunFiles
    from autointerp.stages.latent_stages import latent_stages

    subject, _, _ = planted
    build_tiny_cache(tmp_path / "run", subject.model)
    monkeypatch.setattr("autointerp.stages.open_run.load_tokenizer", lambda config, meta=None: WordTokenizer())
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = RunConfig(scorers=["intervention"], sampling=SAMPLING, judge="j")
    judge = ScriptedJudge(oracle_chooser)
    with pytest.raises(UnfitJudge, match="judge scripted cannot"):
        asyncio.run(latent_stages(files, config, {"score"}, progress=False, judges={"j": judge}))
    assert judge.calls == [] and not files.scores.exists()


def test_unreadable_picks_and_text_scoring_errors_are_recorded_failures(planted):
    _, _, record = planted
    runner = _runner(planted, max_reasks=1)
    calls = {"n": 0}

    def confused(messages):
        calls["n"] += 1
        return Reply(text="Hmm", logprobs=[TokenLogprob(token="Hmm", logprob=-0.1, top={"Hmm": -0.1})])

    score = _score(InterventionChoiceScorer(runner), record, RIGHT, ScriptedJudge(confused))
    asked = [j for j in score.judgments if not j.detail.startswith("not asked")]
    assert asked and score.n_failed == len(asked) and calls["n"] == 2 * len(asked)  # one re-ask each
    assert all(j.prediction is None and j.value is None and j.error for j in asked)
    unchanged = len(score.judgments) - len(asked)
    assert score.metrics["accuracy"] == (0.5 if unchanged else None)  # only the coin tosses remain

    first = next(c for c in runner.run_sync(record).continuations if c.changed)

    def broken(text, top):  # the server fails on every text of one prompt, however often it is asked
        if clean_token(first.prompt) in text:
            raise JudgeError("server said 500")
        return oracle_text_scorer(text, top)

    score = _score(InterventionScorer(runner), record, RIGHT, ScriptedJudge(lambda m: "", text_scorer=broken))
    failed = [j for j in score.judgments if j.error]
    assert failed and score.n_failed == len(failed) and all(j.value is None for j in failed)
    assert score.metrics["surprisal_difference"] is not None  # from the prompts that were scored


def test_a_text_pick_is_read_only_where_the_limit_left_it_whole(planted):
    _, _, record = planted
    runner = _runner(planted, choice_mode="text", max_reasks=1)
    chatty = ScriptedJudge(
        lambda m: Reply(oracle_chooser(m).text + ", since it", finish_reason="length"), supports_logprobs=False
    )
    score = _score(InterventionChoiceScorer(runner), record, RIGHT, chatty)
    assert score.n_failed == 0 and score.metrics["accuracy"] >= 0.8
    cut = ScriptedJudge(lambda m: Reply(oracle_chooser(m).text, finish_reason="length"), supports_logprobs=False)
    score = _score(InterventionChoiceScorer(runner), record, RIGHT, cut)
    asked = [j for j in score.judgments if not j.answer.startswith("not asked")]
    assert asked and score.n_failed == len(asked) and all(j.error == CUT_OFF for j in asked)


def test_prompts_are_held_out_deterministic_and_one_document_each(planted):
    _, cache, record = planted
    pick = lambda seed, n=8: held_out_windows(cache, record, n, 6, {0}, np.random.default_rng(seed))  # noqa: E731
    windows = pick(0)
    assert len(windows) == 8 == len(set(windows))
    assert not set(windows) & record.train_windows()
    assert all(0 not in cache.window_tokens(w)[:6] for w in windows)
    assert pick(0) == windows and pick(1) != windows
    # the runner's prompts are those windows' first tokens, the same on every run
    a, b = _runner(planted).run_sync(record), _runner(planted).run_sync(record)
    assert [c.window for c in a.continuations] == [c.window for c in b.continuations]
    assert [(c.clean, c.steered) for c in a.continuations] == [(c.clean, c.steered) for c in b.continuations]
    assert not {c.window for c in a.continuations} & record.train_windows()


def test_the_explanation_is_found_by_character_offsets():
    text, start, end = surprisal_text("some text", "month names")
    assert text[start:end] == "month names" and "some text" in text[:start]
    # a word-level tokenizer whose token " month" starts one character before the explanation
    tokens = [
        PromptToken(m.group(), m.start(), None if i == 0 else -1.0) for i, m in enumerate(re.finditer(r"\s*\S+", text))
    ]
    assert span_logprob(tokens, start, end) == pytest.approx(-2.0)
    tokens[-1].logprob = None
    assert span_logprob(tokens, start, end) is None
    assert span_logprob(tokens[:2], start, end) is None  # no token reaches the explanation


def test_results_hold_the_intervention_columns(planted, tmp_path):
    import pandas as pd

    from autointerp.config import RunConfig
    from autointerp.pipeline import LatentWorker, RunSummary, process_latents
    from autointerp.results import RunFiles, append_jsonl, materialize

    _, cache, record = planted
    files = RunFiles(tmp_path / "run")
    files.prepare()
    append_jsonl(
        files.explanations,
        {
            "latent": record.latent.index,
            "hookpoint": record.latent.hookpoint,
            "status": "ok",
            "explanation": RIGHT,
            "explainer_model": "test",
        },
    )
    runner = _runner(planted)
    worker = LatentWorker(
        files,
        RunConfig(sampling=SAMPLING),
        Sampler(cache, decode_ids, SAMPLING),
        None,
        ScriptedJudge(oracle_chooser, text_scorer=oracle_text_scorer),
        [InterventionScorer(runner), InterventionChoiceScorer(runner)],
        {"score"},
        RunSummary(),
    )
    asyncio.run(process_latents([record.latent.index], worker, progress=False))
    table = materialize(files, {}, ["intervention", "intervention_choice"])
    row = table.iloc[0]
    assert row["status"] == "ok"
    assert row["intervention_surprisal_difference"] > 0.5 and row["intervention_choice_accuracy"] >= 0.8
    assert row["intervention_kl"] == pytest.approx(0.5, abs=0.05) == row["intervention_choice_kl"]
    judgments = pd.read_parquet(files.judgments)
    assert len(judgments) == 16 and judgments["value"].notna().sum() >= 8
    assert not set(judgments["window"]) & record.train_windows()


def test_cli_options(tmp_path):
    from autointerp.cli import build_parser, config_from_args
    from autointerp.config import ConfigError

    args = build_parser().parse_args(
        [
            "score",
            "--out",
            str(tmp_path),
            "--scorers",
            "intervention,intervention_choice",
            "--kl-target",
            "0.25",
            "--intervention-prompts",
            "12",
        ]
    )
    config, explicit = config_from_args(args)
    assert config.scorers == ["intervention", "intervention_choice"]
    settings = InterventionSettings.of(config)
    assert (settings.kl_target, settings.n_prompts) == (0.25, 12)
    assert {"scoring.intervention.kl_target", "scoring.intervention.n_prompts"} <= explicit
    check_config(config)
    config.scoring["intervention"]["kl_target"] = 0
    with pytest.raises(ConfigError, match="kl-target"):
        check_config(config)


@pytest.mark.slow
def test_real_subject_model_and_shipped_sae(tmp_path):
    """SmolLM2-135M with the shipped SAE: the strength search reaches the target and a latent is scored,
    with a scripted judge, in reasonable time on CPU (the seconds are printed; run with -s to see them)."""
    import time

    from autointerp.cache.store import ActivationCache
    from autointerp.config import RunConfig
    from autointerp.results import RunFiles
    from autointerp.sampling import token_decoder
    from autointerp.stages.cache_stage import cache_stage
    from autointerp.stages.open_run import steering_subject

    config = RunConfig(n_tokens=4096, scoring={"intervention": {"n_prompts": 4}})
    files = RunFiles(tmp_path / "run")
    files.prepare()
    cache_stage(files, config, progress=False)
    cache = ActivationCache(files.cache)
    subject = steering_subject(config)
    latent = int(np.flatnonzero(cache.state.fire_windows >= config.sampling.min_examples)[0])
    record = Sampler(cache, token_decoder(subject.tokenizer), config.sampling).record(latent)
    judge = ScriptedJudge(
        lambda m: "A",
        text_scorer=lambda text, top: [
            PromptToken(m.group(), m.start(), None if m.start() == 0 else -1.5) for m in re.finditer(r"\s*\S+", text)
        ],
    )
    start = time.perf_counter()
    score = asyncio.run(
        InterventionScorer(InterventionRunner(subject, cache, InterventionSettings.of(config)))(
            record, Explanation(record.latent, "anything", "test"), judge
        )
    )
    seconds = time.perf_counter() - start
    print(
        f"\nintervention on SmolLM2-135M + shipped SAE: {seconds:.1f}s for latent {latent} "
        f"({InterventionSettings.of(config).n_prompts} prompts), KL {score.metrics['kl']:.3f}, strength "
        f"{score.metrics['strength']:.3g}"
    )
    assert score.metrics["kl"] == pytest.approx(0.5, rel=0.1)
    assert score.n_examples == 4 and score.n_failed == 0
    assert all(j.text.count("\n") == 2 for j in score.judgments)
    assert seconds < 300
