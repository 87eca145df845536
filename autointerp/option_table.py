"""The table of the stage commands' options: `RunConfig`'s own settings and each scorer's.

An option is a settings field placed on the command line (`setting(..., cli=...)`). `RunConfig`'s
fields (config.py, settings.py) give the options about the run; each registered scorer's settings
classes (scorers/<name>.py) give its own, under `scoring.<section>.<field>`. The CLI builds its
parsers from this table and the Python API reads keyword options through it (`Run(out, n_test=5)`),
so both set the same field through the same code and get the same checks, and a scorer's options
arrive with its module: nothing here names a scorer.

This module sits above the scorer registry (it asks it for the scorers' settings) and below the faces.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from dataclasses import dataclass, fields
from typing import Any

from autointerp.config import FROZEN, RunConfig, settings_class
from autointerp.errors import ConfigError
from autointerp.scorers.registry import check_scoring, settings_sections
from autointerp.settings import Option, display_name, option_of

SCORING = "scoring"  # the RunConfig field holding every scorer's settings, by section


@dataclass(frozen=True)
class OptionField:
    """A command-line option and the (dotted) config field it sets."""

    name: str  # the option's name as a keyword: --n-test is n_test
    dotted: str  # the field: "sampling.n_test", "scoring.classifier.mode"
    field: dataclasses.Field
    owner: type  # the class that declares the field
    option: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def frozen(self) -> bool:
        return self.dotted.split(".")[0] in FROZEN

    @property
    def default(self) -> Any:
        return getattr(self.owner(), self.field.name)


@functools.cache
def options() -> dict[str, OptionField]:
    """Every command-line option of the stage commands, by keyword name: the run's in declaration order,
    then each scorer's settings section's."""
    out: dict[str, OptionField] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in fields(cls):
            nested = settings_class(f)
            if nested is not None:
                walk(nested, f"{prefix}{f.name}.")
                continue
            option = option_of(f)
            if option is None:
                continue
            name = display_name(f).removeprefix("--").replace("-", "_")
            if name in out:
                raise TypeError(f"two settings have the option --{name}: {out[name].dotted} and {prefix}{f.name}")
            out[name] = OptionField(name, prefix + f.name, f, cls, option)

    walk(RunConfig, "")
    for section, cls in settings_sections().items():
        walk(cls, f"{SCORING}.{section}.")
    return out


def config_from_options(values: dict[str, Any]) -> tuple[RunConfig, set[str]]:
    """A config from options named as on the command line (`n_test` for `--n-test`, `no_cache` for
    `--no-cache`, `judge_mode` for `--judge-mode`) or as `RunConfig` fields (`sampling=SamplingSettings(...)`,
    `scoring={"classifier": {...}}`), or a scorer's settings section given whole by its name
    (`classifier=ClassifierSettings(mode="json")`); and the dotted fields they set (those a run
    folder's stored settings must agree with)."""
    table = options()
    sections = settings_sections()
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    scoring: dict[str, dict[str, Any]] = {}  # set by options: these win over a section given whole
    whole: dict[str, dict[str, Any]] = {}
    explicit: set[str] = set()
    known = {f.name: f for f in fields(RunConfig)}
    for key, value in values.items():
        if key in table:
            spec = table[key]
            value = (not value) if spec.option.negate else value
            for dotted in (spec.dotted, *spec.option.also):
                _place(dotted, value, top, nested, scoring)
                explicit.add(dotted)
        elif key == SCORING:
            if not isinstance(value, dict):
                raise ConfigError(f"scoring must map section names to settings, not {value!r}")
            for section, given in value.items():
                whole.setdefault(section, {}).update(_plain(section, given, sections))
                explicit |= {f"{SCORING}.{section}.{k}" for k in whole[section]}
        elif key in known:
            top[key] = value
            explicit.add(key)
        elif key in sections:
            whole.setdefault(key, {}).update(_plain(key, value, sections))
            explicit |= {f"{SCORING}.{key}.{k}" for k in whole[key]}
        else:
            close = difflib.get_close_matches(key, [*table, *known, *sections], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown setting {key!r}{hint}")
    for head, sub in nested.items():
        base = top.get(head)
        cls = settings_class(known[head])
        assert cls is not None
        if base is not None and not isinstance(base, cls):
            raise ConfigError(f"{head} must be a {cls.__name__}, not {base!r}")
        top[head] = dataclasses.replace(base, **sub) if base is not None else cls(**sub)
    if whole or scoring:
        given = {s: {**whole.get(s, {}), **scoring.get(s, {})} for s in {**whole, **scoring}}
        check_scoring(given)  # a bad value is refused here, as the run's own settings are when made
        top[SCORING] = given
    return RunConfig(**top), explicit


def _place(
    dotted: str, value: Any, top: dict[str, Any], nested: dict[str, dict[str, Any]], scoring: dict[str, dict[str, Any]]
) -> None:
    head, _, rest = dotted.partition(".")
    if head == SCORING:
        section, _, name = rest.partition(".")
        scoring.setdefault(section, {})[name] = value
    elif rest:
        nested.setdefault(head, {})[rest] = value
    else:
        top[head] = value


def _plain(section: str, given: Any, sections: dict[str, type]) -> dict[str, Any]:
    """A section's settings as plain values: a settings object of the class that owns it, or a dict."""
    if dataclasses.is_dataclass(given) and not isinstance(given, type):
        owner = sections.get(section)
        if owner is not None and not isinstance(given, owner):
            raise ConfigError(f"{section} must be a {owner.__name__}, not {given!r}")
        return dataclasses.asdict(given)
    if isinstance(given, dict):
        return copy.deepcopy(given)
    raise ConfigError(f"scoring section {section!r} must be a dict of settings, not {given!r}")
