"""The one list of scorers: every `Scorer` class in this package registers itself by name, with the
settings classes it owns.

Each module of the package is imported on the first question to the registry, so a new scorer
module is found without being listed anywhere; the CLI's choices, options and help, the checks of a
run's config, the run, the results table, the report and the benches all ask here. A run's config
holds each scorer's settings as plain values (`RunConfig.scoring`) and imports no scorer; the
registry knows which class owns each section and checks them (`check_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from autointerp.errors import ConfigError
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings

if TYPE_CHECKING:
    from autointerp.config import RunConfig

S = TypeVar("S", bound=type[Scorer])

_CLASSES: dict[str, type[Scorer]] = {}
_SECTIONS: dict[str, type[ScorerSettings]] = {}
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
    for settings in cls.settings_classes:
        _own_section(name, settings)
    _CLASSES[name] = cls
    return cls


def _own_section(scorer: str, settings: type[ScorerSettings]) -> None:
    """Record which class owns a settings section: one class per section, shared by the scorers naming it."""
    if not (isinstance(settings, type) and issubclass(settings, ScorerSettings) and dataclasses.is_dataclass(settings)):
        raise TypeError(f"scorer {scorer!r}: {settings!r} is not a dataclass of ScorerSettings")
    section = settings.section
    if not section or not section.isidentifier():
        raise TypeError(f"scorer {scorer!r}: {settings.__name__} needs a `section` name (an identifier)")
    owner = _SECTIONS.get(section)
    if owner is not None and owner.__qualname__ != settings.__qualname__:
        raise TypeError(
            f"two settings classes claim the section {section!r}: {owner.__qualname__} and {settings.__name__}"
        )
    _SECTIONS[section] = settings


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


def settings_sections() -> dict[str, type[ScorerSettings]]:
    """Every registered scorer's settings class by section, in the order the scorers' names sort."""
    scorer_classes()
    return dict(_SECTIONS)


def check_config(config: RunConfig) -> RunConfig:
    """Every check of a run's config before a stage runs: its own fields (`RunConfig.validate`), the
    scorer names, and each scorer's settings against the class that owns them. Raises `ConfigError`.

    Each section is then written out in full, defaults included, so that config.json records every
    setting a score depended on, as it records the run's other settings.
    """
    config.validate()
    unknown = [s for s in config.scorers if find_scorer(s) is None]
    if unknown:
        raise ConfigError(f"unknown scorer(s) {unknown}; available: {scorer_names()}")
    chooser = find_scorer(config.explain.best_of_scorer)
    if chooser is None:
        raise ConfigError(f"unknown --best-of-scorer {config.explain.best_of_scorer!r}; available: {scorer_names()}")
    if config.explain.best_of > 1 and not chooser.can_pick_best_of:
        able = [name for name, cls in scorer_classes().items() if cls.can_pick_best_of]
        raise ConfigError(
            f"--best-of-scorer cannot be {chooser.name}: it cannot rate labels on a validation split; use one "
            "of " + ", ".join(able)
        )
    config.scoring = check_scoring(config.scoring)
    return config


def check_scoring(scoring: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Scorer settings given as plain values, checked by the classes that own their sections, and
    returned in full (every registered section, defaults included). Raises `ConfigError`."""
    sections = settings_sections()
    for section, given in scoring.items():
        owner = sections.get(section)
        if owner is None:
            close = difflib.get_close_matches(section, list(sections), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"scoring has no settings section {section!r}{hint}; sections: {', '.join(sections)}")
        known = owner.field_names()
        for key in given:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"unknown setting scoring.{section}.{key}{hint}")
    return {section: owner(**scoring.get(section, {})).to_dict() for section, owner in sections.items()}


def build_scorers(names: Iterable[str], config: RunConfig, context: ScorerContext) -> list[Scorer]:
    """The named scorers with the run's settings; every scorer of one call shares `context`."""
    return [scorer_class(name).from_config(config, context) for name in names]
