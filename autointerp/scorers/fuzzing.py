"""Fuzzing: does the explanation say *which tokens* fire, not just which texts?

Positives are held-out activating examples with their strongly active tokens marked. Negatives
carry the same number of marks in the wrong places: by default on random tokens of silent excerpts
(delphi's choice), or, with `negatives="misplaced"`, on the silent tokens of activating excerpts,
which tests token-level precision harder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from autointerp.prompting import format_marked, marks_above
from autointerp.records import Example, LatentRecord
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings
from autointerp.scorers.classify import ClassifierSettings, Item, YesNoScorer
from autointerp.scorers.registry import register
from autointerp.settings import SCORING, setting

if TYPE_CHECKING:
    from autointerp.config import RunConfig

FuzzNegatives = Literal["silent", "misplaced"]


@dataclass
class FuzzingSettings(ScorerSettings):
    """What fuzzing alone decides; how it asks the judge is the classifier section it shares with detection."""

    section = "fuzzing"

    negatives: FuzzNegatives = setting(
        "silent",
        "fuzzing's wrong marks: on random tokens of silent excerpts ('silent') or on silent tokens of "
        "activating excerpts ('misplaced')",
        cli=SCORING,
        flag="--fuzz-negatives",
    )


@register
class FuzzingScorer(YesNoScorer):
    name = "fuzzing"
    summary = "the judge says whether the marked tokens of an excerpt are the ones that fire"
    prompt_dir = "fuzzing"
    settings_classes = (ClassifierSettings, FuzzingSettings)

    def __init__(
        self,
        settings: ClassifierSettings | None = None,
        *,
        mark_fraction: float = 0.3,
        negatives: FuzzNegatives = "silent",
    ):
        super().__init__(settings)
        self.mark_fraction = mark_fraction
        self.negatives = negatives

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        return cls(
            cls.settings_from(config),
            mark_fraction=config.explain.mark_fraction,
            negatives=FuzzingSettings.of(config).negatives,
        )

    def items(self, record: LatentRecord, rng: np.random.Generator) -> list[Item]:
        positives = [(e, marks_above(e, self.mark_fraction)) for e in record.test]
        n_marks = max(1, round(float(np.mean([sum(m) for _, m in positives])))) if positives else 1
        items = [Item(format_marked(e.str_tokens, m), True, e) for e, m in positives]
        if self.negatives == "misplaced":
            for e, m in positives:
                free = [i for i, marked in enumerate(m) if not marked and e.activations[i] == 0]
                items.append(self._wrong(e, free, n_marks, rng))
        else:
            for e in record.negatives:
                items.append(self._wrong(e, list(range(1, len(e.str_tokens))), n_marks, rng))
        return items

    @staticmethod
    def _wrong(example: Example, candidates: list[int], n: int, rng: np.random.Generator) -> Item:
        chosen: set[int] = set()
        if candidates:
            chosen = set(rng.choice(candidates, size=min(n, len(candidates)), replace=False).tolist())
        marks = [i in chosen for i in range(len(example.str_tokens))]
        return Item(format_marked(example.str_tokens, marks), False, example)
