"""The judge registry: a judge name finds its backend by prefix, and the stages ask for exactly the judges
their scorers need, on one machine and on every Ray worker alike."""

from __future__ import annotations

import asyncio
import sys

import pytest

from autointerp.config import RunConfig
from autointerp.errors import MissingPackageError
from autointerp.llm.base import Reply
from autointerp.llm.cache import CachedJudge
from autointerp.llm.judges import make_judge
from autointerp.llm.openai_compat import OpenAIJudge
from autointerp.llm.ordering import OrderedJudge
from autointerp.llm.providers import JudgeSettings, find_provider, providers
from autointerp.llm.scripted import ScriptedJudge
from autointerp.llm.spread import SpreadJudge
from autointerp.settings import ExplainerSettings
from autointerp.stages.latent_stages import stage_judges


def test_a_name_finds_its_backend_by_the_longest_prefix():
    assert find_provider("openai:gpt-4o-mini").prefix == "openai:"
    assert find_provider("vllm:smollm2").prefix == "vllm:"
    for local in ("qwen2.5-coder-1.5b", "smollm2", "/models/judge.gguf", "openai-ish.gguf"):
        assert find_provider(local).prefix == ""  # the default: a local GGUF model
    assert [p.prefix for p in providers()] == ["", "openai:", "vllm:"]
    assert find_provider("openai:m").remote and not find_provider("smollm2").remote
    assert find_provider("vllm:m").gpu and not find_provider("openai:m").gpu


def test_each_backend_sets_its_slots_unless_the_run_does():
    one = RunConfig(judge_url="http://a/v1", response_cache=False)
    two = RunConfig(judge_url="http://a/v1,http://b/v1", response_cache=False)
    assert find_provider("openai:m").slots(JudgeSettings.of(one)) == 8
    assert find_provider("openai:m").slots(JudgeSettings.of(two)) == 16
    assert find_provider("vllm:m").slots(JudgeSettings.of(one)) == 128
    assert find_provider("smollm2").slots(JudgeSettings.of(one)) == 16
    judge = make_judge("openai:m", two)
    assert isinstance(judge, OrderedJudge) and judge.gate.slots == 16 and isinstance(judge.inner, SpreadJudge)
    judge = make_judge("openai:m", RunConfig(judge_url="http://a/v1", response_cache=False, judge_concurrency=3))
    assert judge.gate.slots == 3 and isinstance(judge.inner, OpenAIJudge) and judge.inner.max_concurrency == 3


def test_the_response_cache_namespace_names_backend_servers_and_model(tmp_path):
    config = RunConfig(judge_url="http://b/v1,http://a/v1", response_cache_path=str(tmp_path / "r.sqlite"))
    judge = make_judge("openai:m", config)
    assert isinstance(judge, CachedJudge) and judge.namespace == "openai:http://a/v1,http://b/v1:m"
    default = make_judge("openai:m", RunConfig(response_cache_path=str(tmp_path / "r.sqlite")))
    assert isinstance(default, CachedJudge) and default.namespace == "openai:https://api.openai.com/v1:m"


def test_a_missing_optional_package_is_named_when_its_backend_is_asked_for(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingPackageError, match=r"judge 'vllm:m' .*vllm.*pip install 'autointerp\[vllm\]'"):
        make_judge("vllm:m", RunConfig(response_cache=False))
    make_judge("openai:m", RunConfig(response_cache=False))  # the other backends are not touched


def test_a_backend_handed_in_is_wrapped_like_one_loaded_by_name(tmp_path):
    config = RunConfig(response_cache_path=str(tmp_path / "r.sqlite"), judge_concurrency=2)
    scripted = ScriptedJudge(lambda messages: "Yes", model="s")
    judge = make_judge("mine", config, backend=scripted)
    assert isinstance(judge, CachedJudge) and judge.namespace == "served:mine:s"
    assert isinstance(judge.inner, OrderedJudge) and judge.inner.gate.slots == 2 and judge.inner.inner is scripted

    async def twice() -> list[Reply]:
        asked = [await judge.chat([{"role": "user", "content": "same"}]) for _ in range(2)]
        await judge.aclose()
        return asked

    assert [r.text for r in asyncio.run(twice())] == ["Yes", "Yes"] and len(scripted.calls) == 1  # one from cache


def test_judge_settings_are_the_run_configs_judge_fields():
    config = RunConfig(judge_url="http://a/v1", judge_timeout=7.5, no_logprobs=True)
    settings = JudgeSettings.of(config)
    assert settings.judge_url == "http://a/v1" and settings.judge_timeout == 7.5 and settings.no_logprobs
    assert JudgeSettings.of(settings) is settings
    assert settings == JudgeSettings.of(RunConfig(judge_url="http://a/v1", judge_timeout=7.5, no_logprobs=True))
    assert settings != JudgeSettings.of(RunConfig(judge_url="http://a/v1", judge_timeout=7.5))  # a key that tells


@pytest.mark.parametrize(
    ("options", "stages", "explainer", "judge"),
    [
        ({}, {"explain", "score"}, "e", "j"),
        ({}, {"score"}, None, "j"),
        ({}, {"controls"}, None, "j"),
        ({"explainer": "tokens"}, {"explain", "score"}, None, "j"),
        ({"scorers": ["embedding"]}, {"explain", "score"}, "e", None),  # the embedding scorer asks no LLM
        ({"scorers": ["embedding"]}, {"explain"}, "e", None),
        ({"explain": ExplainerSettings(best_of=3)}, {"explain"}, "e", "j"),  # the detection scorer rates the labels
        ({"explain": ExplainerSettings(best_of=3, best_of_scorer="embedding")}, {"explain"}, "e", None),
    ],
)
def test_the_stages_ask_for_the_judges_their_scorers_need(options, stages, explainer, judge):
    config = RunConfig(judge="j", **({"explainer": "e"} | options))
    needed = stage_judges(config, stages)
    assert (needed.explainer, needed.judge) == (explainer, judge)
    assert needed.names() == [n for n in (explainer, judge) if n is not None]
