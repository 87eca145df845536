"""Defaults that fit the explainer: the style follows the explainer's backend (recorded, kept by a folder
already explained), the explainer's server and key apart from the judge's, and JSON asked for in the form
the server accepts (OpenAI's json_schema against a fake that enforces OpenAI's rules; json_object against
llama.cpp's real server)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from helpers import llama_server as real_server
from helpers.fault_server import FaultServer, openai_response_format_rules
from helpers.tiny_run_judges import judges, namer, tiny_run_folder

import autointerp
from autointerp.config import RunConfig, load_config
from autointerp.llm.judges import make_judge
from autointerp.llm.openai_compat import schema_mode_for
from autointerp.llm.providers import JudgeSettings
from autointerp.llm.scripted import ScriptedJudge
from autointerp.results import RunFiles
from autointerp.sampling import SamplingSettings
from autointerp.settings import ExplainerSettings
from autointerp.stages.latent_stages import explainer_style, stage_judges

llama_server = real_server.llama_server  # the fixture starting llama.cpp's real server, once per module

SAMPLING = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)


@pytest.fixture
def folder(tmp_path, tiny_cache, monkeypatch) -> Path:
    """A run folder holding a copy of the tiny cache (32 latents at layers.1) and its config."""
    return tiny_run_folder(tmp_path / "run", tiny_cache, SAMPLING, monkeypatch)


@pytest.mark.parametrize(
    ("explainer", "style"),
    [("smollm2", "names"), ("qwen2.5-coder-1.5b", "names"), ("openai:gpt-4o-mini", "excerpts"), ("vllm:x", "excerpts")],
)
def test_the_default_style_follows_the_explainers_backend_and_a_given_one_wins(explainer, style):
    assert explainer_style(RunConfig(explainer=explainer))[0] == style
    other = "contrastive"
    given = RunConfig(explainer=explainer, explain=ExplainerSettings(style=other))
    assert explainer_style(given) == (other, "--explainer-style")


def test_schema_mode_auto_picks_the_form_the_server_accepts():
    assert schema_mode_for("auto", None) == "json_schema"  # api.openai.com
    assert schema_mode_for("auto", "https://api.openai.com/v1") == "json_schema"
    assert schema_mode_for("auto", "http://127.0.0.1:8080/v1") == "json_object"  # llama.cpp, vLLM
    assert schema_mode_for("none", "https://api.openai.com/v1") == "none"


def test_the_explainer_has_its_own_server_and_key_or_else_the_judges():
    shared = RunConfig(judge="openai:a", judge_url="http://judge/v1", api_key_env="JUDGE_KEY")
    assert JudgeSettings.of(shared, "explainer") == JudgeSettings.of(shared)
    assert stage_judges(shared, {"explain", "score"}).names() == ["openai:a"]  # one judge serves both roles
    apart = RunConfig(
        judge="openai:a", judge_url="http://judge/v1", explainer_url="http://explainer/v1", explainer_api_key_env="EK"
    )
    settings = JudgeSettings.of(apart, "explainer")
    assert (settings.judge_url, settings.api_key_env) == ("http://explainer/v1", "EK")
    assert stage_judges(apart, {"explain", "score"}).names() == ["openai:a (explainer)", "openai:a"]


def test_a_served_explainer_writes_excerpts_labels_on_its_own_server_in_openais_json_form(folder, monkeypatch):
    """A capable explainer and a cheap judge on two servers: the explainer (an OpenAI-like server that
    refuses json_object with a schema) gets excerpts, its own key, and its re-ask in json_schema form."""
    monkeypatch.setenv("EXPLAINER_KEY", "sk-explainer")
    monkeypatch.setenv("JUDGE_KEY", "sk-judge")

    def explainer(request, n):
        if "response_format" in request:
            content = request["messages"][-1]["content"]
            return ("ok", json.dumps({"explanation": "tokens " + str(len(content) % 7)}))
        return ("ok", "The marked tokens vary.")  # no label line: re-asked for JSON

    with (
        FaultServer(openai_response_format_rules(explainer)) as explainer_server,
        FaultServer(lambda request, n: ("ok", "Yes", {"Yes": -0.2, "No": -1.7})) as judge_server,
    ):
        lines: list[str] = []
        run = autointerp.Run(
            folder,
            progress=False,
            echo=lines.append,
            judge="openai:cheap",
            judge_url=judge_server.url,
            api_key_env="JUDGE_KEY",
            explainer="openai:capable",
            explainer_url=explainer_server.url,
            explainer_api_key_env="EXPLAINER_KEY",
            schema_mode="json_schema",
            max_latents=2,
            scorers=["detection"],
            controls="none",
            no_cache=True,
        )
        outcome = run.explain()
        asked = [(r, h) for _, r, h in explainer_server.requests if "messages" in r]
        judged = [(r, h) for _, r, h in judge_server.requests if "messages" in r]
    assert "explainer style: excerpts (the default for an OpenAI-compatible server)" in lines
    assert outcome.summary.explained == 2 and outcome.summary.failed == 0
    assert load_config(RunFiles(folder).config)[0].explain.style == "excerpts"
    first = [r for r, _ in asked if r.get("max_tokens", 0) > 1 and "response_format" not in r]
    assert first and all("<<" in r["messages"][-1]["content"] for r in first)  # excerpts with marked tokens
    forms = [r["response_format"] for r, _ in asked if "response_format" in r]
    assert len(forms) == 2 and all(f["type"] == "json_schema" and f["json_schema"]["schema"] for f in forms)
    assert all(h["authorization"] == "Bearer sk-explainer" for _, h in asked)
    assert all(h["authorization"] == "Bearer sk-judge" for _, h in judged)
    assert not any("<<" in r["messages"][-1]["content"] for r, _ in judged)  # the judge wrote no label


def test_the_openai_like_server_refuses_json_object_with_a_schema(folder):
    """Why auto sends json_schema to OpenAI: its json_object takes no schema."""
    with FaultServer(openai_response_format_rules(lambda r, n: ("ok", "{}"))) as server:
        judge = make_judge("openai:m", RunConfig(judge_url=server.url, schema_mode="json_object", response_cache=False))

        async def ask():
            try:
                return await judge.chat([{"role": "user", "content": "Answer in JSON."}], schema={"type": "object"})
            finally:
                await judge.aclose()

        with pytest.raises(Exception, match=re.escape("Unknown parameter: 'response_format.schema'")):
            asyncio.run(ask())


def test_a_folder_keeps_the_style_its_explanations_were_written_in(folder):
    scripted = {**judges(), "openai:capable": ScriptedJudge(namer, model="capable")}

    def explain(**options) -> list[str]:
        lines: list[str] = []
        options = {"judge": "reader", "explainer": "openai:capable", "max_latents": 1, **options}
        autointerp.Run(folder, judges=scripted, progress=False, echo=lines.append, **options).explain()
        return [line for line in lines if line.startswith("explainer style")]

    assert explain(explainer_style="names") == ["explainer style: names (--explainer-style)"]
    # resumed without the option: the folder's labels are names-style, so the next ones are too
    assert explain(max_latents=2) == ["explainer style: names (the style this folder's explanations were written in)"]
    assert load_config(RunFiles(folder).config)[0].explain.style == "names"
    assert explain(max_latents=3, explainer_style="excerpts") == ["explainer style: excerpts (--explainer-style)"]


@pytest.mark.slow
def test_auto_asks_llama_cpps_real_server_for_json_in_the_form_it_accepts(llama_server):
    config = RunConfig(judge_url=llama_server, schema_mode="auto", response_cache=False)
    judge = make_judge("openai:smollm2", config, role="explainer")
    schema = {
        "type": "object",
        "properties": {"explanation": {"type": "string", "maxLength": 20}},
        "required": ["explanation"],
    }

    async def ask():
        try:
            return await judge.chat(
                [{"role": "user", "content": "Name a month, as JSON."}], max_tokens=48, schema=schema
            )
        finally:
            await judge.aclose()

    assert isinstance(json.loads(asyncio.run(ask()).text)["explanation"], str)
