"""Neuronpedia's autointerp API, answered by our explainer, scorers and judges.

Neuronpedia's web app explains and scores a latent by posting its activations to an "autointerp server"
(`POST /v1/explain/default`, `/v1/score/fuzz-detection`, `/v1/score/embedding`); pointing it at
`autointerp serve` makes those answers ours. The examples come in the request, not from a run folder, so
these routes need no run: each request's activations become one latent's record, and the same
explainer and scorers the CLI uses read it.

- Examples: an activation whose values are all zero is a silent example, any other an activating one.
  A request uses its examples on one side only: all of them are the explainer's (explain), or all are
  held out for scoring (score), so no example is both explained from and scored on. The activating
  ones are put into equal-count quantile bins of their peak value, as the sampler does for a run.
- Scores mean what Neuronpedia's mean: fuzz and detection are the balanced accuracy of the judge's
  answers, embedding the AUROC of similarity (activating against silent); `breakdown` lists every
  judged example (`distance` is its 1-based quantile, -1 for a silent one).
- Judges: the request's `model` is honoured when the server allows it (`--allow-judge NAME`, or NAME
  given as `openai:MODEL`); an empty `model` takes the first allowed judge (the default judge when none
  is allowed). Anything else is refused with the list of allowed ones. Our judges use the server's own
  credentials: a caller's `openrouter_key` is never forwarded, so a non-empty one is refused rather
  than silently dropped. Judges are the service's shared ones, with its response cache and retries.
- Keys: `X-SECRET-KEY: KEY` (Neuronpedia's header) is accepted as well as `Authorization: Bearer KEY`.
- Bodies: camelCase or snake_case field names; the answer's per-example fields follow the request's
  case (`str_tokens` or `strTokens`). Bad input is refused (422, the field named) before any judge is
  asked; nothing is written to any run.
"""

import math
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from autointerp.config import RunConfig
from autointerp.errors import AutointerpError
from autointerp.explainers import ExplanationFailed, explain
from autointerp.llm.base import JudgeError
from autointerp.records import Example, Explanation, Judgment, LatentId, LatentRecord, LatentStats, Score
from autointerp.sampling import quantile_bins
from autointerp.scorers.base import ScorerContext, UnfitJudge
from autointerp.scorers.registry import build_scorers
from autointerp.serve.auth import LOCAL_CLIENT, client_id
from autointerp.serve.runs import Judges, RequestError
from autointerp.serve.settings import ServeSettings

PREFIX = "/v1"
MAX_ACTIVATIONS = 1000
MAX_TOKENS = 1024  # per activation, as Neuronpedia stores them
MAX_TOKEN_CHARS = 1000
MAX_KEY_CHARS = 500
LATENT = LatentId("neuronpedia", 0)  # the one latent a request is about
SCORERS = {"FUZZ": "fuzzing", "DETECTION": "detection"}


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, protected_namespaces=())


class NPActivation(_Body):
    tokens: list[Annotated[str, Field(max_length=MAX_TOKEN_CHARS)]] = Field(max_length=MAX_TOKENS)
    values: list[float] = Field(max_length=MAX_TOKENS)


class ExplainRequest(_Body):
    activations: list[NPActivation] = Field(max_length=MAX_ACTIVATIONS)
    openrouter_key: str = Field("", max_length=MAX_KEY_CHARS)
    model: str = Field("", max_length=200)


class ScoreEmbeddingRequest(_Body):
    activations: list[NPActivation] = Field(max_length=MAX_ACTIVATIONS)
    explanation: str


class ScoreFuzzDetectionRequest(ScoreEmbeddingRequest):
    openrouter_key: str = Field("", max_length=MAX_KEY_CHARS)
    model: str = Field("", max_length=200)
    type: str


def read_examples(activations: Sequence[NPActivation], n_quantiles: int) -> list[Example]:
    """The request's activations as examples (window = position in the request), activating ones binned
    into quantiles of their peak; RequestError naming the first bad field."""
    if not activations:
        raise RequestError("activations: the list is empty; send at least one {tokens, values}", "activations")
    examples = []
    for i, a in enumerate(activations):
        where = f"activations.{i}"
        if not a.tokens:
            raise RequestError(f"{where}.tokens: the list is empty", f"{where}.tokens")
        if len(a.tokens) != len(a.values):
            raise RequestError(
                f"{where}: {len(a.tokens)} tokens but {len(a.values)} values; they go one value per token",
                f"{where}.values",
            )
        bad = next((j for j, v in enumerate(a.values) if not math.isfinite(v)), None)
        if bad is not None:
            raise RequestError(f"{where}.values.{bad}: {a.values[bad]} is not a finite number", f"{where}.values")
        if max(a.values) <= 0 and min(a.values) < 0:
            raise RequestError(
                f"{where}.values: negative values only; activations are read as how strongly the latent fires "
                "(0 where it is silent), so a silent example is all zeros",
                f"{where}.values",
            )
        examples.append(
            Example(window=i, tokens=[0] * len(a.tokens), str_tokens=list(a.tokens), activations=list(a.values))
        )
    active = [e for e in examples if e.activating]
    if active:
        windows = np.array([e.window for e in active])
        peaks = np.array([e.max_activation for e in active])
        for q, members in enumerate(quantile_bins(windows, peaks, n_quantiles)):
            for w in members:
                examples[int(w)].quantile = q
    return examples


