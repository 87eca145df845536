"""One registry of scorers: what each declares is what the CLI, the run and the results use, and a new
scorer is one class."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from helpers.report_fixtures import SAMPLING, write_word_tokenizer
from helpers.tiny_subjects import build_tiny_cache

from autointerp.cli import build_parser
from autointerp.config import ConfigError, RunConfig
from autointerp.llm.base import PromptToken
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import Judgment, Score, Usage
from autointerp.results import RunFiles, materialize, usage_by_model
from autointerp.scorers import Scorer, ScorerContext, UnfitJudge, build_scorers, registry
from autointerp.scorers.registry import check_config, find_scorer, register, scorer_classes, scorer_names
from autointerp.settings import ExplainerSettings
from autointerp.stages.latent_stages import latent_stages

BUILT_IN = [
    "detection",
    "embedding",
    "fuzzing",
    "intervention",
    "intervention_choice",
    "intruder",
    "simulation",
    "surprisal",
]


class Echo(Scorer):
    """A scorer written for this test: it needs prompt logprobs and scores every held-out example 1."""

    name = "echo_test"
    metrics = ("agreement", "examples")
    summary = "a test scorer"
    judge_capability = "prompt_logprobs"
    built: list[tuple[RunConfig, ScorerContext]] = []

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        cls.built.append((config, context))
        return cls()

    async def __call__(self, record, explanation, judge) -> Score:
        tokens = await judge.prompt_logprobs(explanation.text)
        examples = record.test + record.negatives
        judgments = [Judgment(e.window, e.activating, True, None, e.max_activation, e.quantile) for e in examples]
        metrics = {"agreement": 1.0, "examples": float(len(examples))}
        usage = Usage(prompt_tokens=len(tokens), calls=1)
        return Score(record.latent, self.name, metrics, len(examples), 0, judgments, usage)


@pytest.fixture
def echo():
    register(Echo)
    Echo.built.clear()
    yield Echo
    registry._CLASSES.pop(Echo.name)


def test_every_scorer_module_registers_itself_and_the_cli_lists_it(capsys):
    assert scorer_names() == BUILT_IN
    for name, cls in scorer_classes().items():
        assert cls.name == name and cls.metrics and cls.summary
        assert cls.__module__.startswith("autointerp.scorers.")
    assert [n for n, c in scorer_classes().items() if not c.needs_judge] == ["embedding"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, cls in scorer_classes().items():
        assert f"{name} ({' '.join(cls.summary.split())})" in help_text


def test_validation_knows_the_registered_scorers_and_who_can_pick_best_of(echo):
    check_config(RunConfig(scorers=["detection", "echo_test"]))
    with pytest.raises(ConfigError, match="unknown scorer.*nope.*available: .*echo_test"):
        check_config(RunConfig(scorers=["nope"]))
    config = RunConfig()
    config.explain.best_of, config.explain.best_of_scorer = 2, "intervention_choice"
    with pytest.raises(ConfigError, match="cannot be intervention_choice.*use one of detection, echo_test"):
        check_config(config)


def test_an_unfit_judge_is_refused_with_the_reason(echo):
    chat_only = ScriptedJudge(lambda m: "Yes", model="chat-only")
    with pytest.raises(UnfitJudge, match="echo_test scorer needs a judge that gives prompt logprobs.*chat-only"):
        Echo().check_judge(chat_only)
    with pytest.raises(UnfitJudge, match="needs a judge"):
        build_scorers(["detection"], RunConfig(), ScorerContext())[0].check_judge(None)
    no_logprobs = ScriptedJudge(lambda m: "Yes", supports_logprobs=False)
    detection = build_scorers(["detection"], RunConfig(), ScorerContext())[0]
    detection.check_judge(no_logprobs)  # auto mode falls back to reading Yes/No from the text
    detection.settings.mode = "logprobs"
    with pytest.raises(UnfitJudge, match="gives no logprobs"):
        detection.check_judge(no_logprobs)


def _run(folder, tiny_llama, judge):
    build_tiny_cache(folder, tiny_llama)
    config = RunConfig(
        model=str(write_word_tokenizer(folder / "subject")),
        sampling=SAMPLING,
        max_latents=2,
        scorers=["detection", "echo_test"],
        judge="judge",
        explainer="explainer",
        explain=ExplainerSettings(style="names"),  # chosen here, so the stages run on this very config
    )
    files = RunFiles(folder)
    files.prepare()
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: words", model="explainer")
    judges = {"judge": judge, "explainer": explainer}
    summary = asyncio.run(latent_stages(files, config, {"explain", "score"}, progress=False, judges=judges))
    return files, config, summary


def test_a_new_scorer_class_runs_end_to_end(echo, tmp_path, tiny_llama):
    def yes(messages):
        return "Yes"

    with pytest.raises(UnfitJudge, match="prompt logprobs"):  # refused before any latent is explained
        _run(tmp_path / "refused", tiny_llama, ScriptedJudge(yes, model="judge", supports_logprobs=False))
    assert not (tmp_path / "refused" / "explanations.jsonl").exists()
    Echo.built.clear()

    def text_scorer(text, top):
        return [PromptToken(text, 0, None)]

    judge = ScriptedJudge(yes, model="judge", supports_logprobs=False, text_scorer=text_scorer)
    files, config, summary = _run(tmp_path / "run", tiny_llama, judge)
    assert summary.scored == 2 and summary.failed == 0
    [(built_config, context)] = Echo.built
    assert built_config is config and context.cache is not None  # built once, from the run's config
    table = materialize(files, {}, config.scorers)
    assert (table["echo_test_agreement"] == 1.0).all()
    assert list(table.columns[table.columns.str.startswith("echo_test_")][:2]) == [
        "echo_test_agreement",
        "echo_test_examples",
    ]
    judgments = pd.read_parquet(files.judgments)
    assert set(judgments["scorer"]) == {"detection", "echo_test"}
    assert usage_by_model(files)["judge"].calls > 0


def test_an_unknown_name_is_none_for_readers_of_other_runs():
    assert find_scorer("a_newer_scorer") is None
    assert registry.scorer_metrics("a_newer_scorer") == ()
