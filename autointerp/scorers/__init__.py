"""Scorers: each is a `Scorer` (base.py), called as `await scorer(record, explanation, judge) -> Score`.

Each module of this package that defines a scorer registers it (`registry.register`); the registry
is the one list the run, the CLI and the results read. The names below are imported for callers'
convenience only: a new scorer needs no line here.
"""

from autointerp.scorers.base import Scorer, ScorerContext, UnfitJudge
from autointerp.scorers.classify import ClassifierSettings
from autointerp.scorers.detection import DetectionScorer
from autointerp.scorers.embedding import EmbeddingScorer
from autointerp.scorers.fuzzing import FuzzingScorer
from autointerp.scorers.intervention import InterventionChoiceScorer, InterventionScorer, InterventionSettings
from autointerp.scorers.registry import (
    build_scorers,
    find_scorer,
    register,
    scorer_class,
    scorer_classes,
    scorer_metrics,
    scorer_names,
)
from autointerp.scorers.simulation import SimulationScorer, SimulationSettings
from autointerp.scorers.surprisal import SurprisalScorer

__all__ = [
    "ClassifierSettings",
    "DetectionScorer",
    "EmbeddingScorer",
    "FuzzingScorer",
    "InterventionChoiceScorer",
    "InterventionScorer",
    "InterventionSettings",
    "Scorer",
    "ScorerContext",
    "SimulationScorer",
    "SimulationSettings",
    "SurprisalScorer",
    "UnfitJudge",
    "build_scorers",
    "find_scorer",
    "register",
    "scorer_class",
    "scorer_classes",
    "scorer_metrics",
    "scorer_names",
]
