"""Scorers: each has the signature `await scorer(record, explanation, judge) -> Score`.

Each scorer class names the metric columns it writes (`metrics`, headline first); results.parquet
gets a `<scorer>_<metric>` column for each, whether or not a latent has a value.
"""

from autointerp.scorers.classify import ClassifierSettings
from autointerp.scorers.detection import DetectionScorer
from autointerp.scorers.embedding import EmbeddingScorer
from autointerp.scorers.fuzzing import FuzzingScorer
from autointerp.scorers.intervention import InterventionChoiceScorer, InterventionScorer, InterventionSettings
from autointerp.scorers.simulation import SimulationScorer, SimulationSettings
from autointerp.scorers.surprisal import SurprisalScorer

SCORERS = {
    "detection": DetectionScorer,
    "fuzzing": FuzzingScorer,
    "intervention": InterventionScorer,
    "intervention_choice": InterventionChoiceScorer,
    "embedding": EmbeddingScorer,
    "simulation": SimulationScorer,
    "surprisal": SurprisalScorer,
}


def scorer_metrics(name: str) -> tuple[str, ...]:
    """The metric columns of a scorer by name (empty for a name this version does not know)."""
    cls = SCORERS.get(name)
    return tuple(getattr(cls, "metrics", ())) if cls else ()


__all__ = [
    "SCORERS",
    "ClassifierSettings",
    "DetectionScorer",
    "EmbeddingScorer",
    "FuzzingScorer",
    "InterventionChoiceScorer",
    "InterventionScorer",
    "InterventionSettings",
    "SimulationScorer",
    "SimulationSettings",
    "SurprisalScorer",
    "scorer_metrics",
]
