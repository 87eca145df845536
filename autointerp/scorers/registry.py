"""The one list of scorers: every `Scorer` class in this package registers itself by name.

Each module of the package is imported on the first question to the registry, so a new scorer
module is found without being listed anywhere; the CLI's choices and help, config validation, the
run, the results table, the report and the benches all ask here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from autointerp.errors import ConfigError
from autointerp.scorers.base import Scorer, ScorerContext

if TYPE_CHECKING:
    from autointerp.config import RunConfig

S = TypeVar("S", bound=type[Scorer])

_CLASSES: dict[str, type[Scorer]] = {}
_loaded = False


class UnknownScorer(ConfigError):
    """A scorer name no module registers; the message lists the ones that exist."""


def register(cls: S) -> S:
    """Class decorator: make a `Scorer` subclass available by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if not getattr(cls, "metrics", ()):
        raise TypeError(f"scorer {name!r} declares no metrics (its results columns, headline first)")
    other = _CLASSES.get(name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"two scorers are named {name!r}: {other.__module__}.{other.__qualname__} and {cls.__module__}")
    _CLASSES[name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    import autointerp.scorers as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    _loaded = True


def scorer_classes() -> dict[str, type[Scorer]]:
    """Every registered scorer by name, in name order."""
    _load()
    return {name: _CLASSES[name] for name in sorted(_CLASSES)}


def scorer_names() -> list[str]:
    return list(scorer_classes())


def find_scorer(name: str) -> type[Scorer] | None:
    """The scorer class of that name, or None (a name this version does not know: a newer run's, say)."""
    return scorer_classes().get(name)


def scorer_class(name: str) -> type[Scorer]:
    cls = find_scorer(name)
    if cls is None:
        raise UnknownScorer(f"unknown scorer {name!r}; available: {', '.join(scorer_names())}")
    return cls


def scorer_metrics(name: str) -> tuple[str, ...]:
    """The metric columns of a scorer by name, headline first (empty for a name this version does not know)."""
    cls = find_scorer(name)
    return tuple(cls.metrics) if cls else ()


def build_scorers(names: Iterable[str], config: RunConfig, context: ScorerContext) -> list[Scorer]:
    """The named scorers with the run's settings; every scorer of one call shares `context`."""
    return [scorer_class(name).from_config(config, context) for name in names]
