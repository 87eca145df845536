"""Detection: can the judge tell, from the explanation alone, which held-out excerpts activate the latent?

Positives are the record's held-out activating examples (spread over activation quantiles),
negatives its held-out silent examples; nothing is marked, the judge sees plain text.
"""

from __future__ import annotations

import numpy as np

from autointerp.prompting import format_plain
from autointerp.records import LatentRecord
from autointerp.scorers.classify import Item, YesNoScorer
from autointerp.scorers.registry import register


@register
class DetectionScorer(YesNoScorer):
    name = "detection"
    summary = "the judge says which held-out excerpts activate the latent"
    prompt_dir = "detection"

    def items(self, record: LatentRecord, rng: np.random.Generator) -> list[Item]:
        return [Item(format_plain(e), True, e) for e in record.test] + [
            Item(format_plain(e), False, e) for e in record.negatives
        ]
