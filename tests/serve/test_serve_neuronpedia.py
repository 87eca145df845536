"""Neuronpedia's autointerp API on a real `autointerp serve` (uvicorn, scripted judges from report_fixtures,
the bundled embedding model), called through Neuronpedia's own published client, unmodified, and over
plain HTTP for what that client would never send."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from helpers.report_fixtures import WORDS
from helpers.serve_helpers import KEY, start_server

client_lib = pytest.importorskip(
    "neuronpedia_autointerp_client", reason="pip install -e '.[test]' (neuronpedia-autointerp-client)"
)

FIRING = {"river", "stone"}  # the planted latent fires on these words
RIGHT = "the words: river, stone"
WRONG = "the words: violin, castle"
OTHER = [w for w in WORDS if w not in FIRING | {"violin", "castle"} and len(w) > 3]


def planted_activations(n_active: int = 12, n_silent: int = 12, length: int = 12, seed: int = 0) -> list[dict]:
    """Sentences of random words; in the activating ones a firing word appears and carries the value."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_active + n_silent):
        words = [str(w) for w in rng.choice(OTHER, size=length)]
        values = [0.0] * length
        if i < n_active:
            at = int(rng.integers(1, length))
            words[at] = sorted(FIRING)[i % 2]
            values[at] = round(float(rng.uniform(1.0, 9.0)), 3)
        out.append({"tokens": [" " + w for w in words], "values": values})
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("np-serve")
    (root / "runs").mkdir()
    srv = start_server(
        root / "runs",
        root / "state",
        "--allow-judge",
        "scripted-judge",
        "--allow-judge",
        "scripted-explainer",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server):
    from neuronpedia_autointerp_client import ApiClient, Configuration, DefaultApi

    config = Configuration(host=server.url + "/v1", api_key={"SimpleSecretAuth": KEY})
    with ApiClient(config) as c:
        yield DefaultApi(c)


def _np_activations(raw: list[dict]):
    from neuronpedia_autointerp_client import NPActivation

    return [NPActivation(tokens=a["tokens"], values=a["values"]) for a in raw]


def test_the_published_client_explains(api):
    from neuronpedia_autointerp_client import ExplainDefaultPost200Response, ExplainDefaultPostRequest

    acts = _np_activations(planted_activations())
    answer = api.explain_default_post(
        ExplainDefaultPostRequest(activations=acts, openrouter_key="", model="scripted-explainer")
    )
    assert isinstance(answer, ExplainDefaultPost200Response)
    named = set(answer.explanation.replace(",", " ").split())
    assert FIRING <= named, answer.explanation


@pytest.mark.parametrize("kind", ["FUZZ", "DETECTION"])
def test_the_published_client_scores_a_right_label_above_a_wrong_one(api, kind):
    from neuronpedia_autointerp_client import (
        NPScoreFuzzDetectionType,
        ScoreFuzzDetectionPost200Response,
        ScoreFuzzDetectionPostRequest,
    )

    raw = planted_activations()
    scores = {}
    for label in (RIGHT, WRONG):
        request = ScoreFuzzDetectionPostRequest(
            activations=_np_activations(raw),
            explanation=label,
            openrouter_key="",
            model="scripted-judge",
            type=NPScoreFuzzDetectionType(kind),
        )
        answer = api.score_fuzz_detection_post(request)
        assert isinstance(answer, ScoreFuzzDetectionPost200Response)
        assert 0.0 <= answer.score <= 1.0 and answer.breakdown
        for item in answer.breakdown:  # every judged example, as the client's own model parsed it
            assert item.str_tokens in [a["tokens"] for a in raw]
            sent = next(a for a in raw if a["tokens"] == item.str_tokens)
            assert item.activations == sent["values"]
            assert item.ground_truth == (max(sent["values"]) > 0)
            assert item.correct == (item.prediction == item.ground_truth)
            assert item.highlighted == (kind == "FUZZ")
            assert (item.distance >= 1) == (max(sent["values"]) > 0)
        truth = [i.ground_truth for i in answer.breakdown]
        assert any(truth) and not all(truth)
        scores[label] = answer.score
    assert scores[RIGHT] > scores[WRONG] + 0.2, scores


def test_the_published_client_scores_by_embedding(api):
    from neuronpedia_autointerp_client import ScoreEmbeddingPost200Response, ScoreEmbeddingPostRequest

    raw = planted_activations()
    scores = {}
    for label in (RIGHT, WRONG):
        answer = api.score_embedding_post(
            ScoreEmbeddingPostRequest(activations=_np_activations(raw), explanation=label)
        )
        assert isinstance(answer, ScoreEmbeddingPost200Response)
        assert len(answer.breakdown) == len(raw)
        texts = {"".join(a["tokens"]) for a in raw}
        assert {b.text for b in answer.breakdown} == texts
        assert sum(b.distance >= 1 for b in answer.breakdown) == 12
        scores[label] = answer.score
    assert scores[RIGHT] > scores[WRONG], scores


def test_camel_case_bodies_get_camel_case_answers(server):
    body = {
        "activations": planted_activations(4, 4),
        "explanation": RIGHT,
        "openrouterKey": "",
        "model": "scripted-judge",
        "type": "DETECTION",
    }
    r = httpx.post(server.url + "/v1/score/fuzz-detection", json=body, headers={"X-SECRET-KEY": KEY}, timeout=60)
    assert r.status_code == 200, r.text
    item = r.json()["breakdown"][0]
    assert "strTokens" in item and "groundTruth" in item and "str_tokens" not in item