def _record(examples: list[Example], *, held_out: bool) -> LatentRecord:
    """One latent's record of the request's examples, all on the explainer's side or all held out."""
    active = [e for e in examples if e.activating]
    silent = [e for e in examples if not e.activating]
    stats = LatentStats(
        n_tokens=sum(len(e.str_tokens) for e in examples),
        fire_tokens=sum(sum(v > 0 for v in e.activations) for e in examples),
        fire_windows=len(active),
        max_activation=max((e.max_activation for e in examples), default=0.0),
    )
    if held_out:
        return LatentRecord(latent=LATENT, stats=stats, test=active, negatives=silent)
    return LatentRecord(latent=LATENT, stats=stats, train=active, train_negatives=silent)


def _needs_both(examples: list[Example], what: str) -> None:
    if not any(e.activating for e in examples) or all(e.activating for e in examples):
        raise RequestError(
            f"activations: {what} compares activating with silent examples (all values 0); this request has "
            f"{sum(e.activating for e in examples)} activating and {sum(not e.activating for e in examples)} silent",
            "activations",
        )


def _distance(j: Judgment) -> int:
    return j.quantile + 1 if j.quantile >= 0 else -1


def _key(name: str, camel: bool) -> str:
    return to_camel(name) if camel else name


class NeuronpediaApi:
    """The three routes' work: a default config for judge settings, the service's judges, one embedder."""

    def __init__(self, settings: ServeSettings, judges: Judges, config: RunConfig | None = None):
        self.settings = settings
        self.judges = judges
        self.config = config or RunConfig()
        if settings.response_cache is not None:
            self.config.response_cache_path = settings.response_cache
        self.context = ScorerContext()
        self._embedder: Any = None

    # -- judges -------------------------------------------------------------------------------------

    def allowed(self) -> list[str]:
        return list(self.settings.allowed_judges) or [self.config.judge]

    def judge_name(self, model: str, key: str) -> str:
        """Our judge for the request's `model`; RequestError saying why when it is not served."""
        if key.strip():
            raise RequestError(
                "openrouter_key: this server asks its own judges with its own credentials and never forwards a "
                "caller's key; send an empty openrouter_key",
                "openrouter_key",
            )
        allowed = self.allowed()
        if not model.strip():
            return allowed[0]
        for name in (model, f"openai:{model}"):
            if name in allowed:
                return name
        raise RequestError(
            f"model {model[:100]!r} is not served here; allowed: {', '.join(allowed)} (the server's --allow-judge)",
            "model",
        )

    def check_explanation(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise RequestError("explanation: empty", "explanation")
        limit = self.settings.max_explanation_chars
        if len(text) > limit or "\n" in text:
            raise RequestError(f"explanation: one line of at most {limit} characters", "explanation")
        return text

    # -- the work -----------------------------------------------------------------------------------

    async def explain(self, body: ExplainRequest) -> dict[str, Any]:
        name = self.judge_name(body.model, body.openrouter_key)
        examples = read_examples(body.activations, self.config.sampling.n_quantiles)
        if not any(e.activating for e in examples):
            raise RequestError("activations: none is activating (every value is 0): nothing to explain", "activations")
        judge = await self.judges.get(name, self.config)
        try:
            label = await explain(_record(examples, held_out=False), judge, self.config.explain)
        except (ExplanationFailed, JudgeError) as e:
            raise RequestError(f"the explainer {name} gave no usable explanation: {e}", None, 502) from None
        return {"explanation": label.text}

    async def score_classifier(self, body: ScoreFuzzDetectionRequest, camel: bool) -> dict[str, Any]:
        scorer_name = SCORERS.get(body.type.upper())
        if scorer_name is None:
            raise RequestError(f"type: {body.type[:40]!r} is not one of FUZZ, DETECTION", "type")
        name = self.judge_name(body.model, body.openrouter_key)
        text = self.check_explanation(body.explanation)
        examples = read_examples(body.activations, self.config.sampling.n_quantiles)
        _needs_both(examples, f"{body.type.lower()} scoring")
        judge = await self.judges.get(name, self.config)
        (scorer,) = build_scorers([scorer_name], self.config, self.context)
        score = await self._score(scorer, examples, text, judge)
        by_window = {e.window: e for e in examples}
        breakdown = [
            {
                _key("str_tokens", camel): by_window[j.window].str_tokens,
                "activations": by_window[j.window].activations,
                "distance": _distance(j),
                _key("ground_truth", camel): j.activating,
                "prediction": bool(j.prediction),
                "highlighted": scorer_name == "fuzzing",
                "probability": float(j.probability) if j.probability is not None else float(bool(j.prediction)),
                "correct": j.prediction is not None and j.prediction == j.activating,
            }
            for j in score.judgments
        ]
        return {"score": self._headline(score, "balanced_accuracy"), "breakdown": breakdown}

    async def score_embedding(self, body: ScoreEmbeddingRequest) -> dict[str, Any]:
        text = self.check_explanation(body.explanation)
        examples = read_examples(body.activations, self.config.sampling.n_quantiles)
        _needs_both(examples, "embedding scoring")
        (scorer,) = build_scorers(["embedding"], self.config, self._embedding_context())
        score = await self._score(scorer, examples, text, None)
        breakdown = [
            {"text": j.text, "distance": _distance(j), "similarity": float(j.value or 0.0)} for j in score.judgments
        ]
        return {"score": self._headline(score, "auroc"), "breakdown": breakdown}

    def _embedding_context(self) -> ScorerContext:
        """One embedder for the process (loaded on the first embedding request)."""
        if self._embedder is None:
            from autointerp.embeddings import load_embedder
            from autointerp.scorers.embedding import EmbeddingSettings

            try:
                self._embedder = load_embedder(EmbeddingSettings.of(self.config).model, device="cpu")
            except AutointerpError as e:
                raise RequestError(f"the embedding model cannot be loaded: {e}", None, 503) from None
        embedder = self._embedder
        return ScorerContext(embedder=lambda _name: embedder)

    async def _score(self, scorer: Any, examples: list[Example], text: str, judge: Any) -> Score:
        try:
            scorer.check_judge(judge)
            return await scorer(
                _record(examples, held_out=True), Explanation(latent=LATENT, text=text, model="neuronpedia"), judge
            )
        except UnfitJudge as e:
            raise RequestError(str(e), "model", 422) from None
        except JudgeError as e:
            raise RequestError(f"the judge failed: {e}", None, 502) from None

    @staticmethod
    def _headline(score: Score, metric: str) -> float:
        value = score.metrics.get(metric)
        if value is None or not math.isfinite(value):
            raise RequestError(
                f"no {metric} could be computed: {score.n_failed} of {score.n_examples} judge answers were unusable",
                None,
                502,
            )
        return float(value)


def neuronpedia_router(settings: ServeSettings, judges: Judges) -> APIRouter:
    """The routes under /v1, sharing the service's judges; mounted by `create_app`."""
    api = NeuronpediaApi(settings, judges)
    router = APIRouter(prefix=PREFIX, tags=["neuronpedia"])

    async def caller(request: Request) -> str:
        """Our API key, as `Authorization: Bearer` or as Neuronpedia's `X-SECRET-KEY` header."""
        if settings.keys is None:
            return LOCAL_CLIENT
        who = settings.keys.client(request.headers.get("authorization"))
        secret = request.headers.get("x-secret-key")
        if who is None and secret:
            stored = settings.keys.matches(secret.strip())
            who = None if stored is None else client_id(stored)
        if who is None:
            raise RequestError(
                "an API key is needed: send 'X-SECRET-KEY: KEY' or 'Authorization: Bearer KEY'", "X-SECRET-KEY", 401
            )
        return who

    Caller = Annotated[str, Depends(caller)]

    async def camel_case(request: Request) -> bool:
        """Whether the body names its fields in camelCase (the answer then does too)."""
        body = await request.body()
        return b'"openrouterKey"' in body or b'"strTokens"' in body

    @router.post("/explain/default")
    async def explain_default(body: ExplainRequest, _: Caller) -> dict[str, Any]:
        """An explanation of the latent whose activations are sent."""
        return await api.explain(body)

    @router.post("/score/fuzz-detection")
    async def score_fuzz_detection(request: Request, body: ScoreFuzzDetectionRequest, _: Caller) -> dict[str, Any]:
        """The balanced accuracy of the judge telling activating from silent examples (DETECTION) or right
        from wrong marked tokens (FUZZ) from the explanation, with every judged example."""
        return await api.score_classifier(body, await camel_case(request))

    @router.post("/score/embedding")
    async def score_embedding(body: ScoreEmbeddingRequest, _: Caller) -> dict[str, Any]:
        """The AUROC of the explanation's embedding similarity to activating against silent examples."""
        return await api.score_embedding(body)

    return router
