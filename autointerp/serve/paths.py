"""From names in a request to files on disk, with nothing outside the served directory reachable.

A run is named by its folder's name directly under the served directory: a plain name (letters,
digits, `.`, `_`, `-`, not starting with a dot, never `..`), so a request cannot climb out with `..`,
name an absolute path, or reach a hidden folder (the service's own state lives in `.serve/`). A name
that is a symlink is followed only if it resolves inside the directory. Files of a run's report are
looked up the same way, segment by segment, and must resolve inside the report folder.
"""

from __future__ import annotations

import re
from pathlib import Path

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class BadName(ValueError):
    """A name that can never denote something served (it may try to leave the directory)."""


class NotFound(LookupError):
    """A well-formed name with nothing served behind it."""


def check_run_name(name: str) -> str:
    if not RUN_NAME.fullmatch(name) or ".." in name:
        raise BadName(
            f"{name[:80]!r} is not a run name: a folder name directly under the served directory, made of "
            "letters, digits, '.', '_' and '-' (at most 128, not starting with '.', no '..')"
        )
    return name


def inside(path: Path, root: Path) -> bool:
    """Whether `path` (resolved) is `root` (resolved) or below it."""
    return path == root or root in path.parents


def run_folder(root: Path, name: str) -> Path:
    """The folder of the run `name` under `root` (a resolved directory): it must hold a config.json."""
    check_run_name(name)
    folder = root / name
    try:
        real = folder.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise NotFound(f"no run named {name!r}") from None
    if not inside(real, root) or real == root:
        raise BadName(f"run {name!r} is a link that leads outside the served directory; it is not served")
    if not (real / "config.json").is_file():
        raise NotFound(f"no run named {name!r} (the folder has no config.json)")
    return real


def file_within(folder: Path, relative: str) -> Path:
    """The file at the URL path `relative` inside `folder` (resolved); '..', absolute paths, backslashes,
    hidden names and symlinks that leave the folder are refused."""
    parts = relative.split("/") if relative else []
    if not parts or not all(_SEGMENT.fullmatch(p) and ".." not in p for p in parts):
        raise BadName(f"{relative[:80]!r} is not a file name of this folder")
    try:
        real = folder.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotFound(f"no file {relative!r}") from None
    if not inside(real, folder):
        raise BadName(f"{relative!r} leads outside its folder; it is not served")
    if not real.is_file():
        raise NotFound(f"no file {relative!r}")
    return real


def list_runs(root: Path) -> list[tuple[str, Path]]:
    """(name, folder) of every run directly under `root`, by name; links that leave it are left out."""
    found = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not RUN_NAME.fullmatch(entry.name) or ".." in entry.name:
            continue
        try:
            found.append((entry.name, run_folder(root, entry.name)))
        except (BadName, NotFound):
            continue
    return found
