"""The one base of every error a user can act on.

An `AutointerpError` is about the user's input or environment (an option, a file, a model, a judge
that cannot be reached), and its message says what is wrong and what to do. The command line catches
this base, once, prints the message and exits 2; any other exception is a bug in autointerp, and keeps
its traceback. So a function that finds a mistake the user can fix raises a subclass of this, never a
bare `ValueError`, and a library caller can catch all of them in one `except`.
"""

from __future__ import annotations


class AutointerpError(Exception):
    """A mistake in the user's input or environment; the message says what is wrong and what to do."""


class ConfigError(AutointerpError):
    """Options that cannot work, alone or together, or that contradict the run folder."""


class MissingPackageError(AutointerpError, ImportError):
    """An optional package that a feature needs is not installed; the message names what to install."""