BAD = [
    ("/v1/score/fuzz-detection", {"activations": [{"tokens": [" a", " b"], "values": [1.0]}]}, "activations.0.values"),
    ("/v1/score/fuzz-detection", {"activations": []}, "activations"),
    ("/v1/score/fuzz-detection", {"activations": [{"tokens": [], "values": []}]}, "activations.0.tokens"),
    ("/v1/score/embedding", {"activations": [{"tokens": [" a"], "values": [float("nan")]}]}, "activations.0.values"),
    ("/v1/score/embedding", {"activations": [{"tokens": [" a", " b"], "values": [-1.0, 0.0]}]}, "activations.0.values"),
    ("/v1/score/embedding", {"explanation": "x" * 1001}, "explanation"),
    ("/v1/score/embedding", {"activations": planted_activations(3, 0)}, "activations"),  # nothing silent
    ("/v1/score/fuzz-detection", {"type": "SIMULATION"}, "type"),
    ("/v1/score/fuzz-detection", {"model": "openai/gpt-4o-mini"}, "model"),
    ("/v1/score/fuzz-detection", {"openrouter_key": "sk-or-v1-abc"}, "openrouter_key"),
    ("/v1/explain/default", {"activations": planted_activations(0, 3)}, "activations"),  # nothing to explain
    ("/v1/explain/default", {"model": "smollm2"}, "model"),
]


@pytest.mark.parametrize(("route", "change", "field"), BAD)
def test_bad_input_is_refused_naming_the_field_and_asks_no_judge(server, route, change, field):
    body = {
        "activations": planted_activations(3, 3),
        "explanation": RIGHT,
        "openrouter_key": "",
        "model": "scripted-explainer" if "explain" in route else "scripted-judge",
        "type": "DETECTION",
        **change,
    }
    before = len(server.judge_calls()) + len(server.judge_calls("scripted-explainer"))
    r = httpx.post(
        server.url + route,
        content=json.dumps(body),  # json.dumps writes NaN as the bare literal, as a careless client would
        headers={"X-SECRET-KEY": KEY, "Content-Type": "application/json"},
        timeout=60,
    )
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["field"] == field, r.json()
    assert field.split(".")[0] in r.json()["error"]
    assert len(server.judge_calls()) + len(server.judge_calls("scripted-explainer")) == before


def test_keys_and_body_size(server):
    url = server.url + "/v1/score/embedding"
    body = {"activations": planted_activations(3, 3), "explanation": RIGHT}
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    r = httpx.post(url, json=body, headers={"X-SECRET-KEY": "not-a-key-" * 3}, timeout=60)
    assert r.status_code == 401 and r.json()["field"] == "X-SECRET-KEY"
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60).status_code == 200
    huge = {"activations": [{"tokens": [" river"] * 1000, "values": [1.0] * 1000}] * 10, "explanation": RIGHT}
    r = httpx.post(url, json=huge, headers={"X-SECRET-KEY": KEY}, timeout=60)
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_a_repeated_request_is_answered_from_the_response_cache(server):
    body = {
        "activations": planted_activations(5, 5, seed=7),
        "explanation": RIGHT,
        "openrouter_key": "",
        "model": "scripted-judge",
        "type": "FUZZ",
    }
    url, headers = server.url + "/v1/score/fuzz-detection", {"X-SECRET-KEY": KEY}
    first = httpx.post(url, json=body, headers=headers, timeout=60)
    asked = len(server.judge_calls())
    again = httpx.post(url, json=body, headers=headers, timeout=60)
    assert first.status_code == again.status_code == 200 and asked > 0
    assert again.json() == first.json() and len(server.judge_calls()) == asked


@pytest.mark.slow
def test_the_published_client_with_the_real_embedded_judge(tmp_path):
    """The same contract with Qwen2.5-Coder-1.5B (llama.cpp, in the server) on a planted month latent."""
    from helpers.planted import planted_record
    from neuronpedia_autointerp_client import (
        ApiClient,
        Configuration,
        DefaultApi,
        ExplainDefaultPostRequest,
        NPActivation,
        NPScoreFuzzDetectionType,
        ScoreFuzzDetectionPostRequest,
    )

    record = planted_record(n_train=10, n_test=8, n_neg=8, seed=1)

    def sent(examples):
        return [NPActivation(tokens=e.str_tokens, values=e.activations) for e in examples]

    (tmp_path / "runs").mkdir()
    judge = "qwen2.5-coder-1.5b"
    srv = start_server(tmp_path / "runs", tmp_path / "state", "--allow-judge", judge, timeout=300)
    try:
        config = Configuration(host=srv.url + "/v1", api_key={"SimpleSecretAuth": KEY})
        with ApiClient(config) as c:
            api = DefaultApi(c)
            label = api.explain_default_post(
                ExplainDefaultPostRequest(activations=sent(record.train), openrouter_key="", model=judge)
            ).explanation
            assert label.strip()
            scores = {}
            for kind in (NPScoreFuzzDetectionType.DETECTION, NPScoreFuzzDetectionType.FUZZ):
                for text in (
                    "names of calendar months, such as March or October",
                    "names of animals, such as cat or dog",
                ):
                    request = ScoreFuzzDetectionPostRequest(
                        activations=sent(record.test + record.negatives),
                        explanation=text,
                        openrouter_key="",
                        model=judge,
                        type=kind,
                    )
                    scores[kind, text] = api.score_fuzz_detection_post(request, _request_timeout=600).score
    finally:
        srv.stop()
    print(f"\nNeuronpedia's client, Qwen2.5-Coder-1.5B judge: {scores}")
    right, wrong, right_fuzz, wrong_fuzz = scores.values()
    assert right > wrong + 0.2, (label, scores)
    assert right_fuzz > wrong_fuzz + 0.2, (label, scores)
