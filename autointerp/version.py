"""The installed autointerp's version, read from the package metadata: pyproject.toml is the one place
that states it, and everything that prints or records a version (config.json, the report, the service)
reads it here."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("autointerp")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()
