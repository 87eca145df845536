"""Scorers: each has the signature `await scorer(record, explanation, judge) -> Score`."""

from autointerp.scorers.classify import ClassifierSettings
from autointerp.scorers.detection import DetectionScorer
from autointerp.scorers.fuzzing import FuzzingScorer

SCORERS = {"detection": DetectionScorer, "fuzzing": FuzzingScorer}

__all__ = ["SCORERS", "ClassifierSettings", "DetectionScorer", "FuzzingScorer"]
