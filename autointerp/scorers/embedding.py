"""Embedding: does the explanation, used as a search query, retrieve the excerpts that activate the latent?

The explanation becomes a retrieval query (prompts/embedding/query.md); each held-out excerpt
(activating: `record.test`, silent: `record.negatives`) is scored by its cosine similarity to the
query under a sentence-embedding model. No LLM judge is asked (the `judge` argument is accepted for
the common scorer signature and ignored): one model pass over ~101 short texts per latent, so it
costs milliseconds where detection costs a hundred judge calls. It is a cheap, coarse signal: it
sees topic and wording, not which token fires.

Metrics: AUROC of similarity, activating vs silent (headline); R-precision (the share of activating
excerpts among the top-R by similarity, R = number of activating ones), which is also what the
`prediction` column of each judgment records; the mean similarity of each class and their gap.
Each judgment's `value` is its cosine similarity.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autointerp.embeddings import DEFAULT_MODEL, Embedder, load_embedder
from autointerp.prompting import load_prompt, render
from autointerp.records import Explanation, Judgment, LatentRecord, Score, Usage
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings
from autointerp.scorers.metrics import auroc, mean_or_none, precision, top_r
from autointerp.scorers.registry import register
from autointerp.settings import SCORING, setting

if TYPE_CHECKING:
    from autointerp.config import RunConfig


def query_text(explanation: str) -> str:
    return render(load_prompt("embedding/query.md"), explanation=explanation)


@dataclass
class EmbeddingSettings(ScorerSettings):
    section = "embedding"

    model: str = setting(
        "default",
        "embedding scorer's model: 'default' (bundled all-MiniLM-L6-v2), a sentence-transformers folder, or a "
        "model id already in the Hugging Face cache",
        cli=SCORING,
        flag="--embedding-model",
    )


@register
class EmbeddingScorer(Scorer):
    name = "embedding"
    metrics = ("auroc", "r_precision", "similarity_gap", "positive_similarity", "negative_similarity")
    summary = "cosine of explanation and excerpts; no judge"
    judge_capability = None
    settings_classes = (EmbeddingSettings,)

    def __init__(self, embedder: Embedder | None = None, *, model: str = DEFAULT_MODEL, device: str = "cpu"):
        self._embedder = embedder
        self._model = model
        self._device = device

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        model = EmbeddingSettings.of(config).model
        if context.embedder is not None:  # the run's instance, shared with the sampler's similar negatives
            return cls(context.embedder(model))
        return cls(model=model, device=config.device)

    @property
    def embedder(self) -> Embedder:
        """The embedding model, created on first use (and loading its weights only on first encode)."""
        if self._embedder is None:
            self._embedder = load_embedder(self._model, device=self._device)
        return self._embedder

    def judge_model(self, judge: object = None) -> str:
        """What to record as this scorer's judge: the embedding model."""
        return self.embedder.name

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: object = None) -> Score:
        examples = [(e, True) for e in record.test] + [(e, False) for e in record.negatives]
        texts = [query_text(explanation.text)] + [e.text for e, _ in examples]
        vectors = await asyncio.to_thread(self.embedder.encode, texts)
        similarity = (vectors[1:] @ vectors[0]).astype(float)
        truth = [t for _, t in examples]
        predictions = top_r(truth, similarity)
        is_pos = np.asarray(truth, bool)
        mean_pos, mean_neg = mean_or_none(similarity[is_pos]), mean_or_none(similarity[~is_pos])
        metrics = {
            "auroc": auroc(truth, similarity),
            "r_precision": precision(truth, predictions),
            "similarity_gap": None if mean_pos is None or mean_neg is None else mean_pos - mean_neg,
            "positive_similarity": mean_pos,
            "negative_similarity": mean_neg,
        }
        judgments = [
            Judgment(
                window=e.window,
                activating=t,
                prediction=p,
                probability=None,
                max_activation=e.max_activation,
                quantile=e.quantile,
                text=e.text,
                value=round(float(s), 6),
            )
            for (e, t), p, s in zip(examples, predictions, similarity, strict=True)
        ]
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(examples),
            n_failed=0,
            judgments=judgments,
            usage=Usage(),
        )
