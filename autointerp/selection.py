"""Best-of-n explanations: sample several labels and keep the one a scorer rates best (Transluce's recipe).

The candidates are rated on the record's *validation* split, which neither the explainer nor the
final scorers see. Rating them on the test split and then reporting test scores would pick the label
that got lucky on exactly those examples and report that luck as quality.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

from autointerp.explainers import ExplainerSettings, ExplanationFailed, explain
from autointerp.llm.base import Judge
from autointerp.records import Candidate, Explanation, LatentRecord, Usage
from autointerp.scorers.base import Scorer

__all__ = ["Candidate", "best_of_n", "headline", "validation_view"]


def validation_view(record: LatentRecord) -> LatentRecord:
    """The record with its validation split in the place scorers read held-out examples from."""
    return replace(
        record,
        train=[],
        train_negatives=[],
        test=record.validation,
        negatives=record.validation_negatives,
        validation=[],
        validation_negatives=[],
    )


def headline(metrics: dict[str, float | None], names: tuple[str, ...]) -> tuple[str, float | None]:
    """The first of the scorer's metrics that has a value (AUROC is absent without logprobs, say)."""
    for name in names:
        value = metrics.get(name)
        if value is not None and not math.isnan(value):
            return name, float(value)
    return (names[0] if names else ""), None


async def best_of_n(
    record: LatentRecord, explainer: Judge, judge: Judge | None, scorer: Scorer, settings: ExplainerSettings
) -> tuple[Explanation, list[Candidate]]:
    """The best of `settings.best_of` labels by `scorer` on the validation split, and every candidate.

    The first label is the deterministic one (temperature 0), so best-of-n is never worse than n=1 on
    validation; the others are samples. Labels that fail to parse are dropped; if all fail, the
    failure is raised as for a single label. Ties keep the earlier candidate.
    """
    n = max(1, settings.best_of)
    if n > 1 and not record.validation:
        raise ExplanationFailed(
            f"latent {record.latent} has no validation examples to choose among "
            f"{n} explanations (it fires in too few windows); use best_of=1"
        )
    results = await asyncio.gather(
        *(
            explain(record, explainer, settings, temperature=0.0 if i == 0 else settings.best_of_temperature)
            for i in range(n)
        ),
        return_exceptions=True,
    )
    explanations = [r for r in results if isinstance(r, Explanation)]
    if not explanations:
        first = results[0]
        raise first if isinstance(first, BaseException) else ExplanationFailed("no explanation")
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ExplanationFailed):
            raise r  # a bug or a backend failure, not a bad answer
    unique: dict[str, Explanation] = {}
    for e in explanations:
        unique.setdefault(e.text, e)
    if len(unique) == 1 or n == 1:
        only = explanations[0]
        return only, [Candidate(only.text, None, "", only.usage)]
    view = validation_view(record)
    scores = await asyncio.gather(*(scorer(view, e, judge) for e in unique.values()))
    candidates = []
    for e, s in zip(unique.values(), scores, strict=True):
        metric, value = headline(s.metrics, scorer.metrics)
        usage = Usage()
        usage.add(e.usage)
        usage.add(s.usage)
        candidates.append(Candidate(e.text, value, metric, usage))
    best = max(range(len(candidates)), key=lambda i: (candidates[i].score is not None, candidates[i].score or 0.0, -i))
    chosen = list(unique.values())[best]
    total = Usage()
    for e in explanations:
        total.add(e.usage)
    for s in scores:
        total.add(s.usage)
    return replace(chosen, usage=total, failures=sum(e.failures for e in explanations)), candidates
