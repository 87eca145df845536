"""A settings field as an argparse option: the keyword arguments, the `--help` line and the default shown.

Every command whose options are settings fields (the stage commands through option_table.py, `serve`
through serve/command.py) builds them here, from the field's annotation and its `setting(...)` metadata,
so a flag, its help, its choices and the default it shows are worked out the same way for all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING
from typing import Any

from autointerp.settings import Option, choices, flag_of, hints, option_of


def shown_default(value: Any, option: Option) -> str | None:
    """The default `--help` shows for an option with this default value (None: nothing to show)."""
    if value is None or value in ("", ()):
        return option.none_means
    if isinstance(value, bool):
        return None  # a flag: off unless given
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_line(text: str, option: Option, default: str | None) -> str:
    """A help text with what the metadata adds: (repeatable), the default; escaped for argparse's %."""
    notes = [note for note in ("repeatable" if option.repeat else None, default and f"default: {default}") if note]
    if notes:
        text += f" ({'; '.join(notes)})"
    return text.replace("%", "%%")


def argument(dest: str, annotation: Any, option: Option, help: str) -> dict[str, Any]:
    """argparse keyword arguments for an option, from its field's annotation and metadata."""
    kwargs: dict[str, Any] = {"dest": dest, "help": help}
    if annotation is bool:
        kwargs["action"] = "store_true"
        return kwargs
    if option.repeat:
        kwargs["action"] = "append"
    allowed = choices(annotation)
    if allowed is not None:
        kwargs["choices"] = list(allowed)
    parse = option.parse
    if parse is None:
        base = [a for a in (getattr(annotation, "__args__", None) or (annotation,)) if a is not type(None)]
        parse = base[0] if len(base) == 1 and base[0] in (int, float) else None
    if parse is not None:
        kwargs["type"] = parse
    if option.metavar:
        kwargs["metavar"] = option.metavar
    return kwargs


def field_default(f: dataclasses.Field) -> Any:
    """A field's default (None when it has none: a required setting)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_options(
    parser: argparse.ArgumentParser, classes: Sequence[type], command: str, groups: Mapping[str, str | None]
) -> dict[str, Any]:
    """The options of `command` declared by the fields of `classes`, added group by group (in the order of
    `groups`; a title None is the parser's own options), each group's in the classes' and fields' order.
    Returns the argument groups by key, for options that are not settings. Each option's dest is its
    field's name, and left out it is None (or False), so `values(args, cls)` leaves the field's default."""
    made: dict[str, Any] = {}
    for key, title in groups.items():
        target: Any = parser if title is None else parser.add_argument_group(title)
        made[key] = target
        for cls in classes:
            annotations = hints(cls)
            for f in dataclasses.fields(cls):
                option = option_of(f)
                if option is None or command not in option.placement.commands or option.placement.group != key:
                    continue
                text = f.metadata["help"]
                help = help_line(text, option, shown_default(field_default(f), option))
                target.add_argument(flag_of(f), **argument(f.name, annotations[f.name], option, help))
    return made


def values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` given on the command line, as the field's type holds them (a repeated option's
    values as a tuple where the field is one); those left out are absent, so they keep their defaults."""
    annotations = hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if option_of(f) is None or value is None:
            continue
        if isinstance(value, list) and typing.get_origin(annotations[f.name]) is tuple:
            value = tuple(value)
        out[f.name] = value
    return out
